//! `POST /api/docs/{id}/mutations` over a real socket: idempotency keys, outcomes, errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use common::*;
use converge_core::{Ctx, Mutator, Mutators, Rejection};
use converge_proto::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    slot: String,
    by: String,
}

/// Claims a slot once: a second claim of the same slot is refused.
struct ClaimSlot;
impl Mutator for ClaimSlot {
    const NAME: &'static str = "claim";
    type Args = Claim;
    fn apply(doc: &mut AutoCommit, args: Claim, _ctx: &Ctx) -> Result<(), Rejection> {
        use automerge::ReadDoc;
        if doc
            .get(ROOT, args.slot.as_str())
            .map_err(Rejection::from_automerge)?
            .is_some()
        {
            return Err(Rejection::new(format!("{} is taken", args.slot)));
        }
        doc.put(ROOT, args.slot, args.by)
            .map_err(Rejection::from_automerge)
    }
}

async fn start() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut mutators = Mutators::new();
    mutators.register::<ClaimSlot>();
    let handle = converge_server::start(converge_server::ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        mutators,
        ..Default::default()
    })
    .await
    .unwrap();
    TestServer { handle, dir }
}

async fn post(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    http(server, "POST", path, headers, body).await
}

fn claim(slot: &str, by: &str) -> String {
    serde_json::json!({"name": "claim", "args": {"slot": slot, "by": by}}).to_string()
}

#[tokio::test]
async fn the_same_key_gets_the_same_answer_and_the_change_reaches_subscribers() {
    let server = start().await;
    let doc = DocId::random();
    let path = format!("/api/docs/{doc}/mutations");
    let mut ws = hello(&server.handle.ws_url(), "watcher").await;
    subscribe(&mut ws, doc, None).await;

    let auth = ("Authorization", "Bearer backend");
    let (status, first) = post(
        &server,
        &path,
        &[auth, ("Idempotency-Key", "k1")],
        &claim("9am", "ana"),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["outcome"], "applied");
    // A retry with the same key, even with another body: the recorded answer.
    let (status, again) = post(
        &server,
        &path,
        &[auth, ("Idempotency-Key", "k1")],
        &claim("10am", "ana"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again, first);
    // Another key for the same slot: processed, and refused by the mutator.
    let (status, other) = post(
        &server,
        &path,
        &[auth, ("Idempotency-Key", "k2")],
        &claim("9am", "ben"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(other["outcome"], "rejected");
    assert_eq!(other["code"], 5001);
    // The subscriber received the applied change (a record and a change entry).
    let mut non_empty = 0;
    while non_empty == 0 {
        if let ServerMsg::Changes { changes, .. } = recv(&mut ws).await {
            non_empty += changes.iter().filter(|c| !c.is_empty()).count();
        }
    }
    assert_eq!(non_empty, 1);
}

#[tokio::test]
async fn bad_requests_get_documented_json_errors() {
    let server = start().await;
    let doc = DocId::random();
    let path = format!("/api/docs/{doc}/mutations");
    let key = ("Idempotency-Key", "k");

    let (status, body) = post(&server, &path, &[], &claim("a", "b")).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("BadRequest")));

    let (status, body) = post(&server, &path, &[key], "not json").await;
    assert_eq!((status, body["error"].as_str()), (422, Some("BadRequest")));

    let unknown = serde_json::json!({"name": "nope", "args": {}}).to_string();
    let (status, body) = post(&server, &path, &[key], &unknown).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("UnknownMutator"))
    );

    let bad_args = serde_json::json!({"name": "claim", "args": {"slot": 3}}).to_string();
    let (status, body) = post(&server, &path, &[key], &bad_args).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("BadArgs")));
    assert_eq!(body["code"], ErrorCode::BadArgs.code());

    let (status, body) = post(
        &server,
        "/api/docs/not-a-doc/mutations",
        &[key],
        &claim("a", "b"),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("UnknownDoc")));

    let long = "k".repeat(300);
    let (status, body) = post(
        &server,
        &path,
        &[("Idempotency-Key", long.as_str())],
        &claim("a", "b"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("FieldTooLong"))
    );
    // Nothing of the refused requests reached the log.
    assert!(matches!(
        server.handle.log().head(&doc),
        Err(converge_log::LogError::UnknownDoc(_))
    ));
}

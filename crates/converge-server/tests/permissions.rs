//! Permissions over a real socket: each role x each action x a document with and without a
//! token grant, allowed or denied as the role table says; afterwards, no denied write reached
//! the log. Then live changes: an ACL withdrawn mid-session, and a revoked user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use common::*;
use converge_core::{Ctx, Mutator, Permission, Rejection, Roles};
use converge_log::EntryKind;
use converge_proto::*;
use converge_server::auth::{claims, mint_hs256};

const SECRET: &[u8] = b"permissions-test-secret-0123456789";

struct Put;
impl Mutator for Put {
    const NAME: &'static str = "put";
    type Args = i64;
    fn apply(doc: &mut AutoCommit, v: i64, _ctx: &Ctx) -> Result<(), Rejection> {
        doc.put(ROOT, "v", v).map_err(Rejection::from_automerge)
    }
}

async fn start() -> TestServer {
    jwt_server(SECRET, with_put).await
}

fn with_put(c: &mut converge_server::ServerConfig) {
    c.mutators.register::<Put>();
}

fn token(user: &str, roles: &[&str], grant: Option<(DocId, &str)>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = claims(user, roles, now, 600);
    if let Some((doc, role)) = grant {
        c.docs.insert(doc.to_string(), role.to_string());
    }
    mint_hs256(SECRET, &c).unwrap()
}

/// Reads until `done` matches a message (allowed) or an error refuses the request; returns
/// whether it was allowed. Refusals are immediate; what is allowed answers after the flush.
async fn allowed_by(ws: &mut Ws, done: impl Fn(&ServerMsg) -> bool) -> bool {
    loop {
        let m = recv(ws).await;
        if done(&m) {
            return true;
        }
        if forbidden(std::slice::from_ref(&m))
            || matches!(
                m,
                ServerMsg::Error {
                    code: ErrorCode::NotSubscribed,
                    ..
                }
            )
        {
            return false;
        }
    }
}

fn forbidden(msgs: &[ServerMsg]) -> bool {
    msgs.iter().any(|m| {
        matches!(
            m,
            ServerMsg::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ) || matches!(
            m,
            ServerMsg::MutationResult {
                outcome: MutationOutcome::Rejected {
                    code: ErrorCode::Forbidden,
                    ..
                },
                ..
            }
        )
    })
}

#[tokio::test]
async fn the_permission_matrix_holds_and_no_denied_write_reaches_the_log() {
    let server = start().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let table = Roles::default();
    let mut allowed: Vec<(String, Permission)> = Vec::new();
    for role in ["admin", "editor", "viewer", "nobody"] {
        for grant in [None, Some("editor")] {
            let user = format!("{role}-{}", grant.unwrap_or("none"));
            let mut ws = hello_with(&url, token(&user, &[role], grant.map(|g| (doc, g)))).await;
            let perms = grant.map_or(table.of(role), |g| table.of(role).union(table.of(g)));
            let may = |p: Permission| perms.has(p);

            // Read: subscribe.
            send(&mut ws, &ClientMsg::Subscribe { doc, after: None }).await;
            let subscribed = allowed_by(&mut ws, |m| matches!(m, ServerMsg::Live { .. })).await;
            assert_eq!(subscribed, may(Permission::Read), "{user} read");
            if subscribed {
                allowed.push((user.clone(), Permission::Read));
            }

            // Write: a push of a fresh change.
            let mut am = AutoCommit::new();
            am.put(ROOT, user.as_str(), 1).unwrap();
            am.commit();
            let change = Blob(am.get_last_local_change().unwrap().raw_bytes().to_vec());
            send(
                &mut ws,
                &ClientMsg::Push {
                    doc,
                    changes: vec![change],
                },
            )
            .await;
            let acked = allowed_by(&mut ws, |m| matches!(m, ServerMsg::Ack { .. })).await;
            assert_eq!(acked, subscribed && may(Permission::Write), "{user} write");

            // Mutate.
            send(
                &mut ws,
                &ClientMsg::Mutate {
                    doc,
                    mutation_id: MutationId(1),
                    name: Put::NAME.into(),
                    args: Blob(encode_args(&7i64).unwrap()),
                    fence: None,
                },
            )
            .await;
            let applied = allowed_by(&mut ws, |m| {
                matches!(
                    m,
                    ServerMsg::MutationResult {
                        outcome: MutationOutcome::Applied { .. },
                        ..
                    }
                )
            })
            .await;
            assert_eq!(
                applied,
                subscribed && may(Permission::Mutate),
                "{user} mutate"
            );

            // Lock.
            send(
                &mut ws,
                &ClientMsg::Lock {
                    doc,
                    key: user.clone(),
                    ttl_ms: 30_000,
                },
            )
            .await;
            let granted = allowed_by(&mut ws, |m| {
                matches!(
                    m,
                    ServerMsg::LockResult {
                        outcome: LockOutcome::Granted { .. },
                        ..
                    }
                )
            })
            .await;
            assert_eq!(granted, subscribed && may(Permission::Lock), "{user} lock");

            // Presence: refused with Forbidden, or taken without a reply.
            send(
                &mut ws,
                &ClientMsg::Presence {
                    doc,
                    state: Blob(b"here".to_vec()),
                },
            )
            .await;
            let r = replies(&mut ws, 5).await;
            let refused = r.iter().any(|m| {
                matches!(
                    m,
                    ServerMsg::Error {
                        code: ErrorCode::Forbidden | ErrorCode::NotSubscribed,
                        ..
                    }
                )
            });
            assert_eq!(
                !refused,
                subscribed && may(Permission::Presence),
                "{user} presence: {r:?}"
            );

            // Publish to the document's room: refused with Forbidden, or taken without a reply.
            send(
                &mut ws,
                &ClientMsg::Publish {
                    room: format!("doc:{doc}"),
                    event: "ping".into(),
                    data: Blob(Vec::new()),
                },
            )
            .await;
            let r = replies(&mut ws, 6).await;
            let refused = r.iter().any(|m| {
                matches!(
                    m,
                    ServerMsg::Error {
                        code: ErrorCode::Forbidden,
                        ..
                    }
                )
            });
            assert_eq!(!refused, may(Permission::Publish), "{user} publish: {r:?}");

            for (p, ok) in [
                (Permission::Write, acked),
                (Permission::Mutate, applied),
                (Permission::Lock, granted),
            ] {
                if ok {
                    allowed.push((user.clone(), p));
                }
            }
        }
    }
    // The matrix really covers both answers.
    let writers: BTreeSet<&str> = allowed
        .iter()
        .filter(|(_, p)| *p == Permission::Write)
        .map(|(u, _)| u.as_str())
        .collect();
    assert!(writers.contains("editor-none") && writers.contains("viewer-editor"));
    assert!(!writers.contains("viewer-none") && !writers.contains("nobody-none"));

    // Every entry in the log was written by someone allowed to write it.
    let may = |user: &str, p: Permission| allowed.iter().any(|(u, q)| u == user && *q == p);
    let log = server.handle.log();
    log.flush().unwrap();
    let entries = log.read(&doc, Seq(1), 10_000).unwrap();
    assert!(!entries.is_empty());
    for e in entries {
        let user = e.author.user.as_str().to_string();
        let p = match &e.kind {
            EntryKind::Change(_) if user == UserId::SERVER => continue, // a mutation's change
            EntryKind::Change(_) => Permission::Write,
            // A refused mutation is recorded (its id counts) but carries no change.
            EntryKind::Mutation(m)
                if m.outcome
                    == (converge_log::MutationOutcome::Rejected {
                        code: ErrorCode::Forbidden.code(),
                        message: "your roles do not allow mutations in this document".into(),
                    }) =>
            {
                continue;
            }
            EntryKind::Mutation(_) => Permission::Mutate,
            EntryKind::Lock(_) => Permission::Lock,
            other => panic!("unexpected entry {other:?}"),
        };
        assert!(
            may(&user, p),
            "{user} wrote a {} entry without {p}",
            e.kind.name()
        );
    }
}

async fn acl(server: &TestServer, doc: DocId, token: &str, body: &str) -> u16 {
    let auth = format!("Bearer {token}");
    let path = format!("/api/docs/{doc}/acl");
    http(
        server,
        "PUT",
        &path,
        &[("Authorization", auth.as_str())],
        body,
    )
    .await
    .0
}

#[tokio::test]
async fn an_acl_change_applies_to_live_sessions_and_a_revoked_user_is_disconnected() {
    let server = start().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let admin = token("root", &["admin"], None);
    // Only admins change ACLs.
    let body = r#"{"user": "ed", "role": "editor"}"#;
    assert_eq!(
        acl(&server, doc, &token("ed", &["editor"], None), body).await,
        403
    );
    assert_eq!(acl(&server, doc, &admin, body).await, 204);

    // ed is a viewer by token, an editor in this document by the ACL: ed writes.
    let mut ed = hello_with(&url, token("ed", &["viewer"], None)).await;
    subscribe(&mut ed, doc, None).await;
    let mut w = converge_tests::Writer::new(b"ed-actor-0000001");
    send(
        &mut ed,
        &ClientMsg::Push {
            doc,
            changes: vec![Blob(w.put("a", 1))],
        },
    )
    .await;
    assert!(allowed_by(&mut ed, |m| matches!(m, ServerMsg::Ack { .. })).await);

    // The admin withdraws the grant: ed, still connected and still reading, can no longer write.
    assert_eq!(
        acl(&server, doc, &admin, r#"{"user": "ed", "role": null}"#).await,
        204
    );
    send(
        &mut ed,
        &ClientMsg::Push {
            doc,
            changes: vec![Blob(w.put("b", 2))],
        },
    )
    .await;
    assert!(!allowed_by(&mut ed, |m| matches!(m, ServerMsg::Ack { .. })).await);
    // ed still receives others' changes.
    let mut other = hello_with(&url, token("ann", &["editor"], None)).await;
    subscribe(&mut other, doc, None).await;
    let mut wa = converge_tests::Writer::new(b"ann-actor-000001");
    send(
        &mut other,
        &ClientMsg::Push {
            doc,
            changes: vec![Blob(wa.put("c", 3))],
        },
    )
    .await;
    loop {
        if let ServerMsg::Changes { changes, .. } = recv(&mut ed).await
            && changes.iter().any(|c| !c.is_empty())
        {
            break;
        }
    }
    // Revoked: every session of ed ends.
    server.handle.revoke_user(UserId::new("ed").unwrap()).await;
    let (errors, close) = until_close(&mut ed).await;
    assert!(errors.contains(&ErrorCode::Forbidden), "{errors:?}");
    assert_eq!(
        close.map(|c| u16::from(c.code)),
        Some(CloseCode::Revoked.code())
    );
}

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http(server, "GET", path, &headers, "").await
}

#[tokio::test]
async fn stats_and_acl_reads_are_for_admins() {
    let server = start().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let mut ann = hello_with(&url, token("ann", &["editor"], None)).await;
    subscribe(&mut ann, doc, None).await;
    let _bob = hello_with(&url, token("bob", &["viewer"], None)).await;
    let admin = token("root", &["admin"], None);

    let (status, body) = get(&server, "/api/stats", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("Unauthorized"))
    );
    let editor = token("ann", &["editor"], None);
    let (status, body) = get(&server, "/api/stats", Some(&editor)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("Forbidden")));
    let (status, body) = get(&server, "/api/stats", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 2);
    assert_eq!(body["sessions_by_user"]["ann"], 1);
    assert_eq!(body["sessions_by_user"]["bob"], 1);
    assert_eq!(body["subscriptions"], 1);
    assert!(body["log_bytes"].as_u64().is_some());

    assert_eq!(
        acl(&server, doc, &admin, r#"{"user": "bob", "role": "editor"}"#).await,
        204
    );
    let path = format!("/api/docs/{doc}/acl");
    let (status, body) = get(&server, &path, Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["grants"],
        serde_json::json!([{"user": "bob", "role": "editor"}])
    );
    let (status, _) = get(&server, &path, Some(&editor)).await;
    assert_eq!(status, 403);
    let (status, body) = get(&server, "/api/docs/nope/acl", Some(&admin)).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("UnknownDoc")));
    // A body that is not {"user", "role"}: 422.
    assert_eq!(acl(&server, doc, &admin, "{}").await, 422);
}

#[tokio::test]
async fn an_acl_survives_a_restart() {
    let server = start().await;
    let doc = DocId::random();
    let admin = token("root", &["admin"], None);
    assert_eq!(
        acl(&server, doc, &admin, r#"{"user": "vic", "role": "editor"}"#).await,
        204
    );
    let TestServer { handle, dir } = server;
    handle.shutdown().await.unwrap();
    let server = jwt_server_in(dir, SECRET, with_put).await;
    let (status, body) = get(&server, &format!("/api/docs/{doc}/acl"), Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["grants"],
        serde_json::json!([{"user": "vic", "role": "editor"}])
    );
    // And it is in force: vic, a viewer by token, writes.
    let mut vic = hello_with(&server.handle.ws_url(), token("vic", &["viewer"], None)).await;
    subscribe(&mut vic, doc, None).await;
    let mut w = converge_tests::Writer::new(b"vic-actor-000001");
    send(
        &mut vic,
        &ClientMsg::Push {
            doc,
            changes: vec![Blob(w.put("a", 1))],
        },
    )
    .await;
    assert!(allowed_by(&mut vic, |m| matches!(m, ServerMsg::Ack { .. })).await);
}

#[tokio::test]
async fn documents_and_their_history_are_readable_with_read_permission() {
    let server = start().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let ann_token = token("ann", &["editor"], None);
    let mut ann = hello_with(&url, ann_token.clone()).await;
    subscribe(&mut ann, doc, None).await;
    let mut w = converge_tests::Writer::new(b"ann-actor-000002");
    for (k, v) in [("a", 1), ("b", 2)] {
        send(
            &mut ann,
            &ClientMsg::Push {
                doc,
                changes: vec![Blob(w.put(k, v))],
            },
        )
        .await;
        assert!(allowed_by(&mut ann, |m| matches!(m, ServerMsg::Ack { .. })).await);
    }
    let (status, body) = get(&server, &format!("/api/docs/{doc}"), Some(&ann_token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!({"a": 1, "b": 2}));
    let nobody = token("eve", &["nobody"], None);
    let (status, body) = get(&server, &format!("/api/docs/{doc}"), Some(&nobody)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("Forbidden")));
    // A viewer grant in the token is enough to read.
    let granted = token("eve", &["nobody"], Some((doc, "viewer")));
    let (status, _) = get(&server, &format!("/api/docs/{doc}"), Some(&granted)).await;
    assert_eq!(status, 200);

    let (status, body) = get(
        &server,
        &format!("/api/docs/{doc}/events?from=2&limit=5"),
        Some(&ann_token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["last_seq"], 2);
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert_eq!(body["events"][0]["seq"], 2);
    assert_eq!(body["events"][0]["kind"], "change");
    assert_eq!(body["events"][0]["user"], "ann");
    assert!(body["next"].is_null());
    let (status, body) = get(
        &server,
        &format!("/api/docs/{doc}/events?from=x"),
        Some(&ann_token),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (422, Some("BadRequest")));
    let (status, body) = get(
        &server,
        &format!("/api/docs/{}", DocId::random()),
        Some(&ann_token),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("UnknownDoc")));
}

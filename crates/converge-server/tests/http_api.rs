//! The operator's HTTP API: /api/docs (list, create), /api/stats and /metrics, with their
//! 401/403/404/422 bodies; /metrics must parse as Prometheus text and count what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use converge_proto::*;

const SECRET: &[u8] = b"http-api-test-secret-0123456789abc";

async fn start() -> TestServer {
    jwt_server(SECRET, |_| {}).await
}

fn bearer(user: &str, roles: &[&str]) -> String {
    format!("Bearer {}", jwt_token(SECRET, user, roles))
}

#[tokio::test]
async fn docs_are_created_and_listed_by_admins_only() {
    let server = start().await;
    let admin = bearer("ops", &["admin"]);
    let editor = bearer("ed", &["editor"]);
    let schedule =
        r#"{"kind": "schedule", "value": {"title": "Ward 3", "timezone": "Europe/Paris"}}"#;

    let (status, json) = http(&server, "POST", "/api/docs", &[], schedule).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("Unauthorized"))
    );
    let (status, json) = http(
        &server,
        "POST",
        "/api/docs",
        &[("Authorization", &editor)],
        schedule,
    )
    .await;
    assert_eq!((status, json["error"].as_str()), (403, Some("Forbidden")));
    for bad in [
        r#"{"kind": "spreadsheet", "value": {}}"#,
        r#"{"kind": "inbox", "value": {}}"#,
        r#"{"kind": "schedule", "value": {"title": 3}}"#,
        r#"{"kind": "schedule"}"#,
        "nonsense",
    ] {
        let (status, json) = http(
            &server,
            "POST",
            "/api/docs",
            &[("Authorization", &admin)],
            bad,
        )
        .await;
        assert_eq!(
            (status, json["error"].as_str()),
            (422, Some("BadRequest")),
            "{bad}"
        );
    }
    // Nothing was written by the refused requests.
    assert!(server.handle.log().docs().unwrap().is_empty());

    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, json) = http(
            &server,
            "POST",
            "/api/docs",
            &[("Authorization", &admin)],
            schedule,
        )
        .await;
        assert_eq!(status, 201, "{json}");
        assert_eq!(json["kind"], "schedule");
        ids.push(json["id"].as_str().unwrap().to_string());
    }
    // The new document reads back as JSON.
    let (status, json) = http(
        &server,
        "GET",
        &format!("/api/docs/{}", ids[0]),
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["timezone"], "Europe/Paris");

    // Listed in id order (the ids' bytes, not their base58 text), paged.
    ids.sort_by_key(|s| s.parse::<DocId>().unwrap());
    let (status, json) = http(
        &server,
        "GET",
        "/api/docs?limit=2",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{json}");
    let page: Vec<&str> = json["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[0].as_str(), ids[1].as_str()]);
    assert!(json["docs"][0]["entries"].as_u64().unwrap() >= 1);
    let next = json["next"].as_str().unwrap().to_string();
    let (_, json) = http(
        &server,
        "GET",
        &format!("/api/docs?after={next}&limit=2"),
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(json["docs"][0]["id"], ids[2].as_str());
    assert!(json["next"].is_null());

    let (status, _) = http(
        &server,
        "GET",
        "/api/docs",
        &[("Authorization", &editor)],
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, json) = http(
        &server,
        "GET",
        "/api/docs?after=zzz",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!((status, json["error"].as_str()), (422, Some("BadRequest")));
    let (status, json) = http(
        &server,
        "GET",
        "/api/docs/not-a-doc",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!((status, json["error"].as_str()), (404, Some("UnknownDoc")));
}

/// One sample of Prometheus text: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the Prometheus text format (0.0.4): `# HELP`/`# TYPE` lines, and
/// samples whose names, labels and values are well formed. Panics on anything else.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            assert!(kind == "HELP" || kind == "TYPE", "bad comment: {line}");
            assert!(name_ok(parts.next().unwrap()), "bad name: {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
            }
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let labels = body
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or_else(|| panic!("{line}"));
                        assert!(name_ok(k), "bad label: {line}");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("unquoted label: {line}"));
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(name_ok(&name), "bad name: {line}");
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_traffic() {
    let server = start().await;
    let admin = bearer("ops", &["admin"]);
    let (status, _) = http_raw(&server, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 401);
    let editor = bearer("ed", &["editor"]);
    let (status, _) = http_raw(
        &server,
        "GET",
        "/metrics",
        &[("Authorization", &editor)],
        "",
    )
    .await;
    assert_eq!(status, 403);

    // Some traffic: two sessions, a push fanned out to the other, an error.
    let url = server.handle.ws_url();
    let token = |u: &str| {
        bearer(u, &["editor"])
            .trim_start_matches("Bearer ")
            .to_string()
    };
    let mut a = connect(&url).await;
    let mut b = connect(&url).await;
    for (ws, u) in [(&mut a, "ana"), (&mut b, "bob")] {
        send(
            ws,
            &ClientMsg::Hello {
                protocol: PROTOCOL_VERSION,
                client_id: ClientId::random(),
                token: Some(token(u)),
            },
        )
        .await;
        assert!(matches!(recv(ws).await, ServerMsg::Welcome { .. }));
    }
    let doc = DocId::random();
    subscribe(&mut a, doc, None).await;
    subscribe(&mut b, doc, None).await;
    let mut w = Writer::new(b"metrics-writer");
    send(
        &mut a,
        &ClientMsg::Push {
            doc,
            changes: vec![Blob(w.put("k", 1))],
        },
    )
    .await;
    loop {
        if matches!(recv(&mut a).await, ServerMsg::Ack { .. }) {
            break;
        }
    }
    loop {
        if matches!(recv(&mut b).await, ServerMsg::Changes { .. }) {
            break;
        }
    }
    send(
        &mut a,
        &ClientMsg::Unlock {
            doc: DocId::random(),
            key: "k".into(),
            token: FencingToken(1),
        },
    )
    .await;
    loop {
        if matches!(
            recv(&mut a).await,
            ServerMsg::Error { .. } | ServerMsg::LockResult { .. }
        ) {
            break;
        }
    }

    // An event published over the socket is counted too.
    send(
        &mut a,
        &ClientMsg::Publish {
            room: format!("doc:{doc}"),
            event: "cursor".into(),
            data: Blob(Vec::new()),
        },
    )
    .await;
    loop {
        if matches!(recv(&mut b).await, ServerMsg::Event { .. }) {
            break;
        }
    }

    let (status, text) =
        http_raw(&server, "GET", "/metrics", &[("Authorization", &admin)], "").await;
    assert_eq!(status, 200);
    // The body may be chunked: keep the metric lines only.
    let text: String = text
        .lines()
        .filter(|l| l.starts_with('#') || l.starts_with("converge_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let samples = parse_prometheus(&text);
    assert!(samples.iter().all(|s| s.name.starts_with("converge_")));
    assert_eq!(value(&samples, "converge_connections", None), 2.0);
    assert_eq!(
        value(
            &samples,
            "converge_messages_in_total",
            Some(("type", "hello"))
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "converge_messages_in_total",
            Some(("type", "push"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "converge_messages_out_total",
            Some(("type", "welcome"))
        ),
        2.0
    );
    assert!(
        value(
            &samples,
            "converge_messages_out_total",
            Some(("type", "changes"))
        ) >= 1.0
    );
    assert!(value(&samples, "converge_bytes_in_total", None) > 0.0);
    assert!(value(&samples, "converge_bytes_out_total", None) > 0.0);
    assert!(value(&samples, "converge_append_seconds_count", None) >= 1.0);
    assert!(value(&samples, "converge_fanout_seconds_count", None) >= 1.0);
    assert!(
        samples
            .iter()
            .any(|s| s.name == "converge_append_seconds_bucket" && s.labels.contains_key("le"))
    );
    assert!(text.contains("# TYPE converge_errors_total counter"));
    assert_eq!(
        value(&samples, "converge_events_published_total", None),
        1.0
    );

    // /api/stats reports the rooms and the flush latency.
    let (status, json) = http(
        &server,
        "GET",
        "/api/stats",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["rooms"][format!("doc:{doc}")], 2);
    assert_eq!(json["rooms"]["user:ana"], 1);
    assert_eq!(json["rooms"]["role:editor"], 2);
    assert!(json["flush"]["count"].as_u64().unwrap() >= 1);
    assert!(json["flush"]["mean_us"].as_u64().is_some());
    assert_eq!(json["known_users"], 2);
}

#[tokio::test]
async fn http_writes_are_rate_limited_per_user_and_inbox_mutators_run_over_http() {
    let server = jwt_server(SECRET, |c| c.http_writes_per_sec = 1).await;
    let ana = bearer("ana", &["editor"]);
    let inbox = DocId::inbox_of(&UserId::new("ana").unwrap());
    // The inbox mutators are registered for the HTTP API too; only the owner may run them.
    let path = format!("/api/docs/{inbox}/mutations");
    let body = r#"{"name": "inbox.mark_read", "args": {"ids": [], "all": true}}"#;
    let (status, json) = http(
        &server,
        "POST",
        &path,
        &[("Authorization", &ana), ("Idempotency-Key", "k1")],
        body,
    )
    .await;
    assert_eq!(
        (status, json["outcome"].as_str()),
        (200, Some("applied")),
        "{json}"
    );
    let bob = bearer("bob", &["editor"]);
    let (status, json) = http(
        &server,
        "POST",
        &path,
        &[("Authorization", &bob), ("Idempotency-Key", "k1")],
        body,
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (403, Some("Forbidden")),
        "{json}"
    );
    // One write per second with a burst of two: ana has used one; one more passes, then 429.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let (status, _) = http(
            &server,
            "POST",
            "/api/inbox/read",
            &[("Authorization", &ana)],
            r#"{"all": true}"#,
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(statuses, vec![200, 429]);
    // Another user has their own budget.
    let (status, _) = http(
        &server,
        "POST",
        "/api/inbox/read",
        &[("Authorization", &bob)],
        r#"{"all": true}"#,
    )
    .await;
    assert_eq!(status, 200);
}

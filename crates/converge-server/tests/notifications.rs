//! Notifications end to end over real sockets and HTTP: notify a role (members online get it
//! live, an offline member finds it in the inbox document), dedup keys, quiet hours and muted
//! categories, retention, mark-read, inbox permissions, and the 401/403/422 bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use automerge::Automerge;
use common::*;
use converge_proto::*;
use converge_schema::{Inbox, Retention};

const SECRET: &[u8] = b"notify-test-secret-0123456789abcdef";

async fn start(retention: Retention) -> TestServer {
    jwt_server(SECRET, |c| c.inbox_retention = retention).await
}

fn token(user: &str, roles: &[&str]) -> String {
    jwt_token(SECRET, user, roles)
}

async fn join(url: &str, user: &str, roles: &[&str]) -> Ws {
    hello_with(url, token(user, roles)).await
}

fn bearer(user: &str, roles: &[&str]) -> String {
    format!("Bearer {}", token(user, roles))
}

async fn notify(server: &TestServer, body: serde_json::Value) -> (u16, serde_json::Value) {
    let admin = bearer("ops", &["admin"]);
    http(
        server,
        "POST",
        "/api/notify",
        &[("Authorization", &admin)],
        &body.to_string(),
    )
    .await
}

async fn inbox_http(server: &TestServer, user: &str, roles: &[&str]) -> serde_json::Value {
    let auth = bearer(user, roles);
    let (status, json) = http(server, "GET", "/api/inbox", &[("Authorization", &auth)], "").await;
    assert_eq!(status, 200, "{json}");
    json
}

/// Reads until a live Notification arrives.
async fn next_notification(ws: &mut Ws) -> NotificationMsg {
    loop {
        if let ServerMsg::Notification(n) = recv(ws).await {
            return n;
        }
    }
}

#[tokio::test]
async fn notifying_a_role_reaches_members_online_now_and_offline_later() {
    let server = start(Retention::default()).await;
    let url = server.handle.ws_url();
    // Two nurses and a doctor. Nina is online; Olga was online once (so the directory knows
    // her role) and is offline now.
    let mut nina = join(&url, "nina", &["nurse"]).await;
    let mut doc_ws = join(&url, "dora", &["doctor"]).await;
    drop(join(&url, "olga", &["nurse"]).await);

    let (status, json) = notify(
        &server,
        serde_json::json!({
            "to": {"roles": ["nurse"]},
            "priority": "high",
            "category": "shift",
            "title": "Bed 4 needs a nurse",
            "body": "Now, please",
            "data": {"bed": "4", "floor": 2},
        }),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["recipients"], 2, "{json}");
    assert_eq!(json["delivered"], 2, "{json}");

    let live = next_notification(&mut nina).await;
    assert_eq!(live.title, "Bed 4 needs a nurse");
    assert_eq!(
        (live.priority.as_str(), live.category.as_str()),
        ("high", "shift")
    );
    let data: serde_json::Value = serde_json::from_slice(&live.data).unwrap();
    assert_eq!(
        (data["bed"].as_str(), data["floor"].as_str()),
        (Some("4"), Some("2"))
    );
    // The doctor got nothing.
    assert!(
        !replies(&mut doc_ws, 1)
            .await
            .iter()
            .any(|m| matches!(m, ServerMsg::Notification(_)))
    );

    // Olga comes back: her inbox document holds it, unread.
    let mut olga = join(&url, "olga", &["nurse"]).await;
    let inbox_id = DocId::inbox_of(&UserId::new("olga").unwrap());
    let (changes, _) = subscribe(&mut olga, inbox_id, None).await;
    let mut doc = Automerge::new();
    // Entries without a change (the mutation's record) come as empty blobs.
    for c in changes.into_iter().filter(|c| !c.is_empty()) {
        doc.apply_changes([automerge::Change::from_bytes(c).unwrap()])
            .unwrap();
    }
    let inbox: Inbox = autosurgeon::hydrate(&doc).unwrap();
    assert_eq!(inbox.owner, "olga");
    let n = inbox.notifications.get(live.id.as_str()).unwrap();
    assert_eq!((n.title.as_str(), n.read_at), ("Bed 4 needs a nurse", None));
    assert_eq!(inbox.unread_counts().high, 1);
    let json = inbox_http(&server, "olga", &["nurse"]).await;
    assert_eq!(json["unread"]["high"], 1);
    assert_eq!(json["unread"]["total"], 1);
    assert_eq!(json["doc"], inbox_id.to_string());

    // Nobody but Olga (and admins) may read or write her inbox, whatever their roles.
    let mut eve = join(&url, "eve", &["editor"]).await;
    send(
        &mut eve,
        &ClientMsg::Subscribe {
            doc: inbox_id,
            after: None,
        },
    )
    .await;
    assert!(replies(&mut eve, 2).await.iter().any(|m| matches!(
        m,
        ServerMsg::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    )));
    // Olga may run the inbox's mutators on it, and no others (they would write another kind
    // of data into it): recorded as a Forbidden rejection.
    send(
        &mut olga,
        &ClientMsg::Mutate {
            doc: inbox_id,
            mutation_id: MutationId(1),
            name: "schedule.book".into(),
            args: Blob(Vec::new()),
            fence: None,
        },
    )
    .await;
    loop {
        if let ServerMsg::MutationResult { outcome, .. } = recv(&mut olga).await {
            assert!(
                matches!(
                    outcome,
                    MutationOutcome::Rejected {
                        code: ErrorCode::Forbidden,
                        ..
                    }
                ),
                "{outcome:?}"
            );
            break;
        }
    }
    // And Olga herself may not push into it: it is the server's to write.
    let mut am = automerge::AutoCommit::new();
    automerge::transaction::Transactable::put(&mut am, automerge::ROOT, "x", 1).unwrap();
    am.commit();
    let change = Blob(am.get_last_local_change().unwrap().raw_bytes().to_vec());
    send(
        &mut olga,
        &ClientMsg::Push {
            doc: inbox_id,
            changes: vec![change],
        },
    )
    .await;
    assert!(replies(&mut olga, 3).await.iter().any(|m| matches!(
        m,
        ServerMsg::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    )));
}

#[tokio::test]
async fn dedup_quiet_hours_mark_read_and_retention() {
    let server = start(Retention {
        max_age_ms: 24 * 3600 * 1000,
        max_items: 3,
    })
    .await;
    let url = server.handle.ws_url();
    let mut pia = join(&url, "pia", &["editor"]).await;
    let to = serde_json::json!({"users": ["pia"]});

    // The same dedup key twice: one notification.
    for round in 0..2 {
        let (status, json) = notify(
            &server,
            serde_json::json!({
                "to": to, "priority": "low", "category": "digest",
                "title": "Daily digest", "dedup_key": "digest-2026-11-22",
            }),
        )
        .await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["duplicates"], round, "{json}");
    }
    assert_eq!(next_notification(&mut pia).await.title, "Daily digest");
    // Two identical requests at once: one delivers, the other is the duplicate.
    let same = serde_json::json!({
        "to": to, "priority": "low", "category": "digest",
        "title": "Weekly digest", "dedup_key": "digest-week-47",
    });
    let (a, b) = tokio::join!(notify(&server, same.clone()), notify(&server, same));
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(
        a.1["delivered"].as_u64().unwrap() + b.1["delivered"].as_u64().unwrap(),
        1
    );
    assert_eq!(
        a.1["duplicates"].as_u64().unwrap() + b.1["duplicates"].as_u64().unwrap(),
        1
    );
    assert_eq!(next_notification(&mut pia).await.title, "Weekly digest");

    // Quiet hours around now: a medium one is held back (inbox only), a critical one is
    // pushed. A muted category is held back too.
    let now_min = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60)
        % 1440;
    let prefs = serde_json::json!({
        "muted_categories": ["marketing"],
        "quiet_hours": {
            "start_minute": (now_min + 1440 - 60) % 1440,
            "end_minute": (now_min + 60) % 1440,
            "utc_offset_minutes": 0,
        },
    });
    let auth = bearer("pia", &["editor"]);
    let (status, json) = http(
        &server,
        "PUT",
        "/api/inbox/preferences",
        &[("Authorization", &auth)],
        &prefs.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    for (priority, category, title) in [
        ("medium", "shift", "Quiet one"),
        ("high", "marketing", "Muted one"),
        ("critical", "alarm", "Fire drill"),
    ] {
        let (status, json) = notify(
            &server,
            serde_json::json!({"to": to, "priority": priority, "category": category, "title": title}),
        )
        .await;
        assert_eq!(status, 200, "{json}");
        let held = if priority == "critical" { 0 } else { 1 };
        assert_eq!(json["held_back"], held, "{title}: {json}");
    }
    // The first live notification after the digest is the critical one.
    assert_eq!(next_notification(&mut pia).await.title, "Fire drill");

    // Retention (3 items) pruned one of the four: none is read yet, so the lowest priority,
    // oldest went first: the digest.
    let json = inbox_http(&server, "pia", &["editor"]).await;
    let titles: Vec<&str> = json["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), 3, "{titles:?}");
    assert!(!titles.contains(&"Daily digest"), "{titles:?}");
    assert_eq!(json["unread"]["total"], 3);

    // Mark the critical one read by HTTP; then a new low one arrives: the read item goes
    // first, although it is critical and the others are not.
    let critical_id = json["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["title"] == "Fire drill")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, json) = http(
        &server,
        "POST",
        "/api/inbox/read",
        &[("Authorization", &auth)],
        &serde_json::json!({"ids": [critical_id]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    let json = inbox_http(&server, "pia", &["editor"]).await;
    assert_eq!(json["unread"]["critical"], 0);
    assert_eq!(json["unread"]["total"], 2);
    let (status, _) = notify(
        &server,
        serde_json::json!({"to": to, "priority": "low", "category": "x", "title": "Newest"}),
    )
    .await;
    assert_eq!(status, 200);
    let json = inbox_http(&server, "pia", &["editor"]).await;
    let mut titles: Vec<&str> = json["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    titles.sort();
    assert_eq!(titles, vec!["Muted one", "Newest", "Quiet one"]);

    // Mark all read.
    let (status, _) = http(
        &server,
        "POST",
        "/api/inbox/read",
        &[("Authorization", &auth)],
        r#"{"all": true}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        inbox_http(&server, "pia", &["editor"]).await["unread"]["total"],
        0
    );
}

#[tokio::test]
async fn bad_notify_requests_get_their_status_and_code() {
    let server = start(Retention::default()).await;
    let good = serde_json::json!({"to": {"users": ["a"]}, "priority": "low", "category": "c", "title": "t"});
    let (status, json) = http(&server, "POST", "/api/notify", &[], &good.to_string()).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("Unauthorized"))
    );
    let editor = bearer("ed", &["editor"]);
    let (status, json) = http(
        &server,
        "POST",
        "/api/notify",
        &[("Authorization", &editor)],
        &good.to_string(),
    )
    .await;
    assert_eq!((status, json["error"].as_str()), (403, Some("Forbidden")));
    for (body, code) in [
        (
            serde_json::json!({"to": {"users": ["a"]}, "priority": "urgent", "category": "c", "title": "t"}),
            "BadRequest",
        ),
        (
            serde_json::json!({"to": {}, "priority": "low", "category": "c", "title": "t"}),
            "BadRequest",
        ),
        (
            serde_json::json!({"to": {"users": ["a"]}, "priority": "low", "category": "c", "title": ""}),
            "BadRequest",
        ),
        (
            serde_json::json!({"to": {"room": "nowhere"}, "priority": "low", "category": "c", "title": "t"}),
            "UnknownRoom",
        ),
        (
            serde_json::json!({"to": {"users": ["a"]}, "priority": "low", "category": "c", "title": "t", "body": "x".repeat(5000)}),
            "FieldTooLong",
        ),
        (
            serde_json::json!({"to": {"users": ["a"]}, "priority": "low", "category": "c", "title": "t", "extra": 1}),
            "BadRequest",
        ),
    ] {
        let (status, json) = notify(&server, body.clone()).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (422, Some(code)),
            "{body}"
        );
    }
    // Inbox endpoints need a valid token; bad bodies are 422.
    let (status, _) = http(&server, "GET", "/api/inbox", &[], "").await;
    assert_eq!(status, 401);
    let (status, json) = http(
        &server,
        "POST",
        "/api/inbox/read",
        &[("Authorization", &editor)],
        "{}",
    )
    .await;
    assert_eq!((status, json["error"].as_str()), (422, Some("BadRequest")));
    let (status, _) = http(
        &server,
        "PUT",
        "/api/inbox/preferences",
        &[("Authorization", &editor)],
        r#"{"quiet_hours": {"start_minute": 5000, "end_minute": 1, "utc_offset_minutes": 0}}"#,
    )
    .await;
    assert_eq!(status, 422);
}

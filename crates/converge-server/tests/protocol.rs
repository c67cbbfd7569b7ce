//! The protocol over real sockets: push/ack/fan-out, resume, refusals and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use converge_proto::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

const DOC: DocId = DocId::from_bytes([7; 16]);

#[tokio::test]
async fn push_is_acked_and_fanned_out_then_resume_has_no_gap() {
    let s = server().await;
    let url = s.handle.ws_url();
    let mut a = hello(&url, "alice").await;
    let mut b = hello(&url, "bob").await;
    assert_eq!(subscribe(&mut a, DOC, None).await.1, Seq(0));
    assert_eq!(subscribe(&mut b, DOC, None).await.1, Seq(0));

    let mut w = Writer::new(&[1; 16]);
    let c1 = w.put("x", 1);
    let c2 = w.put("x", 2);
    send(
        &mut a,
        &ClientMsg::Push {
            doc: DOC,
            changes: blobs(&[c1.clone(), c2.clone()]),
        },
    )
    .await;
    match recv(&mut a).await {
        ServerMsg::Ack {
            upto_seq,
            heads,
            new,
            ..
        } => {
            assert_eq!(upto_seq, Seq(2));
            assert_eq!(heads.len(), 2);
            assert_eq!(new, Some((Seq(1), Seq(2))));
        }
        other => panic!("{other:?}"),
    }
    match recv(&mut b).await {
        ServerMsg::Changes {
            from_seq, changes, ..
        } => {
            assert_eq!(from_seq, Seq(1));
            assert_eq!(changes, blobs(&[c1.clone(), c2.clone()]));
        }
        other => panic!("{other:?}"),
    }
    // The same push again is acknowledged and writes nothing.
    send(
        &mut a,
        &ClientMsg::Push {
            doc: DOC,
            changes: blobs(std::slice::from_ref(&c1)),
        },
    )
    .await;
    match recv(&mut a).await {
        ServerMsg::Ack { new, upto_seq, .. } => assert_eq!((new, upto_seq), (None, Seq(1))),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.handle.log().head(&DOC).unwrap().last_seq, Seq(2));

    // A third client resumes after seq 1 and gets exactly seq 2.
    let mut c = hello(&url, "carol").await;
    let epoch = s.handle.log().head(&DOC).unwrap().epoch;
    let (got, live) = subscribe(&mut c, DOC, Some(Position { epoch, seq: Seq(1) })).await;
    assert_eq!((got, live), (vec![c2], Seq(2)));
    s.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn push_refusals_have_codes_and_log_nothing() {
    let s = server().await;
    let url = s.handle.ws_url();
    let mut a = hello(&url, "alice").await;
    subscribe(&mut a, DOC, None).await;
    let mut w = Writer::new(&[1; 16]);
    let first = w.put("k", 1);
    send(
        &mut a,
        &ClientMsg::Push {
            doc: DOC,
            changes: blobs(&[first]),
        },
    )
    .await;
    assert!(matches!(recv(&mut a).await, ServerMsg::Ack { .. }));
    let before = s.handle.log().head(&DOC).unwrap();

    let mut mallory = hello(&url, "mallory").await;
    subscribe(&mut mallory, DOC, None).await.0.len();
    let expect = async |ws: &mut Ws, changes: Vec<Vec<u8>>, code: ErrorCode| {
        send(
            ws,
            &ClientMsg::Push {
                doc: DOC,
                changes: blobs(&changes),
            },
        )
        .await;
        match recv(ws).await {
            ServerMsg::Error { code: got, doc, .. } => {
                assert_eq!(got, code);
                assert_eq!(doc, Some(DOC));
            }
            other => panic!("expected {code:?}, got {other:?}"),
        }
    };
    // An actor bound to another user.
    let next = w.put("k", 2);
    expect(
        &mut mallory,
        vec![next.clone()],
        ErrorCode::ActorOwnedByOther,
    )
    .await;
    // A skipped per-actor seq.
    let skipped = w.put("k", 3);
    expect(&mut a, vec![skipped], ErrorCode::SeqGap).await;
    // An unknown dependency: bob merges alice's unpushed change and writes a new key.
    let mut b = Writer::new(&[2; 16]);
    b.doc.merge(&mut w.doc).unwrap();
    let dependent = b.put("fresh", 1);
    expect(&mut mallory, vec![dependent], ErrorCode::MissingDependency).await;
    // An actor the document does not know.
    let mut c = Writer::new(&[3; 16]);
    c.put("z", 1);
    let mut d = Writer::new(&[4; 16]);
    d.doc.merge(&mut c.doc).unwrap();
    let unknown = d.put("z", 2);
    expect(&mut mallory, vec![unknown], ErrorCode::UnknownActor).await;
    // Truncated change bytes.
    let mut e = Writer::new(&[5; 16]);
    let mut truncated = e.put("t", 1);
    truncated.truncate(truncated.len() / 2);
    expect(&mut mallory, vec![truncated], ErrorCode::MalformedChange).await;
    // Too large.
    expect(
        &mut mallory,
        vec![vec![0; limits::MAX_CHANGE_BYTES + 1]],
        ErrorCode::ChangeTooLarge,
    )
    .await;
    // A document not subscribed.
    send(
        &mut mallory,
        &ClientMsg::Push {
            doc: DocId::from_bytes([9; 16]),
            changes: blobs(&[next]),
        },
    )
    .await;
    assert!(matches!(
        recv(&mut mallory).await,
        ServerMsg::Error {
            code: ErrorCode::NotSubscribed,
            ..
        }
    ));

    assert_eq!(s.handle.log().head(&DOC).unwrap(), before);
    assert_eq!(
        s.handle.log().docs().unwrap(),
        vec![DOC],
        "no stream was created"
    );
    // Both connections are still served.
    send(&mut mallory, &ClientMsg::Ping { nonce: 5 }).await;
    assert!(matches!(
        recv(&mut mallory).await,
        ServerMsg::Pong { nonce: 5, .. }
    ));
    s.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_its_code_and_others_keep_being_served() {
    let s = server().await;
    let url = s.handle.ws_url();
    let mut bystander = hello(&url, "bystander").await;
    subscribe(&mut bystander, DOC, None).await;

    let cases: Vec<(&str, Vec<Message>, Option<ErrorCode>, CloseCode)> = vec![
        (
            "garbage",
            vec![Message::Binary(vec![1, 0xff, 0xfe, 3].into())],
            Some(ErrorCode::BadFrame),
            CloseCode::ProtocolViolation,
        ),
        (
            "unknown version",
            vec![Message::Binary(vec![9, 0, 0].into())],
            Some(ErrorCode::UnsupportedFrameVersion),
            CloseCode::ProtocolViolation,
        ),
        (
            "text frame",
            vec![Message::Text("hello".into())],
            Some(ErrorCode::TextFrame),
            CloseCode::ProtocolViolation,
        ),
        (
            "oversize",
            vec![Message::Binary(
                vec![FRAME_VERSION; DEFAULT_MAX_FRAME_BYTES + 1].into(),
            )],
            Some(ErrorCode::FrameTooLarge),
            CloseCode::FrameTooLarge,
        ),
        (
            "far oversize",
            vec![Message::Binary(
                vec![FRAME_VERSION; 3 * DEFAULT_MAX_FRAME_BYTES].into(),
            )],
            Some(ErrorCode::FrameTooLarge),
            CloseCode::FrameTooLarge,
        ),
        (
            "before hello",
            vec![Message::Binary(
                encode_client(&ClientMsg::Ping { nonce: 1 }).unwrap().into(),
            )],
            Some(ErrorCode::HelloRequired),
            CloseCode::ProtocolViolation,
        ),
        (
            "bad protocol",
            vec![Message::Binary(
                encode_client(&ClientMsg::Hello {
                    protocol: 99,
                    client_id: ClientId::random(),
                    token: None,
                })
                .unwrap()
                .into(),
            )],
            Some(ErrorCode::UnsupportedProtocol),
            CloseCode::UnsupportedProtocol,
        ),
    ];
    for (name, frames, error, close) in cases {
        let mut ws = connect(&url).await;
        for f in frames {
            ws.send(f).await.unwrap();
        }
        let (errors, frame) = until_close(&mut ws).await;
        if name == "far oversize" {
            // The transport stops reading mid-frame; its close frame may be lost to the TCP
            // reset that the unread bytes cause. Either way the connection ends.
            if let Some(f) = frame {
                assert_eq!(u16::from(f.code), close.code(), "{name}");
            }
            continue;
        }
        if let Some(code) = error {
            assert_eq!(errors, vec![code], "{name}");
        }
        assert_eq!(
            frame.map(|f| u16::from(f.code)),
            Some(close.code()),
            "{name}"
        );
    }
    // A second Hello.
    let mut ws = hello(&url, "twice").await;
    send(
        &mut ws,
        &ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            client_id: ClientId::random(),
            token: None,
        },
    )
    .await;
    let (errors, frame) = until_close(&mut ws).await;
    assert_eq!(errors, vec![ErrorCode::DuplicateHello]);
    assert_eq!(
        frame.map(|f| u16::from(f.code)),
        Some(CloseCode::ProtocolViolation.code())
    );

    assert!(
        s.handle.log().docs().unwrap().is_empty(),
        "nothing persisted"
    );
    send(&mut bystander, &ClientMsg::Ping { nonce: 1 }).await;
    assert!(matches!(
        recv(&mut bystander).await,
        ServerMsg::Pong { nonce: 1, .. }
    ));
    s.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sessions_with_a_code() {
    let s = server().await;
    let mut a = hello(&s.handle.ws_url(), "alice").await;
    let stop = tokio::spawn(s.handle.shutdown());
    let (_, frame) = until_close(&mut a).await;
    assert_eq!(
        frame.map(|f| u16::from(f.code)),
        Some(CloseCode::ServerShutdown.code())
    );
    stop.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_dropped_and_the_others_keep_going() {
    const SECRET: &[u8] = b"slow-consumer-test-secret-32-bytes!!";
    // This test pushes fast from one connection: only the outbox may stop it.
    let s = jwt_server(SECRET, |c| {
        c.hub.messages_per_sec = 1_000_000;
        c.hub.message_burst = 1_000_000;
    })
    .await;
    let url = s.handle.ws_url();
    let token = |user: &str| jwt_token(SECRET, user, &["editor"]);
    let admin = format!("Bearer {}", jwt_token(SECRET, "ops", &["admin"]));
    let mut reader = hello_with(&url, token("reader")).await;
    subscribe(&mut reader, DOC, None).await;
    let mut writer = hello_with(&url, token("writer")).await;
    subscribe(&mut writer, DOC, None).await;
    // Connections whose task still runs (the gauge drops when a connection's task ends,
    // not when the hub forgets its session).
    let open_connections = || async {
        let (status, text) =
            http_raw(&s, "GET", "/metrics", &[("Authorization", &admin)], "").await;
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("converge_connections "))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap()
    };
    assert_eq!(open_connections().await, 2.0);

    // The reader reads nothing from here on. Enough bytes to fill the socket buffers between
    // it and the server (loopback autotuning allows ~10 MB), then more frames than its
    // outbox holds (1,024): the server's write to it stays pending, and the server must drop
    // it anyway rather than hold it (and up to 1,024 frames) forever.
    let mut doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(vec![9u8; 16]));
    let big = "x".repeat(64 * 1024);
    for i in 0..(300 + 1500) {
        let value = if i < 300 {
            format!("{big}{i}")
        } else {
            i.to_string()
        };
        put_and_push(&mut writer, &mut doc, value).await;
    }
    // Dropped while it still reads nothing: its connection's task ends (after at most a
    // second trying to send the close frame). Only the metric shows it, so it is polled.
    let deadline = tokio::time::Instant::now() + WAIT;
    while open_connections().await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent reader's connection is still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Its socket gives what it held, then ends: a close with the code, or a reset when not
    // even the close frame fit.
    let (_, close) = until_close(&mut reader).await;
    if let Some(c) = close {
        assert_eq!(u16::from(c.code), CloseCode::SlowConsumer.code());
    }
    // The writer is still served.
    put_and_push(&mut writer, &mut doc, "after".into()).await;
    s.handle.shutdown().await.unwrap();
}

/// Automerge clients other than ours (automerge-repo, the JS package) send `Change::bytes()`,
/// which deflates a change over 256 bytes (chunk type 2): the server takes it like a raw one,
/// and every subscriber can apply what it fans out.
#[tokio::test]
async fn compressed_changes_are_taken_and_fanned_out() {
    use automerge::ReadDoc;
    use automerge::transaction::Transactable;
    let s = server().await;
    let url = s.handle.ws_url();
    let mut a = hello(&url, "alice").await;
    let mut b = hello(&url, "bob").await;
    subscribe(&mut a, DOC, None).await;
    subscribe(&mut b, DOC, None).await;
    let mut doc = automerge::AutoCommit::new();
    doc.put(automerge::ROOT, "note", "a long note ".repeat(50))
        .unwrap();
    let mut change = doc.get_last_local_change().unwrap().clone();
    let compressed = change.bytes().to_vec();
    assert_eq!(compressed.get(8), Some(&2), "not a compressed chunk");
    doc.put(automerge::ROOT, "k", 1).unwrap();
    let raw = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    send(
        &mut a,
        &ClientMsg::Push {
            doc: DOC,
            changes: blobs(&[compressed, raw]),
        },
    )
    .await;
    match recv(&mut a).await {
        ServerMsg::Ack { new, .. } => assert_eq!(new, Some((Seq(1), Seq(2)))),
        other => panic!("expected an Ack, got {other:?}"),
    }
    let ServerMsg::Changes { changes, .. } = recv(&mut b).await else {
        panic!("no fan-out")
    };
    let mut replica = automerge::AutoCommit::new();
    for c in changes {
        replica
            .apply_changes([automerge::Change::from_bytes(c.0).unwrap()])
            .unwrap();
    }
    assert_eq!(replica.get_heads(), doc.get_heads());
    assert_eq!(
        replica
            .get(automerge::ROOT, "note")
            .unwrap()
            .map(|(v, _)| v.to_string()),
        doc.get(automerge::ROOT, "note")
            .unwrap()
            .map(|(v, _)| v.to_string())
    );
    s.handle.shutdown().await.unwrap();
}

/// Writes `value` at key "k", pushes the change and waits for its Ack.
async fn put_and_push(ws: &mut Ws, doc: &mut automerge::AutoCommit, value: String) {
    use automerge::transaction::Transactable;
    doc.put(automerge::ROOT, "k", value).unwrap();
    let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    send(
        ws,
        &ClientMsg::Push {
            doc: DOC,
            changes: blobs(&[change]),
        },
    )
    .await;
    match recv(ws).await {
        ServerMsg::Ack { .. } => {}
        other => panic!("expected an Ack, got {other:?}"),
    }
}

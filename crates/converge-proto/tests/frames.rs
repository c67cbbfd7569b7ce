//! Property tests for the frame codec: every message round-trips, and no byte string makes
//! decoding panic or exceed its limit.

use converge_proto::*;
use proptest::prelude::*;

fn blob() -> impl Strategy<Value = Blob> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Blob)
}

fn doc() -> impl Strategy<Value = DocId> {
    any::<[u8; 16]>().prop_map(DocId::from_bytes)
}

fn position() -> impl Strategy<Value = Option<Position>> {
    proptest::option::of((any::<u64>(), any::<u64>()).prop_map(|(e, s)| Position {
        epoch: Epoch(e),
        seq: Seq(s),
    }))
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        (
            any::<u16>(),
            any::<[u8; 16]>(),
            proptest::option::of("[a-z.]{0,40}")
        )
            .prop_map(|(protocol, c, token)| ClientMsg::Hello {
                protocol,
                client_id: ClientId::from_bytes(c),
                token
            }),
        (doc(), position()).prop_map(|(doc, after)| ClientMsg::Subscribe { doc, after }),
        doc().prop_map(|doc| ClientMsg::Unsubscribe { doc }),
        (doc(), proptest::collection::vec(blob(), 0..8))
            .prop_map(|(doc, changes)| ClientMsg::Push { doc, changes }),
        (
            doc(),
            any::<u64>(),
            "[a-z]{0,20}",
            blob(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(doc, m, name, args, fence)| ClientMsg::Mutate {
                doc,
                mutation_id: MutationId(m),
                name,
                args,
                fence: fence.map(FencingToken)
            }),
        (doc(), "[a-z:0-9]{0,20}", any::<u64>()).prop_map(|(doc, key, ttl_ms)| ClientMsg::Lock {
            doc,
            key,
            ttl_ms
        }),
        (doc(), blob()).prop_map(|(doc, state)| ClientMsg::Presence { doc, state }),
        any::<u64>().prop_map(|nonce| ClientMsg::Ping { nonce }),
        (doc(), blob()).prop_map(|(doc, bytes)| ClientMsg::SyncMsg { doc, bytes }),
    ]
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        (
            doc(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(blob(), 0..8)
        )
            .prop_map(|(doc, e, s, changes)| ServerMsg::Changes {
                doc,
                epoch: Epoch(e),
                from_seq: Seq(s),
                changes
            }),
        (
            doc(),
            any::<u64>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..4)
        )
            .prop_map(|(doc, s, h)| ServerMsg::Ack {
                doc,
                upto_seq: Seq(s),
                heads: h.into_iter().map(ChangeHash).collect(),
                new: Some((Seq(1), Seq(s))),
            }),
        (doc(), any::<u64>(), blob(), any::<bool>()).prop_map(|(doc, s, bytes, reconcile)| {
            ServerMsg::Snapshot {
                doc,
                epoch: Epoch(1),
                seq: Seq(s),
                bytes,
                reconcile,
            }
        }),
        (
            prop::sample::select(ErrorCode::ALL),
            "[ -~]{0,40}",
            proptest::option::of(doc())
        )
            .prop_map(|(code, message, doc)| ServerMsg::Error { code, message, doc }),
    ]
}

proptest! {
    #[test]
    fn client_messages_round_trip(msg in client_msg()) {
        let frame = encode_client(&msg).unwrap();
        prop_assert_eq!(frame[0], FRAME_VERSION);
        prop_assert_eq!(decode_client(&frame, DEFAULT_MAX_FRAME_BYTES).unwrap(), msg);
    }

    #[test]
    fn server_messages_round_trip(msg in server_msg()) {
        let frame = encode_server(&msg).unwrap();
        prop_assert_eq!(decode_server(&frame, DEFAULT_MAX_SERVER_FRAME_BYTES).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_client(&bytes, DEFAULT_MAX_FRAME_BYTES);
        let _ = decode_server(&bytes, DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn truncated_frames_are_errors(msg in client_msg(), cut in any::<prop::sample::Index>()) {
        let frame = encode_client(&msg).unwrap();
        let at = cut.index(frame.len());
        prop_assert!(decode_client(&frame[..at], DEFAULT_MAX_FRAME_BYTES).is_err());
    }
}

#[test]
fn limit_is_checked_before_decoding() {
    let frame = vec![FRAME_VERSION; 100];
    assert_eq!(
        decode_client(&frame, 99),
        Err(FrameError::TooLarge {
            size: 100,
            limit: 99
        })
    );
}

#[test]
fn unknown_version_and_trailing_bytes_are_refused() {
    let mut frame = encode_client(&ClientMsg::Ping { nonce: 1 }).unwrap();
    frame.push(0);
    assert_eq!(
        decode_client(&frame, 1024),
        Err(FrameError::TrailingBytes(1))
    );
    frame.pop();
    frame[0] = 9;
    assert_eq!(
        decode_client(&frame, 1024),
        Err(FrameError::UnsupportedVersion(9))
    );
    assert_eq!(decode_client(&[], 1024), Err(FrameError::Empty));
}

#[test]
fn a_huge_claimed_length_does_not_allocate_it() {
    // Push { doc, changes: [len = 2^40 ...] }: the length prefix claims far more than the frame.
    let mut frame = encode_client(&ClientMsg::Push {
        doc: DocId::from_bytes([1; 16]),
        changes: vec![Blob(vec![1])],
    })
    .unwrap();
    let n = frame.len();
    frame.truncate(n - 2);
    frame.extend_from_slice(&[0xFD, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert!(decode_client(&frame, 1024).is_err());
}

/// The frame-kind peek (metrics) names every message as `kind()` does: one of each variant.
#[test]
fn frame_kinds_match_every_variant() {
    use converge_proto::{
        ClientId, FencingToken, Limits, LockOutcome, MutationId, MutationOutcome, NotificationMsg,
        Peer, SessionId, UserId, client_frame_kind, server_frame_kind,
    };
    let doc = DocId::random();
    let b = || Blob(vec![1, 2, 3]);
    let peer = Peer {
        session: SessionId(1),
        user: UserId::new("ana").unwrap(),
    };
    let client = [
        ClientMsg::Hello {
            protocol: 1,
            client_id: ClientId::random(),
            token: None,
        },
        ClientMsg::Subscribe { doc, after: None },
        ClientMsg::Unsubscribe { doc },
        ClientMsg::Push {
            doc,
            changes: vec![b()],
        },
        ClientMsg::Mutate {
            doc,
            mutation_id: MutationId(1),
            name: "m".into(),
            args: b(),
            fence: None,
        },
        ClientMsg::Lock {
            doc,
            key: "k".into(),
            ttl_ms: 1000,
        },
        ClientMsg::RenewLock {
            doc,
            key: "k".into(),
            token: FencingToken(1),
            ttl_ms: 1000,
        },
        ClientMsg::Unlock {
            doc,
            key: "k".into(),
            token: FencingToken(1),
        },
        ClientMsg::Presence { doc, state: b() },
        ClientMsg::Publish {
            room: "user:ana".into(),
            event: "e".into(),
            data: b(),
        },
        ClientMsg::Reauth { token: "t".into() },
        ClientMsg::Ping { nonce: 1 },
        ClientMsg::SyncMsg { doc, bytes: b() },
    ];
    assert_eq!(client.len(), ClientMsg::KINDS.len());
    for m in &client {
        let frame = encode_client(m).unwrap();
        assert_eq!(client_frame_kind(&frame), Some(m.kind()), "{m:?}");
    }
    let server = [
        ServerMsg::Welcome {
            session: SessionId(1),
            user: peer.user.clone(),
            roles: vec![],
            server_time_ms: 1,
            heartbeat_ms: 1,
            limits: Limits {
                max_frame_bytes: 1,
                max_server_frame_bytes: 1,
                max_change_bytes: 1,
                max_push_changes: 1,
                max_docs: 1,
            },
        },
        ServerMsg::Snapshot {
            doc,
            epoch: Epoch(1),
            seq: Seq(1),
            bytes: b(),
            reconcile: false,
        },
        ServerMsg::Changes {
            doc,
            epoch: Epoch(1),
            from_seq: Seq(1),
            changes: vec![b()],
        },
        ServerMsg::Live {
            doc,
            epoch: Epoch(1),
            seq: Seq(1),
        },
        ServerMsg::Ack {
            doc,
            upto_seq: Seq(1),
            heads: vec![],
            new: None,
        },
        ServerMsg::MutationResult {
            doc,
            mutation_id: MutationId(1),
            outcome: MutationOutcome::Applied { seq: Seq(1) },
        },
        ServerMsg::LockResult {
            doc,
            key: "k".into(),
            outcome: LockOutcome::Released,
        },
        ServerMsg::LockState {
            doc,
            key: "k".into(),
            holder: None,
            token: None,
            expires_at_ms: None,
        },
        ServerMsg::Presence {
            doc,
            peer: peer.clone(),
            state: None,
        },
        ServerMsg::Event {
            room: "user:ana".into(),
            event: "e".into(),
            data: b(),
            from: Some(peer),
        },
        ServerMsg::Notification(NotificationMsg {
            id: "n".into(),
            priority: "low".into(),
            category: "c".into(),
            title: "t".into(),
            body: "b".into(),
            data: b(),
            created_at_ms: 1,
        }),
        ServerMsg::Error {
            code: ErrorCode::Internal,
            message: "m".into(),
            doc: None,
        },
        ServerMsg::Pong {
            nonce: 1,
            server_time_ms: 1,
        },
        ServerMsg::SyncMsg { doc, bytes: b() },
        ServerMsg::Reconciled { doc },
    ];
    assert_eq!(server.len(), ServerMsg::KINDS.len());
    for m in &server {
        let frame = encode_server(m).unwrap();
        assert_eq!(server_frame_kind(&frame), Some(m.kind()), "{m:?}");
    }
    assert_eq!(server_frame_kind(&[]), None);
    assert_eq!(server_frame_kind(&[FRAME_VERSION, 200]), None);
}

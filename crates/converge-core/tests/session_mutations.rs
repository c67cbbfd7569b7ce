//! The client session's mutation queue: window, results, and the Forbidden rewind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use converge_core::{ClientSession, MUTATION_WINDOW, QueuedMutation, SessionConfig};
use converge_proto::*;

const DOC: DocId = DocId::from_bytes([9; 16]);

fn online() -> ClientSession {
    let mut s = ClientSession::new(
        ClientId::from_bytes([1; 16]),
        None,
        SessionConfig::default(),
    );
    s.open(DOC, None, Vec::new());
    s.connected();
    s.handle(
        ServerMsg::Welcome {
            session: SessionId(1),
            user: UserId::new("u").unwrap(),
            roles: vec![],
            server_time_ms: 0,
            heartbeat_ms: 25_000,
            limits: converge_core::HubConfig::default().limits,
        },
        0,
    );
    s.handle(
        ServerMsg::Live {
            doc: DOC,
            epoch: Epoch(1),
            seq: Seq(0),
        },
        0,
    );
    while s.poll_send().is_some() {}
    while s.poll_event().is_some() {}
    s
}

fn queue(s: &mut ClientSession, n: usize) {
    for _ in 0..n {
        let id = s.next_mutation_id(&DOC);
        assert!(s.add_mutation(
            DOC,
            QueuedMutation {
                id,
                name: "m".into(),
                args: vec![],
                fence: None,
            }
        ));
    }
}

fn sent(s: &mut ClientSession) -> Vec<u64> {
    std::iter::from_fn(|| s.poll_send())
        .filter_map(|m| match m {
            ClientMsg::Mutate { mutation_id, .. } => Some(mutation_id.get()),
            _ => None,
        })
        .collect()
}

#[test]
fn mutations_go_out_in_id_order_within_the_window() {
    let mut s = online();
    queue(&mut s, MUTATION_WINDOW + 5);
    assert_eq!(
        sent(&mut s),
        (1..=MUTATION_WINDOW as u64).collect::<Vec<_>>()
    );
    s.handle(
        ServerMsg::MutationResult {
            doc: DOC,
            mutation_id: MutationId(1),
            outcome: MutationOutcome::Applied { seq: Seq(2) },
        },
        0,
    );
    assert_eq!(sent(&mut s), vec![MUTATION_WINDOW as u64 + 1]);
}

#[test]
fn a_forbidden_mutation_is_an_ordinary_rejection_and_ids_are_never_reused() {
    let mut s = online();
    queue(&mut s, 3);
    sent(&mut s);
    s.handle(
        ServerMsg::MutationResult {
            doc: DOC,
            mutation_id: MutationId(2),
            outcome: MutationOutcome::Rejected {
                code: ErrorCode::Forbidden,
                message: "no".into(),
            },
        },
        0,
    );
    let ids: Vec<u64> = s
        .pending_mutations(&DOC)
        .iter()
        .map(|m| m.id.get())
        .collect();
    assert_eq!(ids, vec![1, 3]);
    assert_eq!(s.next_mutation_id(&DOC), MutationId(4));
}

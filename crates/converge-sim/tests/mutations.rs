//! Mutations in the simulation: the server decides, offline queues replay exactly once and in
//! order, optimistic views roll back when the server refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use converge_core::{Ctx, Mutator, Mutators, Rejection};
use converge_log::{EntryKind, EventLog, MutationOutcome as LoggedOutcome};
use converge_proto::{ErrorCode, MutationId, MutationOutcome, Seq, encode_args};
use converge_schema::{BookEvent, Schedule};
use converge_sim::{DOC, Sim, SimConfig};

const STEPS: usize = 400_000;

/// Appends its argument to the list `items` (created on first use).
struct Push;
impl Mutator for Push {
    const NAME: &'static str = "list.push";
    type Args = u64;
    fn apply(doc: &mut AutoCommit, n: u64, _ctx: &Ctx) -> Result<(), Rejection> {
        let list = match doc.get(ROOT, "items").map_err(Rejection::from_automerge)? {
            Some((automerge::Value::Object(ObjType::List), id)) => id,
            _ => doc
                .put_object(ROOT, "items", ObjType::List)
                .map_err(Rejection::from_automerge)?,
        };
        let len = doc.length(&list);
        doc.insert(&list, len, n).map_err(Rejection::from_automerge)
    }
}

fn mutators() -> Mutators {
    let mut m = Mutators::new();
    converge_schema::register_all(&mut m);
    m.register::<Push>();
    m
}

fn sim(seed: u64, clients: usize, drop_chance: f64) -> Sim {
    Sim::new(SimConfig {
        seed,
        clients,
        max_delay_ms: 20,
        drop_chance,
        mutators: mutators(),
    })
    .unwrap()
}

fn items(doc: &AutoCommit) -> Vec<u64> {
    let Some((_, list)) = doc.get(ROOT, "items").unwrap() else {
        return Vec::new();
    };
    (0..doc.length(&list))
        .map(|i| match doc.get(&list, i).unwrap() {
            Some((automerge::Value::Scalar(s), _)) => match s.as_ref() {
                automerge::ScalarValue::Uint(n) => *n,
                automerge::ScalarValue::Int(n) => *n as u64,
                other => panic!("not a number: {other:?}"),
            },
            other => panic!("not a scalar: {other:?}"),
        })
        .collect()
}

fn booking(id: &str, by: &str) -> Vec<u8> {
    encode_args(&BookEvent {
        id: id.into(),
        title: format!("night shift ({by})"),
        resource: "bed-1".into(),
        start: 0,
        end: 3_600_000,
        attendees: vec![by.into()],
    })
    .unwrap()
}

fn events(doc: &AutoCommit) -> Vec<String> {
    let s: Schedule = converge_schema::read(doc).unwrap();
    s.events.keys().cloned().collect()
}

/// The Mutation entries of the server's log, in log order: (mutation id, applied).
fn logged_mutations(s: &Sim) -> Vec<(u64, bool)> {
    let log = s.log();
    let head = log.head(&DOC).unwrap();
    let mut out = Vec::new();
    let mut next = Seq(1);
    while next <= head.last_seq {
        let page = log.read(&DOC, next, 1024).unwrap();
        let Some(last) = page.last() else { break };
        next = last.seq.next();
        for e in page {
            if let EntryKind::Mutation(m) = e.kind {
                out.push((m.mutation_id.get(), m.outcome == LoggedOutcome::Applied));
            }
        }
    }
    out
}

#[test]
fn two_offline_clients_book_the_same_slot_one_wins_the_other_rolls_back() {
    let mut s = sim(11, 2, 0.0);
    // A schedule both clients hold before going offline.
    s.edit(0, |d| {
        converge_schema::create(d, &Schedule::new("Ward 3", "Europe/Paris")).unwrap();
        Ok(())
    })
    .unwrap();
    s.run_until_quiescent(STEPS).unwrap();
    s.set_online(0, false);
    s.set_online(1, false);

    s.mutate(0, BookEvent::NAME, booking("ana-shift", "ana"));
    s.mutate(1, BookEvent::NAME, booking("ben-shift", "ben"));
    // Both optimistic views show their own booking while offline.
    assert_eq!(events(&s.view(0)), vec!["ana-shift".to_string()]);
    assert_eq!(events(&s.view(1)), vec!["ben-shift".to_string()]);

    s.set_online(0, true);
    s.set_online(1, true);
    s.run_until_quiescent(STEPS).unwrap();
    let json = s.assert_converged().unwrap();

    let outcomes: Vec<&MutationOutcome> = (0..2).map(|i| &s.results(i)[0].1).collect();
    let applied = outcomes
        .iter()
        .filter(|o| matches!(o, MutationOutcome::Applied { .. }))
        .count();
    assert_eq!(applied, 1, "exactly one booking wins: {outcomes:?}");
    let loser = outcomes
        .iter()
        .position(|o| matches!(o, MutationOutcome::Rejected { .. }))
        .unwrap();
    match outcomes[loser] {
        MutationOutcome::Rejected { code, .. } => assert_eq!(*code, ErrorCode::MutationRejected),
        other => panic!("{other:?}"),
    }
    // The loser's view rolled back to the winner's booking; both views show the same.
    let winner_event = if loser == 0 { "ben-shift" } else { "ana-shift" };
    for i in 0..2 {
        assert_eq!(events(&s.view(i)), vec![winner_event.to_string()]);
        assert_eq!(s.pending_mutations(i), 0);
    }
    assert_eq!(json["events"].as_object().unwrap().len(), 1);
}

#[test]
fn a_thousand_offline_mutations_replay_exactly_once_in_order() {
    let mut s = sim(12, 1, 0.0);
    s.set_online(0, false);
    for n in 0..1000u64 {
        s.mutate(0, Push::NAME, encode_args(&n).unwrap());
    }
    // The optimistic view already shows all of them.
    assert_eq!(items(&s.view(0)), (0..1000).collect::<Vec<_>>());
    s.set_online(0, true);
    s.run_until_quiescent(STEPS).unwrap();
    s.assert_converged().unwrap();
    check_thousand(&s);
}

#[test]
fn replay_survives_connection_drops_mid_way() {
    let mut s = sim(13, 1, 0.02);
    s.set_online(0, false);
    for n in 0..1000u64 {
        s.mutate(0, Push::NAME, encode_args(&n).unwrap());
    }
    s.set_online(0, true);
    s.run_until_quiescent(STEPS).unwrap();
    s.assert_converged().unwrap();
    check_thousand(&s);
}

#[test]
fn replay_survives_client_restarts_mid_way() {
    let mut s = sim(14, 1, 0.0);
    s.set_online(0, false);
    for n in 0..1000u64 {
        s.mutate(0, Push::NAME, encode_args(&n).unwrap());
    }
    s.set_online(0, true);
    // Restart the client process three times while the queue drains.
    for _ in 0..3 {
        s.run(300);
        s.restart_client(0).unwrap();
        assert!(
            s.pending_mutations(0) > 0,
            "the restart came before the end"
        );
    }
    s.run_until_quiescent(STEPS).unwrap();
    s.assert_converged().unwrap();
    check_thousand(&s);
}

/// Every mutation ran once, in id order, and was Applied; the app heard each result once.
fn check_thousand(s: &Sim) {
    let logged = logged_mutations(s);
    let ids: Vec<u64> = logged.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
    assert!(logged.iter().all(|(_, applied)| *applied));
    let mut heard: Vec<MutationId> = s.results(0).iter().map(|(id, _)| *id).collect();
    heard.sort();
    heard.dedup();
    assert_eq!(heard.len(), 1000);
    assert!(
        s.results(0)
            .iter()
            .all(|(_, o)| matches!(o, MutationOutcome::Applied { .. }))
    );
    assert_eq!(s.pending_mutations(0), 0);
}

#[test]
fn an_unknown_mutator_is_rejected_and_the_queue_moves_on() {
    let mut s = sim(15, 1, 0.0);
    s.mutate(0, "no.such", Vec::new());
    s.mutate(0, Push::NAME, encode_args(&7u64).unwrap());
    s.run_until_quiescent(STEPS).unwrap();
    s.assert_converged().unwrap();
    match &s.results(0)[0].1 {
        MutationOutcome::Rejected { code, .. } => assert_eq!(*code, ErrorCode::UnknownMutator),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.results(0)[1].1, MutationOutcome::Applied { .. }));
    assert_eq!(items(&s.view(0)), vec![7]);
}

#[test]
fn a_gap_in_a_clients_ids_is_refused_and_nothing_is_recorded() {
    let mut s = sim(16, 1, 0.0);
    s.set_online(0, false);
    for n in 0..3u64 {
        s.mutate(0, Push::NAME, encode_args(&n).unwrap());
    }
    // The client's store lost mutation 1: after a restart it sends 2 and 3 only.
    s.lose_first_stored_mutation(0);
    s.restart_client(0).unwrap();
    s.set_online(0, true);
    s.run(3_000);
    let gaps = s
        .errors(0)
        .iter()
        .filter(|(code, _)| *code == ErrorCode::MutationGap)
        .count();
    assert!(gaps >= 1, "the server refused the gap: {:?}", s.errors(0));
    assert!(s.results(0).is_empty(), "no outcome for a refused id");
    assert!(logged_mutations(&s).is_empty(), "nothing was recorded");
    assert_eq!(s.pending_mutations(0), 2, "the queue is kept, not dropped");
}

#[test]
fn duplicates_sent_after_lost_results_are_answered_from_the_record() {
    // Results are lost with the connection, again and again: every resend of a processed
    // id is a duplicate, answered with the recorded outcome and never run twice.
    let mut s = sim(17, 1, 0.05);
    for n in 0..200u64 {
        s.mutate(0, Push::NAME, encode_args(&n).unwrap());
        if n % 50 == 49 {
            s.run(50);
        }
    }
    s.run_until_quiescent(STEPS).unwrap();
    s.assert_converged().unwrap();
    let logged: Vec<u64> = logged_mutations(&s).iter().map(|(id, _)| *id).collect();
    assert_eq!(logged, (1..=200).collect::<Vec<_>>());
    assert_eq!(items(&s.view(0)), (0..200).collect::<Vec<_>>());
}

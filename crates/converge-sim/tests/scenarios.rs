//! Simulation scenarios: every one ends with identical heads and JSON on every replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use converge_log::EventLog;
use converge_sim::{Sim, SimConfig};
use proptest::prelude::*;

const STEPS: usize = 200_000;

fn put(sim: &mut Sim, i: usize, key: &str, value: i64) {
    sim.edit(i, |d| d.put(ROOT, key, value).map(|_| ()))
        .unwrap();
}

/// Appends to a shared list (created by whoever gets there first; concurrent creations are
/// both kept by automerge as a conflict, which must converge too).
fn append(sim: &mut Sim, i: usize, value: i64) {
    sim.edit(i, |d| {
        let list = match d.get(ROOT, "items")? {
            Some((automerge::Value::Object(ObjType::List), id)) => id,
            _ => d.put_object(ROOT, "items", ObjType::List)?,
        };
        let n = d.length(&list);
        d.insert(&list, n, value)
    })
    .unwrap();
}

fn sim(seed: u64, clients: usize, drop_chance: f64) -> Sim {
    Sim::new(SimConfig {
        seed,
        clients,
        max_delay_ms: 20,
        drop_chance,
    })
    .unwrap()
}

#[test]
fn two_clients_editing_concurrently_converge() {
    let mut s = sim(1, 2, 0.0);
    for n in 0..20 {
        put(&mut s, 0, "a", n);
        append(&mut s, 1, n);
        s.run(5);
    }
    s.run_until_quiescent(STEPS).unwrap();
    let json = s.assert_converged().unwrap();
    assert_eq!(json["a"], 19);
}

#[test]
fn ten_clients_editing_concurrently_converge() {
    let mut s = sim(2, 10, 0.0);
    for n in 0..10 {
        for i in 0..10 {
            put(&mut s, i, &format!("k{}", (i + n as usize) % 4), n);
            append(&mut s, i, n);
        }
        s.run(20);
    }
    s.run_until_quiescent(STEPS).unwrap();
    s.assert_converged().unwrap();
}

#[test]
fn a_client_offline_for_1000_changes_delivers_them_all() {
    let mut s = sim(3, 2, 0.0);
    put(&mut s, 0, "start", 1);
    s.run_until_quiescent(STEPS).unwrap();
    s.set_online(1, false);
    for n in 0..1000 {
        put(&mut s, 1, "offline", n);
        if n % 100 == 0 {
            put(&mut s, 0, "online", n);
            s.run(10);
        }
    }
    s.set_online(1, true);
    s.run_until_quiescent(STEPS).unwrap();
    let json = s.assert_converged().unwrap();
    assert_eq!(json["offline"], 999);
    assert!(s.log().head(&converge_sim::DOC).unwrap().last_seq.get() >= 1001);
}

#[test]
fn a_server_crash_in_the_middle_of_a_push_loses_nothing_acknowledged() {
    for seed in 0..20 {
        let mut s = sim(100 + seed, 3, 0.0);
        for n in 0..30 {
            put(&mut s, (n % 3) as usize, "k", n);
            append(&mut s, ((n + 1) % 3) as usize, n);
            s.run(3);
            if n == 15 {
                s.crash_server().unwrap();
            }
        }
        s.run_until_quiescent(STEPS).unwrap();
        s.assert_converged().unwrap();
    }
}

#[test]
fn a_client_older_than_the_retained_log_gets_a_snapshot() {
    let mut s = sim(4, 2, 0.0);
    put(&mut s, 1, "from_one", 1);
    s.run_until_quiescent(STEPS).unwrap();
    s.set_online(1, false);
    put(&mut s, 1, "offline_edit", 7);
    for n in 0..50 {
        append(&mut s, 0, n);
        s.run(5);
    }
    s.run_until_quiescent(STEPS).unwrap();
    s.compact_server().unwrap();
    assert!(
        s.log()
            .head(&converge_sim::DOC)
            .unwrap()
            .compacted_through
            .get()
            > 2
    );
    s.set_online(1, true);
    s.run_until_quiescent(STEPS).unwrap();
    let json = s.assert_converged().unwrap();
    assert_eq!(json["offline_edit"], 7);
}

#[test]
fn client_restarts_keep_their_offline_edits() {
    let mut s = sim(5, 2, 0.0);
    s.set_online(1, false);
    for n in 0..40 {
        put(&mut s, 1, "k", n);
        if n % 10 == 0 {
            s.restart_client(1).unwrap();
        }
    }
    s.set_online(1, true);
    s.run(7);
    s.restart_client(1).unwrap();
    s.run_until_quiescent(STEPS).unwrap();
    assert_eq!(s.assert_converged().unwrap()["k"], 39);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_schedules_with_faults_converge(seed in any::<u64>(), clients in 2usize..5, ops in proptest::collection::vec((0usize..5, 0u8..6, any::<i8>()), 1..40)) {
        let mut s = sim(seed, clients, 0.02);
        for (who, what, v) in ops {
            let i = who % clients;
            match what {
                0 | 1 => put(&mut s, i, &format!("k{}", v.rem_euclid(3)), v as i64),
                2 => append(&mut s, i, v as i64),
                3 => s.restart_client(i).unwrap(),
                4 if v % 4 == 0 => s.crash_server().unwrap(),
                _ => s.run(v.unsigned_abs() as usize),
            }
            s.run(3);
        }
        s.run_until_quiescent(STEPS).unwrap();
        if let Err(e) = s.assert_converged() {
            prop_assert!(false, "{}", e);
        }
    }
}

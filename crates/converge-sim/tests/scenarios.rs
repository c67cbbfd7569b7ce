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
        ..SimConfig::default()
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

#[test]
fn a_server_restored_to_an_older_epoch_gets_back_what_clients_hold() {
    for seed in 0..10 {
        let mut s = sim(200 + seed, 3, 0.0);
        for n in 0..5 {
            put(&mut s, (n % 3) as usize, "before", n);
            s.run(3);
        }
        s.run_until_quiescent(STEPS).unwrap();
        let backup = s.backup_server();

        // After the backup: client 0 writes and sees its changes acknowledged; client 1's
        // changes reach client 2, then client 1 goes away; client 2 writes offline on top.
        put(&mut s, 0, "acked_then_lost", 1);
        append(&mut s, 1, 10);
        append(&mut s, 1, 11);
        s.run_until_quiescent(STEPS).unwrap();
        s.set_online(1, false);
        s.set_online(2, false);
        append(&mut s, 2, 20);

        // The server comes back from the backup: a new epoch, none of the above in its log.
        s.restore_server(&backup).unwrap();
        let head = s.log().head(&converge_sim::DOC).unwrap();
        assert!(head.epoch.get() > 1);

        // Client 2 relays client 1's changes (a foreign actor) and its own; client 0 its own.
        s.set_online(2, true);
        s.run_until_quiescent(STEPS).unwrap();
        // Before client 1 returns, the server already holds its changes (relayed by client 2)
        // and client 0's acknowledged-then-lost change (relayed by client 0).
        let (_, server) = s.server_state().unwrap();
        assert_eq!(server["acked_then_lost"], 1, "seed {seed}");
        assert_eq!(
            server["items"],
            serde_json::json!([10, 11, 20]),
            "seed {seed}"
        );
        s.set_online(1, true);
        s.run_until_quiescent(STEPS).unwrap();
        let json = s.assert_converged().unwrap();
        assert_eq!(json["acked_then_lost"], 1, "seed {seed}");
        assert_eq!(
            json["items"],
            serde_json::json!([10, 11, 20]),
            "seed {seed}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_schedules_with_faults_converge(seed in any::<u64>(), clients in 2usize..5, ops in proptest::collection::vec((0usize..5, 0u8..6, any::<i8>()), 1..40)) {
        let mut s = sim(seed, clients, 0.02);
        let mut backup = None;
        for (who, what, v) in ops {
            let i = who % clients;
            match what {
                0 | 1 => put(&mut s, i, &format!("k{}", v.rem_euclid(3)), v as i64),
                2 => append(&mut s, i, v as i64),
                3 => s.restart_client(i).unwrap(),
                4 if v % 4 == 0 => s.crash_server().unwrap(),
                // Take a backup, or restore the one taken (only once the document exists: a
                // backup that predates it cannot fence clients by epoch).
                5 if v % 3 == 0 => match backup.take() {
                    Some(b) => s.restore_server(&b).unwrap(),
                    None if s.log().head(&converge_sim::DOC).is_ok() => backup = Some(s.backup_server()),
                    None => {}
                },
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

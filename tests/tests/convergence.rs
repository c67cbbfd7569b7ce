//! Convergence: any causal order (the log refuses a change before its dependencies) and any
//! duplication of a set of automerge changes from several actors, appended to two logs,
//! materializes identical documents (same heads, same JSON).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ROOT, ReadDoc};
use converge_log::{DocStore, EventLog, Log, LogConfig, MemStorage, SledLog, StoreConfig};
use converge_proto::{DocId, Epoch};
use converge_schema::to_json;
use converge_tests::{change_entry, user};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ACTORS: usize = 3;
const DOC: DocId = DocId::from_bytes([3; 16]);

#[derive(Debug, Clone)]
enum Step {
    Put { actor: usize, key: u8, value: i64 },
    Type { actor: usize, at: usize, ch: char },
    Delete { actor: usize, at: usize },
    Sync { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..ACTORS, 0u8..4, any::<i64>()).prop_map(|(actor, key, value)| Step::Put { actor, key, value }),
        3 => (0..ACTORS, any::<usize>(), proptest::char::range('a', 'z')).prop_map(|(actor, at, ch)| Step::Type { actor, at, ch }),
        1 => (0..ACTORS, any::<usize>()).prop_map(|(actor, at)| Step::Delete { actor, at }),
        2 => (0..ACTORS, 0..ACTORS).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// Runs the steps on ACTORS replicas and returns every change made (raw bytes, with the actor
/// index that made it) and the fully merged reference document.
fn play(steps: &[Step]) -> (Vec<(usize, Vec<u8>)>, AutoCommit) {
    let mut first = AutoCommit::new().with_actor(ActorId::from(vec![1u8; 16]));
    first.put_object(ROOT, "notes", ObjType::Text).unwrap();
    first.commit();
    let mut docs: Vec<AutoCommit> = (0..ACTORS)
        .map(|i| {
            if i == 0 {
                first.clone()
            } else {
                first
                    .fork()
                    .with_actor(ActorId::from(vec![i as u8 + 1; 16]))
            }
        })
        .collect();
    for s in steps {
        match s {
            Step::Put { actor, key, value } => {
                docs[*actor].put(ROOT, format!("k{key}"), *value).unwrap();
            }
            Step::Type { actor, at, ch } => {
                let d = &mut docs[*actor];
                let notes = d.get(ROOT, "notes").unwrap().unwrap().1;
                let len = d.length(&notes);
                d.splice_text(&notes, at % (len + 1), 0, &ch.to_string())
                    .unwrap();
            }
            Step::Delete { actor, at } => {
                let d = &mut docs[*actor];
                let notes = d.get(ROOT, "notes").unwrap().unwrap().1;
                let len = d.length(&notes);
                if len > 0 {
                    d.splice_text(&notes, at % len, 1, "").unwrap();
                }
            }
            Step::Sync { from, to } if from != to => {
                let mut src = docs[*from].clone();
                docs[*to].merge(&mut src).unwrap();
            }
            Step::Sync { .. } => {}
        }
        for d in docs.iter_mut() {
            d.commit();
        }
    }
    let mut reference = docs[0].clone();
    for d in docs.iter_mut().skip(1) {
        reference.merge(d).unwrap();
    }
    let mut by_hash = HashMap::new();
    for c in reference.get_changes(&[]) {
        let actor = c.actor_id().to_bytes()[0] as usize - 1;
        by_hash.insert(c.hash(), (actor, c.raw_bytes().to_vec()));
    }
    (by_hash.into_values().collect(), reference)
}

/// Appends the changes in a random causal order (a random topological sort), with duplicates
/// of already-sent changes mixed in, in random batch sizes.
fn feed(log: &Arc<Log>, changes: &[(usize, Vec<u8>)], seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let decoded: Vec<automerge::Change> = changes
        .iter()
        .map(|(_, b)| automerge::Change::from_bytes(b.clone()).unwrap())
        .collect();
    let mut sent = std::collections::HashSet::new();
    let mut left: Vec<usize> = (0..changes.len()).collect();
    let mut order: Vec<&(usize, Vec<u8>)> = Vec::new();
    while !left.is_empty() {
        let ready: Vec<usize> = left
            .iter()
            .copied()
            .filter(|&i| decoded[i].deps().iter().all(|d| sent.contains(d)))
            .collect();
        let pick = ready[rng.random_range(0..ready.len())];
        left.retain(|&i| i != pick);
        sent.insert(decoded[pick].hash());
        order.push(&changes[pick]);
        if rng.random_range(0..3) == 0 {
            order.push(order[rng.random_range(0..order.len())]);
        }
    }
    log.create(DOC, Epoch(1)).unwrap().wait().unwrap();
    let mut rest = &order[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(7));
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        let entries = batch
            .iter()
            .map(|(a, bytes)| change_entry(&user(&format!("user{a}")), bytes.clone()))
            .collect();
        log.append(&DOC, entries).unwrap().durable.wait().unwrap();
    }
}

fn materialize(log: Arc<Log>) -> (Vec<automerge::ChangeHash>, serde_json::Value) {
    let store = DocStore::new(log, StoreConfig::default());
    store.read(&DOC, |d| (d.get_heads(), to_json(d))).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_causal_order_and_duplication_converges(steps in proptest::collection::vec(step(), 1..40), seed_a: u64, seed_b: u64) {
        let (changes, mut reference) = play(&steps);
        let mem = Arc::new(Log::open_in_memory(&MemStorage::new(), LogConfig::default()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let sled = Arc::new(SledLog::open(dir.path(), LogConfig::default()).unwrap());
        feed(&mem, &changes, seed_a);
        feed(&sled, &changes, seed_b);
        prop_assert_eq!(mem.head(&DOC).unwrap().last_seq.get(), changes.len() as u64, "duplicates were not logged twice");
        let (heads_a, json_a) = materialize(mem);
        let (heads_b, json_b) = materialize(sled.clone());
        let mut want_heads = reference.get_heads();
        want_heads.sort();
        let (mut ha, mut hb) = (heads_a, heads_b);
        ha.sort();
        hb.sort();
        prop_assert_eq!(&ha, &hb);
        prop_assert_eq!(&ha, &want_heads);
        prop_assert_eq!(&json_a, &json_b);
        prop_assert_eq!(json_a, to_json(&reference));
        // And again after a reopen of the sled log, from disk.
        drop(sled);
        let sled = Arc::new(SledLog::open(dir.path(), LogConfig::default()).unwrap());
        let (mut hc, json_c) = materialize(sled);
        hc.sort();
        prop_assert_eq!(hc, want_heads);
        prop_assert_eq!(json_c, json_b);
    }
}

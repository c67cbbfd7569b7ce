//! Randomly mutated valid changes pushed through the hub and the log executor: the server
//! never panics, and whatever it accepted every replica can still materialize.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use converge_core::{DevAuthenticator, Hub, HubConfig, Output, apply_changes};
use converge_log::{DocStore, EventLog, Log, LogConfig, MemStorage, StoreConfig};
use converge_proto::*;
use converge_server::LogExecutor;
use proptest::prelude::*;

const DOC: DocId = DocId::from_bytes([4; 16]);

#[derive(Debug, Clone)]
enum Mutation {
    None,
    Flip(usize, u8),
    Truncate(usize),
    Overwrite(usize, u8),
    /// A decoded field changed and the change sealed again: it passes the checksum, so only
    /// the log's semantic checks stand between it and the replicas.
    Forge(Field, u64),
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Seq,
    StartOp,
    Deps,
    Pred,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::None),
        1 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        2 => (prop_oneof![Just(Field::Seq), Just(Field::StartOp), Just(Field::Deps), Just(Field::Pred)], 0u64..12)
            .prop_map(|(f, v)| Mutation::Forge(f, v)),
    ]
}

fn mutate(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = bytes.len().max(1);
    match *m {
        Mutation::None => {}
        Mutation::Flip(i, b) => bytes[i % n] ^= 1 << b,
        Mutation::Truncate(i) => bytes.truncate(i % n),
        Mutation::Overwrite(i, v) => bytes[i % n] = v,
        Mutation::Forge(field, v) => return forge(&bytes, field, v),
    }
    bytes
}

fn forge(bytes: &[u8], field: Field, v: u64) -> Vec<u8> {
    let mut c = automerge::Change::from_bytes(bytes.to_vec())
        .unwrap()
        .decode();
    match field {
        Field::Seq => c.seq = v,
        Field::StartOp => c.start_op = std::num::NonZeroU64::new(v + 1).unwrap(),
        Field::Deps => {
            c.deps.truncate(v as usize % (c.deps.len() + 1));
        }
        Field::Pred => {
            let actor = c.actor_id.clone();
            for op in &mut c.operations {
                op.pred = vec![automerge::legacy::OpId(v + 1, actor.clone())].into();
            }
        }
    }
    c.hash = None;
    automerge::Change::from(c).raw_bytes().to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn mutated_pushes_never_break_the_server_or_the_log(steps in proptest::collection::vec((0usize..3, mutation(), any::<bool>()), 1..40)) {
        let log = Arc::new(Log::open_in_memory(&MemStorage::new(), LogConfig::default()).unwrap());
        let exec = LogExecutor::new(log.clone());
        let mut hub = Hub::new(HubConfig::default(), Box::new(DevAuthenticator));
        let mut writers: Vec<AutoCommit> = (0..3u8).map(|i| AutoCommit::new().with_actor(ActorId::from(vec![i + 1; 16]))).collect();
        let sessions: Vec<SessionId> = (0..3).map(|i| {
            let s = hub.connect(0);
            let hello = ClientMsg::Hello { protocol: PROTOCOL_VERSION, client_id: ClientId::random(), token: Some(format!("user{i}")) };
            hub.handle_frame(s, &encode_client(&hello).unwrap(), 0);
            hub.handle_frame(s, &encode_client(&ClientMsg::Subscribe { doc: DOC, after: None }).unwrap(), 0);
            s
        }).collect();
        let drive = |hub: &mut Hub| {
            while let Some(out) = hub.poll_output() {
                match out {
                    Output::Append { ticket, doc, author, changes, relayed } => {
                        let r = exec.append(&doc, &author, 1, &changes, relayed).and_then(|(a, d)| {
                            d.wait().map(|()| a).map_err(|e| converge_server::refusal(&e))
                        });
                        hub.handle_appended(ticket, &changes, r);
                    }
                    Output::Catchup { ticket, doc, after } => {
                        let r = exec.catchup(&doc, after);
                        hub.handle_catchup(ticket, r);
                    }
                    _ => {}
                }
            }
        };
        drive(&mut hub);
        for (i, m, merge) in steps {
            if merge {
                let (a, b) = ((i + 1) % 3, i);
                let mut other = writers[a].clone();
                writers[b].merge(&mut other).unwrap();
            }
            let w = &mut writers[i];
            w.put(ROOT, format!("k{i}"), 1i64).unwrap();
            w.commit();
            let change = w.get_last_local_change().unwrap().raw_bytes().to_vec();
            let push = ClientMsg::Push { doc: DOC, changes: vec![Blob(mutate(change, &m))] };
            hub.handle_frame(sessions[i], &encode_client(&push).unwrap(), 1);
            drive(&mut hub);
        }
        if log.docs().unwrap().contains(&DOC) {
            // A fresh replica takes everything logged in one call...
            let changes: Vec<Vec<u8>> = log.read(&DOC, Seq(1), usize::MAX).unwrap().into_iter()
                .filter_map(|e| e.kind.into_change_bytes()).collect();
            let mut replica = AutoCommit::new();
            prop_assert!(apply_changes(&mut replica, &changes).is_ok());
            // ...and the server's document store materializes it without quarantining anything.
            let store = DocStore::new(log.clone(), StoreConfig::default());
            store.read(&DOC, |_| ()).unwrap();
            prop_assert!(store.quarantined(&DOC).is_empty());
        }
    }
}

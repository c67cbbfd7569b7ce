//! Locks as a property test: random acquire / renew / release / fenced write / pause / crash and
//! restart schedules, run against the real hub, executor and log (in memory, crashable), with
//! the time passed in. After every schedule:
//! - never two holders of one key at one server time;
//! - a fenced write is applied exactly when its token was the key's current, unexpired one at
//!   the server time it arrived (so a holder paused past expiry has its write refused);
//! - tokens strictly increase, across restarts too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use converge_core::{Ctx, DevAuthenticator, Hub, HubConfig, Mutator, Mutators, Output, Rejection};
use converge_log::{Log, LogConfig, MemStorage};
use converge_proto::*;
use converge_server::LogExecutor;
use proptest::prelude::*;

const DOC: DocId = DocId::from_bytes([0x10; 16]);
const KEYS: [&str; 2] = ["a", "b"];
const USERS: usize = 3;

/// Writes under the lock its fence proves.
struct Fenced;
impl Mutator for Fenced {
    const NAME: &'static str = "fenced";
    type Args = String;
    fn apply(doc: &mut AutoCommit, key: String, ctx: &Ctx) -> Result<(), Rejection> {
        ctx.require_lock(&key)?;
        doc.put(ROOT, key, ctx.now_ms as i64)
            .map_err(Rejection::from_automerge)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Lock { user: usize, key: usize, ttl: u64 },
    Renew { user: usize, key: usize, ttl: u64 },
    Unlock { user: usize, key: usize },
    Write { user: usize, key: usize },
    Wait { ms: u64 },
    Disconnect { user: usize },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    let key = 0..KEYS.len();
    prop_oneof![
        3 => (user.clone(), key.clone(), 1_000u64..5_000).prop_map(|(user, key, ttl)| Op::Lock { user, key, ttl }),
        2 => (user.clone(), key.clone(), 1_000u64..5_000).prop_map(|(user, key, ttl)| Op::Renew { user, key, ttl }),
        1 => (user.clone(), key.clone()).prop_map(|(user, key)| Op::Unlock { user, key }),
        3 => (user.clone(), key.clone()).prop_map(|(user, key)| Op::Write { user, key }),
        3 => (1u64..3_000).prop_map(|ms| Op::Wait { ms }),
        1 => user.prop_map(|user| Op::Disconnect { user }),
        1 => Just(Op::Restart),
    ]
}

/// A grant as the test saw it: the holder may end it early (release, disconnect).
#[derive(Debug, Clone)]
struct Grant {
    key: String,
    user: usize,
    token: FencingToken,
    from_ms: u64,
    /// The lease's end as last granted or renewed.
    expires_ms: u64,
    /// When the holder gave it up (unlock answered, or disconnect): time and step (events
    /// in one millisecond are ordered by step).
    ended_ms: Option<u64>,
    ended_step: Option<usize>,
}

impl Grant {
    fn end(&self) -> u64 {
        self.ended_ms
            .map_or(self.expires_ms, |e| e.min(self.expires_ms))
    }
}

struct World {
    storage: MemStorage,
    exec: LogExecutor,
    hub: Hub,
    now: u64,
    /// Connected users: session and client id.
    sessions: HashMap<usize, SessionId>,
    clients: Vec<ClientId>,
    next_mutation: Vec<u64>,
    inbox: HashMap<SessionId, Vec<ServerMsg>>,
    grants: Vec<Grant>,
    /// (token, key, time sent, step, applied?)
    writes: Vec<(FencingToken, String, u64, usize, bool)>,
    step: usize,
}

impl World {
    fn open(storage: MemStorage) -> (LogExecutor, Hub) {
        let log = Arc::new(Log::open_in_memory(&storage, LogConfig::default()).unwrap());
        let mut m = Mutators::new();
        m.register::<Fenced>();
        let exec = LogExecutor::new(log).with_mutators(m);
        let hub = Hub::new(HubConfig::default(), Box::new(DevAuthenticator));
        (exec, hub)
    }

    fn new() -> Self {
        let storage = MemStorage::new();
        let (exec, hub) = Self::open(storage.clone());
        World {
            storage,
            exec,
            hub,
            now: 1_000_000,
            sessions: HashMap::new(),
            clients: (0..USERS)
                .map(|i| ClientId::from_bytes([i as u8 + 1; 16]))
                .collect(),
            next_mutation: vec![0; USERS],
            inbox: HashMap::new(),
            grants: Vec::new(),
            writes: Vec::new(),
            step: 0,
        }
    }

    /// Runs every hub output to completion (each write is durable before it is reported).
    fn pump(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { session, frame } => {
                    let msg = decode_server(&frame, MAX_FRAME_CEILING).unwrap();
                    self.inbox.entry(session).or_default().push(msg);
                }
                Output::Close { .. }
                | Output::Release { .. }
                | Output::MutationDone { .. }
                | Output::RecordUser { .. } => {}
                Output::Catchup { ticket, doc, after } => {
                    let r = self.exec.catchup(&doc, after);
                    self.hub.handle_catchup(ticket, r);
                }
                Output::LoadLocks { ticket, doc } => {
                    let r = self.exec.load_locks(&doc);
                    self.hub.handle_locks_loaded(ticket, r, self.now);
                }
                Output::RecordLocks {
                    ticket,
                    doc,
                    changes,
                } => {
                    let r = self
                        .exec
                        .record_locks(&doc, &changes, self.now)
                        .and_then(|(v, d)| {
                            d.wait()
                                .map(|()| v)
                                .map_err(|e| converge_server::refusal(&e))
                        });
                    self.hub.handle_locks_recorded(ticket, r);
                }
                Output::Mutate { ticket, request } => {
                    let r = self.exec.mutate(&request).and_then(|(v, d)| {
                        d.wait()
                            .map(|()| v)
                            .map_err(|e| converge_server::refusal(&e))
                    });
                    self.hub.handle_mutated(ticket, r);
                }
                Output::Append { .. } | Output::Reconcile { .. } => {
                    unreachable!("no pushes in this test")
                }
            }
        }
    }

    fn send(&mut self, user: usize, msg: ClientMsg) {
        let session = self.session(user);
        let frame = encode_client(&msg).unwrap();
        self.hub.handle_frame(session, &frame, self.now);
        self.pump();
    }

    /// The user's session, connecting and subscribing first if needed.
    fn session(&mut self, user: usize) -> SessionId {
        if let Some(s) = self.sessions.get(&user) {
            return *s;
        }
        let s = self.hub.connect(self.now);
        self.sessions.insert(user, s);
        for msg in [
            ClientMsg::Hello {
                protocol: PROTOCOL_VERSION,
                client_id: self.clients[user],
                token: Some(format!("user{user}")),
            },
            ClientMsg::Subscribe {
                doc: DOC,
                after: None,
            },
        ] {
            self.hub
                .handle_frame(s, &encode_client(&msg).unwrap(), self.now);
            self.pump();
        }
        s
    }

    fn take(&mut self, user: usize) -> Vec<ServerMsg> {
        let s = self.session(user);
        self.inbox.remove(&s).unwrap_or_default()
    }

    /// The newest grant this user holds on the key, as far as the user knows.
    fn my_grant(&self, user: usize, key: &str) -> Option<usize> {
        self.grants
            .iter()
            .rposition(|g| g.user == user && g.key == key && g.ended_ms.is_none())
    }

    fn apply(&mut self, op: &Op) {
        self.step += 1;
        match *op {
            Op::Lock { user, key, ttl } => {
                let key = KEYS[key].to_string();
                self.send(
                    user,
                    ClientMsg::Lock {
                        doc: DOC,
                        key: key.clone(),
                        ttl_ms: ttl,
                    },
                );
                for msg in self.take(user) {
                    if let ServerMsg::LockResult { outcome, .. } = msg {
                        match outcome {
                            LockOutcome::Granted {
                                token,
                                expires_at_ms,
                            } => self.grants.push(Grant {
                                key: key.clone(),
                                user,
                                token,
                                from_ms: self.now,
                                expires_ms: expires_at_ms,
                                ended_ms: None,
                                ended_step: None,
                            }),
                            LockOutcome::Renewed {
                                token,
                                expires_at_ms,
                            } => {
                                let g = self.grants.iter_mut().rfind(|g| g.token == token).unwrap();
                                g.expires_ms = expires_at_ms;
                            }
                            _ => {}
                        }
                    }
                }
            }
            Op::Renew { user, key, ttl } => {
                let Some(i) = self.my_grant(user, KEYS[key]) else {
                    return;
                };
                let token = self.grants[i].token;
                self.send(
                    user,
                    ClientMsg::RenewLock {
                        doc: DOC,
                        key: KEYS[key].into(),
                        token,
                        ttl_ms: ttl,
                    },
                );
                for msg in self.take(user) {
                    if let ServerMsg::LockResult {
                        outcome: LockOutcome::Renewed { expires_at_ms, .. },
                        ..
                    } = msg
                    {
                        self.grants[i].expires_ms = expires_at_ms;
                    }
                }
            }
            Op::Unlock { user, key } => {
                let Some(i) = self.my_grant(user, KEYS[key]) else {
                    return;
                };
                let token = self.grants[i].token;
                self.send(
                    user,
                    ClientMsg::Unlock {
                        doc: DOC,
                        key: KEYS[key].into(),
                        token,
                    },
                );
                for msg in self.take(user) {
                    if let ServerMsg::LockResult {
                        outcome: LockOutcome::Released,
                        ..
                    } = msg
                    {
                        self.grants[i].ended_ms = Some(self.now);
                        self.grants[i].ended_step = Some(self.step);
                    }
                }
            }
            Op::Write { user, key } => {
                let Some(i) = self.my_grant(user, KEYS[key]) else {
                    return;
                };
                let token = self.grants[i].token;
                self.next_mutation[user] += 1;
                let id = self.next_mutation[user];
                self.send(
                    user,
                    ClientMsg::Mutate {
                        doc: DOC,
                        mutation_id: MutationId(id),
                        name: Fenced::NAME.into(),
                        args: Blob(encode_args(&KEYS[key].to_string()).unwrap()),
                        fence: Some(token),
                    },
                );
                let mut answered = false;
                for msg in self.take(user) {
                    if let ServerMsg::MutationResult {
                        mutation_id,
                        outcome,
                        ..
                    } = msg
                    {
                        assert_eq!(mutation_id, MutationId(id));
                        let applied = matches!(outcome, MutationOutcome::Applied { .. });
                        if let MutationOutcome::Rejected { code, .. } = &outcome {
                            assert_eq!(*code, ErrorCode::StaleFence);
                        }
                        self.writes
                            .push((token, KEYS[key].into(), self.now, self.step, applied));
                        answered = true;
                    }
                }
                assert!(answered, "every mutation is answered");
            }
            Op::Wait { ms } => {
                self.now += ms;
                self.hub.tick(self.now);
                self.pump();
            }
            Op::Disconnect { user } => {
                if let Some(s) = self.sessions.remove(&user) {
                    self.hub.disconnect(s);
                    self.pump();
                    self.inbox.remove(&s);
                    // Offline clients hold no locks.
                    for g in &mut self.grants {
                        if g.user == user && g.ended_ms.is_none() {
                            g.ended_ms = Some(self.now);
                            g.ended_step = Some(self.step);
                        }
                    }
                }
            }
            Op::Restart => {
                // Everything acknowledged was durable; the crash loses nothing of it. Leases
                // survive a restart (the log holds the table); sessions do not, but the
                // holders keep their tokens.
                self.sessions.clear();
                self.inbox.clear();
                let storage = self.storage.clone();
                let (exec, hub) = Self::open(MemStorage::new());
                self.exec = exec;
                self.hub = hub;
                storage.crash();
                let (exec, hub) = Self::open(storage);
                self.exec = exec;
                self.hub = hub;
            }
        }
    }

    fn check(&self) {
        // Tokens strictly increase in grant order.
        let tokens: Vec<u64> = self.grants.iter().map(|g| g.token.get()).collect();
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens {tokens:?}");
        // Never two holders of one key at one time.
        let mut by_key: BTreeMap<&str, Vec<&Grant>> = BTreeMap::new();
        for g in &self.grants {
            by_key.entry(&g.key).or_default().push(g);
        }
        for grants in by_key.values() {
            for w in grants.windows(2) {
                assert!(
                    w[0].end() <= w[1].from_ms,
                    "overlapping holders: {:?} and {:?}",
                    w[0],
                    w[1]
                );
            }
        }
        // A fenced write is applied exactly when its token was current at that time.
        for (token, key, at, step, applied) in &self.writes {
            let g = self.grants.iter().find(|g| g.token == *token).unwrap();
            let current = g.from_ms <= *at
                && *at < g.expires_ms
                && g.ended_step.is_none_or(|e| *step < e)
                && g.key == *key;
            assert_eq!(
                *applied,
                current,
                "write with token {} at {at}: applied {applied}, grant {g:?}",
                token.get()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn locks_hold_their_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
        }
        w.check();
    }
}

#[test]
fn a_holder_paused_past_expiry_is_refused_and_the_next_holder_survives_a_restart() {
    let mut w = World::new();
    w.apply(&Op::Lock {
        user: 0,
        key: 0,
        ttl: 1_000,
    });
    w.apply(&Op::Write { user: 0, key: 0 });
    w.apply(&Op::Wait { ms: 1_500 });
    w.apply(&Op::Write { user: 0, key: 0 });
    w.apply(&Op::Lock {
        user: 1,
        key: 0,
        ttl: 4_000,
    });
    w.apply(&Op::Restart);
    w.apply(&Op::Write { user: 1, key: 0 });
    w.apply(&Op::Lock {
        user: 2,
        key: 0,
        ttl: 4_000,
    });
    w.apply(&Op::Wait { ms: 4_100 });
    w.apply(&Op::Lock {
        user: 2,
        key: 0,
        ttl: 4_000,
    });
    w.check();
    let applied: Vec<bool> = w.writes.iter().map(|(.., a)| *a).collect();
    assert_eq!(applied, vec![true, false, true]);
    let holders: Vec<usize> = w.grants.iter().map(|g| g.user).collect();
    assert_eq!(
        holders,
        vec![0, 1, 2],
        "user 2 waits for the lease to run out"
    );
}

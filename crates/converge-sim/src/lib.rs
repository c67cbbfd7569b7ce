//! converge-sim: one server core and N client cores in memory, driven step by step from a seed.
//!
//! Everything real except the network and the clock: the server is converge-core's [`Hub`] with
//! the same [`LogExecutor`] the server uses, over a [`MemLog`] whose storage can crash (losing
//! what no flush covered); each client is a [`ClientSession`] with an automerge document and a
//! store that survives client restarts. Frames are encoded and decoded, so the codec is
//! exercised too. Links deliver in order per direction with seeded delays; connections drop,
//! clients and the server restart, all chosen by the seed, so a failing seed replays exactly.

use std::collections::VecDeque;
use std::sync::Arc;

use automerge::{ActorId, AutoCommit};
use converge_core::{
    ClientSession, Ctx, DevAuthenticator, Hub, HubConfig, Mutators, Output, QueuedMutation,
    SessionConfig, SessionEvent, Ticket, apply_incoming, changes_since,
};
use converge_log::{Durable, EventLog, Log, LogConfig, MemStorage};
use converge_proto::{
    Blob, ClientId, DocId, MAX_FRAME_CEILING, MutationId, MutationOutcome, Position, Seq,
    SessionId, UserId, decode_client, decode_server, encode_client,
};
use converge_server::LogExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The one document every simulated client edits.
pub const DOC: DocId = DocId::from_bytes([0x5e; 16]);

/// Why a simulation could not run or did not converge.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("log: {0}")]
    Log(#[from] converge_log::LogError),
    #[error("store: {0}")]
    Store(#[from] converge_log::StoreError),
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("not quiescent after {0} steps: {1}")]
    NotQuiescent(usize, String),
    #[error("replicas differ: {0}")]
    Diverged(String),
}

/// Fault and timing knobs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub clients: usize,
    /// Each frame is delayed by a uniform 0..=max_delay_ms.
    pub max_delay_ms: u64,
    /// Per step, the chance that a random connection drops.
    pub drop_chance: f64,
    /// Mutators the server and every client run.
    pub mutators: Mutators,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            clients: 2,
            max_delay_ms: 20,
            drop_chance: 0.0,
            mutators: Mutators::new(),
        }
    }
}

/// What survives a client restart: written synchronously, like the real client's store.
#[derive(Debug, Clone, Default)]
struct ClientStore {
    doc: Vec<u8>,
    position: Option<Position>,
    pending: Vec<Vec<u8>>,
    /// Mutations not answered, and the last id given out.
    mutations: Vec<QueuedMutation>,
    last_mutation: u64,
}

struct Client {
    actor: ActorId,
    session: ClientSession,
    doc: AutoCommit,
    store: ClientStore,
    link: Option<usize>,
    online: bool,
    /// Applied mutations whose change the document does not hold yet (their seq): still
    /// part of the speculative view.
    awaiting: Vec<(QueuedMutation, Seq)>,
    /// Every result this client heard, in order (not persisted: what the app was told).
    results: Vec<(MutationId, MutationOutcome)>,
    /// Every error reply this client heard (code and message).
    errors: Vec<(converge_proto::ErrorCode, String)>,
}

struct Link {
    client: usize,
    session: SessionId,
    up: VecDeque<(u64, Vec<u8>)>,
    down: VecDeque<(u64, Vec<u8>)>,
    open: bool,
}

/// A log write the executor ran, waiting for the flush that makes it durable.
enum Unflushed {
    Append(
        Ticket,
        Vec<Blob>,
        Result<(converge_core::Appended, Durable), converge_core::Refusal>,
    ),
    Mutate(
        Ticket,
        Result<(converge_core::Mutated, Durable), converge_core::Refusal>,
    ),
    Locks(
        Ticket,
        Result<(converge_core::LocksRecorded, Durable), converge_core::Refusal>,
    ),
}

struct Server {
    storage: MemStorage,
    log: Arc<Log>,
    exec: LogExecutor,
    hub: Hub,
    /// Writes executed and waiting for the flush that makes them durable.
    unflushed: VecDeque<Unflushed>,
    catchups: VecDeque<(Ticket, DocId, Option<Position>)>,
    /// Reconciliation sync messages waiting for the executor.
    reconciles: VecDeque<(Ticket, DocId, SessionId, Blob)>,
}

impl Server {
    fn open(storage: MemStorage, mutators: &Mutators) -> Result<Self, SimError> {
        let log = Arc::new(Log::open_in_memory(&storage, LogConfig::default())?);
        let exec = LogExecutor::new(log.clone()).with_mutators(mutators.clone());
        Ok(Server {
            storage,
            log,
            exec,
            hub: Hub::new(HubConfig::default(), Box::new(DevAuthenticator)),
            unflushed: VecDeque::new(),
            catchups: VecDeque::new(),
            reconciles: VecDeque::new(),
        })
    }
}

/// The simulation.
pub struct Sim {
    config: SimConfig,
    rng: StdRng,
    now_ms: u64,
    server: Server,
    clients: Vec<Client>,
    links: Vec<Link>,
    steps: usize,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.config.seed)
            .field("now_ms", &self.now_ms)
            .field("steps", &self.steps)
            .finish()
    }
}

impl Sim {
    pub fn new(config: SimConfig) -> Result<Self, SimError> {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let server = Server::open(MemStorage::new(), &config.mutators)?;
        let clients = (0..config.clients)
            .map(|i| {
                let actor = ActorId::from(rng.random::<[u8; 16]>().to_vec());
                let mut session = ClientSession::new(
                    ClientId::from_bytes(rng.random()),
                    Some(format!("user{i}")),
                    SessionConfig::default(),
                );
                session.open(DOC, None, Vec::new());
                Client {
                    doc: AutoCommit::new().with_actor(actor.clone()),
                    actor,
                    session,
                    store: ClientStore::default(),
                    link: None,
                    online: true,
                    awaiting: Vec::new(),
                    results: Vec::new(),
                    errors: Vec::new(),
                }
            })
            .collect();
        Ok(Sim {
            config,
            rng,
            now_ms: 0,
            server,
            clients,
            links: Vec::new(),
            steps: 0,
        })
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// The server's log (to inspect or compact it).
    pub fn log(&self) -> &Arc<Log> {
        &self.server.log
    }

    /// A local edit on client `i`, persisted to its store and queued for pushing.
    pub fn edit(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut AutoCommit) -> Result<(), automerge::AutomergeError>,
    ) -> Result<(), SimError> {
        let c = &mut self.clients[i];
        let before = c.doc.get_heads();
        f(&mut c.doc)?;
        c.doc.commit();
        let changes = changes_since(&mut c.doc, &before);
        if changes.is_empty() {
            return Ok(());
        }
        c.store.doc = c.doc.save();
        c.store.pending.extend(changes.iter().cloned());
        c.session.add_local(DOC, changes);
        self.pump_client(i);
        Ok(())
    }

    /// Client `i` calls a mutator: stored, queued, and (when live) sent. Returns its id.
    pub fn mutate(&mut self, i: usize, name: &str, args: Vec<u8>) -> MutationId {
        let c = &mut self.clients[i];
        let id = c.session.next_mutation_id(&DOC);
        let m = QueuedMutation {
            id,
            name: name.to_string(),
            args,
            fence: None,
        };
        c.store.mutations.push(m.clone());
        c.store.last_mutation = id.get();
        c.session.add_mutation(DOC, m);
        self.pump_client(i);
        id
    }

    /// What client `i`'s app shows: its document plus every mutation not yet in it, run
    /// again in id order on a copy (the optimistic view after a rebase).
    pub fn view(&mut self, i: usize) -> AutoCommit {
        let now_ms = self.now_ms;
        let c = &mut self.clients[i];
        let mut view = c.doc.fork();
        let ctx = Ctx {
            user: UserId::new(format!("user{i}")).unwrap_or_else(|_| UserId::server()),
            client: c.session.client_id(),
            session: None,
            now_ms,
            lock: None,
        };
        let awaiting = c.awaiting.iter().map(|(m, _)| m);
        for m in awaiting.chain(c.store.mutations.iter()) {
            if self
                .config
                .mutators
                .run(&m.name, &mut view, &m.args, &ctx)
                .is_ok()
            {
                view.commit();
            }
        }
        view
    }

    /// Every mutation result client `i` heard, in order.
    pub fn results(&self, i: usize) -> &[(MutationId, MutationOutcome)] {
        &self.clients[i].results
    }

    /// Every error reply client `i` heard.
    pub fn errors(&self, i: usize) -> &[(converge_proto::ErrorCode, String)] {
        &self.clients[i].errors
    }

    /// Damages client `i`'s store: its first queued mutation is lost (as if the file had been
    /// restored from an older copy). Takes effect at the next restart.
    pub fn lose_first_stored_mutation(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if !c.store.mutations.is_empty() {
            c.store.mutations.remove(0);
        }
    }

    /// Mutations client `i` has not had answered.
    pub fn pending_mutations(&self, i: usize) -> usize {
        self.clients[i].store.mutations.len()
    }

    /// Takes client `i` offline (it stays offline until [`Sim::set_online`]).
    pub fn set_online(&mut self, i: usize, online: bool) {
        self.clients[i].online = online;
        if !online {
            self.disconnect_client(i);
        }
    }

    /// Drops client `i`'s connection; it reconnects on a later step.
    pub fn disconnect_client(&mut self, i: usize) {
        if let Some(l) = self.clients[i].link.take() {
            self.close_link(l);
        }
    }

    /// Restarts client `i`: everything not in its store is lost.
    pub fn restart_client(&mut self, i: usize) -> Result<(), SimError> {
        self.disconnect_client(i);
        let c = &mut self.clients[i];
        let doc = if c.store.doc.is_empty() {
            AutoCommit::new()
        } else {
            AutoCommit::load(&c.store.doc)?
        };
        c.doc = doc.with_actor(c.actor.clone());
        let mut session = ClientSession::new(
            c.session.client_id(),
            Some(format!("user{i}")),
            SessionConfig::default(),
        );
        session.open(DOC, c.store.position, c.store.pending.clone());
        session.restore_mutations(
            DOC,
            MutationId(c.store.last_mutation),
            c.store.mutations.clone(),
        );
        c.session = session;
        // In-memory only: the change arrives again through the catch-up.
        c.awaiting.clear();
        Ok(())
    }

    /// Every connection drops at once (the server went away); the hub is not told.
    fn drop_all_links(&mut self) {
        for l in 0..self.links.len() {
            if self.links[l].open {
                let client = self.links[l].client;
                self.links[l].open = false;
                self.clients[client].link = None;
                self.clients[client].session.disconnected();
            }
        }
    }

    /// Kills the server: appends not yet flushed are lost, every connection drops.
    pub fn crash_server(&mut self) -> Result<(), SimError> {
        self.drop_all_links();
        let storage = self.server.storage.clone();
        // Drop the old log before the crash so its flusher does not write afterwards.
        self.server.unflushed.clear();
        self.server = Server::open(MemStorage::new(), &self.config.mutators)?; // placeholder so the old one drops
        storage.crash();
        self.server = Server::open(storage, &self.config.mutators)?;
        Ok(())
    }

    /// A backup of the server's log as it is durable now (see [`Sim::restore_server`]).
    pub fn backup_server(&mut self) -> MemStorage {
        self.flush_server();
        self.server.storage.backup()
    }

    /// Restores a backup, as an operator would after losing the server's disk: the server
    /// restarts on the backup (every connection drops, everything after it is gone) and the
    /// document's stream moves to a new epoch, so clients holding changes the backup lacks
    /// reconcile when they come back.
    pub fn restore_server(&mut self, backup: &MemStorage) -> Result<(), SimError> {
        self.drop_all_links();
        self.server = Server::open(backup.backup(), &self.config.mutators)?;
        match self.server.log.bump_epoch(&DOC) {
            Ok((_, durable)) => durable.wait()?,
            // The backup predates the document: its first push creates it afresh.
            Err(converge_log::LogError::UnknownDoc(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Compacts the server's log: a snapshot of the document and the entries it covers dropped.
    pub fn compact_server(&mut self) -> Result<(), SimError> {
        self.flush_server();
        let store = converge_log::DocStore::new(
            self.server.log.clone(),
            converge_log::StoreConfig::default(),
        );
        store.snapshot(&DOC)?;
        self.server.log.compact(&DOC)?;
        Ok(())
    }

    /// Runs random steps until nothing is left to do (every client online, connected, live,
    /// nothing pending or in flight), or fails after `max_steps`.
    pub fn run_until_quiescent(&mut self, max_steps: usize) -> Result<usize, SimError> {
        let start = self.steps;
        while self.steps - start < max_steps {
            if self.quiescent() {
                return Ok(self.steps - start);
            }
            self.step();
        }
        let clients: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "client {i}: online {} linked {} live {} must_reconcile {} reconciling {} pending {}",
                    c.online,
                    c.link.is_some(),
                    c.session.is_live(&DOC),
                    c.session.must_reconcile(&DOC),
                    c.session.is_reconciling(&DOC),
                    c.session.pending_count(&DOC)
                ) + &format!(" mutations {}", c.session.pending_mutations(&DOC).len())
            })
            .collect();
        Err(SimError::NotQuiescent(
            max_steps,
            format!("seed {}: {}", self.config.seed, clients.join("; ")),
        ))
    }

    /// Runs `n` random steps (faults included).
    pub fn run(&mut self, n: usize) {
        for _ in 0..n {
            self.step();
        }
    }

    fn quiescent(&self) -> bool {
        self.server.unflushed.is_empty()
            && self.server.catchups.is_empty()
            && self.server.reconciles.is_empty()
            && self
                .links
                .iter()
                .all(|l| !l.open || (l.up.is_empty() && l.down.is_empty()))
            && self.clients.iter().all(|c| {
                !c.online
                    || (c.link.is_some()
                        && c.session.is_live(&DOC)
                        && !c.session.is_reconciling(&DOC)
                        && c.session.pending_count(&DOC) == 0
                        && c.session.pending_mutations(&DOC).is_empty())
            })
    }

    /// One step: advance time, maybe drop a connection, then do one unit of work.
    fn step(&mut self) {
        self.steps += 1;
        self.now_ms += self.rng.random_range(1..=5);
        if self.config.drop_chance > 0.0 && self.rng.random_bool(self.config.drop_chance) {
            let i = self.rng.random_range(0..self.clients.len());
            self.disconnect_client(i);
        }
        // Connect clients that want to be online.
        for i in 0..self.clients.len() {
            if self.clients[i].online && self.clients[i].link.is_none() {
                self.connect_client(i);
            }
        }
        match self.rng.random_range(0..4) {
            0 => self.flush_server(),
            1 => self.run_catchups(),
            _ => self.deliver_one(),
        }
        for i in 0..self.clients.len() {
            self.apply_incoming(i);
        }
    }

    fn connect_client(&mut self, i: usize) {
        let session = self.server.hub.connect(self.now_ms);
        self.links.push(Link {
            client: i,
            session,
            up: VecDeque::new(),
            down: VecDeque::new(),
            open: true,
        });
        let l = self.links.len() - 1;
        self.clients[i].link = Some(l);
        self.clients[i].session.connected();
        self.pump_client(i);
    }

    fn close_link(&mut self, l: usize) {
        if !self.links[l].open {
            return;
        }
        self.links[l].open = false;
        self.server.hub.disconnect(self.links[l].session);
        let client = self.links[l].client;
        if self.clients[client].link == Some(l) {
            self.clients[client].link = None;
        }
        self.clients[client].session.disconnected();
        self.pump_server();
    }

    /// Moves a client's outgoing messages onto its link.
    fn pump_client(&mut self, i: usize) {
        let c = &mut self.clients[i];
        while let Some(msg) = c.session.poll_send() {
            let Some(l) = c.link else { continue };
            let Ok(frame) = encode_client(&msg) else {
                continue;
            };
            let at = self.now_ms + self.rng.random_range(0..=self.config.max_delay_ms);
            self.links[l].up.push_back((at, frame));
        }
        while let Some(ev) = c.session.poll_event() {
            match ev {
                SessionEvent::Error { code, message, .. } => c.errors.push((code, message)),
                SessionEvent::MutationResult { id, outcome, .. } => {
                    // Off the durable queue; an applied one stays in the view until the
                    // document holds its change.
                    if let Some(k) = c.store.mutations.iter().position(|m| m.id == id) {
                        let m = c.store.mutations.remove(k);
                        let held = c.store.position.map_or(Seq(0), |p| p.seq);
                        if let MutationOutcome::Applied { seq } = &outcome
                            && *seq > held
                        {
                            c.awaiting.push((m, *seq));
                        }
                    }
                    c.results.push((id, outcome));
                }
                SessionEvent::Acked {
                    position: Some(p), ..
                }
                | SessionEvent::Reconciled {
                    position: Some(p), ..
                } => c.store.position = Some(p),
                _ => {}
            }
        }
        // Acked and refused changes leave the session's queue from the front; the store's
        // queue follows it.
        let settled = c
            .store
            .pending
            .len()
            .saturating_sub(c.session.pending_count(&DOC));
        c.store.pending.drain(..settled);
    }

    /// Routes the hub's outputs.
    fn pump_server(&mut self) {
        while let Some(out) = self.server.hub.poll_output() {
            match out {
                Output::Send { session, frame } => {
                    if let Some(l) = self.link_of(session) {
                        let at = self.now_ms + self.rng.random_range(0..=self.config.max_delay_ms);
                        self.links[l].down.push_back((at, frame.to_vec()));
                    }
                }
                Output::Close { session, .. } => {
                    if let Some(l) = self.link_of(session) {
                        self.close_link(l);
                    }
                }
                Output::Append {
                    ticket,
                    doc,
                    author,
                    changes,
                    relayed,
                } => {
                    let r = self
                        .server
                        .exec
                        .append(&doc, &author, self.now_ms, &changes, relayed);
                    self.server
                        .unflushed
                        .push_back(Unflushed::Append(ticket, changes, r));
                }
                Output::Catchup { ticket, doc, after } => {
                    self.server.catchups.push_back((ticket, doc, after));
                }
                Output::Reconcile {
                    ticket,
                    doc,
                    session,
                    bytes,
                } => {
                    self.server
                        .reconciles
                        .push_back((ticket, doc, session, bytes));
                }
                Output::Release { doc } => self.server.exec.evict(&doc),
                Output::Mutate { ticket, request } => {
                    let r = self.server.exec.mutate(&request);
                    self.server
                        .unflushed
                        .push_back(Unflushed::Mutate(ticket, r));
                }
                Output::RecordLocks {
                    ticket,
                    doc,
                    changes,
                } => {
                    let r = self.server.exec.record_locks(&doc, &changes, self.now_ms);
                    self.server.unflushed.push_back(Unflushed::Locks(ticket, r));
                }
                Output::LoadLocks { ticket, doc } => {
                    let r = self.server.exec.load_locks(&doc);
                    self.server.hub.handle_locks_loaded(ticket, r, self.now_ms);
                }
                Output::MutationDone { .. } => {}
                // The sim keeps no user directory across restarts.
                Output::RecordUser { .. } => {}
            }
        }
    }

    fn link_of(&self, session: SessionId) -> Option<usize> {
        self.links
            .iter()
            .rposition(|l| l.open && l.session == session)
    }

    /// A group-commit flush: every executed append becomes durable and is reported in order.
    fn flush_server(&mut self) {
        fn durable<T>(
            r: Result<(T, Durable), converge_core::Refusal>,
        ) -> Result<T, converge_core::Refusal> {
            let (v, d) = r?;
            d.wait()
                .map(|()| v)
                .map_err(|e| converge_server::refusal(&e))
        }
        while let Some(w) = self.server.unflushed.pop_front() {
            match w {
                Unflushed::Append(ticket, changes, r) => {
                    self.server
                        .hub
                        .handle_appended(ticket, &changes, durable(r));
                }
                Unflushed::Mutate(ticket, r) => self.server.hub.handle_mutated(ticket, durable(r)),
                Unflushed::Locks(ticket, r) => {
                    self.server.hub.handle_locks_recorded(ticket, durable(r));
                }
            }
        }
        self.pump_server();
    }

    fn run_catchups(&mut self) {
        while let Some((ticket, doc, after)) = self.server.catchups.pop_front() {
            // The executor makes everything appended so far durable first, as on the server;
            // the appends it covered are reported before the catch-up, as the shell would.
            let r = self.server.exec.catchup(&doc, after);
            self.flush_server();
            self.server.hub.handle_catchup(ticket, r);
        }
        while let Some((ticket, doc, session, bytes)) = self.server.reconciles.pop_front() {
            // Reads what is durable, like a catch-up.
            self.flush_server();
            let r = self
                .server
                .exec
                .reconcile(session, &doc, &bytes, self.now_ms);
            self.server.hub.handle_reconcile(ticket, r);
        }
        self.pump_server();
    }

    /// Delivers the oldest due frame of a random open link direction.
    fn deliver_one(&mut self) {
        let due: Vec<(usize, bool)> = self
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.open)
            .flat_map(|(i, l)| {
                let mut v = Vec::new();
                if l.up.front().is_some_and(|(at, _)| *at <= self.now_ms) {
                    v.push((i, true));
                }
                if l.down.front().is_some_and(|(at, _)| *at <= self.now_ms) {
                    v.push((i, false));
                }
                v
            })
            .collect();
        if due.is_empty() {
            // Nothing due yet: jump time to the next frame.
            let next = self
                .links
                .iter()
                .filter(|l| l.open)
                .flat_map(|l| l.up.front().into_iter().chain(l.down.front()))
                .map(|(at, _)| *at)
                .min();
            if let Some(at) = next {
                self.now_ms = self.now_ms.max(at);
            }
            return;
        }
        let (l, up) = due[self.rng.random_range(0..due.len())];
        if up {
            let Some((_, frame)) = self.links[l].up.pop_front() else {
                return;
            };
            debug_assert!(decode_client(&frame, MAX_FRAME_CEILING).is_ok());
            let session = self.links[l].session;
            self.server.hub.handle_frame(session, &frame, self.now_ms);
            self.pump_server();
        } else {
            let Some((_, frame)) = self.links[l].down.pop_front() else {
                return;
            };
            let client = self.links[l].client;
            if let Ok(msg) = decode_server(&frame, MAX_FRAME_CEILING) {
                self.clients[client].session.handle(msg, self.now_ms);
            }
            self.pump_client(client);
        }
    }

    /// Applies what client `i` received, in one batch, then persists doc and position.
    fn apply_incoming(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if let Some(batch) = c.session.take_incoming(&DOC) {
            match apply_incoming(&mut c.doc, &batch) {
                Ok(()) => {
                    c.store.doc = c.doc.save();
                    if batch.persist_position {
                        c.store.position = Some(batch.position);
                    }
                    // The document now holds these mutations' changes: out of the view.
                    let through = batch.position.seq;
                    c.awaiting.retain(|(_, seq)| *seq > through);
                    if batch.reconcile {
                        c.session.begin_reconcile(DOC, c.doc.document());
                    }
                }
                Err(e) => panic!(
                    "seed {}: client {i} could not apply a batch: {e}",
                    self.config.seed
                ),
            }
        }
        self.pump_client(i);
    }

    /// The server's document as its log holds it (heads sorted, JSON).
    pub fn server_state(
        &mut self,
    ) -> Result<(Vec<automerge::ChangeHash>, serde_json::Value), SimError> {
        self.flush_server();
        let store = converge_log::DocStore::new(
            self.server.log.clone(),
            converge_log::StoreConfig::default(),
        );
        let (mut heads, json) =
            match store.read(&DOC, |d| (d.get_heads(), converge_schema::to_json(d))) {
                Ok(v) => v,
                Err(converge_log::StoreError::Log(converge_log::LogError::UnknownDoc(_))) => (
                    Vec::new(),
                    converge_schema::to_json(&automerge::Automerge::new()),
                ),
                Err(e) => return Err(e.into()),
            };
        heads.sort();
        Ok((heads, json))
    }

    /// Checks that every client and the server hold the same document (heads and JSON).
    pub fn assert_converged(&mut self) -> Result<serde_json::Value, SimError> {
        let (server_heads, server_json) = self.server_state()?;
        for (i, c) in self.clients.iter_mut().enumerate() {
            let mut heads = c.doc.get_heads();
            heads.sort();
            let json = converge_schema::to_json(c.doc.document());
            if heads != server_heads || json != server_json {
                return Err(SimError::Diverged(format!(
                    "seed {}: client {i} has {} heads / {json}, server {} heads / {server_json}",
                    self.config.seed,
                    heads.len(),
                    server_heads.len()
                )));
            }
        }
        Ok(server_json)
    }
}

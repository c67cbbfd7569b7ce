//! Mutators: named, server-authoritative operations (the second write path).
//!
//! A mutator is a plain function over an automerge document, registered by name on both sides:
//! the client runs it at once on a speculative view (the optimistic update), the server runs it
//! again, in mutation-id order per client, on the document as the log holds it, and its
//! outcome is what counts. The same code, two runs: a rule such as "a slot is booked once"
//! holds because the server's run sees every booking already logged.
//!
//! ```
//! use automerge::{AutoCommit, ReadDoc, transaction::Transactable};
//! use converge_core::{Ctx, Mutator, Mutators, Rejection};
//!
//! /// Sets the title, unless it is empty.
//! struct Rename;
//! impl Mutator for Rename {
//!     const NAME: &'static str = "rename";
//!     type Args = String;
//!     fn apply(doc: &mut AutoCommit, title: String, _ctx: &Ctx) -> Result<(), Rejection> {
//!         if title.is_empty() {
//!             return Err(Rejection::new("a title cannot be empty"));
//!         }
//!         doc.put(automerge::ROOT, "title", title).map_err(Rejection::from_automerge)
//!     }
//! }
//!
//! let mut mutators = Mutators::new();
//! mutators.register::<Rename>();
//! let mut doc = AutoCommit::new();
//! let args = converge_proto::encode_args(&"Ward 3".to_string()).unwrap();
//! mutators.run("rename", &mut doc, &args, &Ctx::for_tests()).unwrap();
//! assert!(doc.get(automerge::ROOT, "title").unwrap().is_some());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::AutoCommit;
use serde::{Serialize, de::DeserializeOwned};

use converge_proto::{ClientId, ErrorCode, FencingToken, SessionId, UserId};

/// Why a mutator refused: the code and message the client is told (recorded in the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    /// A refusal by the mutator's own rule (`MutationRejected`).
    pub fn new(message: impl Into<String>) -> Self {
        Rejection {
            code: ErrorCode::MutationRejected,
            message: message.into(),
        }
    }

    /// A refusal with a specific code.
    pub fn with_code(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }

    /// An automerge operation failed inside the mutator (the document does not have the
    /// shape the mutator expects).
    pub fn from_automerge(e: automerge::AutomergeError) -> Self {
        Rejection::new(format!("the document does not take this edit: {e}"))
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Rejection {}

/// What a mutator may know about the call: who makes it, when (server time on the server; the
/// client's clock, corrected by the server's, in the optimistic run), and which lock its
/// fence proves it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    pub user: UserId,
    pub client: ClientId,
    /// The connection, when the mutation came over one (HTTP mutations have none).
    pub session: Option<SessionId>,
    pub now_ms: u64,
    /// The lock key the mutation's fence is the current token of, if it carried a valid one.
    /// The server decides this from its lock table when it takes the mutation in; a fence
    /// that is stale or expired never reaches the mutator (the mutation is rejected with
    /// `StaleFence` before).
    pub lock: Option<(String, FencingToken)>,
}

impl Ctx {
    /// Whether the mutation's fence proves the caller holds the lock on `key`.
    pub fn holds_lock(&self, key: &str) -> bool {
        self.lock.as_ref().is_some_and(|(k, _)| k == key)
    }

    /// `Ok` if the caller holds the lock on `key`, else a `StaleFence` rejection.
    pub fn require_lock(&self, key: &str) -> Result<(), Rejection> {
        if self.holds_lock(key) {
            Ok(())
        } else {
            Err(Rejection::with_code(
                ErrorCode::StaleFence,
                format!(
                    "this edit needs the lock on {key:?}; the mutation carried no valid fence for it"
                ),
            ))
        }
    }

    /// A context for examples and tests: the server's user, a zero client id, time 0, no lock.
    pub fn for_tests() -> Self {
        Ctx {
            user: UserId::server(),
            client: ClientId::from_bytes([0; 16]),
            session: None,
            now_ms: 0,
            lock: None,
        }
    }
}

/// A named mutation. Register the same type on the client and the server.
pub trait Mutator: 'static {
    /// The name on the wire and in the log. Changing it breaks queued mutations.
    const NAME: &'static str;
    /// The arguments, encoded with [`converge_proto::encode_args`].
    type Args: Serialize + DeserializeOwned;
    /// Edits the document, or refuses. A refusal leaves the document as it was: the edits the
    /// mutator made before refusing are rolled back by the caller.
    fn apply(doc: &mut AutoCommit, args: Self::Args, ctx: &Ctx) -> Result<(), Rejection>;
}

type RunFn = fn(&mut AutoCommit, &[u8], &Ctx) -> Result<(), Rejection>;
type EncodeFn = fn(&mut dyn erased_serde::Deserializer<'_>) -> Result<Vec<u8>, Rejection>;

#[derive(Clone, Copy)]
struct Entry {
    run: RunFn,
    encode: EncodeFn,
}

/// Reads `M`'s arguments from any serde format and encodes them for the wire.
fn encode_typed<M: Mutator>(
    de: &mut dyn erased_serde::Deserializer<'_>,
) -> Result<Vec<u8>, Rejection> {
    let args: M::Args = erased_serde::deserialize(de).map_err(|e| {
        Rejection::with_code(
            ErrorCode::BadArgs,
            format!("arguments for {:?} do not fit: {e}", M::NAME),
        )
    })?;
    converge_proto::encode_args(&args)
        .map_err(|e| Rejection::with_code(ErrorCode::BadArgs, e.to_string()))
}

fn run_typed<M: Mutator>(doc: &mut AutoCommit, args: &[u8], ctx: &Ctx) -> Result<(), Rejection> {
    let args: M::Args = converge_proto::decode_args(args).map_err(|e| {
        Rejection::with_code(
            ErrorCode::BadArgs,
            format!("arguments for {:?} do not decode: {e}", M::NAME),
        )
    })?;
    M::apply(doc, args, ctx)
}

/// The mutators a client or server knows, by name.
#[derive(Clone, Default)]
pub struct Mutators {
    by_name: BTreeMap<&'static str, Entry>,
}

impl fmt::Debug for Mutators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

impl Mutators {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a mutator (a later one with the same name replaces it).
    pub fn register<M: Mutator>(&mut self) -> &mut Self {
        self.by_name.insert(
            M::NAME,
            Entry {
                run: run_typed::<M>,
                encode: encode_typed::<M>,
            },
        );
        self
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }

    /// Encodes arguments for the mutator `name` from another serde format (the HTTP API
    /// passes JSON): `UnknownMutator`, or `BadArgs` if they do not fit its `Args` type.
    pub fn encode_args_from(
        &self,
        name: &str,
        de: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<Vec<u8>, Rejection> {
        let Some(entry) = self.by_name.get(name) else {
            return Err(Rejection::with_code(
                ErrorCode::UnknownMutator,
                format!("no mutator named {name:?} is registered"),
            ));
        };
        (entry.encode)(de)
    }

    /// Runs a mutator by name as one all-or-nothing edit of `doc`:
    /// - unknown name: `UnknownMutator`; arguments that do not decode: `BadArgs`;
    /// - the mutator refuses: its rejection, and its edits are rolled back;
    /// - the mutator panics: `MutatorPanicked` for this mutation alone, edits rolled back.
    ///
    /// Edits `doc` holds open when it is called are committed first (they are the caller's).
    /// On success the mutator's edits are left open in `doc` (uncommitted); the caller
    /// commits them.
    /// If a failing mutator committed edits itself, `doc` holds them: the caller must check
    /// the heads and discard such a document (both shells do).
    pub fn run(
        &self,
        name: &str,
        doc: &mut AutoCommit,
        args: &[u8],
        ctx: &Ctx,
    ) -> Result<(), Rejection> {
        let Some(Entry { run, .. }) = self.by_name.get(name) else {
            return Err(Rejection::with_code(
                ErrorCode::UnknownMutator,
                format!("no mutator named {name:?} is registered"),
            ));
        };
        // Edits the caller left open are its own: close them first, so a rollback below
        // takes back only the mutator's.
        doc.commit();
        match catch_unwind(AssertUnwindSafe(|| run(doc, args, ctx))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(r)) => {
                doc.rollback();
                Err(r)
            }
            Err(panic) => {
                doc.rollback();
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(Rejection::with_code(
                    ErrorCode::MutatorPanicked,
                    format!("the mutator {name:?} panicked: {what}"),
                ))
            }
        }
    }
}

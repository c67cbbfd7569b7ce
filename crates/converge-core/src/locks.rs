//! One document's lock table: leases per key, decided by server time.
//!
//! The table is pure state; the hub asks it what a request means and tells it what the log
//! made durable. A key is `Free`, `Held` (by a holder, until `expires_at_ms`), or has a grant
//! on its way to the log (`pending`): a second request for that key is refused until the
//! grant is durable or failed, so there is never more than one holder at one server time.

use std::collections::BTreeMap;

use converge_proto::{ErrorCode, FencingToken, Peer};

/// The shortest lease a client may ask for.
pub const MIN_LOCK_TTL_MS: u64 = 1_000;
/// The longest lease a client may ask for (renew to keep it longer).
pub const MAX_LOCK_TTL_MS: u64 = 10 * 60_000;

/// The current holder of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub key: String,
    pub peer: Peer,
    pub token: FencingToken,
    pub expires_at_ms: u64,
}

/// A lock event for the log, as the hub decided it. The log issues a grant's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockChange {
    Granted {
        key: String,
        peer: Peer,
        expires_at_ms: u64,
    },
    Renewed(LockHolder),
    Released(LockHolder),
    Expired(LockHolder),
}

impl LockChange {
    pub fn key(&self) -> &str {
        match self {
            LockChange::Granted { key, .. } => key,
            LockChange::Renewed(h) | LockChange::Released(h) | LockChange::Expired(h) => &h.key,
        }
    }
}

/// Why a lock request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRefusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> LockRefusal {
    LockRefusal {
        code,
        message: message.into(),
    }
}

/// How a mutation's fence stands against the table at the moment the hub takes it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceCheck {
    /// The mutation carried no fence.
    None,
    /// The fence is the current, unexpired token of `key`, held by the caller.
    Valid { key: String, token: FencingToken },
    /// The fence is not (or no longer) a current token: the mutation is rejected.
    Stale { message: String },
}

/// One document's locks.
#[derive(Debug, Default, Clone)]
pub struct LockTable {
    held: BTreeMap<String, LockHolder>,
    /// Keys with a grant or renewal on its way to the log, and who asked.
    pending: BTreeMap<String, Peer>,
}

impl LockTable {
    /// A table as the log holds it: the last event of each key. Leases that ran out while
    /// nobody watched are dropped (their `Expired` is written by the next [`Self::expire`]).
    pub fn from_holders(holders: Vec<LockHolder>) -> Self {
        LockTable {
            held: holders.into_iter().map(|h| (h.key.clone(), h)).collect(),
            pending: BTreeMap::new(),
        }
    }

    /// The live holders (some may be past expiry until the next [`Self::expire`]).
    pub fn holders(&self) -> impl Iterator<Item = &LockHolder> {
        self.held.values()
    }

    /// Locks `peer` holds or has on their way, other than `except`.
    pub fn count_for(&self, peer: &Peer, except: &str) -> usize {
        let held = self
            .held
            .values()
            .filter(|h| h.peer == *peer && h.key != except)
            .count();
        let asked = self
            .pending
            .iter()
            .filter(|(k, p)| *p == peer && k.as_str() != except && !self.held.contains_key(*k))
            .count();
        held + asked
    }

    pub fn holder(&self, key: &str) -> Option<&LockHolder> {
        self.held.get(key)
    }

    /// Whether nothing is held or on its way.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.pending.is_empty()
    }

    fn live(&self, key: &str, now_ms: u64) -> Option<&LockHolder> {
        self.held.get(key).filter(|h| h.expires_at_ms > now_ms)
    }

    /// A request for `key`: the events to log, or a refusal. Asking again for a lock one
    /// already holds (same session) renews it.
    pub fn acquire(
        &mut self,
        key: &str,
        peer: &Peer,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<LockChange>, LockRefusal> {
        check_ttl(ttl_ms)?;
        if self.pending.contains_key(key) {
            return Err(refuse(
                ErrorCode::LockHeld,
                format!("the lock on {key:?} is being granted to someone"),
            ));
        }
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        if let Some(h) = self.live(key, now_ms) {
            if h.peer == *peer {
                let renewed = LockHolder {
                    expires_at_ms,
                    ..h.clone()
                };
                self.pending.insert(key.to_string(), peer.clone());
                return Ok(vec![LockChange::Renewed(renewed)]);
            }
            return Err(refuse(
                ErrorCode::LockHeld,
                format!(
                    "{:?} holds the lock on {key:?} for {} ms more",
                    h.peer.user.as_str(),
                    h.expires_at_ms - now_ms
                ),
            ));
        }
        let mut changes = Vec::new();
        // A lease that ran out and was not yet recorded as such: record it first, so the log
        // reads in the order things happened.
        if let Some(old) = self.held.remove(key) {
            changes.push(LockChange::Expired(old));
        }
        self.pending.insert(key.to_string(), peer.clone());
        changes.push(LockChange::Granted {
            key: key.to_string(),
            peer: peer.clone(),
            expires_at_ms,
        });
        Ok(changes)
    }

    /// Extends a held lease. Only the holder's user with the current token may.
    pub fn renew(
        &mut self,
        key: &str,
        peer: &Peer,
        token: FencingToken,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<LockChange>, LockRefusal> {
        check_ttl(ttl_ms)?;
        if self.pending.contains_key(key) {
            return Err(refuse(
                ErrorCode::RateLimited,
                format!("a renewal of {key:?} is already on its way"),
            ));
        }
        let h = self.owned(key, peer, token, now_ms)?.clone();
        self.pending.insert(key.to_string(), peer.clone());
        Ok(vec![LockChange::Renewed(LockHolder {
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            peer: peer.clone(),
            ..h
        })])
    }

    /// Gives a lease up. The key is free at once (for requests the hub takes after this one).
    pub fn release(
        &mut self,
        key: &str,
        peer: &Peer,
        token: FencingToken,
        now_ms: u64,
    ) -> Result<Vec<LockChange>, LockRefusal> {
        self.owned(key, peer, token, now_ms)?;
        let h = self.held.remove(key).into_iter();
        Ok(h.map(LockChange::Released).collect())
    }

    fn owned(
        &self,
        key: &str,
        peer: &Peer,
        token: FencingToken,
        now_ms: u64,
    ) -> Result<&LockHolder, LockRefusal> {
        match self.live(key, now_ms) {
            Some(h) if h.token == token && h.peer.user == peer.user => Ok(h),
            Some(_) => Err(refuse(
                ErrorCode::LockNotHeld,
                format!("token {} is not the current one for {key:?}", token.get()),
            )),
            None => Err(refuse(
                ErrorCode::LockNotHeld,
                format!("the lock on {key:?} is not held (expired or released)"),
            )),
        }
    }

    /// The log made a lock event durable (`token`: the token it issued for a grant).
    pub fn applied(&mut self, change: &LockChange, token: Option<FencingToken>) {
        match change {
            LockChange::Granted {
                key,
                peer,
                expires_at_ms,
            } => {
                self.pending.remove(key);
                if let Some(token) = token {
                    self.held.insert(
                        key.clone(),
                        LockHolder {
                            key: key.clone(),
                            peer: peer.clone(),
                            token,
                            expires_at_ms: *expires_at_ms,
                        },
                    );
                }
            }
            LockChange::Renewed(h) => {
                self.pending.remove(&h.key);
                // Only if nothing replaced it meanwhile (the lease could have run out).
                if let Some(cur) = self.held.get_mut(&h.key)
                    && cur.token == h.token
                {
                    *cur = h.clone();
                }
            }
            LockChange::Released(_) | LockChange::Expired(_) => {}
        }
    }

    /// The log refused a lock event: nothing changed.
    pub fn failed(&mut self, change: &LockChange) {
        self.pending.remove(change.key());
        // A refused release or expiry leaves the key free anyway: the lease is over by the
        // table's rule, and the next grant records what it replaced.
    }

    /// Leases that ran out by `now_ms`, taken out of the table, to be logged as `Expired`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<LockChange> {
        let gone: Vec<String> = self
            .held
            .iter()
            .filter(|(k, h)| h.expires_at_ms <= now_ms && !self.pending.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .filter_map(|k| self.held.remove(&k))
            .map(LockChange::Expired)
            .collect()
    }

    /// Locks a session holds, taken out of the table, to be logged as `Released` (the
    /// session is gone: offline clients hold no locks).
    pub fn release_session(&mut self, session: converge_proto::SessionId) -> Vec<LockChange> {
        let gone: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.peer.session == session)
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .filter_map(|k| self.held.remove(&k))
            .map(LockChange::Released)
            .collect()
    }

    /// The earliest expiry in the table.
    pub fn next_expiry(&self) -> Option<u64> {
        self.held
            .values()
            .filter(|h| !self.pending.contains_key(&h.key))
            .map(|h| h.expires_at_ms)
            .min()
    }

    /// Checks a mutation's fence: valid only if it is the current, unexpired token of some
    /// key, held by the same user.
    pub fn check_fence(&self, fence: FencingToken, peer: &Peer, now_ms: u64) -> FenceCheck {
        match self.held.values().find(|h| h.token == fence) {
            Some(h) if h.expires_at_ms <= now_ms => FenceCheck::Stale {
                message: format!(
                    "fence {} expired: the lease on {:?} ran out",
                    fence.get(),
                    h.key
                ),
            },
            Some(h) if h.peer.user != peer.user => FenceCheck::Stale {
                message: format!("fence {} belongs to another user", fence.get()),
            },
            Some(h) => FenceCheck::Valid {
                key: h.key.clone(),
                token: fence,
            },
            None => FenceCheck::Stale {
                message: format!(
                    "fence {} is not the current token of any lock in this document",
                    fence.get()
                ),
            },
        }
    }
}

fn check_ttl(ttl_ms: u64) -> Result<(), LockRefusal> {
    if !(MIN_LOCK_TTL_MS..=MAX_LOCK_TTL_MS).contains(&ttl_ms) {
        return Err(refuse(
            ErrorCode::BadLockRequest,
            format!("a lease lasts {MIN_LOCK_TTL_MS} to {MAX_LOCK_TTL_MS} ms, not {ttl_ms}"),
        ));
    }
    Ok(())
}

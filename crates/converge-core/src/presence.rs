//! One document's presence: each session's app-defined state, never logged.
//!
//! Updates are coalesced: a session's states go out at most 20 per second, by a token bucket
//! that refills one update per [`PRESENCE_INTERVAL_MS`] and holds two (so an app that sends at
//! exactly 20 Hz, with the jitter of real timers, is never held back, while a faster one is).
//! One that arrives without a token waits and is replaced by any newer one (latest wins). A
//! state not renewed within [`PRESENCE_TTL_MS`] expires.

use std::collections::BTreeMap;

use converge_proto::{Blob, Peer, SessionId};

/// One presence update of a session goes out per this many ms on average (20 per second).
pub const PRESENCE_INTERVAL_MS: u64 = 50;

/// The bucket holds this much credit: two updates' worth.
const BUCKET_MS: u64 = 2 * PRESENCE_INTERVAL_MS;
/// A state not renewed for this long is dropped and its peer reported as left.
pub const PRESENCE_TTL_MS: u64 = 30_000;

#[derive(Debug, Clone)]
struct Entry {
    peer: Peer,
    state: Blob,
    renewed_ms: u64,
    /// Sending credit in ms as of `credit_at` (an update costs `PRESENCE_INTERVAL_MS`).
    credit: u64,
    credit_at: u64,
    /// A newer state waits for credit.
    waiting: bool,
}

impl Entry {
    fn credit_now(&self, now_ms: u64) -> u64 {
        (self.credit + now_ms.saturating_sub(self.credit_at)).min(BUCKET_MS)
    }

    /// Takes one update's credit if there is enough.
    fn spend(&mut self, now_ms: u64) -> bool {
        let credit = self.credit_now(now_ms);
        self.credit_at = now_ms.max(self.credit_at);
        if credit >= PRESENCE_INTERVAL_MS {
            self.credit = credit - PRESENCE_INTERVAL_MS;
            true
        } else {
            self.credit = credit;
            false
        }
    }

    /// When a waiting state will have credit.
    fn ready_at(&self) -> u64 {
        self.credit_at + PRESENCE_INTERVAL_MS.saturating_sub(self.credit)
    }
}

/// What the hub should send after a presence event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceOut {
    /// `peer`'s state, to every other subscriber.
    State { peer: Peer, state: Blob },
    /// `peer` left (disconnect, unsubscribe or expiry), to every other subscriber.
    Left { peer: Peer },
}

/// One document's presence states.
#[derive(Debug, Default, Clone)]
pub struct PresenceTable {
    by_session: BTreeMap<SessionId, Entry>,
}

impl PresenceTable {
    /// A session set its state: it goes out now, or once the session has sending credit
    /// again ([`Self::due`]).
    pub fn set(&mut self, peer: Peer, state: Blob, now_ms: u64) -> Option<PresenceOut> {
        let session = peer.session;
        let e = self.by_session.entry(session).or_insert(Entry {
            peer,
            state: Blob(Vec::new()),
            renewed_ms: now_ms,
            credit: BUCKET_MS,
            credit_at: now_ms,
            waiting: false,
        });
        e.state = state;
        e.renewed_ms = now_ms;
        if e.spend(now_ms) {
            e.waiting = false;
            Some(PresenceOut::State {
                peer: e.peer.clone(),
                state: e.state.clone(),
            })
        } else {
            e.waiting = true;
            None
        }
    }

    /// The session is gone from the document.
    pub fn remove(&mut self, session: SessionId) -> Option<PresenceOut> {
        self.by_session
            .remove(&session)
            .map(|e| PresenceOut::Left { peer: e.peer })
    }

    /// Coalesced states whose interval has passed, and states that expired.
    pub fn due(&mut self, now_ms: u64) -> Vec<PresenceOut> {
        let mut out = Vec::new();
        let expired: Vec<SessionId> = self
            .by_session
            .iter()
            .filter(|(_, e)| now_ms >= e.renewed_ms.saturating_add(PRESENCE_TTL_MS))
            .map(|(s, _)| *s)
            .collect();
        for s in expired {
            out.extend(self.remove(s));
        }
        for e in self.by_session.values_mut() {
            if e.waiting && e.spend(now_ms) {
                e.waiting = false;
                out.push(PresenceOut::State {
                    peer: e.peer.clone(),
                    state: e.state.clone(),
                });
            }
        }
        out
    }

    /// When [`Self::due`] next has something to do.
    pub fn next_due(&self) -> Option<u64> {
        self.by_session
            .values()
            .map(|e| {
                let expiry = e.renewed_ms.saturating_add(PRESENCE_TTL_MS);
                if e.waiting {
                    expiry.min(e.ready_at())
                } else {
                    expiry
                }
            })
            .min()
    }

    /// Every current state (what a new subscriber is sent), latest known values.
    pub fn snapshot(&self) -> Vec<(Peer, Blob)> {
        self.by_session
            .values()
            .map(|e| (e.peer.clone(), e.state.clone()))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }
}

//! One document's presence: each session's app-defined state, never logged.
//!
//! Updates are coalesced: a session's state goes out at most once per
//! [`PRESENCE_INTERVAL_MS`] (20 per second); one that arrives sooner waits and is replaced by
//! any newer one (latest wins). A state not renewed within [`PRESENCE_TTL_MS`] expires.

use std::collections::BTreeMap;

use converge_proto::{Blob, Peer, SessionId};

/// Least time between two presence updates of one session that go out (20 per second).
pub const PRESENCE_INTERVAL_MS: u64 = 50;
/// A state not renewed for this long is dropped and its peer reported as left.
pub const PRESENCE_TTL_MS: u64 = 30_000;

#[derive(Debug, Clone)]
struct Entry {
    peer: Peer,
    state: Blob,
    renewed_ms: u64,
    /// When this session's state last went out (`None`: never).
    sent_ms: Option<u64>,
    /// A newer state waits for the interval to pass.
    waiting: bool,
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
    /// A session set its state: it goes out now, or when the interval since the last one it
    /// sent has passed ([`Self::due`]).
    pub fn set(&mut self, peer: Peer, state: Blob, now_ms: u64) -> Option<PresenceOut> {
        let session = peer.session;
        let e = self.by_session.entry(session).or_insert(Entry {
            peer,
            state: Blob(Vec::new()),
            renewed_ms: now_ms,
            sent_ms: None,
            waiting: false,
        });
        e.state = state;
        e.renewed_ms = now_ms;
        match e.sent_ms {
            Some(sent) if now_ms < sent.saturating_add(PRESENCE_INTERVAL_MS) => {
                e.waiting = true;
                None
            }
            _ => {
                e.sent_ms = Some(now_ms);
                e.waiting = false;
                Some(PresenceOut::State {
                    peer: e.peer.clone(),
                    state: e.state.clone(),
                })
            }
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
            if e.waiting
                && e.sent_ms
                    .is_none_or(|s| now_ms >= s.saturating_add(PRESENCE_INTERVAL_MS))
            {
                e.waiting = false;
                e.sent_ms = Some(now_ms);
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
                match (e.waiting, e.sent_ms) {
                    (true, Some(s)) => expiry.min(s.saturating_add(PRESENCE_INTERVAL_MS)),
                    _ => expiry,
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

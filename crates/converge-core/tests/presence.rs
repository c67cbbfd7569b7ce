//! Presence timing, with the time passed in: coalescing to 20 updates a second (latest wins)
//! and expiry 30 s after the last renewal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use converge_core::{PRESENCE_INTERVAL_MS, PRESENCE_TTL_MS, PresenceOut, PresenceTable};
use converge_proto::{Blob, Peer, SessionId, UserId};

fn peer(n: u64) -> Peer {
    Peer {
        session: SessionId(n),
        user: UserId::new(format!("user{n}")).unwrap(),
    }
}

fn state(out: Option<PresenceOut>) -> Option<Vec<u8>> {
    match out? {
        PresenceOut::State { state, .. } => Some(state.into_vec()),
        PresenceOut::Left { .. } => None,
    }
}

#[test]
fn updates_beyond_the_rate_are_coalesced_and_the_latest_wins() {
    let mut t = PresenceTable::default();
    // The bucket holds two updates: the first two go out at once.
    assert_eq!(state(t.set(peer(1), Blob(vec![1]), 0)), Some(vec![1]));
    assert_eq!(state(t.set(peer(1), Blob(vec![2]), 10)), Some(vec![2]));
    // Then one per 50 ms: these two wait, and only the latest goes out.
    assert_eq!(t.set(peer(1), Blob(vec![3]), 20), None);
    assert_eq!(t.set(peer(1), Blob(vec![4]), 49), None);
    assert_eq!(t.next_due(), Some(PRESENCE_INTERVAL_MS));
    assert!(t.due(PRESENCE_INTERVAL_MS - 1).is_empty());
    let out = t.due(PRESENCE_INTERVAL_MS);
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], PresenceOut::State { state, .. } if state.as_ref() == [4]));
    assert!(t.due(200).is_empty());
}

#[test]
fn steady_updates_at_twenty_hertz_with_jitter_are_never_held_back() {
    let mut t = PresenceTable::default();
    let mut at = 0u64;
    for n in 0..200u64 {
        // 50 ms apart on average, +-5 ms of timer jitter.
        at = n * PRESENCE_INTERVAL_MS + if n % 2 == 0 { 5 } else { 0 };
        assert!(
            t.set(peer(1), Blob(vec![n as u8]), at).is_some(),
            "update {n} held back"
        );
    }
    assert!(t.due(at).is_empty());
}

#[test]
fn a_burst_of_updates_goes_out_at_most_twenty_times_a_second() {
    let mut t = PresenceTable::default();
    let mut sent = 0;
    for ms in 0..1000u64 {
        if t.set(peer(1), Blob(ms.to_le_bytes().to_vec()), ms)
            .is_some()
        {
            sent += 1;
        }
        sent += t.due(ms).len();
    }
    assert!(
        sent <= 1000 / PRESENCE_INTERVAL_MS as usize + 1,
        "{sent} sent"
    );
    assert!(
        sent >= 1000 / PRESENCE_INTERVAL_MS as usize - 1,
        "{sent} sent"
    );
}

#[test]
fn a_state_not_renewed_expires_and_its_peer_is_reported_left() {
    let mut t = PresenceTable::default();
    t.set(peer(1), Blob(vec![1]), 0);
    t.set(peer(2), Blob(vec![2]), 20_000);
    assert!(t.due(PRESENCE_TTL_MS - 1).is_empty());
    let out = t.due(PRESENCE_TTL_MS);
    assert_eq!(out, vec![PresenceOut::Left { peer: peer(1) }]);
    assert_eq!(t.snapshot().len(), 1);
    // Renewal keeps a state alive.
    t.set(peer(2), Blob(vec![3]), 45_000);
    assert!(t.due(20_000 + PRESENCE_TTL_MS).is_empty());
    assert_eq!(
        t.due(45_000 + PRESENCE_TTL_MS),
        vec![PresenceOut::Left { peer: peer(2) }]
    );
    assert!(t.is_empty());
}

#[test]
fn leaving_reports_the_peer_once() {
    let mut t = PresenceTable::default();
    t.set(peer(1), Blob(vec![1]), 0);
    assert_eq!(
        t.remove(SessionId(1)),
        Some(PresenceOut::Left { peer: peer(1) })
    );
    assert_eq!(t.remove(SessionId(1)), None);
}

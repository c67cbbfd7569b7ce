//! How a subscriber catches up: the one decision both shells must make the same way.

use converge_proto::{Epoch, Position, Seq};

/// What the shell knows about a document's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadView {
    pub epoch: Epoch,
    /// Durable entries go up to here.
    pub last_seq: Seq,
    /// Entries at or below this seq are gone (compacted into the snapshot).
    pub compacted_through: Seq,
    /// The newest snapshot's seq (`Seq(0)`: none).
    pub snapshot_seq: Seq,
}

/// What to send a subscriber before it goes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchupPlan {
    /// The entries from `from` to the head, in order.
    Replay { from: Seq },
    /// A whole snapshot and the entries after it. `reconcile`: the client may hold changes
    /// the server lacks (its position is from another epoch, or ahead of the stream).
    Snapshot { reconcile: bool },
}

/// Decides how a subscriber at `after` catches up. Never a partial replay: a replay always
/// starts right after what the client holds, or the client gets everything.
pub fn plan_catchup(after: Option<Position>, head: HeadView) -> CatchupPlan {
    match after {
        // A client with nothing loads the newest snapshot and the tail after it (one load, a
        // short apply) rather than the whole stream; without a snapshot, the whole stream.
        None if head.compacted_through == Seq(0) && head.snapshot_seq == Seq(0) => {
            CatchupPlan::Replay { from: Seq(1) }
        }
        None => CatchupPlan::Snapshot { reconcile: false },
        Some(p) if p.epoch == head.epoch && p.seq <= head.last_seq => {
            if p.seq >= head.compacted_through {
                CatchupPlan::Replay { from: p.seq.next() }
            } else {
                CatchupPlan::Snapshot { reconcile: false }
            }
        }
        Some(_) => CatchupPlan::Snapshot { reconcile: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: HeadView = HeadView {
        epoch: Epoch(2),
        last_seq: Seq(100),
        compacted_through: Seq(40),
        snapshot_seq: Seq(40),
    };

    fn at(e: u64, s: u64) -> Option<Position> {
        Some(Position {
            epoch: Epoch(e),
            seq: Seq(s),
        })
    }

    #[test]
    fn plans() {
        assert_eq!(
            plan_catchup(at(2, 50), HEAD),
            CatchupPlan::Replay { from: Seq(51) }
        );
        assert_eq!(
            plan_catchup(at(2, 40), HEAD),
            CatchupPlan::Replay { from: Seq(41) }
        );
        assert_eq!(
            plan_catchup(at(2, 100), HEAD),
            CatchupPlan::Replay { from: Seq(101) }
        );
        assert_eq!(
            plan_catchup(at(2, 39), HEAD),
            CatchupPlan::Snapshot { reconcile: false }
        );
        assert_eq!(
            plan_catchup(None, HEAD),
            CatchupPlan::Snapshot { reconcile: false }
        );
        assert_eq!(
            plan_catchup(at(2, 101), HEAD),
            CatchupPlan::Snapshot { reconcile: true }
        );
        assert_eq!(
            plan_catchup(at(1, 10), HEAD),
            CatchupPlan::Snapshot { reconcile: true }
        );
        let fresh = HeadView {
            compacted_through: Seq(0),
            snapshot_seq: Seq(0),
            ..HEAD
        };
        // A snapshot without compaction: a fresh client still starts from it.
        let snapshotted = HeadView {
            compacted_through: Seq(0),
            ..HEAD
        };
        assert_eq!(
            plan_catchup(None, snapshotted),
            CatchupPlan::Snapshot { reconcile: false }
        );
        assert_eq!(
            plan_catchup(at(2, 10), snapshotted),
            CatchupPlan::Replay { from: Seq(11) }
        );
        assert_eq!(
            plan_catchup(None, fresh),
            CatchupPlan::Replay { from: Seq(1) }
        );
    }
}

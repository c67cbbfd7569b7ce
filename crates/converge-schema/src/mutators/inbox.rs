//! Inbox mutators: the server delivers notifications; the user marks them read and sets
//! preferences.
//!
//! Why mutators and not plain edits: delivery applies retention, which must count what the
//! log holds, not what one client saw; and marking read must never overwrite the first
//! read time, or a user's second device would move it.

use automerge::AutoCommit;
use converge_core::{Ctx, Mutator, Rejection};
use converge_proto::{ErrorCode, UserId};
use serde::{Deserialize, Serialize};

use super::edit;
use crate::{Inbox, Notification, Preferences, Retention};

/// At most this many ids per [`MarkRead`]: a mutation is one log entry, and a client that
/// wants to clear everything sends `all` instead.
const MAX_MARK_READ_IDS: usize = 1000;

/// Puts a notification into a user's inbox, then applies retention. Server only.
///
/// Refused when the caller is not the server, or when the inbox belongs to another user.
/// Delivering an id the inbox already holds changes nothing: the server may retry a delivery
/// it is not sure was logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliverNotification {
    /// The user the inbox belongs to: set on the first delivery, checked on every later one.
    pub owner: String,
    /// The notification's id, chosen by the server, so a retry names the same one.
    pub id: String,
    /// Written with `read_at` cleared: a new notification is unread.
    pub notification: Notification,
    /// Applied after the insert, at the server's time.
    pub retention: Retention,
}

impl Mutator for DeliverNotification {
    const NAME: &'static str = "inbox.deliver";
    type Args = Self;

    fn apply(doc: &mut AutoCommit, args: Self, ctx: &Ctx) -> Result<(), Rejection> {
        // Inboxes are written by the server: a client that could deliver could put a fake
        // "critical" alert in anyone's inbox it can write to.
        if ctx.user != UserId::server() {
            return Err(Rejection::with_code(
                ErrorCode::Forbidden,
                "only the server delivers notifications",
            ));
        }
        // An empty owner would leave the inbox claimable by the next delivery, and an empty
        // id cannot be named by mark_read.
        if args.owner.is_empty() {
            return Err(Rejection::new("a delivery must name the inbox's owner"));
        }
        if args.id.is_empty() {
            return Err(Rejection::new("a notification id cannot be empty"));
        }
        edit(doc, |inbox: &mut Inbox| {
            // A delivery for another user is a routing bug: writing it would show one user's
            // notifications to another.
            if !inbox.owner.is_empty() && inbox.owner != args.owner {
                return Err(Rejection::new(format!(
                    "this inbox belongs to {:?}, not {:?}",
                    inbox.owner, args.owner
                )));
            }
            if inbox.notifications.contains_key(&args.id) {
                return Ok(());
            }
            inbox.owner = args.owner;
            let mut notification = args.notification;
            notification.read_at = None;
            // Pruning here keeps every inbox bounded without a separate sweeper, and counts
            // exactly what the log holds. It makes room among the others: the new one is
            // never pruned for count, since it was just delivered (and may be pushed live).
            let room = Retention {
                max_items: args.retention.max_items.saturating_sub(1),
                ..args.retention
            };
            inbox.prune(ctx.now_ms, &room);
            inbox.notifications.insert(args.id, notification);
            Ok(())
        })
    }
}

/// Marks notifications read, at the caller's time.
///
/// Ids the inbox does not hold (pruned since, or never delivered) are ignored: the user's
/// intent ("I have seen these") is met either way. A notification already read keeps its
/// first `read_at`. Refused with more than 1000 ids.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MarkRead {
    pub ids: Vec<String>,
    /// Marks every unread notification, whatever `ids` holds.
    pub all: bool,
}

impl Mutator for MarkRead {
    const NAME: &'static str = "inbox.mark_read";
    type Args = Self;

    fn apply(doc: &mut AutoCommit, args: Self, ctx: &Ctx) -> Result<(), Rejection> {
        if args.ids.len() > MAX_MARK_READ_IDS {
            return Err(Rejection::new(format!(
                "at most {MAX_MARK_READ_IDS} ids per mark_read (got {}); use all",
                args.ids.len()
            )));
        }
        // Times past i64::MAX milliseconds are 292 million years away; saturate rather than
        // refuse.
        let now = i64::try_from(ctx.now_ms).unwrap_or(i64::MAX);
        edit(doc, |inbox: &mut Inbox| {
            let mark = |n: &mut Notification| {
                if n.read_at.is_none() {
                    n.read_at = Some(now);
                }
            };
            if args.all {
                inbox.notifications.values_mut().for_each(mark);
            } else {
                for id in &args.ids {
                    if let Some(n) = inbox.notifications.get_mut(id) {
                        mark(n);
                    }
                }
            }
            Ok(())
        })
    }
}

/// Replaces the inbox's preferences. Refused when they are not valid (see
/// [`Preferences::validate`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SetPreferences {
    pub preferences: Preferences,
}

impl Mutator for SetPreferences {
    const NAME: &'static str = "inbox.set_preferences";
    type Args = Self;

    fn apply(doc: &mut AutoCommit, args: Self, _ctx: &Ctx) -> Result<(), Rejection> {
        // The server reads preferences on every delivery: invalid quiet hours would silently
        // never (or always) match, and unbounded lists would cost every delivery.
        args.preferences.validate().map_err(Rejection::new)?;
        edit(doc, |inbox: &mut Inbox| {
            inbox.preferences = args.preferences;
            Ok(())
        })
    }
}

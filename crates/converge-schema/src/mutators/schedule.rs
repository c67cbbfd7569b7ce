//! Schedule mutators: book, move and cancel events without ever double-booking a resource.
//!
//! Why a mutator and not a plain edit: two people who book the last free slot offline both
//! succeed locally, and a CRDT merge would keep both bookings. The server runs these mutators
//! one after another on the logged document, so the second booking sees the first and is
//! refused.

use automerge::AutoCommit;
use converge_core::{Ctx, Mutator, Rejection};
use serde::{Deserialize, Serialize};

use super::edit;
use crate::{Event, Schedule};

/// Books a new event on a resource.
///
/// Refused when the id is taken, when the event does not end after it starts, or when it
/// overlaps another booking of the same resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookEvent {
    /// The new event's id, chosen by the caller (e.g. a UUID) so that the optimistic run and
    /// the server's run create the same key.
    pub id: String,
    pub title: String,
    /// The booked resource's id (a key of [`Schedule::resources`]).
    pub resource: String,
    /// Start, UTC milliseconds since the Unix epoch (inclusive).
    pub start: i64,
    /// End, UTC milliseconds since the Unix epoch (exclusive).
    pub end: i64,
    pub attendees: Vec<String>,
}

impl Mutator for BookEvent {
    const NAME: &'static str = "schedule.book";
    type Args = Self;

    fn apply(doc: &mut AutoCommit, args: Self, _ctx: &Ctx) -> Result<(), Rejection> {
        edit(doc, |s: &mut Schedule| {
            // Ids are chosen by callers; booking over an existing id would replace someone
            // else's booking without telling them.
            if s.events.contains_key(&args.id) {
                return Err(Rejection::new(format!(
                    "event {:?} already exists",
                    args.id
                )));
            }
            let mut event = Event::new(&args.title, &args.resource, args.start, args.end);
            event.attendees = args.attendees;
            check_slot(s, &event)?;
            s.events.insert(args.id, event);
            Ok(())
        })
    }
}

/// Moves an event to another time and, optionally, another resource.
///
/// Refused when the event does not exist, when the new times do not make a slot, or when the
/// slot overlaps another booking of the target resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveEvent {
    pub id: String,
    /// New start, UTC milliseconds (inclusive).
    pub start: i64,
    /// New end, UTC milliseconds (exclusive).
    pub end: i64,
    /// The resource to move the event to; `None` keeps its resource.
    pub resource: Option<String>,
    /// Demand the lock on [`event_lock_key`]`(id)`: apps that lock an event while a person
    /// edits it set this, so that an edit made after the lock was lost (expired, or taken over
    /// by someone else) is refused with `StaleFence`. Apps without locks leave it `false`.
    ///
    /// The caller chooses the flag, so it guards against honest mistakes, not against a client
    /// that wants to skip the lock: an app that must enforce locks registers its own mutator
    /// that always calls [`Ctx::require_lock`].
    pub require_lock: bool,
}

impl Mutator for MoveEvent {
    const NAME: &'static str = "schedule.move";
    type Args = Self;

    fn apply(doc: &mut AutoCommit, args: Self, ctx: &Ctx) -> Result<(), Rejection> {
        if args.require_lock {
            ctx.require_lock(&event_lock_key(&args.id))?;
        }
        edit(doc, |s: &mut Schedule| {
            // Take the event out while checking its new slot: its old slot must not count
            // against it (moving a meeting ten minutes later overlaps where it was). If the
            // check fails, `edit` writes nothing, so the removal is never seen.
            let Some(mut event) = s.events.remove(&args.id) else {
                return Err(no_such_event(&args.id));
            };
            event.start = args.start;
            event.end = args.end;
            if let Some(resource) = args.resource {
                event.resource = resource;
            }
            check_slot(s, &event)?;
            s.events.insert(args.id, event);
            Ok(())
        })
    }
}

/// Cancels (deletes) an event. Refused when the event does not exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelEvent {
    pub id: String,
    /// Demand the lock on [`event_lock_key`]`(id)`. See [`MoveEvent::require_lock`].
    pub require_lock: bool,
}

impl Mutator for CancelEvent {
    const NAME: &'static str = "schedule.cancel";
    type Args = Self;

    fn apply(doc: &mut AutoCommit, args: Self, ctx: &Ctx) -> Result<(), Rejection> {
        if args.require_lock {
            ctx.require_lock(&event_lock_key(&args.id))?;
        }
        edit(doc, |s: &mut Schedule| {
            // Cancelling an event that is not there is refused rather than ignored: the
            // caller's view is out of date (someone cancelled it first) and should be told.
            match s.events.remove(&args.id) {
                Some(_) => Ok(()),
                None => Err(no_such_event(&args.id)),
            }
        })
    }
}

/// The lock key that guards one event: the key an app locks before editing the event, and the
/// one [`MoveEvent`] and [`CancelEvent`] demand when `require_lock` is set.
pub fn event_lock_key(id: &str) -> String {
    format!("event:{id}")
}

/// The rule that keeps a resource from being double-booked: `event` must be a real interval
/// that overlaps no booking of its resource in `s`.
fn check_slot(s: &Schedule, event: &Event) -> Result<(), Rejection> {
    // An empty or reversed interval overlaps nothing, so it would slip past the overlap check
    // below; the schedule's JSON import refuses it too.
    if event.end <= event.start {
        return Err(Rejection::new(format!(
            "an event must end after it starts (start {}, end {})",
            event.start, event.end
        )));
    }
    // Intervals are half-open, [start, end): a booking may start the moment the previous one
    // ends, so back-to-back shifts are allowed.
    let clash = s
        .events
        .iter()
        .find(|(_, other)| other.resource == event.resource && other.overlaps(event));
    if let Some((id, other)) = clash {
        return Err(Rejection::new(format!(
            "{:?} is already booked from {} to {} by event {id:?}",
            event.resource, other.start, other.end
        )));
    }
    Ok(())
}

fn no_such_event(id: &str) -> Rejection {
    Rejection::new(format!("there is no event {id:?}"))
}

//! The mutators for schedules, dashboards and inboxes: server-authoritative edits with rules.
//!
//! Each mutator is a struct of arguments that is also the [`Mutator`] that applies them, so a
//! caller builds the value it sends (`BookEvent { .. }`) and both sides run the same code.
//! They are meant to be read and copied: every rule says why it exists.
//!
//! Every mutator reads the whole document as its typed value, checks its rules, changes the
//! value and writes back only what changed (see [`edit`]). A rule that fails returns a
//! [`Rejection`] before anything is written; a document without the expected shape is a
//! rejection too, never a panic.

mod dashboard;
mod inbox;
mod schedule;

pub use dashboard::{AddWidget, MoveWidget, RemoveWidget};
pub use inbox::{DeliverNotification, MarkRead, SetPreferences};
pub use schedule::{BookEvent, CancelEvent, MoveEvent, event_lock_key};

use automerge::AutoCommit;
use autosurgeon::{Hydrate, Reconcile};
use converge_core::{Mutators, Rejection};

/// Registers every mutator of this crate, under the names in their `NAME` constants:
/// "schedule.book", "schedule.move", "schedule.cancel", "dashboard.add_widget",
/// "dashboard.move_widget", "dashboard.remove_widget", "inbox.deliver", "inbox.mark_read" and
/// "inbox.set_preferences".
///
/// ```
/// use automerge::AutoCommit;
/// use converge_core::{Ctx, Mutator, Mutators};
/// use converge_schema::{BookEvent, Schedule, create, read, register_all};
///
/// let mut mutators = Mutators::new();
/// register_all(&mut mutators);
///
/// let mut doc = AutoCommit::new();
/// create(&mut doc, &Schedule::new("Ward 3 rota", "Europe/Paris")).unwrap();
/// // Commit before running a mutator: a refusal rolls back every uncommitted edit.
/// doc.commit();
/// let book = BookEvent {
///     id: "e1".into(),
///     title: "Night shift".into(),
///     resource: "bed-1".into(),
///     start: 0,
///     end: 3_600_000,
///     attendees: vec!["ana".into()],
/// };
/// let args = converge_proto::encode_args(&book).unwrap();
/// mutators.run(BookEvent::NAME, &mut doc, &args, &Ctx::for_tests()).unwrap();
/// doc.commit(); // the shell commits a mutator's edits
///
/// // The same slot again is refused, and the document keeps the first booking only.
/// let again = BookEvent { id: "e2".into(), ..book };
/// let args = converge_proto::encode_args(&again).unwrap();
/// assert!(mutators.run(BookEvent::NAME, &mut doc, &args, &Ctx::for_tests()).is_err());
/// let s: Schedule = read(&doc).unwrap();
/// assert_eq!(s.events.len(), 1);
/// ```
pub fn register_all(m: &mut Mutators) {
    m.register::<BookEvent>()
        .register::<MoveEvent>()
        .register::<CancelEvent>()
        .register::<AddWidget>()
        .register::<MoveWidget>()
        .register::<RemoveWidget>();
    register_inbox(m);
}

/// Registers the inbox mutators: "inbox.deliver", "inbox.mark_read" and
/// "inbox.set_preferences" (a client that only shows notifications needs no others).
pub fn register_inbox(m: &mut Mutators) {
    m.register::<DeliverNotification>()
        .register::<MarkRead>()
        .register::<SetPreferences>();
}

/// Reads the document as `T`, lets `f` check its rules and change the value, then writes back
/// only what changed. If `f` refuses, nothing is written, even if it had already changed the
/// value: a rejected mutation must leave no trace.
fn edit<T: Hydrate + Reconcile>(
    doc: &mut AutoCommit,
    f: impl FnOnce(&mut T) -> Result<(), Rejection>,
) -> Result<(), Rejection> {
    let mut value: T = autosurgeon::hydrate(doc).map_err(|e| {
        Rejection::new(format!(
            "the document does not have the expected shape: {e}"
        ))
    })?;
    f(&mut value)?;
    autosurgeon::reconcile(doc, &value)
        .map_err(|e| Rejection::new(format!("the edit cannot be written: {e}")))
}

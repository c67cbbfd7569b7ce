//! converge-schema: typed documents over automerge.
//!
//! [`Schedule`], [`Dashboard`], [`Widget`] and [`Inbox`] are plain Rust structs that hydrate from
//! and reconcile into automerge documents (autosurgeon). Free-form text (titles, notes) is CRDT
//! text, so concurrent edits to it merge character by character. Concurrent writes to one scalar
//! (a start time, a resource) keep every competing value: [`conflicts`] lists them so an app can
//! show "local vs remote", and [`resolve`] writes the one a person picked as an ordinary change.
//!
//! Edits that must respect a rule ("a bed is booked once at a time") go through mutators, which
//! the server re-runs in order and may refuse: [`BookEvent`], [`MoveEvent`], [`CancelEvent`],
//! [`AddWidget`], [`MoveWidget`], [`RemoveWidget`], and for inboxes [`DeliverNotification`],
//! [`MarkRead`] and [`SetPreferences`]; [`register_all`] registers them.
//!
//! ```
//! use automerge::AutoCommit;
//! use converge_schema::{Schedule, Event, create, read, update};
//!
//! # fn main() -> Result<(), converge_schema::SchemaError> {
//! let mut doc = AutoCommit::new();
//! create(&mut doc, &Schedule::new("Ward 3 rota", "Europe/Paris"))?;
//! update(&mut doc, |s: &mut Schedule| {
//!     s.events.insert("e1".into(), Event::new("Night shift", "bed-1", 0, 3_600_000));
//! })?;
//! let s: Schedule = read(&doc)?;
//! assert_eq!(s.events["e1"].title.as_str(), "Night shift");
//! # Ok(()) }
//! ```

mod conflict;
mod dashboard;
mod error;
mod inbox;
mod json;
mod kind;
mod mutators;
mod schedule;
mod text_serde;
mod widget;

pub use autosurgeon::Text;
pub use conflict::{PathSegment, conflicts, resolve};
pub use dashboard::{Dashboard, WidgetRef};
pub use error::SchemaError;
pub use inbox::{Inbox, Notification, Preferences, Priority, QuietHours, Retention, UnreadCounts};
pub use json::to_json;
pub use kind::{DocKind, TypedDoc};
pub use mutators::{
    AddWidget, BookEvent, CancelEvent, DeliverNotification, MarkRead, MoveEvent, MoveWidget,
    RemoveWidget, SetPreferences, event_lock_key, register_all, register_inbox,
};
pub use schedule::{Event, Resource, Schedule};
pub use widget::{DataPoint, Widget};

use automerge::AutoCommit;
use autosurgeon::{Hydrate, Reconcile};

/// Writes `value` as the whole document (the first state of a new document).
pub fn create<T: Reconcile>(doc: &mut AutoCommit, value: &T) -> Result<(), SchemaError> {
    autosurgeon::reconcile(doc, value)?;
    Ok(())
}

/// Reads the document as `T`.
pub fn read<T: Hydrate>(doc: &impl autosurgeon::ReadDoc) -> Result<T, SchemaError> {
    Ok(autosurgeon::hydrate(doc)?)
}

/// Reads the document as `T`, lets `f` change it, and writes back only what changed (text edits
/// become splices, so they merge with concurrent edits).
pub fn update<T, R>(doc: &mut AutoCommit, f: impl FnOnce(&mut T) -> R) -> Result<R, SchemaError>
where
    T: Hydrate + Reconcile,
{
    let mut value: T = autosurgeon::hydrate(doc)?;
    let r = f(&mut value);
    autosurgeon::reconcile(doc, &value)?;
    Ok(r)
}

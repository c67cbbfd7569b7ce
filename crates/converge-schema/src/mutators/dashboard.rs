//! Dashboard mutators: add, move and remove widgets in the layout.
//!
//! Widgets are named by id, not by index: the server runs a mutation after every mutation
//! logged before it, so an index the caller saw may point at another widget by then, while an
//! id still names the one the person meant.

use automerge::AutoCommit;
use converge_core::{Ctx, Mutator, Rejection};
use serde::{Deserialize, Serialize};

use super::edit;
use crate::{Dashboard, WidgetRef};

/// Puts a widget on the dashboard.
///
/// Refused when the widget is already on it, or when `index` is past the end of the layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddWidget {
    pub widget: WidgetRef,
    /// Where in the layout: `None` appends; `Some(i)` inserts before the widget now at `i`
    /// (`i` may equal the layout's length, which appends).
    pub index: Option<usize>,
}

impl Mutator for AddWidget {
    const NAME: &'static str = "dashboard.add_widget";
    type Args = Self;

    fn apply(doc: &mut AutoCommit, args: Self, _ctx: &Ctx) -> Result<(), Rejection> {
        edit(doc, |d: &mut Dashboard| {
            // A widget appears once per dashboard, so that moving or removing it by id is
            // never ambiguous.
            if position(d, &args.widget.widget).is_ok() {
                return Err(Rejection::new(format!(
                    "widget {:?} is already on the dashboard",
                    args.widget.widget
                )));
            }
            let len = d.layout.len();
            let index = args.index.unwrap_or(len);
            if index > len {
                return Err(Rejection::new(format!(
                    "index {index} is past the end of the layout ({len} widgets)"
                )));
            }
            d.layout.insert(index, args.widget);
            Ok(())
        })
    }
}

/// Moves a widget to another place in the layout.
///
/// Refused when the widget is not on the dashboard, or when `to` is not an index of the layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveWidget {
    /// The widget document's id.
    pub widget: String,
    /// The widget's index in the layout after the move.
    pub to: usize,
}

impl Mutator for MoveWidget {
    const NAME: &'static str = "dashboard.move_widget";
    type Args = Self;

    fn apply(doc: &mut AutoCommit, args: Self, _ctx: &Ctx) -> Result<(), Rejection> {
        edit(doc, |d: &mut Dashboard| {
            let from = position(d, &args.widget)?;
            let len = d.layout.len();
            if args.to >= len {
                return Err(Rejection::new(format!(
                    "index {} is outside the layout ({len} widgets)",
                    args.to
                )));
            }
            // `to` < len, so after the removal it is at most the new length: insert is safe.
            let widget = d.layout.remove(from);
            d.layout.insert(args.to, widget);
            Ok(())
        })
    }
}

/// Takes a widget off the dashboard (its document stays). Refused when it is not on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoveWidget {
    /// The widget document's id.
    pub widget: String,
}

impl Mutator for RemoveWidget {
    const NAME: &'static str = "dashboard.remove_widget";
    type Args = Self;

    fn apply(doc: &mut AutoCommit, args: Self, _ctx: &Ctx) -> Result<(), Rejection> {
        edit(doc, |d: &mut Dashboard| {
            // Removing a widget that is not there is refused rather than ignored: the
            // caller's view is out of date and should be told.
            let i = position(d, &args.widget)?;
            d.layout.remove(i);
            Ok(())
        })
    }
}

/// The index of the widget with this id in the layout, or a rejection naming it.
fn position(d: &Dashboard, widget: &str) -> Result<usize, Rejection> {
    d.layout
        .iter()
        .position(|w| w.widget == widget)
        .ok_or_else(|| Rejection::new(format!("widget {widget:?} is not on the dashboard")))
}

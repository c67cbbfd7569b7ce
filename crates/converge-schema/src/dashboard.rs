//! A dashboard: an ordered layout of widgets, each its own document.

use autosurgeon::{Hydrate, Reconcile, Text};
use serde::{Deserialize, Serialize};

/// A dashboard lays out widgets; the widgets' contents live in their own documents.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    #[serde(with = "crate::text_serde")]
    pub title: Text,
    #[serde(default)]
    pub layout: Vec<WidgetRef>,
}

/// A widget's place on a dashboard.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WidgetRef {
    /// The widget document's id (base58check).
    ///
    /// It is the list key for autosurgeon: when the layout is reordered, the moved entry is
    /// deleted and reinserted instead of every entry in between being rewritten field by
    /// field, so a concurrent edit of another widget's size stays on that widget.
    #[key]
    pub widget: String,
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Dashboard {
    /// An empty dashboard.
    pub fn new(title: &str) -> Self {
        Self {
            title: Text::with_value(title),
            layout: Vec::new(),
        }
    }
}

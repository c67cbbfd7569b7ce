//! A widget: one chart, counter or list on a dashboard.

use std::collections::BTreeMap;

use autosurgeon::{Hydrate, Reconcile, Text};
use serde::{Deserialize, Serialize};

/// A widget's kind, settings and data.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Widget {
    /// What renders it, e.g. "line-chart" or "counter".
    pub kind: String,
    #[serde(with = "crate::text_serde")]
    pub title: Text,
    /// Renderer settings as text key/values.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub data: Vec<DataPoint>,
}

/// One labelled value.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPoint {
    pub label: String,
    pub value: f64,
}

impl Widget {
    /// A widget with no settings and no data.
    pub fn new(kind: &str, title: &str) -> Self {
        Self {
            kind: kind.to_string(),
            title: Text::with_value(title),
            config: BTreeMap::new(),
            data: Vec::new(),
        }
    }
}

//! Document kinds by name, and import from JSON.

use std::fmt;
use std::str::FromStr;

use automerge::AutoCommit;

use crate::error::SchemaError;
use crate::{Dashboard, Inbox, Schedule, Widget, create};

/// The typed document kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Schedule,
    Dashboard,
    Widget,
    Inbox,
}

/// A parsed, validated document of some kind, ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedDoc {
    Schedule(Schedule),
    Dashboard(Dashboard),
    Widget(Widget),
    Inbox(Inbox),
}

impl DocKind {
    pub fn name(self) -> &'static str {
        match self {
            DocKind::Schedule => "schedule",
            DocKind::Dashboard => "dashboard",
            DocKind::Widget => "widget",
            DocKind::Inbox => "inbox",
        }
    }

    /// Parses and validates JSON for this kind. Nothing is written: an error here means the
    /// import stops before any document exists.
    pub fn parse_json(self, json: &str) -> Result<TypedDoc, SchemaError> {
        let err = |message: String| SchemaError::Json {
            kind: self.name(),
            message,
        };
        let typed = match self {
            DocKind::Schedule => {
                let s: Schedule = serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
                s.validate().map_err(err)?;
                TypedDoc::Schedule(s)
            }
            DocKind::Dashboard => {
                TypedDoc::Dashboard(serde_json::from_str(json).map_err(|e| err(e.to_string()))?)
            }
            DocKind::Widget => {
                TypedDoc::Widget(serde_json::from_str(json).map_err(|e| err(e.to_string()))?)
            }
            DocKind::Inbox => {
                let i: Inbox = serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
                // The same limits as the set_preferences mutator: an import is no back door.
                i.preferences.validate().map_err(err)?;
                TypedDoc::Inbox(i)
            }
        };
        Ok(typed)
    }
}

impl TypedDoc {
    /// Writes the value as the document's state.
    pub fn write(&self, doc: &mut AutoCommit) -> Result<(), SchemaError> {
        match self {
            TypedDoc::Schedule(v) => create(doc, v),
            TypedDoc::Dashboard(v) => create(doc, v),
            TypedDoc::Widget(v) => create(doc, v),
            TypedDoc::Inbox(v) => create(doc, v),
        }
    }
}

impl FromStr for DocKind {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "schedule" => Ok(DocKind::Schedule),
            "dashboard" => Ok(DocKind::Dashboard),
            "widget" => Ok(DocKind::Widget),
            "inbox" => Ok(DocKind::Inbox),
            other => Err(SchemaError::UnknownKind(other.to_string())),
        }
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

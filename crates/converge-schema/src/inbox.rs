//! A user's inbox of notifications (server-written).

use std::collections::BTreeMap;

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

/// Notifications keyed by id.
#[derive(Debug, Clone, PartialEq, Default, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbox {
    #[serde(default)]
    pub notifications: BTreeMap<String, Notification>,
}

/// How urgent a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    Medium,
    Low,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    pub priority: Priority,
    pub category: String,
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// UTC milliseconds.
    pub created_at: i64,
    /// UTC milliseconds; None while unread.
    #[serde(default)]
    pub read_at: Option<i64>,
}

impl Inbox {
    /// Unread notifications.
    pub fn unread(&self) -> impl Iterator<Item = (&String, &Notification)> {
        self.notifications
            .iter()
            .filter(|(_, n)| n.read_at.is_none())
    }
}

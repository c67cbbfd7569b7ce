//! A schedule: resources (rooms, beds, people) and events booked on them.

use std::collections::BTreeMap;

use autosurgeon::{Hydrate, Reconcile, Text};
use serde::{Deserialize, Serialize};

/// A shared schedule. Events are keyed by an app-chosen id, so concurrent additions never clash.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(with = "crate::text_serde")]
    pub title: Text,
    /// An IANA time zone name, e.g. "Europe/Paris"; times below are UTC milliseconds.
    pub timezone: String,
    #[serde(default)]
    pub resources: BTreeMap<String, Resource>,
    #[serde(default)]
    pub events: BTreeMap<String, Event>,
}

/// Something events are booked on.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub name: String,
}

/// One booking.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    #[serde(with = "crate::text_serde")]
    pub title: Text,
    /// The id of a resource in [`Schedule::resources`].
    pub resource: String,
    /// Start, UTC milliseconds since the Unix epoch.
    pub start: i64,
    /// End (exclusive), UTC milliseconds since the Unix epoch.
    pub end: i64,
    #[serde(default)]
    pub attendees: Vec<String>,
    #[serde(default = "Text::default", with = "crate::text_serde")]
    pub notes: Text,
}

impl Schedule {
    /// An empty schedule.
    pub fn new(title: &str, timezone: &str) -> Self {
        Self {
            title: Text::with_value(title),
            timezone: timezone.to_string(),
            resources: BTreeMap::new(),
            events: BTreeMap::new(),
        }
    }

    /// Checks what the types cannot: every event ends after it starts.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (id, e) in &self.events {
            if e.end <= e.start {
                return Err(format!("event {id:?} ends before it starts"));
            }
        }
        Ok(())
    }
}

impl Event {
    /// An event with no attendees and empty notes.
    pub fn new(title: &str, resource: &str, start: i64, end: i64) -> Self {
        Self {
            title: Text::with_value(title),
            resource: resource.to_string(),
            start,
            end,
            attendees: Vec::new(),
            notes: Text::default(),
        }
    }

    /// Whether two events overlap in time (ends are exclusive).
    pub fn overlaps(&self, other: &Event) -> bool {
        self.start < other.end && other.start < self.end
    }
}

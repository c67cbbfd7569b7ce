//! A user's inbox of notifications (server-written).
//!
//! The server delivers notifications into the inbox (see [`crate::DeliverNotification`]); the
//! user marks them read and sets their [`Preferences`], which decide what is pushed live. The
//! inbox is kept bounded by a [`Retention`] applied on every delivery.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

/// Minutes in a day: quiet hours are minutes of the local day, `0..MINUTES_PER_DAY`.
const MINUTES_PER_DAY: u16 = 1440;
/// At most this many muted categories: preferences are read on every delivery.
const MAX_MUTED_CATEGORIES: usize = 100;
/// A muted category name is at most this many bytes.
const MAX_CATEGORY_BYTES: usize = 64;

/// Notifications keyed by id, the user they belong to, and how they are delivered.
///
/// Every field may be missing from a document or from imported JSON and then reads as its
/// default: inboxes written before `owner` and `preferences` existed, and a brand-new empty
/// document, still read.
#[derive(Debug, Clone, PartialEq, Default, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbox {
    /// The user this inbox belongs to ("" until the server's first delivery).
    #[serde(default)]
    #[autosurgeon(missing = "Default::default")]
    pub owner: String,
    #[serde(default)]
    #[autosurgeon(missing = "Default::default")]
    pub notifications: BTreeMap<String, Notification>,
    #[serde(default)]
    #[autosurgeon(missing = "Default::default")]
    pub preferences: Preferences,
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

impl Priority {
    /// The priority named by its lowercase name ("critical", "high", "medium", "low").
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "critical" => Some(Priority::Critical),
            "high" => Some(Priority::High),
            "medium" => Some(Priority::Medium),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    /// The lowercase name, as in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    /// Low ranks first: retention removes lower priorities before higher ones.
    const fn rank(self) -> u8 {
        match self {
            Priority::Low => 0,
            Priority::Medium => 1,
            Priority::High => 2,
            Priority::Critical => 3,
        }
    }
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

/// What the user wants pushed live. Everything is stored in the inbox either way: these only
/// decide what interrupts the user now.
#[derive(Debug, Clone, PartialEq, Default, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Categories never pushed live (still stored in the inbox); critical ones are always
    /// pushed.
    #[serde(default)]
    #[autosurgeon(missing = "Default::default")]
    pub muted_categories: Vec<String>,
    #[serde(default)]
    #[autosurgeon(missing = "Default::default")]
    pub quiet_hours: Option<QuietHours>,
}

impl Preferences {
    /// Whether a notification is pushed live now: critical always; a muted category never;
    /// otherwise not during quiet hours.
    pub fn push_live(&self, priority: Priority, category: &str, now_ms: u64) -> bool {
        // Critical notifications are the ones a user must not miss (a shift cancelled within
        // the hour): no preference silences them.
        if priority == Priority::Critical {
            return true;
        }
        if self.muted_categories.iter().any(|c| c == category) {
            return false;
        }
        !self.quiet_hours.is_some_and(|q| q.contains(now_ms))
    }

    /// Checks the limits: valid quiet hours, at most 100 muted categories of at most 64 bytes
    /// each (preferences are read on every delivery, so they stay small).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(q) = &self.quiet_hours {
            q.validate()?;
        }
        if self.muted_categories.len() > MAX_MUTED_CATEGORIES {
            return Err(format!(
                "at most {MAX_MUTED_CATEGORIES} muted categories (got {})",
                self.muted_categories.len()
            ));
        }
        if let Some(c) = self
            .muted_categories
            .iter()
            .find(|c| c.len() > MAX_CATEGORY_BYTES)
        {
            return Err(format!(
                "a muted category is at most {MAX_CATEGORY_BYTES} bytes (got {})",
                c.len()
            ));
        }
        Ok(())
    }
}

/// A daily window, in the user's local time, when only critical notifications are pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Minute of the local day the window opens (inclusive), `0..1440`.
    pub start_minute: u16,
    /// Minute of the local day the window closes (exclusive), `0..1440`.
    pub end_minute: u16,
    /// Local time minus UTC, in minutes (e.g. 120 for UTC+2). A fixed offset, not a time
    /// zone: the client rewrites it when daylight saving time changes.
    pub utc_offset_minutes: i16,
}

impl QuietHours {
    /// Whether `now_ms` (UTC ms) falls in the quiet window, in local time (UTC + offset).
    /// start == end means never; start > end wraps midnight (22:00-07:00). Minutes >= 1440
    /// are invalid (see [`QuietHours::validate`]); with them the answer is meaningless but
    /// never a panic.
    pub fn contains(&self, now_ms: u64) -> bool {
        // u64::MAX / 60_000 fits in i64, and rem_euclid keeps the minute in 0..1440 for any
        // offset, negative ones included.
        let utc_minute = i64::try_from(now_ms / 60_000).unwrap_or(i64::MAX);
        let local = utc_minute
            .saturating_add(i64::from(self.utc_offset_minutes))
            .rem_euclid(i64::from(MINUTES_PER_DAY));
        let (start, end) = (i64::from(self.start_minute), i64::from(self.end_minute));
        match start.cmp(&end) {
            Ordering::Equal => false,
            Ordering::Less => start <= local && local < end,
            Ordering::Greater => local >= start || local < end,
        }
    }

    /// Start and end are minutes of a day (< 1440); the offset is within a day either way
    /// (-1440..=1440).
    pub fn validate(&self) -> Result<(), String> {
        for (name, minute) in [("start", self.start_minute), ("end", self.end_minute)] {
            if minute >= MINUTES_PER_DAY {
                return Err(format!(
                    "quiet hours {name} minute must be below {MINUTES_PER_DAY} (got {minute})"
                ));
            }
        }
        let day = MINUTES_PER_DAY as i16;
        if !(-day..=day).contains(&self.utc_offset_minutes) {
            return Err(format!(
                "quiet hours UTC offset must be within -{day}..={day} minutes (got {})",
                self.utc_offset_minutes
            ));
        }
        Ok(())
    }
}

/// How much an inbox keeps: the server applies it on every delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Notifications created longer ago than this are removed.
    pub max_age_ms: u64,
    /// At most this many notifications are kept.
    pub max_items: usize,
}

impl Default for Retention {
    /// 30 days, 500 notifications.
    fn default() -> Self {
        Retention {
            max_age_ms: 30 * 24 * 60 * 60 * 1000,
            max_items: 500,
        }
    }
}

/// Unread notifications per priority (a badge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UnreadCounts {
    pub critical: u32,
    pub high: u32,
    pub medium: u32,
    pub low: u32,
}

impl UnreadCounts {
    /// All unread notifications (saturating, like each count).
    pub fn total(&self) -> u32 {
        self.critical
            .saturating_add(self.high)
            .saturating_add(self.medium)
            .saturating_add(self.low)
    }
}

impl Inbox {
    /// Unread notifications.
    pub fn unread(&self) -> impl Iterator<Item = (&String, &Notification)> {
        self.notifications
            .iter()
            .filter(|(_, n)| n.read_at.is_none())
    }

    /// Unread notifications per priority.
    pub fn unread_counts(&self) -> UnreadCounts {
        let mut counts = UnreadCounts::default();
        for (_, n) in self.unread() {
            let count = match n.priority {
                Priority::Critical => &mut counts.critical,
                Priority::High => &mut counts.high,
                Priority::Medium => &mut counts.medium,
                Priority::Low => &mut counts.low,
            };
            *count = count.saturating_add(1);
        }
        counts
    }

    /// Retention: removes every notification created more than `max_age_ms` before `now_ms`;
    /// then, while more than `max_items` remain, removes in this order: read before unread,
    /// lower priority before higher (low, medium, high, critical), older before newer (ties
    /// by id). Returns the removed ids (the aged-out ones by id, then the rest in removal
    /// order).
    ///
    /// The order keeps what the user most likely still needs: an unread critical notification
    /// is the last to go.
    pub fn prune(&mut self, now_ms: u64, retention: &Retention) -> Vec<String> {
        // i128 holds any u64 minus any i64, so neither a far-future nor a far-past
        // `created_at` can overflow; a notification from the future is never too old.
        let too_old = |n: &Notification| {
            i128::from(now_ms) - i128::from(n.created_at) > i128::from(retention.max_age_ms)
        };
        let mut removed: Vec<String> = self
            .notifications
            .iter()
            .filter(|(_, n)| too_old(n))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &removed {
            self.notifications.remove(id);
        }

        let excess = self.notifications.len().saturating_sub(retention.max_items);
        if excess > 0 {
            let mut ranked: Vec<(&String, &Notification)> = self.notifications.iter().collect();
            ranked.sort_by(removal_order);
            let by_count: Vec<String> = ranked
                .into_iter()
                .take(excess)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &by_count {
                self.notifications.remove(id);
            }
            removed.extend(by_count);
        }
        removed
    }
}

/// The order retention removes in: `Less` goes first.
fn removal_order(a: &(&String, &Notification), b: &(&String, &Notification)) -> Ordering {
    let key = |n: &Notification| {
        // `false` sorts first: read notifications (`is_none()` false) go before unread ones.
        (n.read_at.is_none(), n.priority.rank(), n.created_at)
    };
    key(a.1).cmp(&key(b.1)).then_with(|| a.0.cmp(b.0))
}

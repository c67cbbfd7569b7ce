//! The inbox: delivery, mark-read and preferences mutators run by name as a shell runs them,
//! quiet hours and live-push rules, unread counts and retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use automerge::AutoCommit;
use converge_core::{Ctx, Mutator, Mutators, Rejection};
use converge_proto::{ErrorCode, UserId};
use converge_schema::{
    DeliverNotification, DocKind, Inbox, MarkRead, Notification, Preferences, Priority, QuietHours,
    Retention, SetPreferences, TypedDoc, UnreadCounts, read, register_inbox,
};
use proptest::prelude::*;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

fn registry() -> Mutators {
    let mut m = Mutators::new();
    register_inbox(&mut m);
    m
}

/// Runs `M` by name with encoded arguments, as a shell does, and commits what it wrote.
fn run<M: Mutator>(doc: &mut AutoCommit, args: &M::Args, ctx: &Ctx) -> Result<(), Rejection> {
    let bytes = converge_proto::encode_args(args).expect("arguments encode");
    let outcome = registry().run(M::NAME, doc, &bytes, ctx);
    doc.commit();
    outcome
}

/// The server at time `now_ms`.
fn server(now_ms: u64) -> Ctx {
    let mut ctx = Ctx::for_tests();
    ctx.now_ms = now_ms;
    ctx
}

/// A user at time `now_ms`.
fn user(name: &str, now_ms: u64) -> Ctx {
    let mut ctx = server(now_ms);
    ctx.user = UserId::new(name).unwrap();
    ctx
}

/// A new, empty document, committed as a shell holds it before running a mutator.
fn empty_doc() -> AutoCommit {
    let mut doc = AutoCommit::new();
    doc.commit();
    doc
}

fn note(priority: Priority, category: &str, created_at: i64) -> Notification {
    Notification {
        priority,
        category: category.into(),
        title: format!("{category} at {created_at}"),
        body: "body".into(),
        data: BTreeMap::from([("shift".to_string(), "s1".to_string())]),
        created_at,
        read_at: None,
    }
}

fn deliver(id: &str, n: Notification) -> DeliverNotification {
    DeliverNotification {
        owner: "ana".into(),
        id: id.into(),
        notification: n,
        retention: Retention::default(),
    }
}

fn inbox(doc: &AutoCommit) -> Inbox {
    read(doc).unwrap()
}

/// An inbox document holding n1 (high), n2 (low) and n3 (critical), all unread.
fn delivered() -> AutoCommit {
    let mut doc = empty_doc();
    for (id, p) in [
        ("n1", Priority::High),
        ("n2", Priority::Low),
        ("n3", Priority::Critical),
    ] {
        run::<DeliverNotification>(&mut doc, &deliver(id, note(p, "shift", 10)), &server(10))
            .unwrap();
    }
    doc
}

fn read_at(doc: &AutoCommit, id: &str) -> Option<i64> {
    inbox(doc).notifications[id].read_at
}

#[test]
fn an_empty_document_reads_as_an_empty_inbox() {
    assert_eq!(inbox(&AutoCommit::new()), Inbox::default());
}

#[test]
fn delivery_into_an_empty_document_writes_owner_and_notification() {
    let mut doc = empty_doc();
    let mut n = note(Priority::High, "shift", 5);
    // A read time in the arguments is ignored: a new notification is unread.
    n.read_at = Some(4);
    run::<DeliverNotification>(&mut doc, &deliver("n1", n.clone()), &server(5)).unwrap();
    let i = inbox(&doc);
    assert_eq!(i.owner, "ana");
    n.read_at = None;
    assert_eq!(i.notifications, BTreeMap::from([("n1".to_string(), n)]));
    assert_eq!(i.preferences, Preferences::default());
    assert_eq!(i.unread_counts().high, 1);
}

#[test]
fn only_the_server_delivers_and_a_refusal_writes_nothing() {
    let mut doc = empty_doc();
    let before = doc.get_heads();
    let r = run::<DeliverNotification>(
        &mut doc,
        &deliver("n1", note(Priority::Critical, "alert", 0)),
        &user("mallory", 0),
    )
    .unwrap_err();
    assert_eq!(r.code, ErrorCode::Forbidden);
    assert_eq!(doc.get_heads(), before);
    assert_eq!(inbox(&doc), Inbox::default());
}

#[test]
fn delivery_to_another_owners_inbox_is_refused() {
    let mut doc = delivered();
    let before = doc.get_heads();
    let mut d = deliver("n9", note(Priority::Low, "shift", 10));
    d.owner = "bob".into();
    let r = run::<DeliverNotification>(&mut doc, &d, &server(10)).unwrap_err();
    assert_eq!(r.code, ErrorCode::MutationRejected);
    assert!(r.message.contains("bob"), "{r}");
    assert_eq!(doc.get_heads(), before);
    d.owner = String::new();
    assert!(run::<DeliverNotification>(&mut doc, &d, &server(10)).is_err());
    d.owner = "ana".into();
    d.id = String::new();
    assert!(run::<DeliverNotification>(&mut doc, &d, &server(10)).is_err());
    assert_eq!(doc.get_heads(), before);
}

#[test]
fn the_same_id_twice_is_delivered_once() {
    let mut doc = empty_doc();
    let first = note(Priority::High, "shift", 5);
    run::<DeliverNotification>(&mut doc, &deliver("n1", first.clone()), &server(5)).unwrap();
    run::<MarkRead>(
        &mut doc,
        &MarkRead {
            ids: vec!["n1".into()],
            all: false,
        },
        &user("ana", 6),
    )
    .unwrap();
    let heads = doc.get_heads();
    // A retry with other content neither replaces the first nor makes it unread again.
    let retry = note(Priority::Critical, "other", 7);
    run::<DeliverNotification>(&mut doc, &deliver("n1", retry), &server(7)).unwrap();
    assert_eq!(doc.get_heads(), heads, "a repeated delivery writes nothing");
    let i = inbox(&doc);
    assert_eq!(i.notifications.len(), 1);
    assert_eq!(i.notifications["n1"].title, first.title);
    assert_eq!(i.notifications["n1"].read_at, Some(6));
}

#[test]
fn delivery_applies_retention() {
    let mut doc = empty_doc();
    let retention = Retention {
        max_age_ms: DAY,
        max_items: 2,
    };
    for (id, at) in [("a", 0u64), ("b", 10), ("c", 20)] {
        let mut d = deliver(id, note(Priority::Medium, "shift", at as i64));
        d.retention = retention;
        run::<DeliverNotification>(&mut doc, &d, &server(at)).unwrap();
    }
    let ids: Vec<String> = inbox(&doc).notifications.into_keys().collect();
    assert_eq!(ids, ["b", "c"]);
    // Two days later, the old ones age out when the next one arrives.
    let mut d = deliver("d", note(Priority::Low, "shift", (2 * DAY) as i64));
    d.retention = retention;
    run::<DeliverNotification>(&mut doc, &d, &server(2 * DAY)).unwrap();
    let ids: Vec<String> = inbox(&doc).notifications.into_keys().collect();
    assert_eq!(ids, ["d"]);
}

#[test]
fn mark_read_one_several_and_all() {
    let mut doc = delivered();
    let ana = |t| user("ana", t);
    run::<MarkRead>(
        &mut doc,
        &MarkRead {
            ids: vec!["n1".into()],
            all: false,
        },
        &ana(100),
    )
    .unwrap();
    assert_eq!(read_at(&doc, "n1"), Some(100));
    assert_eq!(read_at(&doc, "n2"), None);
    assert_eq!(inbox(&doc).unread_counts().total(), 2);

    // Several, one of them already read (it keeps its first time) and one that is not there.
    run::<MarkRead>(
        &mut doc,
        &MarkRead {
            ids: vec!["n1".into(), "n2".into(), "gone".into()],
            all: false,
        },
        &ana(200),
    )
    .unwrap();
    assert_eq!(read_at(&doc, "n1"), Some(100));
    assert_eq!(read_at(&doc, "n2"), Some(200));
    assert_eq!(read_at(&doc, "n3"), None);
    assert!(!inbox(&doc).notifications.contains_key("gone"));

    run::<MarkRead>(
        &mut doc,
        &MarkRead {
            ids: vec![],
            all: true,
        },
        &ana(300),
    )
    .unwrap();
    assert_eq!(
        [
            read_at(&doc, "n1"),
            read_at(&doc, "n2"),
            read_at(&doc, "n3")
        ],
        [Some(100), Some(200), Some(300)]
    );
    assert_eq!(inbox(&doc).unread_counts(), UnreadCounts::default());

    // Idempotent: marking again writes nothing.
    let heads = doc.get_heads();
    for args in [
        MarkRead {
            ids: vec!["n1".into(), "n3".into()],
            all: false,
        },
        MarkRead {
            ids: vec![],
            all: true,
        },
    ] {
        run::<MarkRead>(&mut doc, &args, &ana(400)).unwrap();
    }
    assert_eq!(doc.get_heads(), heads);
}

#[test]
fn mark_read_refuses_more_than_1000_ids() {
    let mut doc = delivered();
    let heads = doc.get_heads();
    let mut ids: Vec<String> = (0..1001).map(|i| format!("x{i}")).collect();
    ids.push("n1".into());
    let r = run::<MarkRead>(&mut doc, &MarkRead { ids, all: false }, &user("ana", 1)).unwrap_err();
    assert_eq!(r.code, ErrorCode::MutationRejected);
    assert_eq!(doc.get_heads(), heads);
    let ids: Vec<String> = (0..1000).map(|i| format!("x{i}")).collect();
    run::<MarkRead>(&mut doc, &MarkRead { ids, all: false }, &user("ana", 1)).unwrap();
}

#[test]
fn mark_read_on_an_empty_document_is_harmless() {
    let mut doc = empty_doc();
    run::<MarkRead>(
        &mut doc,
        &MarkRead {
            ids: vec!["n1".into()],
            all: true,
        },
        &user("ana", 1),
    )
    .unwrap();
    assert!(inbox(&doc).notifications.is_empty());
}

#[test]
fn set_preferences_writes_valid_ones_and_refuses_the_rest() {
    let mut doc = delivered();
    let good = Preferences {
        muted_categories: vec!["marketing".into(), "x".repeat(64)],
        quiet_hours: Some(QuietHours {
            start_minute: 22 * 60,
            end_minute: 7 * 60,
            utc_offset_minutes: 120,
        }),
    };
    run::<SetPreferences>(
        &mut doc,
        &SetPreferences {
            preferences: good.clone(),
        },
        &user("ana", 1),
    )
    .unwrap();
    assert_eq!(inbox(&doc).preferences, good);
    assert_eq!(inbox(&doc).notifications.len(), 3);

    let quiet = |start_minute, end_minute, utc_offset_minutes| Preferences {
        muted_categories: vec![],
        quiet_hours: Some(QuietHours {
            start_minute,
            end_minute,
            utc_offset_minutes,
        }),
    };
    let heads = doc.get_heads();
    for bad in [
        quiet(1440, 0, 0),
        quiet(0, 1440, 0),
        quiet(0, 60, 1441),
        quiet(0, 60, -1441),
        Preferences {
            muted_categories: vec!["x".repeat(65)],
            quiet_hours: None,
        },
        Preferences {
            muted_categories: (0..101).map(|i| i.to_string()).collect(),
            quiet_hours: None,
        },
    ] {
        let r = run::<SetPreferences>(
            &mut doc,
            &SetPreferences {
                preferences: bad.clone(),
            },
            &user("ana", 2),
        );
        assert!(r.is_err(), "{bad:?} should be refused");
    }
    assert_eq!(doc.get_heads(), heads);
    assert_eq!(inbox(&doc).preferences, good);

    // The limits themselves are fine, and clearing works.
    for ok in [
        quiet(1439, 0, 1440),
        quiet(0, 0, -1440),
        Preferences {
            muted_categories: (0..100).map(|i| i.to_string()).collect(),
            quiet_hours: None,
        },
        Preferences::default(),
    ] {
        run::<SetPreferences>(
            &mut doc,
            &SetPreferences {
                preferences: ok.clone(),
            },
            &user("ana", 3),
        )
        .unwrap();
        assert_eq!(inbox(&doc).preferences, ok);
    }
}

/// UTC milliseconds at `h:m` on some day (day 100 since the epoch).
fn at(h: u64, m: u64) -> u64 {
    100 * DAY + h * HOUR + m * MINUTE
}

fn window(start: u16, end: u16, offset: i16) -> QuietHours {
    QuietHours {
        start_minute: start,
        end_minute: end,
        utc_offset_minutes: offset,
    }
}

#[test]
fn quiet_hours_within_a_day() {
    let q = window(9 * 60, 17 * 60, 0);
    assert!(!q.contains(at(8, 59)));
    assert!(q.contains(at(9, 0)), "the start is inclusive");
    assert!(q.contains(at(16, 59)));
    assert!(!q.contains(at(17, 0)), "the end is exclusive");
}

#[test]
fn quiet_hours_wrap_around_midnight() {
    let q = window(22 * 60, 7 * 60, 0);
    assert!(!q.contains(at(21, 59)));
    assert!(q.contains(at(22, 0)));
    assert!(q.contains(at(23, 59)));
    assert!(q.contains(at(0, 0)));
    assert!(q.contains(at(6, 59)));
    assert!(!q.contains(at(7, 0)));
    assert!(!q.contains(at(12, 0)));
}

#[test]
fn quiet_hours_equal_start_and_end_never_match() {
    let q = window(600, 600, 0);
    assert!((0..24).all(|h| !q.contains(at(h, 0))));
    assert!(!q.contains(at(10, 0)));
}

#[test]
fn quiet_hours_use_the_local_offset() {
    // 22:00-07:00 in UTC+2: 20:00-05:00 UTC.
    let q = window(22 * 60, 7 * 60, 120);
    assert!(q.contains(at(20, 0)));
    assert!(!q.contains(at(19, 59)));
    assert!(q.contains(at(4, 59)));
    assert!(!q.contains(at(5, 0)));
    // 22:00-07:00 in UTC-5: 03:00-12:00 UTC.
    let q = window(22 * 60, 7 * 60, -300);
    assert!(!q.contains(at(2, 59)));
    assert!(q.contains(at(3, 0)));
    assert!(q.contains(at(11, 59)));
    assert!(!q.contains(at(12, 0)));
    // A negative offset at the epoch's first minutes wraps to the previous local day.
    let q = window(23 * 60, 23 * 60 + 30, -60);
    assert!(q.contains(0));
    // Invalid windows never panic, wherever the clock is.
    for t in [0, u64::MAX, at(12, 0)] {
        let _ = window(u16::MAX, 3000, i16::MIN).contains(t);
        let _ = window(0, 60, i16::MAX).contains(t);
    }
}

#[test]
fn push_live_rules() {
    let prefs = Preferences {
        muted_categories: vec!["marketing".into()],
        quiet_hours: Some(window(22 * 60, 7 * 60, 0)),
    };
    let day = at(12, 0);
    let night = at(23, 0);
    // Critical always, even muted and at night.
    assert!(prefs.push_live(Priority::Critical, "marketing", night));
    assert!(prefs.push_live(Priority::Critical, "shift", night));
    // Muted never, even by day and high.
    assert!(!prefs.push_live(Priority::High, "marketing", day));
    // Otherwise by day only.
    assert!(prefs.push_live(Priority::High, "shift", day));
    assert!(prefs.push_live(Priority::Low, "shift", day));
    assert!(!prefs.push_live(Priority::High, "shift", night));
    // No preferences: everything is pushed.
    assert!(Preferences::default().push_live(Priority::Low, "marketing", night));
}

#[test]
fn priority_names_round_trip() {
    for p in [
        Priority::Critical,
        Priority::High,
        Priority::Medium,
        Priority::Low,
    ] {
        assert_eq!(Priority::parse(p.as_str()), Some(p));
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            serde_json::Value::from(p.as_str())
        );
    }
    assert_eq!(Priority::parse("Critical"), None);
    assert_eq!(Priority::parse(""), None);
}

#[test]
fn unread_counts_per_priority() {
    let mut i = Inbox::default();
    for (id, p, read) in [
        ("a", Priority::Critical, false),
        ("b", Priority::High, false),
        ("c", Priority::High, false),
        ("d", Priority::Medium, true),
        ("e", Priority::Low, false),
    ] {
        let mut n = note(p, "shift", 0);
        n.read_at = read.then_some(1);
        i.notifications.insert(id.into(), n);
    }
    let c = i.unread_counts();
    assert_eq!(
        c,
        UnreadCounts {
            critical: 1,
            high: 2,
            medium: 0,
            low: 1
        }
    );
    assert_eq!(c.total(), 4);
}

#[test]
fn retention_default_is_30_days_and_500_items() {
    assert_eq!(
        Retention::default(),
        Retention {
            max_age_ms: 30 * DAY,
            max_items: 500
        }
    );
}

#[test]
fn prune_removes_by_age() {
    let mut i = Inbox::default();
    let now = 10 * DAY;
    for (id, created) in [
        ("old", 0i64),
        ("edge", (9 * DAY) as i64),
        ("new", (10 * DAY) as i64),
        ("future", (20 * DAY) as i64),
    ] {
        i.notifications
            .insert(id.into(), note(Priority::Critical, "shift", created));
    }
    let removed = i.prune(
        now,
        &Retention {
            max_age_ms: DAY,
            max_items: 500,
        },
    );
    // Exactly max_age old is kept: only "more than" removes.
    assert_eq!(removed, ["old"]);
    let kept: Vec<&String> = i.notifications.keys().collect();
    assert_eq!(kept, ["edge", "future", "new"]);
}

#[test]
fn prune_by_count_removes_read_low_old_first_and_unread_critical_last() {
    let mut i = Inbox::default();
    let mut add = |id: &str, p: Priority, created: i64, read: bool| {
        let mut n = note(p, "shift", created);
        n.read_at = read.then_some(created + 1);
        i.notifications.insert(id.into(), n);
    };
    add("unread-critical-old", Priority::Critical, 1, false);
    add("unread-low", Priority::Low, 9, false);
    add("read-critical", Priority::Critical, 9, true);
    add("read-low-new", Priority::Low, 8, true);
    add("read-low-old", Priority::Low, 2, true);
    add("read-high", Priority::High, 3, true);
    add("unread-medium-b", Priority::Medium, 5, false);
    add("unread-medium-a", Priority::Medium, 5, false);
    let order = [
        "read-low-old",
        "read-low-new",
        "read-high",
        "read-critical",
        "unread-low",
        "unread-medium-a",
        "unread-medium-b",
        "unread-critical-old",
    ];
    for keep in (0..=order.len()).rev() {
        let mut j = i.clone();
        let removed = j.prune(
            10,
            &Retention {
                max_age_ms: 1000,
                max_items: keep,
            },
        );
        assert_eq!(removed, order[..order.len() - keep], "keeping {keep}");
        assert_eq!(j.notifications.len(), keep);
    }
}

#[test]
fn an_inbox_with_only_notifications_still_imports() {
    let typed = DocKind::Inbox
        .parse_json(r#"{"notifications": {}}"#)
        .unwrap();
    assert_eq!(typed, TypedDoc::Inbox(Inbox::default()));
    let json = r#"{ "notifications": { "n1": { "priority": "high", "category": "shift",
        "title": "Swap", "body": "Bob asks", "data": {}, "created_at": 5, "read_at": null } } }"#;
    let typed = DocKind::Inbox.parse_json(json).unwrap();
    let mut doc = AutoCommit::new();
    typed.write(&mut doc).unwrap();
    let i = inbox(&doc);
    assert_eq!(i.owner, "");
    assert_eq!(i.preferences, Preferences::default());
    assert_eq!(i.unread_counts().high, 1);
    // Preferences import under the mutator's limits.
    let bad = r#"{ "notifications": {}, "preferences": { "quiet_hours":
        { "start_minute": 1440, "end_minute": 0, "utc_offset_minutes": 0 } } }"#;
    assert!(DocKind::Inbox.parse_json(bad).is_err());
}

/// An inbox document written before `owner` and `preferences` existed still reads.
#[test]
fn an_old_document_without_the_new_fields_reads() {
    use automerge::{ObjType, ROOT, transaction::Transactable};
    let mut doc = AutoCommit::new();
    doc.put_object(ROOT, "notifications", ObjType::Map).unwrap();
    let i = inbox(&doc);
    assert_eq!(i, Inbox::default());
    // And one whose preferences map is empty.
    doc.put_object(ROOT, "preferences", ObjType::Map).unwrap();
    assert_eq!(inbox(&doc).preferences, Preferences::default());
}

/// Where retention's removal order puts `n` (lower goes first).
fn rank(id: &str, n: &Notification) -> (bool, u8, i64, String) {
    let p = match n.priority {
        Priority::Low => 0,
        Priority::Medium => 1,
        Priority::High => 2,
        Priority::Critical => 3,
    };
    (n.read_at.is_none(), p, n.created_at, id.to_string())
}

fn arb_priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::Critical),
        Just(Priority::High),
        Just(Priority::Medium),
        Just(Priority::Low),
    ]
}

fn arb_note() -> impl Strategy<Value = Notification> {
    (arb_priority(), 0i64..100, any::<bool>()).prop_map(|(p, created, read)| {
        let mut n = note(p, "c", created);
        n.read_at = read.then_some(created);
        n
    })
}

proptest! {
    #[test]
    fn prune_keeps_the_bounds_and_the_order(
        notes in proptest::collection::btree_map("[a-z]{1,3}", arb_note(), 0..40),
        now in 0u64..150,
        max_age_ms in 0u64..120,
        max_items in 0usize..30,
    ) {
        let before = Inbox { notifications: notes, ..Inbox::default() };
        let mut after = before.clone();
        let retention = Retention { max_age_ms, max_items };
        let removed = after.prune(now, &retention);

        prop_assert!(after.notifications.len() <= max_items);
        let too_old = |n: &Notification| i128::from(now) - i128::from(n.created_at) > i128::from(max_age_ms);
        prop_assert!(after.notifications.values().all(|n| !too_old(n)));

        // Removed and kept partition what was there.
        let removed_set: BTreeSet<&String> = removed.iter().collect();
        prop_assert_eq!(removed_set.len(), removed.len(), "no id is removed twice");
        let kept: BTreeSet<&String> = after.notifications.keys().collect();
        let all: BTreeSet<&String> = before.notifications.keys().collect();
        prop_assert!(removed_set.is_disjoint(&kept));
        prop_assert_eq!(removed_set.union(&kept).copied().collect::<BTreeSet<_>>(), all);
        // Nothing young enough is removed unless the count demanded it, and only as many.
        let young = before.notifications.values().filter(|n| !too_old(n)).count();
        prop_assert_eq!(after.notifications.len(), young.min(max_items));

        // Every one removed by count ranks before every one kept.
        let by_count = removed.iter().filter(|id| !too_old(&before.notifications[*id]));
        let max_removed = by_count.map(|id| rank(id, &before.notifications[id])).max();
        let min_kept = after.notifications.iter().map(|(id, n)| rank(id, n)).min();
        if let (Some(r), Some(k)) = (max_removed, min_kept) {
            prop_assert!(r < k, "removed {:?} ranks after kept {:?}", r, k);
        }

        // And the document agrees: pruning written through autosurgeon reads back the same.
        let mut doc = AutoCommit::new();
        converge_schema::create(&mut doc, &before).unwrap();
        converge_schema::update(&mut doc, |i: &mut Inbox| { i.prune(now, &retention); }).unwrap();
        prop_assert_eq!(inbox(&doc), after);
    }
}

/// A full inbox of unread critical notifications still takes a new low one: delivery makes
/// room among the others, because the new one was promised to the user (and pushed live).
#[test]
fn a_delivery_into_a_full_inbox_keeps_the_new_notification() {
    let mut doc = empty_doc();
    let small = Retention {
        max_age_ms: DAY,
        max_items: 2,
    };
    for (i, id) in ["c1", "c2", "low"].into_iter().enumerate() {
        let priority = if id == "low" {
            Priority::Low
        } else {
            Priority::Critical
        };
        let at = i as u64 * MINUTE;
        let args = DeliverNotification {
            retention: small,
            ..deliver(id, note(priority, "x", at as i64))
        };
        run::<DeliverNotification>(&mut doc, &args, &server(at)).unwrap();
    }
    let ids: BTreeSet<String> = inbox(&doc).notifications.keys().cloned().collect();
    assert_eq!(ids, BTreeSet::from(["c2".to_string(), "low".to_string()]));
}

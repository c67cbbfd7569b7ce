//! The schedule and dashboard mutators, run the way the client and server run them: by name,
//! with encoded arguments, through a `Mutators` registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::{ActorId, AutoCommit};
use converge_core::{Ctx, Mutator, Mutators, Rejection};
use converge_proto::{ErrorCode, FencingToken};
use converge_schema::{
    AddWidget, BookEvent, CancelEvent, Dashboard, MoveEvent, MoveWidget, RemoveWidget, Schedule,
    WidgetRef, create, event_lock_key, read, register_all, update,
};
use proptest::prelude::*;

fn registry() -> Mutators {
    let mut m = Mutators::new();
    register_all(&mut m);
    m
}

/// Runs `M` by name with encoded arguments, as a shell does, and commits what it wrote.
fn run<M: Mutator>(doc: &mut AutoCommit, args: &M::Args, ctx: &Ctx) -> Result<(), Rejection> {
    let bytes = converge_proto::encode_args(args).expect("arguments encode");
    let outcome = registry().run(M::NAME, doc, &bytes, ctx);
    doc.commit();
    outcome
}

fn schedule() -> AutoCommit {
    let mut doc = AutoCommit::new();
    create(&mut doc, &Schedule::new("Ward 3", "Europe/Paris")).unwrap();
    doc.commit();
    doc
}

fn book(id: &str, resource: &str, start: i64, end: i64) -> BookEvent {
    BookEvent {
        id: id.into(),
        title: format!("shift {id}"),
        resource: resource.into(),
        start,
        end,
        attendees: vec!["ana".into()],
    }
}

fn move_to(id: &str, start: i64, end: i64) -> MoveEvent {
    MoveEvent {
        id: id.into(),
        start,
        end,
        resource: None,
        require_lock: false,
    }
}

fn booked(doc: &AutoCommit) -> Vec<(String, String, i64, i64)> {
    let s: Schedule = read(doc).unwrap();
    s.events
        .into_iter()
        .map(|(id, e)| (id, e.resource, e.start, e.end))
        .collect()
}

fn ctx() -> Ctx {
    Ctx::for_tests()
}

fn refused(outcome: Result<(), Rejection>) -> Rejection {
    outcome.expect_err("the mutation should be refused")
}

#[test]
fn register_all_registers_every_name() {
    assert_eq!(
        registry().names(),
        [
            "dashboard.add_widget",
            "dashboard.move_widget",
            "dashboard.remove_widget",
            "inbox.deliver",
            "inbox.mark_read",
            "inbox.set_preferences",
            "schedule.book",
            "schedule.cancel",
            "schedule.move",
        ]
    );
}

#[test]
fn booking_writes_the_event() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    let s: Schedule = read(&doc)?;
    let e = &s.events["e1"];
    assert_eq!(e.title.as_str(), "shift e1");
    assert_eq!((e.resource.as_str(), e.start, e.end), ("bed-1", 0, 1000));
    assert_eq!(e.attendees, ["ana"]);
    Ok(())
}

#[test]
fn overlapping_booking_is_refused() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    for (start, end) in [(999, 2000), (-5, 1), (200, 300), (-100, 5000), (0, 1000)] {
        let r = refused(run::<BookEvent>(
            &mut doc,
            &book("e2", "bed-1", start, end),
            &ctx(),
        ));
        assert_eq!(r.code, ErrorCode::MutationRejected);
        assert!(r.message.contains("already booked"), "{r}");
    }
    assert_eq!(booked(&doc).len(), 1);
    Ok(())
}

#[test]
fn touching_bookings_are_allowed() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 1000, 2000), &ctx())?;
    run::<BookEvent>(&mut doc, &book("before", "bed-1", 0, 1000), &ctx())?;
    run::<BookEvent>(&mut doc, &book("after", "bed-1", 2000, 3000), &ctx())?;
    assert_eq!(booked(&doc).len(), 3);
    Ok(())
}

#[test]
fn another_resource_is_free_at_the_same_time() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    run::<BookEvent>(&mut doc, &book("e2", "bed-2", 0, 1000), &ctx())?;
    assert_eq!(booked(&doc).len(), 2);
    Ok(())
}

#[test]
fn booking_that_does_not_end_after_it_starts_is_refused() {
    let mut doc = schedule();
    for (start, end) in [(1000, 1000), (1000, 0)] {
        let r = refused(run::<BookEvent>(
            &mut doc,
            &book("e1", "bed-1", start, end),
            &ctx(),
        ));
        assert!(r.message.contains("end after it starts"), "{r}");
    }
    assert!(booked(&doc).is_empty());
}

#[test]
fn booking_an_existing_id_is_refused() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    // Free slot, other resource: only the id is wrong.
    let r = refused(run::<BookEvent>(
        &mut doc,
        &book("e1", "bed-2", 5000, 6000),
        &ctx(),
    ));
    assert!(r.message.contains("already exists"), "{r}");
    assert_eq!(booked(&doc), [("e1".into(), "bed-1".into(), 0, 1000)]);
    Ok(())
}

#[test]
fn move_onto_another_booking_is_refused() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    run::<BookEvent>(&mut doc, &book("e2", "bed-1", 2000, 3000), &ctx())?;
    let r = refused(run::<MoveEvent>(
        &mut doc,
        &move_to("e2", 500, 1500),
        &ctx(),
    ));
    assert!(r.message.contains("\"e1\""), "{r}");
    assert_eq!(booked(&doc)[1], ("e2".into(), "bed-1".into(), 2000, 3000));
    Ok(())
}

#[test]
fn move_within_its_own_slot_is_allowed() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    run::<MoveEvent>(&mut doc, &move_to("e1", 500, 1500), &ctx())?;
    // Back-to-back with another booking is fine too.
    run::<BookEvent>(&mut doc, &book("e2", "bed-1", 2000, 3000), &ctx())?;
    run::<MoveEvent>(&mut doc, &move_to("e1", 1000, 2000), &ctx())?;
    let s: Schedule = read(&doc)?;
    assert_eq!((s.events["e1"].start, s.events["e1"].end), (1000, 2000));
    // The move kept what it does not change.
    assert_eq!(s.events["e1"].title.as_str(), "shift e1");
    assert_eq!(s.events["e1"].attendees, ["ana"]);
    Ok(())
}

#[test]
fn move_to_another_resource_checks_that_resource() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    run::<BookEvent>(&mut doc, &book("e2", "bed-2", 0, 1000), &ctx())?;
    let onto_bed_2 = MoveEvent {
        resource: Some("bed-2".into()),
        ..move_to("e1", 0, 1000)
    };
    refused(run::<MoveEvent>(&mut doc, &onto_bed_2, &ctx()));
    let onto_bed_3 = MoveEvent {
        resource: Some("bed-3".into()),
        ..onto_bed_2
    };
    run::<MoveEvent>(&mut doc, &onto_bed_3, &ctx())?;
    assert_eq!(booked(&doc)[0], ("e1".into(), "bed-3".into(), 0, 1000));
    Ok(())
}

#[test]
fn move_unknown_or_to_an_empty_slot_is_refused() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    let r = refused(run::<MoveEvent>(&mut doc, &move_to("nope", 0, 10), &ctx()));
    assert!(r.message.contains("no event"), "{r}");
    refused(run::<MoveEvent>(&mut doc, &move_to("e1", 10, 10), &ctx()));
    assert_eq!(booked(&doc), [("e1".into(), "bed-1".into(), 0, 1000)]);
    Ok(())
}

#[test]
fn cancel_removes_the_event_and_frees_its_slot() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    let cancel = CancelEvent {
        id: "e1".into(),
        require_lock: false,
    };
    run::<CancelEvent>(&mut doc, &cancel, &ctx())?;
    assert!(booked(&doc).is_empty());
    run::<BookEvent>(&mut doc, &book("e2", "bed-1", 0, 1000), &ctx())?;
    Ok(())
}

#[test]
fn cancel_unknown_is_refused() {
    let mut doc = schedule();
    let cancel = CancelEvent {
        id: "nope".into(),
        require_lock: false,
    };
    let r = refused(run::<CancelEvent>(&mut doc, &cancel, &ctx()));
    assert_eq!(r.code, ErrorCode::MutationRejected);
    assert!(r.message.contains("no event"), "{r}");
}

#[test]
fn require_lock_demands_the_events_lock() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    assert_eq!(event_lock_key("e1"), "event:e1");
    let holder = |key: &str| Ctx {
        lock: Some((key.into(), FencingToken(1))),
        ..Ctx::for_tests()
    };
    let locked_move = MoveEvent {
        require_lock: true,
        ..move_to("e1", 100, 1100)
    };

    // No fence, or a fence for another event: StaleFence, nothing written.
    for ctx in [Ctx::for_tests(), holder("event:e2")] {
        let r = refused(run::<MoveEvent>(&mut doc, &locked_move, &ctx));
        assert_eq!(r.code, ErrorCode::StaleFence);
    }
    assert_eq!(booked(&doc)[0].2, 0);

    // The holder of "event:e1" may move it.
    run::<MoveEvent>(&mut doc, &locked_move, &holder("event:e1"))?;
    assert_eq!(booked(&doc)[0].2, 100);

    // Without the flag the lock is not asked for.
    run::<MoveEvent>(&mut doc, &move_to("e1", 0, 1000), &Ctx::for_tests())?;

    let locked_cancel = CancelEvent {
        id: "e1".into(),
        require_lock: true,
    };
    let r = refused(run::<CancelEvent>(&mut doc, &locked_cancel, &ctx()));
    assert_eq!(r.code, ErrorCode::StaleFence);
    run::<CancelEvent>(&mut doc, &locked_cancel, &holder("event:e1"))?;
    assert!(booked(&doc).is_empty());
    Ok(())
}

#[test]
fn a_refusal_leaves_the_heads_unchanged() -> anyhow::Result<()> {
    let mut doc = schedule();
    run::<BookEvent>(&mut doc, &book("e1", "bed-1", 0, 1000), &ctx())?;
    let before = doc.get_heads();
    // MoveEvent takes the event out of its value before it refuses: none of that may reach
    // the document.
    refused(run::<BookEvent>(
        &mut doc,
        &book("e2", "bed-1", 0, 10),
        &ctx(),
    ));
    refused(run::<MoveEvent>(&mut doc, &move_to("e1", 5, 5), &ctx()));
    refused(run::<CancelEvent>(
        &mut doc,
        &CancelEvent {
            id: "e2".into(),
            require_lock: false,
        },
        &ctx(),
    ));
    assert_eq!(doc.get_heads(), before);
    Ok(())
}

#[test]
fn a_document_of_another_shape_is_refused_not_a_panic() {
    for mut doc in [AutoCommit::new(), dashboard(&[])] {
        let r = refused(run::<BookEvent>(
            &mut doc,
            &book("e1", "bed-1", 0, 1),
            &ctx(),
        ));
        assert_eq!(r.code, ErrorCode::MutationRejected);
        assert!(r.message.contains("expected shape"), "{r}");
    }
    let r = refused(run::<RemoveWidget>(
        &mut schedule(),
        &RemoveWidget { widget: "w".into() },
        &ctx(),
    ));
    assert!(r.message.contains("expected shape"), "{r}");
}

#[test]
fn arguments_of_another_mutator_are_bad_args() {
    let mut doc = schedule();
    let wrong = converge_proto::encode_args(&RemoveWidget { widget: "w".into() }).unwrap();
    let r = refused(registry().run(BookEvent::NAME, &mut doc, &wrong, &ctx()));
    assert_eq!(r.code, ErrorCode::BadArgs);
}

// Dashboards.

fn widget(id: &str) -> WidgetRef {
    WidgetRef {
        widget: id.into(),
        x: 0,
        y: 0,
        w: 4,
        h: 2,
    }
}

fn dashboard(ids: &[&str]) -> AutoCommit {
    let mut d = Dashboard::new("Ops");
    d.layout = ids.iter().map(|id| widget(id)).collect();
    let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![1; 16]));
    create(&mut doc, &d).unwrap();
    doc.commit();
    doc
}

fn layout(doc: &AutoCommit) -> Vec<String> {
    let d: Dashboard = read(doc).unwrap();
    d.layout.into_iter().map(|w| w.widget).collect()
}

fn add(id: &str, index: Option<usize>) -> AddWidget {
    AddWidget {
        widget: widget(id),
        index,
    }
}

fn move_widget(id: &str, to: usize) -> MoveWidget {
    MoveWidget {
        widget: id.into(),
        to,
    }
}

#[test]
fn add_widget_appends_or_inserts() -> anyhow::Result<()> {
    let mut doc = dashboard(&[]);
    run::<AddWidget>(&mut doc, &add("a", None), &ctx())?;
    run::<AddWidget>(&mut doc, &add("c", Some(1)), &ctx())?;
    run::<AddWidget>(&mut doc, &add("b", Some(1)), &ctx())?;
    run::<AddWidget>(&mut doc, &add("first", Some(0)), &ctx())?;
    assert_eq!(layout(&doc), ["first", "a", "b", "c"]);
    Ok(())
}

#[test]
fn add_widget_past_the_end_or_twice_is_refused() {
    let mut doc = dashboard(&["a"]);
    let r = refused(run::<AddWidget>(&mut doc, &add("b", Some(2)), &ctx()));
    assert!(r.message.contains("past the end"), "{r}");
    let r = refused(run::<AddWidget>(&mut doc, &add("a", None), &ctx()));
    assert!(r.message.contains("already on the dashboard"), "{r}");
    assert_eq!(layout(&doc), ["a"]);
}

#[test]
fn move_widget_reorders_the_layout() -> anyhow::Result<()> {
    let mut doc = dashboard(&["a", "b", "c"]);
    run::<MoveWidget>(&mut doc, &move_widget("a", 2), &ctx())?;
    assert_eq!(layout(&doc), ["b", "c", "a"]);
    run::<MoveWidget>(&mut doc, &move_widget("a", 0), &ctx())?;
    assert_eq!(layout(&doc), ["a", "b", "c"]);
    run::<MoveWidget>(&mut doc, &move_widget("b", 1), &ctx())?;
    assert_eq!(layout(&doc), ["a", "b", "c"]);
    Ok(())
}

#[test]
fn move_widget_to_a_bad_index_or_unknown_is_refused() {
    let mut doc = dashboard(&["a", "b"]);
    let r = refused(run::<MoveWidget>(&mut doc, &move_widget("a", 2), &ctx()));
    assert!(r.message.contains("outside the layout"), "{r}");
    let r = refused(run::<MoveWidget>(&mut doc, &move_widget("zz", 0), &ctx()));
    assert!(r.message.contains("not on the dashboard"), "{r}");
    assert_eq!(layout(&doc), ["a", "b"]);
}

#[test]
fn remove_widget_by_id() -> anyhow::Result<()> {
    let mut doc = dashboard(&["a", "b", "c"]);
    run::<RemoveWidget>(&mut doc, &RemoveWidget { widget: "b".into() }, &ctx())?;
    assert_eq!(layout(&doc), ["a", "c"]);
    let before = doc.get_heads();
    let r = refused(run::<RemoveWidget>(
        &mut doc,
        &RemoveWidget { widget: "b".into() },
        &ctx(),
    ));
    assert!(r.message.contains("not on the dashboard"), "{r}");
    assert_eq!(doc.get_heads(), before);
    Ok(())
}

/// Pins why `WidgetRef::widget` is the autosurgeon list key: without it, moving "a" to the end
/// rewrote every entry in place, and a concurrent resize of "c" landed on whichever widget
/// then sat in c's old list slot.
#[test]
fn moving_a_widget_keeps_a_concurrent_resize_on_its_widget() -> anyhow::Result<()> {
    let mut mover = dashboard(&["a", "b", "c"]);
    let mut resizer = mover.fork().with_actor(ActorId::from(vec![2; 16]));
    run::<MoveWidget>(&mut mover, &move_widget("a", 2), &ctx())?;
    update(&mut resizer, |d: &mut Dashboard| d.layout[2].w = 12)?;
    resizer.commit();
    mover.merge(&mut resizer)?;
    let d: Dashboard = read(&mover)?;
    let sizes: Vec<(&str, u32)> = d.layout.iter().map(|w| (w.widget.as_str(), w.w)).collect();
    assert_eq!(sizes, [("b", 4), ("c", 12), ("a", 4)]);
    Ok(())
}

proptest! {
    /// Whatever order and shape of booking attempts on one resource, the document never holds
    /// two overlapping events, and a booking is refused exactly when it would overlap one (or
    /// is empty).
    #[test]
    fn bookings_never_overlap(attempts in prop::collection::vec((0i64..200, -10i64..40), 1..40)) {
        let mut doc = schedule();
        let mut accepted: Vec<(i64, i64)> = Vec::new();
        for (i, (start, len)) in attempts.into_iter().enumerate() {
            let end = start + len;
            let expected = end > start && accepted.iter().all(|&(s, e)| end <= s || e <= start);
            let outcome = run::<BookEvent>(&mut doc, &book(&format!("e{i}"), "bed-1", start, end), &ctx());
            prop_assert_eq!(outcome.is_ok(), expected, "{:?} on {:?}", (start, end), accepted);
            if expected {
                accepted.push((start, end));
            }
        }
        let events = booked(&doc);
        prop_assert_eq!(events.len(), accepted.len());
        for (i, a) in events.iter().enumerate() {
            for b in &events[i + 1..] {
                prop_assert!(a.3 <= b.2 || b.3 <= a.2, "{:?} overlaps {:?}", a, b);
            }
        }
    }
}

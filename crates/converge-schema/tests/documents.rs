//! Typed documents: round trips, text merging, conflicts, import.

use std::collections::BTreeMap;

use automerge::{ActorId, AutoCommit, ScalarValue};
use converge_schema::{
    Dashboard, DataPoint, DocKind, Event, Inbox, Notification, PathSegment, Priority, Resource,
    Schedule, SchemaError, Widget, WidgetRef, conflicts, create, read, resolve, to_json, update,
};
use proptest::prelude::*;

fn fork(doc: &mut AutoCommit, actor: u8) -> AutoCommit {
    doc.fork().with_actor(ActorId::from(vec![actor; 16]))
}

fn sample() -> Schedule {
    let mut s = Schedule::new("Ward 3", "Europe/Paris");
    s.resources.insert(
        "bed-1".into(),
        Resource {
            name: "Bed 1".into(),
        },
    );
    s.events
        .insert("e1".into(), Event::new("Night", "bed-1", 0, 1000));
    s
}

#[test]
fn concurrent_text_edits_merge() -> anyhow::Result<()> {
    let mut a = AutoCommit::new().with_actor(ActorId::from(vec![1; 16]));
    create(&mut a, &sample())?;
    let mut b = fork(&mut a, 2);
    update(&mut a, |s: &mut Schedule| s.title.splice(0, 0, "North "))?;
    update(&mut b, |s: &mut Schedule| {
        let e = s.events.get_mut("e1").unwrap();
        e.notes.splice(0, 0, "bring charts");
        let len = s.title.as_str().len();
        s.title.splice(len, 0, " rota");
    })?;
    a.merge(&mut b)?;
    b.merge(&mut a)?;
    let sa: Schedule = read(&a)?;
    let sb: Schedule = read(&b)?;
    assert_eq!(sa.title.as_str(), "North Ward 3 rota");
    assert_eq!(sa.events["e1"].notes.as_str(), "bring charts");
    assert_eq!(sa, sb);
    assert_eq!(to_json(&a), to_json(&b));
    Ok(())
}

#[test]
fn concurrent_scalar_writes_are_listed_and_resolved() -> anyhow::Result<()> {
    let mut a = AutoCommit::new().with_actor(ActorId::from(vec![1; 16]));
    create(&mut a, &sample())?;
    let mut b = fork(&mut a, 2);
    update(&mut a, |s: &mut Schedule| {
        s.events.get_mut("e1").unwrap().start = 100
    })?;
    update(&mut b, |s: &mut Schedule| {
        s.events.get_mut("e1").unwrap().start = 200
    })?;
    a.merge(&mut b)?;
    let path: Vec<PathSegment> = vec!["events".into(), "e1".into(), "start".into()];
    let mut values = conflicts(&a, &path)?;
    assert_eq!(values.len(), 2);
    // The winner comes first and is what the JSON view shows.
    assert_eq!(values[0], to_json(&a)["events"]["e1"]["start"]);
    values.sort_by_key(|v| v.as_i64());
    assert_eq!(values, vec![serde_json::json!(100), serde_json::json!(200)]);
    // A person picks 150: an ordinary change that supersedes both.
    resolve(&mut a, &path, ScalarValue::Int(150))?;
    b.merge(&mut a)?;
    assert_eq!(conflicts(&b, &path)?, vec![serde_json::json!(150)]);
    assert_eq!(read::<Schedule>(&b)?.events["e1"].start, 150);
    assert!(matches!(
        conflicts(&b, &["nope".into(), "x".into()]),
        Err(SchemaError::NoSuchPath(_))
    ));
    Ok(())
}

#[test]
fn every_kind_round_trips_through_a_document() -> anyhow::Result<()> {
    let mut dash = Dashboard::new("Ops");
    dash.layout.push(WidgetRef {
        widget: "w1".into(),
        x: 0,
        y: 0,
        w: 4,
        h: 2,
    });
    let mut widget = Widget::new("line-chart", "Load");
    widget.config.insert("color".into(), "red".into());
    widget.data.push(DataPoint {
        label: "mon".into(),
        value: 1.5,
    });
    let mut inbox = Inbox::default();
    inbox.notifications.insert(
        "n1".into(),
        Notification {
            priority: Priority::High,
            category: "shift".into(),
            title: "Swap".into(),
            body: "Bob asks".into(),
            data: BTreeMap::new(),
            created_at: 5,
            read_at: None,
        },
    );
    let mut d = AutoCommit::new();
    create(&mut d, &dash)?;
    assert_eq!(read::<Dashboard>(&d)?, dash);
    let mut d = AutoCommit::new();
    create(&mut d, &widget)?;
    assert_eq!(read::<Widget>(&d)?, widget);
    let mut d = AutoCommit::new();
    create(&mut d, &inbox)?;
    assert_eq!(read::<Inbox>(&d)?, inbox);
    assert_eq!(read::<Inbox>(&d)?.unread().count(), 1);
    Ok(())
}

#[test]
fn json_import_builds_the_typed_document() -> anyhow::Result<()> {
    let json = r#"{"title":"Rota","timezone":"UTC","resources":{"r":{"name":"Room"}},
        "events":{"e":{"title":"Standup","resource":"r","start":0,"end":60000,"attendees":["ann"]}}}"#;
    let typed = DocKind::Schedule.parse_json(json)?;
    let mut doc = AutoCommit::new();
    typed.write(&mut doc)?;
    let s: Schedule = read(&doc)?;
    assert_eq!(s.events["e"].attendees, vec!["ann".to_string()]);
    assert_eq!(to_json(&doc)["events"]["e"]["title"], "Standup");
    assert_eq!(to_json(&doc)["events"]["e"]["notes"], "");
    Ok(())
}

#[test]
fn invalid_json_is_refused_with_a_typed_error() {
    for (kind, json) in [
        (DocKind::Schedule, "{not json"),
        (DocKind::Schedule, r#"{"title":"x"}"#),
        (
            DocKind::Schedule,
            r#"{"title":"x","timezone":"UTC","bogus":1}"#,
        ),
        (
            DocKind::Schedule,
            r#"{"title":"x","timezone":"UTC","events":{"e":{"title":"t","resource":"r","start":10,"end":5}}}"#,
        ),
        (DocKind::Dashboard, r#"{"title":5}"#),
        (DocKind::Widget, r#"[]"#),
    ] {
        let err = kind.parse_json(json).unwrap_err();
        assert!(matches!(err, SchemaError::Json { .. }), "{json}: {err:?}");
    }
    assert!(matches!(
        "calendar".parse::<DocKind>(),
        Err(SchemaError::UnknownKind(_))
    ));
}

fn arb_event() -> impl Strategy<Value = Event> {
    (
        "[ -~]{0,20}",
        "[a-z]{1,5}",
        0i64..1_000_000,
        1i64..100_000,
        proptest::collection::vec("[a-z]{1,6}", 0..3),
        "[ -~]{0,30}",
    )
        .prop_map(|(title, resource, start, len, attendees, notes)| {
            let mut e = Event::new(&title, &resource, start, start + len);
            e.attendees = attendees;
            e.notes = notes.as_str().into();
            e
        })
}

proptest! {
    #[test]
    fn schedules_round_trip(title in "[ -~]{0,30}", events in proptest::collection::btree_map("[a-z0-9]{1,8}", arb_event(), 0..6)) {
        let mut s = Schedule::new(&title, "UTC");
        s.events = events;
        let mut doc = AutoCommit::new();
        create(&mut doc, &s).unwrap();
        let back: Schedule = read(&doc).unwrap();
        prop_assert_eq!(&back, &s);
        // And through save/load.
        let loaded = AutoCommit::load(&doc.save()).unwrap();
        prop_assert_eq!(read::<Schedule>(&loaded).unwrap(), s);
    }
}

//! Mutations, locks, presence and notifications under load (`converge bench
//! mutate|lock|presence|notify`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use automerge::{ActorId, AutoCommit};
use converge_proto::{
    Blob, ClientMsg, DocId, LockOutcome, MutationId, MutationOutcome, ServerMsg, encode_args,
};
use converge_schema::{BookEvent, Schedule};

use super::wire::{ServerProc, connect, drain, keepalive, settle, subscribe};
use super::{AbortOnDrop, percentiles, push_all};

/// A schedule document's first change (the state every booking lands in).
fn schedule_change() -> anyhow::Result<Blob> {
    let mut doc = AutoCommit::new().with_actor(ActorId::random());
    converge_schema::create(&mut doc, &Schedule::new("bench", "UTC"))?;
    doc.commit();
    match doc.get_last_local_change() {
        Some(c) => Ok(Blob(c.raw_bytes().to_vec())),
        None => bail!("the schedule made no change"),
    }
}

/// `clients` clients each book `per_client` non-overlapping slots on one schedule, one
/// mutation at a time: the time from sending `Mutate` to its `MutationResult` (Applied).
pub(super) async fn mutate(clients: usize, per_client: usize) -> anyhow::Result<()> {
    let server = ServerProc::start()?;
    let doc = DocId::random();
    let (mut tx, mut rx) = connect(&server.url, "owner").await?;
    subscribe(&mut tx, &mut rx, doc, None).await?;
    push_all(&mut tx, &mut rx, doc, &[schedule_change()?]).await?;
    let _owner = (AbortOnDrop(keepalive(tx)), drain(rx));
    settle().await;
    let cpu0 = server.cpu_seconds()?;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    let gate = Arc::new(tokio::sync::Barrier::new(clients));
    for c in 0..clients {
        let (mut tx, mut rx) = connect(&server.url, &format!("booker{c}")).await?;
        subscribe(&mut tx, &mut rx, doc, None).await?;
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let args = BookEvent {
                    id: format!("c{c}-{i}"),
                    title: "shift".into(),
                    resource: format!("bed-{c}"),
                    start: i as i64 * 3_600_000,
                    end: (i as i64 + 1) * 3_600_000,
                    attendees: Vec::new(),
                };
                let t = Instant::now();
                tx.send(&ClientMsg::Mutate {
                    doc,
                    mutation_id: MutationId(i as u64 + 1),
                    name: <BookEvent as converge_client::Mutator>::NAME.into(),
                    args: Blob(encode_args(&args)?),
                    fence: None,
                })
                .await?;
                loop {
                    match rx.recv().await? {
                        ServerMsg::MutationResult { outcome, .. } => {
                            if let MutationOutcome::Rejected { code, message } = outcome {
                                bail!("booking refused: {code}: {message}");
                            }
                            lat.push(t.elapsed());
                            break;
                        }
                        ServerMsg::Error { code, message, .. } => bail!("{code}: {message}"),
                        _ => {}
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(tokio::time::timeout(Duration::from_secs(600), t).await???);
    }
    let took = start.elapsed();
    let cpu = server.cpu_seconds()? - cpu0;
    let n = lat.len().max(1);
    let (p50, p99, max) = percentiles(lat);
    println!(
        "mutate clients={clients:<4} mutations={n}: round trip (Mutate -> Applied) p50 {p50:.2} ms p99 {p99:.2} ms max {max:.2} ms; {:.0} mutations/s; server CPU {:.0} us per mutation (schedule of up to {n} events)",
        n as f64 / took.as_secs_f64(),
        cpu * 1e6 / n as f64
    );
    Ok(())
}

/// One client takes and gives back a lock `n` times: the time from `Lock` to `Granted`.
pub(super) async fn lock(n: usize) -> anyhow::Result<()> {
    let server = ServerProc::start()?;
    let doc = DocId::random();
    let (mut tx, mut rx) = connect(&server.url, "locker").await?;
    subscribe(&mut tx, &mut rx, doc, None).await?;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("event:{}", i % 16);
        let t = Instant::now();
        tx.send(&ClientMsg::Lock {
            doc,
            key: key.clone(),
            ttl_ms: 10_000,
        })
        .await?;
        let token = loop {
            match rx.recv().await? {
                ServerMsg::LockResult {
                    outcome: LockOutcome::Granted { token, .. },
                    ..
                } => break token,
                ServerMsg::LockResult { outcome, .. } => bail!("lock refused: {outcome:?}"),
                _ => {}
            }
        };
        lat.push(t.elapsed());
        tx.send(&ClientMsg::Unlock { doc, key, token }).await?;
        loop {
            if let ServerMsg::LockResult { .. } = rx.recv().await? {
                break;
            }
        }
    }
    let (p50, p99, max) = percentiles(lat);
    println!(
        "lock: {n} grants (Lock -> Granted, durable): p50 {p50:.2} ms p99 {p99:.2} ms max {max:.2} ms (target p99 <= 10 ms)"
    );
    Ok(())
}

/// One client sets its presence at `hz` for `secs`; `watchers` others receive it: delivery
/// latency, and server CPU per delivered update.
pub(super) async fn presence(watchers: usize, hz: u64, secs: u64) -> anyhow::Result<()> {
    let server = ServerProc::start()?;
    let doc = DocId::random();
    let (mut stx, mut srx) = connect(&server.url, "sender").await?;
    subscribe(&mut stx, &mut srx, doc, None).await?;
    let base = Instant::now();
    let updates = (hz * secs) as usize;
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let (mut tx, mut rx) = connect(&server.url, &format!("watcher{w}")).await?;
        subscribe(&mut tx, &mut rx, doc, None).await?;
        let alive = keepalive(tx);
        tasks.push(tokio::spawn(async move {
            let _alive = AbortOnDrop(alive);
            let mut lat = Vec::with_capacity(updates);
            loop {
                if let ServerMsg::Presence {
                    state: Some(state), ..
                } = rx.recv().await?
                {
                    let b = state.as_ref();
                    if b.len() >= 16 {
                        let mut sent = [0u8; 8];
                        sent.copy_from_slice(&b[..8]);
                        let now = base.elapsed().as_nanos() as u64;
                        lat.push(Duration::from_nanos(
                            now.saturating_sub(u64::from_le_bytes(sent)),
                        ));
                        let mut idx = [0u8; 8];
                        idx.copy_from_slice(&b[8..16]);
                        if u64::from_le_bytes(idx) + 1 == updates as u64 {
                            return anyhow::Ok(lat);
                        }
                    }
                }
            }
        }));
    }
    let _sender_rx = drain(srx);
    settle().await;
    let cpu0 = server.cpu_seconds()?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / hz.max(1)));
    for i in 0..updates as u64 {
        tick.tick().await;
        let mut state = (base.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
        state.extend_from_slice(&i.to_le_bytes());
        state.extend_from_slice(b"cursor:event-42");
        stx.send(&ClientMsg::Presence {
            doc,
            state: Blob(state),
        })
        .await?;
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(tokio::time::timeout(Duration::from_secs(60), t).await???);
    }
    let cpu = server.cpu_seconds()? - cpu0;
    let delivered = lat.len().max(1);
    let (p50, p99, max) = percentiles(lat);
    println!(
        "presence watchers={watchers} {hz} Hz for {secs} s: {delivered} deliveries, latency p50 {p50:.2} ms p99 {p99:.2} ms max {max:.2} ms; server CPU {:.2} us per delivery",
        cpu * 1e6 / delivered as f64
    );
    Ok(())
}

/// `users` users online; one `POST /api/notify` to their role: how long until every inbox is
/// written durably (the response), how long until each user has it live, and the server CPU
/// per recipient.
pub(super) async fn notify(users: usize) -> anyhow::Result<()> {
    let server = ServerProc::start()?;
    let base = Instant::now();
    let mut tasks = Vec::with_capacity(users);
    for u in 0..users {
        // Every bench user is an editor: the notification goes to the role.
        let (tx, mut rx) = connect(&server.url, &format!("notified{u}")).await?;
        let alive = keepalive(tx);
        tasks.push(tokio::spawn(async move {
            let _alive = AbortOnDrop(alive);
            loop {
                if let ServerMsg::Notification(_) = rx.recv().await? {
                    return anyhow::Ok(base.elapsed());
                }
            }
        }));
    }
    settle().await;
    let cpu0 = server.cpu_seconds()?;
    let sent = base.elapsed();
    let body = r#"{"to": {"roles": ["editor"]}, "priority": "high", "category": "shift", "title": "Bed 4 is free", "body": "Ward 3"}"#;
    let answer = server.post("/api/notify", body).await?;
    let answered = base.elapsed() - sent;
    let json: serde_json::Value = answer
        .find('{')
        .zip(answer.rfind('}'))
        .map_or(Ok(serde_json::Value::Null), |(a, b)| {
            serde_json::from_str(&answer[a..=b])
        })?;
    let delivered = json["delivered"].as_u64().unwrap_or(0);
    if delivered != users as u64 {
        bail!("notify delivered {delivered} of {users}: {answer}");
    }
    let mut lat = Vec::with_capacity(users);
    for t in tasks {
        let at = tokio::time::timeout(Duration::from_secs(120), t).await???;
        lat.push(at.saturating_sub(sent));
    }
    let cpu = server.cpu_seconds()? - cpu0;
    let (p50, p99, max) = percentiles(lat);
    println!(
        "notify users={users}: one POST /api/notify to their role: every inbox written durably in {:.1} ms ({:.0} inboxes/s); live p50 {p50:.1} ms p99 {p99:.1} ms max {max:.1} ms; server CPU {:.0} us per recipient",
        answered.as_secs_f64() * 1000.0,
        users as f64 / answered.as_secs_f64().max(1e-9),
        cpu * 1e6 / users.max(1) as f64
    );
    Ok(())
}

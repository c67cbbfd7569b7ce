//! Notifications and events through the SDK over real sockets: notify a role over HTTP;
//! a member online gets it live, an offline member finds it in the inbox when they come back,
//! and marking it read on one device shows on the user's other device. Events published by
//! one client reach another.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use converge_client::{Client, ClientConfig, DocHandle, Feed, Mutators, UserId};
use converge_schema::{Inbox, MarkRead};
use converge_server::auth::{AuthConfig, JwtConfig, claims, mint_hs256};
use converge_server::{ServerConfig, ServerHandle};
use futures_util::StreamExt;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &[u8] = b"socket-notify-secret-0123456789abc";

fn token(user: &str, roles: &[&str]) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok(mint_hs256(SECRET, &claims(user, roles, now, 600))?)
}

async fn serve(dir: &Path) -> anyhow::Result<ServerHandle> {
    Ok(converge_server::start(ServerConfig {
        addr: "127.0.0.1:0".parse()?,
        data_dir: dir.to_path_buf(),
        auth: AuthConfig::Jwt(JwtConfig::hs256(SECRET.to_vec())),
        ..ServerConfig::default()
    })
    .await?)
}

async fn client(url: &str, user: &str, roles: &[&str], store: &Path) -> anyhow::Result<Client> {
    let mut mutators = Mutators::new();
    converge_schema::register_all(&mut mutators);
    let config = ClientConfig::default()
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .with_mutators(mutators);
    Ok(Client::connect_with(url, Some(token(user, roles)?), store, config).await?)
}

/// `POST path` with a JSON body and an admin token; returns the status and JSON body.
async fn post(
    server: &ServerHandle,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(server.local_addr()).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        token("ops", &["admin"])?,
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut raw)).await??;
    let status = raw.get(9..12).context("no status")?.parse()?;
    let rest = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = match (rest.find('{'), rest.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&rest[a..=b])?,
        _ => serde_json::Value::Null,
    };
    Ok((status, json))
}

fn inbox(h: &DocHandle) -> Inbox {
    h.read(|d| converge_schema::read::<Inbox>(d).unwrap_or_default())
}

/// Waits until `f` holds of the inbox (checked at each change of the document).
async fn until_doc(h: &DocHandle, what: &str, f: impl Fn(&Inbox) -> bool) -> anyhow::Result<()> {
    let check = |d: &converge_client::automerge::AutoCommit| {
        f(&converge_schema::read::<Inbox>(d).unwrap_or_default())
    };
    tokio::time::timeout(WAIT, h.wait_for(check))
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

/// Waits until the client has said Hello and is online.
async fn online(c: &Client) -> anyhow::Result<()> {
    let mut status = Box::pin(c.status_stream());
    tokio::time::timeout(WAIT, async {
        while let Some(s) = status.next().await {
            if matches!(s, converge_client::Status::Online) {
                return Ok(());
            }
        }
        bail!("the status stream ended")
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_notification_reaches_members_and_mark_read_converges_across_devices()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let stores: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let server = serve(data.path()).await?;
    let url = server.ws_url();
    let nina = UserId::new("nina")?;
    let olga = UserId::new("olga")?;

    // Olga connects once (the directory learns she is a nurse), then goes offline.
    let olga_client = client(&url, "olga", &["nurse"], stores[2].path()).await?;
    online(&olga_client).await?;
    olga_client.shutdown().await?;

    // Nina has a phone and a laptop, both online.
    let phone = client(&url, "nina", &["nurse", "editor"], stores[0].path()).await?;
    let laptop = client(&url, "nina", &["nurse", "editor"], stores[1].path()).await?;
    let mut live = Box::pin(phone.notifications());
    let phone_inbox = phone.inbox(&nina).await?;
    let laptop_inbox = laptop.inbox(&nina).await?;
    online(&phone).await?;
    online(&laptop).await?;

    let (status, json) = post(
        &server,
        "/api/notify",
        &serde_json::json!({
            "to": {"roles": ["nurse"]},
            "priority": "critical",
            "category": "alarm",
            "title": "Code blue, room 12",
        }),
    )
    .await?;
    anyhow::ensure!(status == 200 && json["delivered"] == 2, "{status} {json}");
    let id = json["id"].as_str().context("no id")?.to_string();

    // Live on the phone.
    let got = tokio::time::timeout(WAIT, live.next())
        .await?
        .context("the notification stream ended")?;
    match got {
        Feed::Item(n) => anyhow::ensure!(n.id == id && n.title == "Code blue, room 12"),
        Feed::Missed(n) => bail!("missed {n}"),
    }
    // In both of Nina's inbox replicas, unread.
    for h in [&phone_inbox, &laptop_inbox] {
        until_doc(h, "the notification", |i| i.notifications.contains_key(&id)).await?;
        anyhow::ensure!(inbox(h).unread_counts().critical == 1);
    }

    // Read on the phone: the laptop shows it read, with the same time.
    let outcome = phone_inbox
        .mutate::<MarkRead>(&MarkRead {
            ids: vec![id.clone()],
            all: false,
        })?
        .outcome()
        .await?;
    anyhow::ensure!(
        matches!(outcome, converge_client::MutationOutcome::Applied { .. }),
        "{outcome:?}"
    );
    // The outcome can arrive before the change it made reaches the phone's own replica,
    // which meanwhile shows its optimistic mark (the phone's clock, not the server's): wait
    // for the server's mark on the laptop, then for the phone to hold the same one.
    until_doc(&laptop_inbox, "the read mark", |i| {
        i.notifications
            .get(&id)
            .is_some_and(|n| n.read_at.is_some())
    })
    .await?;
    let read_at = inbox(&laptop_inbox)
        .notifications
        .get(&id)
        .and_then(|n| n.read_at);
    until_doc(&phone_inbox, "the server's read mark", |i| {
        i.notifications.get(&id).and_then(|n| n.read_at) == read_at
    })
    .await?;
    anyhow::ensure!(inbox(&laptop_inbox) == inbox(&phone_inbox));
    anyhow::ensure!(inbox(&laptop_inbox).unread_counts().total() == 0);

    // Olga comes back: the notification waits in her inbox.
    let olga_client = client(&url, "olga", &["nurse"], stores[2].path()).await?;
    let olga_inbox = olga_client.inbox(&olga).await?;
    until_doc(&olga_inbox, "Olga's notification", |i| {
        i.notifications
            .get(&id)
            .is_some_and(|n| n.read_at.is_none())
    })
    .await?;

    // Events: the laptop publishes to Nina's user room; the phone gets it, from the laptop.
    let mut events = Box::pin(phone.events());
    laptop.publish("user:nina", "open", b"room-12".to_vec())?;
    let got = tokio::time::timeout(WAIT, events.next())
        .await?
        .context("the event stream ended")?;
    match got {
        Feed::Item(e) => anyhow::ensure!(
            e.room == "user:nina"
                && e.event == "open"
                && e.data == b"room-12"
                && e.from.as_ref().is_some_and(|p| p.user == nina),
            "{e:?}"
        ),
        Feed::Missed(n) => bail!("missed {n}"),
    }

    phone.shutdown().await?;
    laptop.shutdown().await?;
    olga_client.shutdown().await?;
    server.shutdown().await?;
    Ok(())
}

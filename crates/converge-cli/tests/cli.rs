//! The converge binary end to end: import, replay, verify, inspect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn converge(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

const SCHEDULE: &str = r#"{"title":"Ward 3","timezone":"Europe/Paris",
  "resources":{"bed-1":{"name":"Bed 1"}},
  "events":{"e1":{"title":"Night","resource":"bed-1","start":0,"end":3600000,"attendees":["ann"],"notes":"bring charts"}}}"#;

/// Imports SCHEDULE into `<dir>/data`; returns the data directory and the printed id.
fn import_schedule(dir: &Path) -> (std::path::PathBuf, String) {
    let data = dir.join("data");
    let file = dir.join("s.json");
    std::fs::write(&file, SCHEDULE).unwrap();
    let out = converge(
        &["import", file.to_str().unwrap(), "--kind", "schedule"],
        &data,
    );
    assert!(out.status.success(), "{out:?}");
    (data, stdout(&out).lines().last().unwrap().to_string())
}

#[test]
fn import_then_replay_verify_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = import_schedule(dir.path());
    assert!(
        id.parse::<converge_proto::DocId>().is_ok(),
        "last line is a DocId: {id}"
    );

    let out = converge(&["replay", &id], &data);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["events"]["e1"]["notes"], "bring charts");
    assert_eq!(json["title"], "Ward 3");
    let out = converge(&["replay", &format!("automerge:{id}"), "--at", "1"], &data);
    assert!(out.status.success(), "{out:?}");

    let out = converge(&["verify"], &data);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("1 documents"));

    let out = converge(&["inspect"], &data);
    assert!(out.status.success());
    assert!(stdout(&out).contains(&id));

    let out = converge(&["compact"], &data);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("dropped 1 entries"),
        "{}",
        stdout(&out)
    );
    let out = converge(&["replay", &id], &data);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["events"]["e1"]["notes"], "bring charts");
    assert!(converge(&["verify"], &data).status.success());
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("bad.json");
    for bad in [
        "{not json",
        r#"{"title":"x","timezone":"UTC","events":{"e":{"title":"t","resource":"r","start":9,"end":1}}}"#,
    ] {
        std::fs::write(&file, bad).unwrap();
        let out = converge(
            &["import", file.to_str().unwrap(), "--kind", "schedule"],
            &data,
        );
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid schedule JSON"));
        assert!(!data.exists(), "nothing written");
    }
    let out = converge(
        &["import", file.to_str().unwrap(), "--kind", "calendar"],
        &data,
    );
    assert!(!out.status.success());
    let out = converge(&["replay", "not-an-id"], &data);
    assert!(!out.status.success());
    let out = converge(&["verify"], &data);
    assert!(!out.status.success(), "no log there");
    assert!(!data.exists(), "read-only commands create nothing");
}

#[test]
fn verify_names_a_tampered_entry_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = import_schedule(dir.path());
    let doc: converge_proto::DocId = id.parse().unwrap();
    let mut key = vec![b'E'];
    key.extend_from_slice(doc.as_bytes());
    key.extend_from_slice(&1u64.to_be_bytes());
    {
        let db = converge_tests::open_raw_sled(&data);
        let mut v = db.get(&key).unwrap().unwrap().to_vec();
        v[10] ^= 1;
        db.insert(&key, v).unwrap();
        db.flush().unwrap();
    }
    let out = converge(&["verify"], &data);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!("document {id} seq 1")),
        "{}",
        stdout(&out)
    );
    let out = converge(&["replay", &id], &data);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("document {id} seq 1")));
}

#[test]
fn demo_converges_over_real_sockets() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("converged: both clients hold the same document"),
        "{stdout}"
    );
    // The double booking: one Applied, one Rejected and rolled back, both converge.
    assert_eq!(stdout.matches("booking Applied").count(), 1, "{stdout}");
    assert_eq!(
        stdout.matches("Rejected (overlaps), rolled back").count(),
        1,
        "{stdout}"
    );
    assert!(
        stdout.contains("converged: exactly one booking of bed 1, on both clients"),
        "{stdout}"
    );
}

#[test]
fn restore_copies_a_backup_and_moves_every_document_to_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (backup, id) = import_schedule(dir.path());
    let restored = dir.path().join("restored");
    let out = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["restore", "--from", backup.to_str().unwrap(), "--data"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("restored 1 documents"),
        "{}",
        stdout(&out)
    );
    // The restored copy serves the same document at a new epoch; the backup is untouched.
    let out = converge(&["replay", &id], &restored);
    assert!(out.status.success(), "{out:?}");
    let doc: converge_proto::DocId = id.parse().unwrap();
    let epoch = |data: &Path| {
        use converge_log::EventLog;
        let log = converge_log::Log::open(data, converge_log::LogConfig::default()).unwrap();
        log.head(&doc).unwrap().epoch.get()
    };
    assert_eq!(epoch(&restored), epoch(&backup) + 1);
    assert!(converge(&["verify"], &restored).status.success());
    // Never over a directory that holds something.
    let out = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["restore", "--from", backup.to_str().unwrap(), "--data"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `converge serve` with no secret configured creates one (mode 0600) and says how to mint
/// tokens; `converge token` with the same data directory mints one the server takes, and the
/// server refuses a connection without one. Limit flags reach the server: with
/// `--max-connections-per-user 1`, a second connection of the same user is refused.
#[test]
fn serve_is_never_open_by_accident_and_token_mints_what_it_accepts() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(&data)
        .args(["--max-connections-per-user", "1"])
        .env_remove("CONVERGE_JWT_SECRET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = String::new();
    let url = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        said.push_str(&line);
        said.push('\n');
        if let Some(rest) = line.strip_prefix("converge listening on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert!(said.contains("created"), "{said}");
    assert!(said.contains("converge token --data"), "{said}");
    let secret = data.join("jwt-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let out = converge(
        &[
            "token", "--user", "alice", "--role", "editor", "--ttl", "10m",
        ],
        &data,
    );
    assert!(out.status.success(), "{out:?}");
    let token = stdout(&out).lines().last().unwrap().to_string();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let hello = |token: Option<String>| {
        let url = url.clone();
        rt.block_on(async move {
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::Message;
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap();
            let hello = converge_proto::ClientMsg::Hello {
                protocol: converge_proto::PROTOCOL_VERSION,
                client_id: converge_proto::ClientId::random(),
                token,
            };
            ws.send(Message::Binary(
                converge_proto::encode_client(&hello).unwrap().into(),
            ))
            .await
            .unwrap();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        return (ws, converge_proto::decode_server(&b, 1 << 20).unwrap());
                    }
                    Some(Ok(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
        })
    };
    let (_first, welcome) = hello(Some(token.clone()));
    match welcome {
        converge_proto::ServerMsg::Welcome { user, .. } => assert_eq!(user.as_str(), "alice"),
        other => panic!("{other:?}"),
    }
    match hello(Some(token)).1 {
        converge_proto::ServerMsg::Error { code, .. } => {
            assert_eq!(code, converge_proto::ErrorCode::TooManyConnections)
        }
        other => panic!("{other:?}"),
    }
    match hello(None).1 {
        converge_proto::ServerMsg::Error { code, .. } => {
            assert_eq!(code, converge_proto::ErrorCode::Unauthorized)
        }
        other => panic!("{other:?}"),
    }
    let _ = child.kill();
    let _ = child.wait();
}

//! Crash test: a child appends with fsync and prints every acknowledged seq; we SIGKILL it at
//! random moments, reopen, and check that every acknowledged change is there and verify passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use converge_log::{EntryKind, EventLog, LogConfig, SledLog};
use converge_proto::{DocId, Seq};
use rand::Rng;

const KILLS: usize = 25;

#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    // (doc, seq) -> automerge change hash, for every ACK ever printed.
    let mut acked: HashMap<(DocId, Seq), String> = HashMap::new();
    for round in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a random number of acknowledgements: the kill lands while other appends
        // are in flight (applied but not flushed, or mid-flush).
        let wait_for = rng.random_range(1..300);
        let mut seen = 0;
        while seen < wait_for {
            let Some(line) = lines.next() else { break };
            let line = line.unwrap();
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts[0], "ACK", "unexpected output: {line}");
            let doc: DocId = parts[1].parse().unwrap();
            let seq = Seq(parts[2].parse().unwrap());
            acked.insert((doc, seq), parts[3].to_string());
            seen += 1;
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: child exited on its own: {status}"
        );
        // Lines already in the pipe were acknowledged before the kill: count them too.
        for line in lines.map_while(Result::ok) {
            let parts: Vec<&str> = line.split(' ').collect();
            if parts.len() == 4 && parts[0] == "ACK" {
                acked.insert(
                    (parts[1].parse().unwrap(), Seq(parts[2].parse().unwrap())),
                    parts[3].to_string(),
                );
            }
        }

        let log = SledLog::open(dir.path(), LogConfig::default()).unwrap();
        for ((doc, seq), hash) in &acked {
            let entries = log
                .read(doc, *seq, 1)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            let entry = entries
                .first()
                .unwrap_or_else(|| panic!("round {round}: lost {doc} seq {seq}"));
            let EntryKind::Change(bytes) = &entry.kind else {
                panic!("not a change")
            };
            let got = automerge::Change::from_bytes(bytes.clone())
                .unwrap()
                .hash()
                .to_string();
            assert_eq!(
                &got, hash,
                "round {round}: {doc} seq {seq} holds another change"
            );
        }
        for doc in log.docs().unwrap() {
            log.verify(&doc)
                .unwrap_or_else(|e| panic!("round {round}: verify: {e}"));
        }
    }
    assert!(
        acked.len() >= KILLS,
        "the writer acknowledged too little to test anything"
    );
}

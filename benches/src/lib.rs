//! Shared setup for converge's benchmarks: the editing trace and change generators.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::PathBuf;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ROOT};
use serde::Deserialize;

/// The automerge-perf editing trace (see shared/data/README.md).
#[derive(Debug, Deserialize)]
pub struct Trace {
    #[serde(rename = "endContent")]
    pub end_content: String,
    pub txns: Vec<Txn>,
}

#[derive(Debug, Deserialize)]
pub struct Txn {
    pub patches: Vec<(usize, usize, String)>,
}

/// Where the trace lives: $CONVERGE_TRACE, else ../shared/data beside the checkout.
pub fn trace_path() -> PathBuf {
    if let Ok(p) = std::env::var("CONVERGE_TRACE") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    root.join("../../shared/data/automerge-paper.json.gz")
}

pub fn load_trace() -> Trace {
    let file = std::fs::File::open(trace_path()).expect("the editing trace (set CONVERGE_TRACE)");
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

/// A document with an empty text object at "text", and that object's id.
pub fn text_doc(actor: u8) -> (AutoCommit, automerge::ObjId) {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![actor; 16]));
    let text = doc.put_object(ROOT, "text", ObjType::Text).unwrap();
    doc.commit();
    (doc, text)
}

/// Applies one edit of the trace.
pub fn apply_edit(
    doc: &mut AutoCommit,
    text: &automerge::ObjId,
    (pos, del, ins): &(usize, usize, String),
) {
    doc.splice_text(text, *pos, *del as isize, ins).unwrap();
}

/// The first `n` edits of the trace as raw changes (one change per edit), after the change
/// that creates the text object (returned first).
pub fn trace_changes(trace: &Trace, n: usize) -> Vec<Vec<u8>> {
    let (mut doc, text) = text_doc(1);
    for txn in trace.txns.iter().take(n) {
        for p in &txn.patches {
            apply_edit(&mut doc, &text, p);
        }
        doc.commit();
    }
    doc.get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect()
}

/// `n` distinct changes of about `size` bytes each, from one actor.
pub fn sized_changes(n: usize, size: usize) -> Vec<Vec<u8>> {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![7u8; 16]));
    let filler = "x".repeat(size.saturating_sub(70));
    (0..n)
        .map(|i| {
            doc.put(ROOT, "v", format!("{i:08}{filler}")).unwrap();
            doc.commit();
            doc.get_last_local_change().unwrap().raw_bytes().to_vec()
        })
        .collect()
}

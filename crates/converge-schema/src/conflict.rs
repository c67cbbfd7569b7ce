//! Concurrent writes to one field: list them, and resolve them by writing the chosen value.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ROOT, ReadDoc, ScalarValue, Value};
use serde_json::Value as Json;

use crate::error::SchemaError;
use crate::json::value_to_json;

/// One step of a path into a document: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

impl From<&str> for PathSegment {
    fn from(s: &str) -> Self {
        PathSegment::Key(s.to_string())
    }
}

impl From<usize> for PathSegment {
    fn from(i: usize) -> Self {
        PathSegment::Index(i)
    }
}

fn show(path: &[PathSegment]) -> String {
    path.iter()
        .map(|p| match p {
            PathSegment::Key(k) => k.clone(),
            PathSegment::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Follows all but the last segment (through winning values) to the object holding the field.
fn parent<'p>(
    doc: &impl ReadDoc,
    path: &'p [PathSegment],
) -> Result<(ObjId, &'p PathSegment), SchemaError> {
    let Some((last, init)) = path.split_last() else {
        return Err(SchemaError::NoSuchPath(String::new()));
    };
    let mut obj = ROOT;
    for seg in init {
        let got = match seg {
            PathSegment::Key(k) => doc.get(&obj, k.as_str())?,
            PathSegment::Index(i) => doc.get(&obj, *i)?,
        };
        match got {
            Some((Value::Object(_), id)) => obj = id,
            _ => return Err(SchemaError::NoSuchPath(show(path))),
        }
    }
    Ok((obj, last))
}

/// Every value concurrently written to the field at `path`, as JSON. One value means no
/// conflict; several mean concurrent writes that an app may show as "local vs remote".
/// The first is the one [`crate::to_json`] shows.
pub fn conflicts(doc: &impl ReadDoc, path: &[PathSegment]) -> Result<Vec<Json>, SchemaError> {
    let (obj, last) = parent(doc, path)?;
    let all = match last {
        PathSegment::Key(k) => doc.get_all(&obj, k.as_str())?,
        PathSegment::Index(i) => doc.get_all(&obj, *i)?,
    };
    let mut values: Vec<Json> = all
        .iter()
        .map(|(v, id)| value_to_json(doc, v, id))
        .collect();
    // automerge lists conflicting values oldest-op first and the winner last: put the winner first.
    values.reverse();
    Ok(values)
}

/// Resolves a conflict by writing `value` to the field at `path`: an ordinary change that
/// supersedes every value the writer has seen.
pub fn resolve(
    doc: &mut AutoCommit,
    path: &[PathSegment],
    value: ScalarValue,
) -> Result<(), SchemaError> {
    let (obj, last) = parent(doc, path)?;
    match last {
        PathSegment::Key(k) => doc.put(&obj, k.as_str(), value)?,
        PathSegment::Index(i) => doc.put(&obj, *i, value)?,
    }
    Ok(())
}

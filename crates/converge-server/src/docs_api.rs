//! `GET /api/docs` (list) and `POST /api/docs` (create with a schema kind), admin only.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use converge_log::Author;
use converge_proto::{DocId, ErrorCode};
use converge_schema::DocKind;
use serde::Deserialize;

use crate::http::{admin, unprocessable};
use crate::hub_task::now_ms;
use crate::server::AppState;

/// Most documents one listing returns.
const MAX_LIST: usize = 1000;

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    /// Documents after this id (ids sort by their bytes), for the next page.
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/docs?after=ID&limit=N`: documents in id order with their sizes; `next` is the
/// `after` of the next page, if there is one.
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = admin(&state, &headers) {
        return r;
    }
    let after = match q.after.as_deref().map(str::parse::<DocId>) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(_)) => {
            return unprocessable(ErrorCode::BadRequest, "`after` is not a document id");
        }
    };
    let limit = q.limit.unwrap_or(MAX_LIST).clamp(1, MAX_LIST);
    let log = state.log.clone();
    let loaded: std::collections::HashSet<DocId> = state.store.loaded().into_iter().collect();
    let listed = tokio::task::spawn_blocking(move || {
        let mut docs = log.docs()?;
        docs.sort();
        let rest: Vec<DocId> = docs
            .into_iter()
            .filter(|d| after.is_none_or(|a| *d > a))
            .collect();
        let more = rest.len() > limit;
        let page = rest
            .into_iter()
            .take(limit)
            .map(|d| log.stats(&d).map(|s| (d, s)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, converge_log::LogError>((page, more))
    })
    .await;
    let (page, more) = match listed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let r = crate::refusal(&e);
            return crate::http::refusal_response(r);
        }
        Err(e) => {
            return crate::http::internal(e.to_string());
        }
    };
    let next = more
        .then(|| page.last().map(|(d, _)| d.to_string()))
        .flatten();
    let docs: Vec<serde_json::Value> = page
        .iter()
        .map(|(d, s)| {
            serde_json::json!({
                "id": d.to_string(),
                "inbox": d.is_inbox(),
                "entries": s.entries,
                "entry_bytes": s.entry_bytes,
                "changes": s.changes,
                "snapshot_seq": s.snapshot_seq.map(|q| q.get()),
                "snapshot_bytes": s.snapshot_bytes,
                "loaded": loaded.contains(d),
            })
        })
        .collect();
    (
        StatusCode::OK,
        Json(serde_json::json!({"docs": docs, "next": next})),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    kind: String,
    /// The document's first state, as the kind's JSON (docs/schema.md).
    value: serde_json::Value,
}

/// `POST /api/docs` with `{"kind": "schedule"|"dashboard"|"widget", "value": {...}}`: creates
/// the document (201 with its id). Nothing is written when the value does not fit the kind.
pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let identity = match admin(&state, &headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let body: CreateBody =
        match crate::http::json_body(&body, "the body is not {\"kind\", \"value\"}") {
            Ok(b) => b,
            Err(r) => return r,
        };
    let kind: DocKind = match body.kind.parse() {
        // Inboxes are the server's, created by delivering to them.
        Ok(DocKind::Inbox) | Err(_) => {
            return unprocessable(
                ErrorCode::BadRequest,
                format!("kind {:?} is not schedule, dashboard or widget", body.kind),
            );
        }
        Ok(k) => k,
    };
    let typed = match kind.parse_json(&body.value.to_string()) {
        Ok(t) => t,
        Err(e) => return unprocessable(ErrorCode::BadRequest, e.to_string()),
    };
    let store = state.store.clone();
    let author = Author::user(identity.user);
    let created = tokio::task::spawn_blocking(move || {
        let (id, durable) = store.create(&author, now_ms(), |doc| typed.write(doc))?;
        durable.wait()?;
        Ok::<_, converge_log::StoreError>(id)
    })
    .await;
    match created {
        Ok(Ok(id)) => (
            StatusCode::CREATED,
            Json(serde_json::json!({"id": id.to_string(), "kind": kind.name()})),
        )
            .into_response(),
        Ok(Err(converge_log::StoreError::Log(e))) => {
            crate::http::refusal_response(crate::refusal(&e))
        }
        Ok(Err(e)) => crate::http::internal(e.to_string()),
        Err(e) => crate::http::internal(e.to_string()),
    }
}

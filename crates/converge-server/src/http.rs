//! The HTTP API for backends (docs/openapi.yaml). JSON in, JSON out; every error is a body
//! `{"code": <ErrorCode number>, "error": <its name>, "message": ...}`.
//!
//! `POST /api/docs/{id}/mutations`: runs a mutator on a document, in order with everything
//! else the hub does, exactly once per `Idempotency-Key`: the key names a virtual client
//! (a hash of the caller and the key) whose one mutation has id 1, so a retry with the same
//! key is a duplicate and gets the recorded outcome again, whatever its body says.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use converge_core::ExternalMutation;
use converge_proto::limits::MAX_NAME_BYTES;
use converge_proto::{Blob, ClientId, DocId, ErrorCode, FencingToken, MutationId, MutationOutcome};
use serde::Deserialize;

use crate::hub_task::{self, now_ms};
use crate::server::AppState;

/// Largest JSON body of a mutation request.
pub(crate) const MAX_BODY_BYTES: usize = 256 * 1024;

/// The body of `POST /api/docs/{id}/mutations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MutationBody {
    name: String,
    /// The mutator's arguments, as JSON of its `Args` type.
    args: serde_json::Value,
    #[serde(default)]
    fence: Option<u64>,
}

/// An error response.
pub(crate) fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "code": code.code(),
        "error": code.name(),
        "message": message.into(),
    });
    (status, Json(body)).into_response()
}

/// The 503 of a server whose hub is gone (it is shutting down).
pub(crate) fn shutting_down() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ShuttingDown,
        "the server is shutting down",
    )
}

/// A 422 for a request that is well-formed HTTP but not a valid request.
pub(crate) fn unprocessable(code: ErrorCode, message: impl Into<String>) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// A 500: something on the server's side failed.
pub(crate) fn internal(message: impl Into<String>) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        message,
    )
}

/// Parses a JSON body, or the 422 `BadRequest` saying `what: <the parser's reason>`.
#[allow(clippy::result_large_err)]
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, Response> {
    serde_json::from_slice(bytes)
        .map_err(|e| unprocessable(ErrorCode::BadRequest, format!("{what}: {e}")))
}

/// The response for a refusal of the hub or the log, with the status its code implies.
pub(crate) fn refusal_response(r: converge_core::Refusal) -> Response {
    let status = match r.code {
        ErrorCode::ShuttingDown | ErrorCode::StorageFailed => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::DocDeleted | ErrorCode::UnknownDoc => StatusCode::NOT_FOUND,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, r.code, r.message)
}

/// The quota of HTTP writes per user: `per_sec`, with a burst of twice that.
pub(crate) fn write_quota(per_sec: u32) -> governor::Quota {
    let rate = std::num::NonZeroU32::new(per_sec.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(per_sec.saturating_mul(2).max(1)).unwrap_or(rate);
    governor::Quota::per_second(rate).allow_burst(burst)
}

/// Whether `user` may make one more write over HTTP now (429 `RateLimited` if not).
#[allow(clippy::result_large_err)]
pub(crate) fn may_write(state: &AppState, user: &converge_proto::UserId) -> Result<(), Response> {
    let limiter = &state.http_writes;
    // Forget users whose buckets are full again, so the table stays as small as the set of
    // users writing now.
    if limiter.len() > 10_000 {
        limiter.retain_recent();
    }
    limiter.check_key(user).map_err(|_| {
        error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "more than {} writes per second over HTTP; try again shortly",
                state.config.http_writes_per_sec
            ),
        )
    })
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

pub(crate) async fn mutate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    if let Err(r) = may_write(&state, &identity.user) {
        return r;
    }
    let doc = match doc_id(&id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_NAME_BYTES => k.to_string(),
        Some(Ok(k)) if k.len() > MAX_NAME_BYTES => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::FieldTooLong,
                format!("the Idempotency-Key is at most {MAX_NAME_BYTES} bytes"),
            );
        }
        _ => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::BadRequest,
                "an Idempotency-Key header (1 to 256 visible ASCII characters) is required",
            );
        }
    };
    let body: MutationBody =
        match json_body(&body, "the body is not {\"name\", \"args\", \"fence\"?}") {
            Ok(b) => b,
            Err(r) => return r,
        };
    let mut de = <dyn erased_serde::Deserializer>::erase(body.args);
    let args = match state.config.mutators.encode_args_from(&body.name, &mut de) {
        Ok(a) => a,
        Err(r) => return error(StatusCode::UNPROCESSABLE_ENTITY, r.code, r.message),
    };
    let client = idempotency_client(identity.user.as_str(), &key);
    let mutation = ExternalMutation {
        doc,
        identity,
        client,
        mutation_id: MutationId(1),
        name: body.name,
        args: Blob(args),
        fence: body.fence.map(FencingToken),
    };
    match hub_task::mutate_external(&state.hub, mutation)
        .await
        .map(|d| d.outcome)
    {
        Ok(MutationOutcome::Applied { seq }) => (
            StatusCode::OK,
            Json(serde_json::json!({"outcome": "applied", "seq": seq.get()})),
        )
            .into_response(),
        Ok(MutationOutcome::Rejected { code, message }) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "outcome": "rejected",
                "code": code.code(),
                "error": code.name(),
                "message": message,
            })),
        )
            .into_response(),
        Err(r) => refusal_response(r),
    }
}

/// The virtual client of one idempotency key: the same caller and key always name the same
/// client, whose single mutation is id 1.
fn idempotency_client(user: &str, key: &str) -> ClientId {
    ClientId::from_bytes(hash16("converge idempotency key", &[user, key]))
}

/// 16 bytes of blake3 over `domain` then each of `parts`, each one after a NUL: a stable id
/// derived from names (the same bytes every time, so ids already in the log stay valid).
pub(crate) fn hash16(domain: &str, parts: &[&str]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(domain.as_bytes());
    for part in parts {
        h.update(b"\0");
        h.update(part.as_bytes());
    }
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    b
}

/// The body of `PUT /api/docs/{id}/acl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclBody {
    user: String,
    /// The role to grant; `null` removes the user's grant.
    role: Option<String>,
}

/// Who calls, by the Bearer token, with the same authenticator as a WebSocket Hello (401
/// with the refusal's code otherwise).
#[allow(clippy::result_large_err)]
pub(crate) fn caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<converge_core::Identity, Response> {
    state
        .auth
        .authenticate(bearer(headers), now_ms())
        .map_err(|e| error(StatusCode::UNAUTHORIZED, e.code, e.message))
}

/// The caller, if the token is valid and its roles include admin; else the error response.
#[allow(clippy::result_large_err)]
pub(crate) fn admin(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<converge_core::Identity, Response> {
    let identity = caller(state, headers)?;
    if !converge_core::global_permissions(&state.config.hub.roles, &identity)
        .has(converge_core::Permission::Admin)
    {
        return Err(error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this needs an admin token",
        ));
    }
    Ok(identity)
}

#[allow(clippy::result_large_err)]
fn doc_id(id: &str) -> Result<DocId, Response> {
    id.parse::<DocId>().map_err(|_| {
        error(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownDoc,
            format!("{id:?} is not a document id"),
        )
    })
}

/// `GET /api/docs/{id}/acl` (admin): `{"grants": [{"user", "role"}]}`.
pub(crate) async fn get_acl(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin(&state, &headers) {
        return r;
    }
    let doc = match doc_id(&id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let asked = hub_task::ask(&state.hub, |reply| hub_task::HubEvent::GetAcl {
        doc,
        reply,
    });
    let Some(grants) = asked.await else {
        return shutting_down();
    };
    let grants: Vec<serde_json::Value> = grants
        .into_iter()
        .map(|(u, r)| serde_json::json!({"user": u.as_str(), "role": r}))
        .collect();
    (
        StatusCode::OK,
        Json(serde_json::json!({ "grants": grants })),
    )
        .into_response()
}

/// `PUT /api/docs/{id}/acl` (admin) with `{"user", "role"}`: grants (or, with a null role,
/// removes) a role in the document; live sessions are judged by it at once.
pub(crate) async fn put_acl(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = admin(&state, &headers) {
        return r;
    }
    let doc = match doc_id(&id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let body: AclBody = match json_body(&body, "the body is not {\"user\", \"role\"}") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let user = match converge_proto::UserId::new(body.user) {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::BadRequest,
                e.to_string(),
            );
        }
    };
    if body.role.as_ref().is_some_and(|r| r.len() > MAX_NAME_BYTES) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::FieldTooLong,
            format!("a role is at most {MAX_NAME_BYTES} bytes"),
        );
    }
    // Durable first, then in force: a grant the server confirmed survives a restart.
    if let Err(e) = persist_acl(&state.log, doc, &user, body.role.as_deref()).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StorageFailed,
            e.to_string(),
        );
    }
    let _ = state
        .hub
        .send(crate::hub_task::HubEvent::SetAcl {
            doc,
            user,
            role: body.role,
        })
        .await;
    StatusCode::NO_CONTENT.into_response()
}

/// Writes an admin grant to the log's store and waits until it is durable.
pub(crate) async fn persist_acl(
    log: &std::sync::Arc<dyn converge_log::EventLog>,
    doc: DocId,
    user: &converge_proto::UserId,
    role: Option<&str>,
) -> Result<(), converge_log::LogError> {
    let (log, user, role) = (log.clone(), user.clone(), role.map(str::to_string));
    tokio::task::spawn_blocking(move || log.set_acl(&doc, &user, role.as_deref())?.wait())
        .await
        .map_err(|e| converge_log::LogError::Invalid(e.to_string()))?
}

/// `GET /api/stats` (admin): what the server holds now.
pub(crate) async fn stats(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&state, &headers) {
        return r;
    }
    let Some(s) = hub_task::stats(&state.hub).await else {
        return shutting_down();
    };
    let log = state.log.clone();
    let log_bytes = tokio::task::spawn_blocking(move || log.size_on_disk())
        .await
        .ok()
        .and_then(Result::ok);
    let flush = state.log.flush_stats();
    let body = serde_json::json!({
        "connections": s.sessions,
        "sessions_by_user": s.sessions_by_user,
        "subscriptions": s.subscriptions,
        "rooms": s.rooms,
        "known_users": s.known_users,
        "documents_subscribed": s.docs,
        "documents_loaded": state.store.loaded().len(),
        "locks_held": s.locks_held,
        "log_bytes": log_bytes,
        "flush": {
            "count": flush.flushes,
            "mean_us": flush.mean_us(),
            "max_us": flush.max_us,
            "last_us": flush.last_us,
        },
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// The caller, if it may read `doc` (its roles, token grants and the ACL); else the error.
#[allow(clippy::result_large_err)]
async fn reader(state: &AppState, headers: &HeaderMap, doc: DocId) -> Result<(), Response> {
    let identity = Box::new(caller(state, headers)?);
    let asked = hub_task::ask(&state.hub, |reply| hub_task::HubEvent::Permissions {
        identity,
        doc,
        reply,
    });
    let perms = asked.await.ok_or_else(shutting_down)?;
    if !perms.has(converge_core::Permission::Read) {
        return Err(error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "your roles do not allow reading this document",
        ));
    }
    Ok(())
}

fn log_error(e: &converge_log::LogError) -> Response {
    let r = crate::refusal(e);
    let status = match r.code {
        ErrorCode::UnknownDoc | ErrorCode::DocDeleted => StatusCode::NOT_FOUND,
        ErrorCode::StorageFailed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, r.code, r.message)
}

/// `GET /api/docs/{id}` (read permission): the document as JSON, materialized from the log.
pub(crate) async fn doc_json(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let doc = match doc_id(&id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if let Err(r) = reader(&state, &headers, doc).await {
        return r;
    }
    let store = state.store.clone();
    let read = tokio::task::spawn_blocking(move || {
        store.read(&doc, |d| {
            serde_json::to_value(automerge::AutoSerde::from(d))
        })
    })
    .await;
    match read {
        Ok(Ok(Ok(json))) => (StatusCode::OK, Json(json)).into_response(),
        Ok(Ok(Err(e))) => internal(e.to_string()),
        Ok(Err(converge_log::StoreError::Log(e))) => log_error(&e),
        Ok(Err(e)) => internal(e.to_string()),
        Err(e) => internal(e.to_string()),
    }
}

/// Most entries one `GET /api/docs/{id}/events` returns.
const MAX_EVENTS: usize = 1000;

/// `GET /api/docs/{id}/events?from=SEQ&limit=N` (read permission): the stream's entries
/// from `from` (default 1), at most `limit` (default and cap 1,000), each
/// `{seq, epoch, at_ms, user, kind, ...}`; `next` is the seq to ask for next, if any.
pub(crate) async fn doc_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let doc = match doc_id(&id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    #[allow(clippy::result_large_err)]
    let number = |k: &str, default: u64| -> Result<u64, Response> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::BadRequest,
                    format!("{k} must be a number, not {v:?}"),
                )
            }),
        }
    };
    let (from, limit) = match (number("from", 1), number("limit", MAX_EVENTS as u64)) {
        (Ok(f), Ok(l)) => (f.max(1), (l as usize).clamp(1, MAX_EVENTS)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if let Err(r) = reader(&state, &headers, doc).await {
        return r;
    }
    let log = state.log.clone();
    let read = tokio::task::spawn_blocking(move || {
        let head = log.head(&doc)?;
        let entries = log.read(&doc, converge_proto::Seq(from), limit)?;
        Ok::<_, converge_log::LogError>((head, entries))
    })
    .await;
    let (head, entries) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return log_error(&e),
        Err(e) => {
            return internal(e.to_string());
        }
    };
    let last = entries.last().map(|e| e.seq);
    let events: Vec<serde_json::Value> = entries.into_iter().map(|e| event_json(&e)).collect();
    let next = last.filter(|l| *l < head.last_seq).map(|l| l.get() + 1);
    (
        StatusCode::OK,
        Json(serde_json::json!({
            "epoch": head.epoch.get(),
            "last_seq": head.last_seq.get(),
            "events": events,
            "next": next,
        })),
    )
        .into_response()
}

fn event_json(e: &converge_log::Entry) -> serde_json::Value {
    use converge_log::EntryKind;
    let mut v = serde_json::json!({
        "seq": e.seq.get(),
        "epoch": e.epoch.get(),
        "at_ms": e.at_ms,
        "user": e.author.user.as_str(),
        "kind": e.kind.name(),
    });
    match &e.kind {
        EntryKind::Change(b) | EntryKind::Relayed(b) => {
            v["bytes"] = b.len().into();
        }
        EntryKind::Mutation(m) => {
            v["mutation"] = serde_json::json!({
                "id": m.mutation_id.get(),
                "name": m.name,
                "outcome": match &m.outcome {
                    converge_log::MutationOutcome::Applied => serde_json::json!("applied"),
                    converge_log::MutationOutcome::Rejected { code, message } => {
                        serde_json::json!({"rejected": code, "message": message})
                    }
                },
            });
        }
        EntryKind::Lock(l) => {
            v["lock"] = serde_json::json!({
                "key": l.key,
                "event": format!("{:?}", l.event),
                "token": l.token.get(),
                "expires_at_ms": l.expires_at_ms,
            });
        }
        EntryKind::Tombstone => {}
    }
    v
}

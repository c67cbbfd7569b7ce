//! Notifications, inboxes and events over HTTP (docs/openapi.yaml):
//!
//! - `POST /api/notify` (admin): resolves `to` into users (named users, the directory's users
//!   with a role, the users of a room), writes the notification into each one's inbox
//!   document with the `inbox.deliver` mutator (in order with every other write, exactly once
//!   per user and `dedup_key`), then pushes it live to their sessions unless their
//!   preferences hold it back (muted category, quiet hours; critical always goes out).
//! - `GET /api/inbox`, `POST /api/inbox/read`, `PUT /api/inbox/preferences`: the caller's own
//!   inbox, with any valid token.
//! - `POST /api/publish` (publish permission): an ephemeral event to a room.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use converge_core::{Audience, ExternalMutation, Identity, Refusal, Room};
use converge_proto::limits::MAX_NAME_BYTES;
use converge_proto::{
    Blob, ClientId, DocId, ErrorCode, MutationId, MutationOutcome, NotificationMsg, ServerMsg,
    UserId, encode_args,
};
use converge_schema::{
    DeliverNotification, Inbox, MarkRead, Notification, Preferences, Priority, SetPreferences,
};
use futures_util::future::join_all;
use serde::Deserialize;

use crate::http::{caller, shutting_down, unprocessable};
use crate::hub_task::{self, HubEvent, now_ms};
use crate::server::AppState;

/// Most users one notification may name directly, and most recipients it may resolve to.
const MAX_RECIPIENTS: usize = 10_000;
/// Largest title, body and category in bytes.
const MAX_TITLE_BYTES: usize = 256;
const MAX_BODY_BYTES: usize = 4096;
const MAX_CATEGORY_BYTES: usize = 64;
/// Largest `data` object, as JSON text.
const MAX_DATA_BYTES: usize = 16 * 1024;
/// Inbox writes handed to the hub at once (each waits for its durable outcome).
const DELIVERY_WAVE: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyBody {
    to: ToBody,
    priority: String,
    category: String,
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    data: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    dedup_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToBody {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    room: Option<String>,
}

/// A checked notification request.
struct Checked {
    audience: Audience,
    priority: Priority,
    category: String,
    title: String,
    body: String,
    data: BTreeMap<String, String>,
    dedup_key: Option<String>,
}

#[allow(clippy::result_large_err)]
fn check(body: NotifyBody) -> Result<Checked, Response> {
    let priority = Priority::parse(&body.priority).ok_or_else(|| {
        unprocessable(
            ErrorCode::BadRequest,
            format!(
                "priority {:?} is not critical, high, medium or low",
                body.priority
            ),
        )
    })?;
    let too_long = |what: &str, max: usize| {
        unprocessable(
            ErrorCode::FieldTooLong,
            format!("{what} is at most {max} bytes"),
        )
    };
    if body.title.is_empty() || body.title.len() > MAX_TITLE_BYTES {
        return Err(unprocessable(
            ErrorCode::BadRequest,
            format!("a title is 1 to {MAX_TITLE_BYTES} bytes"),
        ));
    }
    if body.body.len() > MAX_BODY_BYTES {
        return Err(too_long("body", MAX_BODY_BYTES));
    }
    if body.category.is_empty() || body.category.len() > MAX_CATEGORY_BYTES {
        return Err(unprocessable(
            ErrorCode::BadRequest,
            format!("a category is 1 to {MAX_CATEGORY_BYTES} bytes"),
        ));
    }
    if body
        .dedup_key
        .as_ref()
        .is_some_and(|k| k.len() > MAX_NAME_BYTES)
    {
        return Err(too_long("dedup_key", MAX_NAME_BYTES));
    }
    // Data values are kept as text: strings as they are, anything else as its JSON.
    let data: BTreeMap<String, String> = body
        .data
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    let data_bytes: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if data_bytes > MAX_DATA_BYTES {
        return Err(too_long("data", MAX_DATA_BYTES));
    }
    let to = body.to;
    if to.users.len() > MAX_RECIPIENTS || to.roles.len() > 64 {
        return Err(unprocessable(
            ErrorCode::BadRequest,
            format!("at most {MAX_RECIPIENTS} users and 64 roles"),
        ));
    }
    let mut users = Vec::with_capacity(to.users.len());
    for u in to.users {
        if u == UserId::SERVER {
            return Err(unprocessable(
                ErrorCode::BadRequest,
                "the server has no inbox",
            ));
        }
        users
            .push(UserId::new(u).map_err(|e| unprocessable(ErrorCode::BadRequest, e.to_string()))?);
    }
    let room = match to.room {
        Some(r) => Some(Room::parse(&r).map_err(|r| unprocessable(r.code, r.message))?),
        None => None,
    };
    if users.is_empty() && to.roles.is_empty() && room.is_none() {
        return Err(unprocessable(
            ErrorCode::BadRequest,
            "`to` names no users, roles or room",
        ));
    }
    Ok(Checked {
        audience: Audience {
            users,
            roles: to.roles,
            room,
        },
        priority,
        category: body.category,
        title: body.title,
        body: body.body,
        data,
        dedup_key: body.dedup_key,
    })
}

/// A notification id: derived from the dedup key when there is one (a retry names the same
/// notification), random otherwise.
fn notification_id(dedup_key: Option<&str>) -> String {
    let bytes: [u8; 16] = match dedup_key {
        Some(k) => crate::http::hash16("converge notification", &[k]),
        None => rand::random(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The virtual client that delivers notification `id` to `user`: the delivery is its one
/// mutation (id 1), so delivering the same notification again is answered from the record
/// and writes nothing.
fn delivery_client(user: &UserId, id: &str) -> ClientId {
    ClientId::from_bytes(crate::http::hash16(
        "converge delivery",
        &[user.as_str(), id],
    ))
}

/// The identity the server writes inboxes as.
fn server_identity() -> Identity {
    Identity {
        user: UserId::server(),
        roles: std::sync::Arc::from([]),
        expires_at_ms: None,
        grants: Vec::new(),
    }
}

/// `POST /api/notify` (admin).
pub(crate) async fn notify(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = crate::http::admin(&state, &headers) {
        return r;
    }
    let body: NotifyBody = match crate::http::json_body(&body, "bad notification") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let n = match check(body) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let audience = n.audience.clone();
    let asked = hub_task::ask(&state.hub, |reply| HubEvent::Recipients { audience, reply });
    let Some(recipients) = asked.await else {
        return shutting_down();
    };
    let recipients: Vec<UserId> = recipients
        .into_iter()
        .filter(|u| *u != UserId::server())
        .collect();
    if recipients.len() > MAX_RECIPIENTS {
        return unprocessable(
            ErrorCode::BadRequest,
            format!(
                "`to` resolves to {} users; at most {MAX_RECIPIENTS}",
                recipients.len()
            ),
        );
    }
    let id = notification_id(n.dedup_key.as_deref());
    let created_at = now_ms();
    let notification = Notification {
        priority: n.priority,
        category: n.category.clone(),
        title: n.title.clone(),
        body: n.body.clone(),
        data: n.data.clone(),
        created_at: i64::try_from(created_at).unwrap_or(i64::MAX),
        read_at: None,
    };
    // Preferences as they are when the notification is sent.
    let inboxes = read_preferences(&state, &recipients).await;
    let mut delivered = Vec::new();
    let mut duplicates = 0usize;
    let mut failed = Vec::new();
    for wave in recipients.chunks(DELIVERY_WAVE) {
        let writes = wave.iter().map(|user| {
            let args = DeliverNotification {
                owner: user.as_str().to_string(),
                id: id.clone(),
                notification: notification.clone(),
                retention: state.config.inbox_retention,
            };
            let hub = state.hub.clone();
            let user = user.clone();
            let id = id.clone();
            async move {
                let args = encode_args(&args)
                    .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
                let mutation = ExternalMutation {
                    doc: DocId::inbox_of(&user),
                    identity: server_identity(),
                    client: delivery_client(&user, &id),
                    mutation_id: MutationId(1),
                    name: <DeliverNotification as converge_core::Mutator>::NAME.to_string(),
                    args: Blob(args),
                    fence: None,
                };
                hub_task::mutate_external(&hub, mutation).await
            }
        });
        for (user, outcome) in wave.iter().zip(join_all(writes).await) {
            match outcome.map(|d| (d.outcome, d.replayed)) {
                // Delivered before (the same dedup_key): answered from the record, not
                // written and not pushed again, even if retention pruned it since.
                Ok((MutationOutcome::Applied { .. }, true)) => duplicates += 1,
                Ok((MutationOutcome::Applied { .. }, false)) => delivered.push(user.clone()),
                Ok((MutationOutcome::Rejected { code, message }, _)) => {
                    failed.push(serde_json::json!({
                        "user": user.as_str(), "code": code.code(), "error": code.name(), "message": message,
                    }));
                }
                Err(r) => failed.push(serde_json::json!({
                    "user": user.as_str(), "code": r.code.code(), "error": r.code.name(), "message": r.message,
                })),
            }
        }
    }
    state.metrics.notified(delivered.len() as u64);
    let live = NotificationMsg {
        id: id.clone(),
        priority: n.priority.as_str().to_string(),
        category: n.category.clone(),
        title: n.title,
        body: n.body,
        data: Blob(serde_json::to_vec(&n.data).unwrap_or_default()),
        created_at_ms: created_at,
    };
    let now = now_ms();
    let (mut pushes, mut held_back) = (Vec::new(), 0usize);
    for user in &delivered {
        let prefs = inboxes.get(user).cloned().unwrap_or_default();
        if prefs.push_live(n.priority, &n.category, now) {
            pushes.push((user.clone(), ServerMsg::Notification(live.clone())));
        } else {
            held_back += 1;
        }
    }
    let pushed = hub_task::ask(&state.hub, |reply| HubEvent::SendToUsers {
        messages: pushes,
        reply,
    })
    .await
    .unwrap_or(0);
    let body = serde_json::json!({
        "id": id,
        "recipients": recipients.len(),
        "delivered": delivered.len(),
        "duplicates": duplicates,
        "held_back": held_back,
        "pushed_sessions": pushed,
        "failed": failed,
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// Each recipient's preferences (defaults for an inbox never written).
async fn read_preferences(state: &AppState, users: &[UserId]) -> BTreeMap<UserId, Preferences> {
    let store = state.store.clone();
    let users = users.to_vec();
    tokio::task::spawn_blocking(move || {
        users
            .into_iter()
            .map(|user| {
                // Only the preferences: hydrating the whole inbox would read every item.
                let prefs: Preferences = store
                    .read(&DocId::inbox_of(&user), |d| {
                        autosurgeon::hydrate_prop::<_, Option<Preferences>, _, _>(
                            d,
                            automerge::ROOT,
                            "preferences",
                        )
                        .ok()
                        .flatten()
                    })
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                (user, prefs)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// `GET /api/inbox` (any valid token): the caller's inbox: its document id (to subscribe to),
/// unread counts per priority, preferences, and its notifications, newest first.
pub(crate) async fn get_inbox(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let doc = DocId::inbox_of(&identity.user);
    let store = state.store.clone();
    let read = tokio::task::spawn_blocking(move || {
        store.read(&doc, |d| autosurgeon::hydrate::<_, Inbox>(d).ok())
    })
    .await;
    let inbox = match read {
        Ok(Ok(i)) => i.unwrap_or_default(),
        // No inbox yet: nothing was ever delivered.
        Ok(Err(converge_log::StoreError::Log(converge_log::LogError::UnknownDoc(_)))) => {
            Inbox::default()
        }
        Ok(Err(e)) => {
            return crate::http::internal(e.to_string());
        }
        Err(e) => {
            return crate::http::internal(e.to_string());
        }
    };
    let counts = inbox.unread_counts();
    let mut items: Vec<(&String, &Notification)> = inbox.notifications.iter().collect();
    items.sort_by(|a, b| b.1.created_at.cmp(&a.1.created_at).then(a.0.cmp(b.0)));
    let notifications: Vec<serde_json::Value> = items
        .into_iter()
        .map(|(id, n)| {
            let mut v = serde_json::to_value(n).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("id".into(), id.clone().into());
            }
            v
        })
        .collect();
    let body = serde_json::json!({
        "doc": doc.to_string(),
        "unread": {
            "critical": counts.critical,
            "high": counts.high,
            "medium": counts.medium,
            "low": counts.low,
            "total": counts.total(),
        },
        "preferences": inbox.preferences,
        "notifications": notifications,
    });
    (StatusCode::OK, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// `POST /api/inbox/read` with `{"ids": [...]}` or `{"all": true}`: marks the caller's
/// notifications read (the `inbox.mark_read` mutator, as the caller).
pub(crate) async fn mark_read(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let body: ReadBody = match crate::http::json_body(
        &body,
        "the body is not {\"ids\": [...]} or {\"all\": true}",
    ) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.ids.is_empty() && !body.all {
        return unprocessable(ErrorCode::BadRequest, "name ids or set all");
    }
    let args = MarkRead {
        ids: body.ids,
        all: body.all,
    };
    own_inbox_mutation::<MarkRead>(&state, identity, &args).await
}

/// `PUT /api/inbox/preferences` with `{"muted_categories": [...], "quiet_hours": {...}|null}`.
pub(crate) async fn set_preferences(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let preferences: Preferences = match crate::http::json_body(&body, "bad preferences") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let args = SetPreferences { preferences };
    own_inbox_mutation::<SetPreferences>(&state, identity, &args).await
}

/// Runs one of the inbox's own mutators on the caller's inbox, as the caller. Each call is a
/// fresh virtual client: these mutators are idempotent, so a retry is harmless.
async fn own_inbox_mutation<M>(state: &AppState, identity: Identity, args: &M::Args) -> Response
where
    M: converge_core::Mutator,
    M::Args: serde::Serialize,
{
    if let Err(r) = crate::http::may_write(state, &identity.user) {
        return r;
    }
    let args = match encode_args(args) {
        Ok(a) => a,
        Err(e) => return unprocessable(ErrorCode::BadArgs, e.to_string()),
    };
    let mutation = ExternalMutation {
        doc: DocId::inbox_of(&identity.user),
        identity,
        client: ClientId::from_bytes(rand::random()),
        mutation_id: MutationId(1),
        name: M::NAME.to_string(),
        args: Blob(args),
        fence: None,
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
        Ok(MutationOutcome::Rejected { code, message }) => unprocessable(code, message),
        Err(r) => crate::http::refusal_response(r),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    room: String,
    event: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// `POST /api/publish` (publish permission: in the document for `doc:` rooms, by role for
/// the others) with `{"room", "event", "data"}`: the event goes to every member of the room
/// now, `data` as JSON bytes.
pub(crate) async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    if let Err(r) = crate::http::may_write(&state, &identity.user) {
        return r;
    }
    let body: PublishBody =
        match crate::http::json_body(&body, "the body is not {\"room\", \"event\", \"data\"}") {
            Ok(b) => b,
            Err(r) => return r,
        };
    let data = Blob(serde_json::to_vec(&body.data).unwrap_or_default());
    let asked = hub_task::ask(&state.hub, |reply| HubEvent::Publish {
        identity: Box::new(identity),
        room: body.room,
        event: body.event,
        data,
        reply,
    });
    match asked.await {
        Some(Ok(n)) => (StatusCode::OK, Json(serde_json::json!({"delivered": n}))).into_response(),
        Some(Err(r)) => crate::http::refusal_response(r),
        None => shutting_down(),
    }
}

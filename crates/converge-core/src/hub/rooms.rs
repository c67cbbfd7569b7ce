//! Rooms, ephemeral events, the user directory and per-user limits (docs/protocol.md,
//! "Rooms and events").
//!
//! A room is not stored anywhere: its members are computed from the sessions. `doc:<id>` holds
//! the sessions subscribed to the document, `user:<id>` every session of that user, and
//! `role:<name>` every session whose token carries the role. An event is delivered to the
//! members online now and is never logged. Notifications, which must reach offline users too,
//! are written to inboxes by the shell; the hub resolves who they are for ([`Hub::recipients`])
//! from the sessions and from the directory of users seen ([`Hub::load_directory`]).

use std::collections::BTreeSet;
use std::fmt;

use converge_proto::limits::MAX_NAME_BYTES;
use converge_proto::{Blob, CloseCode, DocId, ErrorCode, Peer, ServerMsg, SessionId, UserId};

use super::{Handshake, Hub, Output, Refusal};
use crate::auth::Identity;
use crate::permissions::{Permission, global_permissions};
use crate::rate::Bucket;

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Room {
    /// Everyone subscribed to the document.
    Doc(DocId),
    /// Every session of the user.
    User(UserId),
    /// Every session whose token carries the role.
    Role(String),
}

impl Room {
    /// Reads `doc:<base58 id>`, `user:<id>` or `role:<name>`.
    pub fn parse(s: &str) -> Result<Room, Refusal> {
        let unknown = || {
            Refusal::new(
                ErrorCode::UnknownRoom,
                format!("room {s:?} is not doc:<id>, user:<id> or role:<name>"),
            )
        };
        if s.len() > MAX_NAME_BYTES + 5 {
            return Err(Refusal::new(
                ErrorCode::FieldTooLong,
                format!("a room name is at most {} bytes", MAX_NAME_BYTES + 5),
            ));
        }
        let (kind, name) = s.split_once(':').ok_or_else(unknown)?;
        match kind {
            "doc" => name.parse().map(Room::Doc).map_err(|_| unknown()),
            "user" => UserId::new(name).map(Room::User).map_err(|_| unknown()),
            "role" if !name.is_empty() && name.len() <= MAX_NAME_BYTES => {
                Ok(Room::Role(name.to_string()))
            }
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Room::Doc(d) => write!(f, "doc:{d}"),
            Room::User(u) => write!(f, "user:{}", u.as_str()),
            Room::Role(r) => write!(f, "role:{r}"),
        }
    }
}

/// Who a notification is for (`POST /api/notify`'s `to`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    pub users: Vec<UserId>,
    pub roles: Vec<String>,
    pub room: Option<Room>,
}

/// A user's sessions and rate limits, kept while the user has a session.
#[derive(Debug)]
pub(super) struct UserState {
    /// Few per user: a Vec costs a tenth of a BTreeSet's node.
    pub(super) sessions: Vec<SessionId>,
    pub(super) messages: Bucket,
    pub(super) publishes: Bucket,
}

/// Whether the log's directory can keep this set of roles (at most 64 names of at most 256
/// bytes): a token beyond that is not recorded, in memory either, so both agree across
/// restarts.
fn storable(roles: &[String]) -> bool {
    roles.len() <= 64 && roles.iter().all(|r| r.len() <= MAX_NAME_BYTES)
}

impl Hub {
    /// Fills the directory of users seen (at start, from the log). Users saying Hello later
    /// are added as they come, each one reported once as [`Output::RecordUser`].
    pub fn load_directory(&mut self, users: impl IntoIterator<Item = (UserId, Vec<String>)>) {
        for (user, roles) in users {
            let roles = self.intern_roles(&roles);
            self.directory.insert(user, roles);
        }
    }

    /// One shared copy of each distinct set of roles: many users, few sets.
    fn intern_roles(&mut self, roles: &[String]) -> std::sync::Arc<[String]> {
        if let Some(set) = self.role_sets.get(roles) {
            return set.clone();
        }
        let set: std::sync::Arc<[String]> = roles.into();
        self.role_sets.insert(set.clone());
        set
    }

    /// An identity as a session keeps it for its life: the shared copy of its roles (when
    /// the directory could keep them: at most 64 names of at most 256 bytes; other sets stay
    /// the session's own, so the interned sets stay bounded by what the directory holds), and
    /// its grants without the room a decoded list has beyond what it holds.
    pub(super) fn kept(&mut self, mut identity: Identity) -> Identity {
        if storable(&identity.roles) {
            identity.roles = self.intern_roles(&identity.roles);
        }
        identity.grants.shrink_to_fit();
        identity
    }

    /// A session finished its handshake: counted against its user's connection limit, and
    /// the user recorded in the directory if their roles are new. Returns false (and closes
    /// the session) when the user has too many connections.
    pub(super) fn user_joined(
        &mut self,
        session: SessionId,
        identity: &Identity,
        now_ms: u64,
    ) -> bool {
        let max = self.config.max_connections_per_user;
        let open = self
            .users
            .get(&identity.user)
            .map_or(0, |u| u.sessions.len());
        if open >= max as usize {
            let message = format!("at most {max} connections per user; close another one first");
            self.error(session, ErrorCode::TooManyConnections, &message, None);
            self.close(
                session,
                CloseCode::TooManyConnections,
                "too many connections",
            );
            return false;
        }
        let (messages, publishes) = (self.config.user_message_rate, self.config.user_publish_rate);
        self.users
            .entry(identity.user.clone())
            .or_insert_with(|| UserState {
                // Most users hold one connection: no room reserved for more.
                sessions: Vec::with_capacity(1),
                messages: Bucket::full(messages, now_ms),
                publishes: Bucket::full(publishes, now_ms),
            })
            .sessions
            .push(session);
        self.note_roles(identity);
        true
    }

    /// Records the identity's roles in the directory if they are new.
    pub(super) fn note_roles(&mut self, identity: &Identity) {
        // The log keeps at most 64 roles of at most 256 bytes per user: a token beyond that
        // is not recorded (in memory either, so both agree across restarts).
        if storable(&identity.roles)
            && self.directory.get(&identity.user).map(|r| &r[..]) != Some(&identity.roles[..])
        {
            let roles = self.intern_roles(&identity.roles);
            self.directory.insert(identity.user.clone(), roles);
            self.out.push_back(Output::RecordUser {
                user: identity.user.clone(),
                roles: identity.roles.to_vec(),
            });
        }
    }

    /// Members of every non-empty room (for /api/stats).
    pub(super) fn room_sizes(&self) -> std::collections::BTreeMap<String, usize> {
        let mut rooms = std::collections::BTreeMap::new();
        for (doc, d) in &self.docs {
            rooms.insert(Room::Doc(*doc).to_string(), d.subs.len());
        }
        for (user, u) in &self.users {
            rooms.insert(Room::User(user.clone()).to_string(), u.sessions.len());
        }
        for s in self.sessions.values() {
            if let Handshake::Ready { identity } = &s.handshake
                && !s.closed
            {
                for role in identity.roles.iter() {
                    *rooms
                        .entry(Room::Role(role.clone()).to_string())
                        .or_insert(0) += 1;
                }
            }
        }
        rooms
    }

    /// The session is closed or gone: it no longer counts for its user.
    pub(super) fn user_left(&mut self, session: SessionId, user: &UserId) {
        if let Some(state) = self.users.get_mut(user) {
            state.sessions.retain(|s| *s != session);
            if state.sessions.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Whether the user's message bucket has a token (every message of every session of the
    /// user draws from it, so opening more connections does not raise a user's rate).
    pub(super) fn user_may_send(&mut self, user: &UserId, now_ms: u64) -> bool {
        let rate = self.config.user_message_rate;
        self.users
            .get_mut(user)
            .is_none_or(|u| u.messages.take(rate, now_ms))
    }

    /// `Publish` from a session: checked (room, sizes, permission, rates), then delivered to
    /// every member of the room but the sender.
    pub(super) fn publish(
        &mut self,
        session: SessionId,
        room: String,
        event: String,
        data: Blob,
        now_ms: u64,
    ) {
        let Some(identity) = self.identity(session).cloned() else {
            return;
        };
        let parsed = match self.check_publish(&identity, &room, &event, &data) {
            Ok(parsed) => parsed,
            Err(r) => {
                self.error(session, r.code, &r.message, None);
                return;
            }
        };
        let (rate, user_rate) = (self.config.publish_rate, self.config.user_publish_rate);
        let session_ok = self
            .sessions
            .get_mut(&session)
            .is_some_and(|s| s.publishes.take(rate, now_ms));
        let user_ok = session_ok
            && self
                .users
                .get_mut(&identity.user)
                .is_none_or(|u| u.publishes.take(user_rate, now_ms));
        if !user_ok {
            let message = format!(
                "publish dropped: more than {}/s from this connection or {}/s from this user",
                rate.per_sec, user_rate.per_sec
            );
            self.error(session, ErrorCode::RateLimited, &message, None);
            return;
        }
        let from = Peer {
            session,
            user: identity.user,
        };
        self.deliver_event(&parsed, room, event, data, Some(from));
    }

    /// An event from a backend (`POST /api/publish`), as `identity`. Returns how many
    /// sessions it was sent to.
    pub fn publish_external(
        &mut self,
        identity: &Identity,
        room: &str,
        event: String,
        data: Blob,
    ) -> Result<usize, Refusal> {
        let parsed = self.check_publish(identity, room, &event, &data)?;
        Ok(self.deliver_event(&parsed, room.to_string(), event, data, None))
    }

    /// Room syntax, sizes and the publish permission (in the document for a document room,
    /// from the roles for the others).
    fn check_publish(
        &self,
        identity: &Identity,
        room: &str,
        event: &str,
        data: &Blob,
    ) -> Result<Room, Refusal> {
        let parsed = Room::parse(room)?;
        if event.is_empty() || event.len() > MAX_NAME_BYTES {
            return Err(Refusal::new(
                ErrorCode::FieldTooLong,
                format!("an event name is 1 to {MAX_NAME_BYTES} bytes"),
            ));
        }
        let max = self.config.max_event_bytes;
        if data.len() > max {
            return Err(Refusal::new(
                ErrorCode::EventTooLarge,
                format!("event data is at most {max} bytes, not {}", data.len()),
            ));
        }
        let allowed = match &parsed {
            Room::Doc(doc) => self.permissions_of(identity, doc).has(Permission::Publish),
            _ => global_permissions(&self.config.roles, identity).has(Permission::Publish),
        };
        if !allowed {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("your roles do not allow publishing to {room}"),
            ));
        }
        Ok(parsed)
    }

    fn deliver_event(
        &mut self,
        room: &Room,
        name: String,
        event: String,
        data: Blob,
        from: Option<Peer>,
    ) -> usize {
        let sender = from.as_ref().map(|p| p.session);
        let msg = ServerMsg::Event {
            room: name,
            event,
            data,
            from,
        };
        let targets: Vec<SessionId> = self
            .members(room)
            .into_iter()
            .filter(|s| Some(*s) != sender)
            .collect();
        self.events_published += 1;
        self.send_to(&targets, &msg)
    }

    /// Sends one message to these sessions (encoded once). Returns how many it was queued for.
    pub(super) fn send_to(&mut self, targets: &[SessionId], msg: &ServerMsg) -> usize {
        if targets.is_empty() {
            return 0;
        }
        let Some(frame) = self.encode(msg) else {
            return 0;
        };
        let mut sent = 0;
        for s in targets {
            if self.sessions.get(s).is_some_and(|x| !x.closed) {
                self.send_frame(*s, frame.clone());
                sent += 1;
            }
        }
        sent
    }

    /// The sessions in a room now, in id order.
    pub fn members(&self, room: &Room) -> Vec<SessionId> {
        let mut out: Vec<SessionId> = match room {
            Room::Doc(doc) => self
                .docs
                .get(doc)
                .map(|d| d.subs.keys().copied().collect())
                .unwrap_or_default(),
            Room::User(user) => self
                .users
                .get(user)
                .map(|u| u.sessions.to_vec())
                .unwrap_or_default(),
            Room::Role(role) => self
                .sessions
                .iter()
                .filter(|(_, s)| {
                    matches!(&s.handshake, Handshake::Ready { identity } if identity.roles.contains(role))
                })
                .map(|(id, _)| *id)
                .collect(),
        };
        out.sort();
        out
    }

    /// The users a notification is for: the named users, every user of the directory (seen
    /// online at some time) with one of the roles, and the users in the room now (for a
    /// `user:` or `role:` room, as for users and roles).
    pub fn recipients(&self, to: &Audience) -> BTreeSet<UserId> {
        let mut users: BTreeSet<UserId> = to.users.iter().cloned().collect();
        let mut roles: Vec<&String> = to.roles.iter().collect();
        match &to.room {
            Some(Room::User(u)) => {
                users.insert(u.clone());
            }
            Some(Room::Role(r)) => roles.push(r),
            Some(room @ Room::Doc(_)) => {
                for s in self.members(room) {
                    if let Some(identity) = self.identity(s) {
                        users.insert(identity.user.clone());
                    }
                }
            }
            None => {}
        }
        if !roles.is_empty() {
            for (user, theirs) in &self.directory {
                if theirs.iter().any(|r| roles.contains(&r)) {
                    users.insert(user.clone());
                }
            }
        }
        users
    }

    /// Sends a message to every session of `user` (a notification pushed live). Returns how
    /// many sessions it was sent to.
    pub fn send_to_user(&mut self, user: &UserId, msg: &ServerMsg) -> usize {
        let targets = self.members(&Room::User(user.clone()));
        self.send_to(&targets, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_parse_and_print_back() {
        let doc = DocId::random();
        for s in [format!("doc:{doc}"), "user:ana".into(), "role:nurse".into()] {
            let room = Room::parse(&s).unwrap();
            assert_eq!(room.to_string(), s);
        }
        for bad in ["", "ana", "doc:nope", "user:", "role:", "team:x"] {
            assert_eq!(
                Room::parse(bad).unwrap_err().code,
                ErrorCode::UnknownRoom,
                "{bad}"
            );
        }
        let long = format!("role:{}", "x".repeat(300));
        assert_eq!(
            Room::parse(&long).unwrap_err().code,
            ErrorCode::FieldTooLong
        );
    }
}

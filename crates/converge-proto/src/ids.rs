//! Identifier newtypes. Every id that crosses a crate boundary has its own type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_USER_ID_BYTES;

/// Why a string or byte slice is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text is not base58check, or its checksum does not match.
    #[error("not a base58check document id: {0}")]
    Base58(String),
    /// The decoded bytes have the wrong length.
    #[error("expected {expected} bytes, got {got}")]
    Length { expected: usize, got: usize },
    /// A user id is empty or longer than the limit.
    #[error("user id must be 1..={max} bytes, got {got}", max = MAX_USER_ID_BYTES)]
    UserIdLength { got: usize },
    /// The text is not hexadecimal.
    #[error("not hexadecimal: {0}")]
    Hex(String),
}

/// A document id: 16 random bytes (a UUIDv4), shown as base58check like automerge-repo's
/// document ids, so `automerge:<DocId>` URLs name the same document in both worlds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DocId([u8; 16]);

impl DocId {
    /// Wraps 16 bytes chosen by the caller (tests, or ids read back from storage).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh random id (UUIDv4). Sans-io code takes ids from its caller instead.
    pub fn random() -> Self {
        Self(*uuid::Uuid::new_v4().as_bytes())
    }

    /// The id of `user`'s inbox: derived from the user id (blake3), so the server and every
    /// device of the user name the same document without asking anyone. It is shaped as a
    /// UUIDv8 (version nibble 8), which [`DocId::random`] (UUIDv4) never produces, so an
    /// inbox is recognisable by its id alone ([`DocId::is_inbox`]).
    pub fn inbox_of(user: &UserId) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"converge inbox v1\0");
        h.update(user.as_str().as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.finalize().as_bytes()[..16]);
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        Self(b)
    }

    /// Whether this id has the shape of an inbox id (see [`DocId::inbox_of`]).
    pub const fn is_inbox(&self) -> bool {
        self.0[6] >> 4 == 8 && self.0[8] >> 6 == 0b10
    }

    /// The 16 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Reads an id from exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        let arr: [u8; 16] = bytes.try_into().map_err(|_| IdError::Length {
            expected: 16,
            got: bytes.len(),
        })?;
        Ok(Self(arr))
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

impl FromStr for DocId {
    type Err = IdError;

    /// Accepts the bare base58check form and the `automerge:` URL form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.strip_prefix("automerge:").unwrap_or(s);
        let bytes = bs58::decode(text)
            .with_check(None)
            .into_vec()
            .map_err(|e| IdError::Base58(e.to_string()))?;
        Self::from_slice(&bytes)
    }
}

/// A client installation: 16 bytes chosen once and kept in the client's store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientId([u8; 16]);

impl ClientId {
    /// Wraps 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh random client id.
    pub fn random() -> Self {
        Self(*uuid::Uuid::new_v4().as_bytes())
    }

    /// The 16 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", hex(&self.0))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// The user a JWT names (its `sub`): 1 to [`MAX_USER_ID_BYTES`] bytes of UTF-8.
///
/// Shared, not copied: a server keeps a user's id in the session, the online users, the
/// directory and every push's author, and a clone is a reference count.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(std::sync::Arc<str>);

impl UserId {
    /// Checks the length and wraps the id.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_USER_ID_BYTES {
            return Err(IdError::UserIdLength { got: id.len() });
        }
        Ok(Self(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The user the server writes as: the author of the changes mutators make on the server.
    /// Reserved: the auth layer refuses a token whose `sub` is this id.
    pub fn server() -> Self {
        Self(Self::SERVER.into())
    }

    /// The text of [`UserId::server`].
    pub const SERVER: &'static str = "converge:server";
}

impl TryFrom<String> for UserId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> Self {
        value.0.to_string()
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Declares a `u64` newtype with the usual conversions.
macro_rules! u64_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl $name {
            /// The number inside.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

u64_id!(
    /// A position in one document's stream: dense, starting at 1. `Seq(0)` means "before the first entry".
    Seq
);
u64_id!(
    /// A document stream's generation; a new epoch starts when a stream is reset (e.g. a restore).
    Epoch
);
u64_id!(
    /// A connection, assigned by the server.
    SessionId
);
u64_id!(
    /// A client's mutation counter: dense per [`ClientId`], starting at 1.
    MutationId
);
u64_id!(
    /// A lock grant's fencing token, from the log's global monotonic counter.
    FencingToken
);

impl Seq {
    /// The position after this one.
    pub const fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

/// An automerge change hash (SHA-256 of the change), the log's dedup key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChangeHash(pub [u8; 32]);

impl ChangeHash {
    /// The hash as lowercase hexadecimal.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for ChangeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChangeHash({})", self.to_hex())
    }
}

impl fmt::Display for ChangeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn doc_id_text_round_trips(bytes in any::<[u8; 16]>()) {
            let id = DocId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<DocId>(), Ok(id));
            prop_assert_eq!(format!("automerge:{id}").parse::<DocId>(), Ok(id));
        }

        #[test]
        fn doc_id_parse_never_panics(s in ".{0,64}") {
            let _ = s.parse::<DocId>();
        }

        #[test]
        fn ids_round_trip_through_bincode(bytes in any::<[u8; 16]>(), n in any::<u64>(), user in "[a-z]{1,40}") {
            let cfg = bincode::config::standard();
            let v = (DocId::from_bytes(bytes), ClientId::from_bytes(bytes), Seq(n), UserId::new(user).unwrap());
            let enc = bincode::serde::encode_to_vec(&v, cfg).unwrap();
            let (dec, _): ((DocId, ClientId, Seq, UserId), usize) = bincode::serde::decode_from_slice(&enc, cfg).unwrap();
            prop_assert_eq!(dec, v);
        }
    }

    #[test]
    fn bad_checksum_is_refused() {
        let id = DocId::from_bytes([1; 16]).to_string();
        let mut chars: Vec<char> = id.chars().collect();
        chars[3] = if chars[3] == 'a' { 'b' } else { 'a' };
        let broken: String = chars.into_iter().collect();
        assert!(broken.parse::<DocId>().is_err());
    }

    #[test]
    fn empty_and_long_user_ids_are_refused() {
        assert!(UserId::new("").is_err());
        assert!(UserId::new("x".repeat(MAX_USER_ID_BYTES + 1)).is_err());
        assert!(UserId::new("alice").is_ok());
    }

    #[test]
    fn user_id_decode_checks_length() {
        let cfg = bincode::config::standard();
        let enc = bincode::serde::encode_to_vec(String::new(), cfg).unwrap();
        let r: Result<(UserId, usize), _> = bincode::serde::decode_from_slice(&enc, cfg);
        assert!(r.is_err());
    }
}

#[cfg(test)]
mod inbox_tests {
    use super::*;

    #[test]
    fn inbox_ids_are_recognisable_and_random_ids_are_not() {
        let ana = UserId::new("ana").unwrap();
        let inbox = DocId::inbox_of(&ana);
        assert!(inbox.is_inbox());
        assert_eq!(inbox, DocId::inbox_of(&ana));
        assert_ne!(inbox, DocId::inbox_of(&UserId::new("bob").unwrap()));
        for _ in 0..1000 {
            assert!(!DocId::random().is_inbox());
        }
    }
}

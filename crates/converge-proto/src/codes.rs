//! The closed sets of error codes (in `Error` replies and rejected operations) and WebSocket
//! close codes. docs/protocol.md lists each with what a client should do about it.

use serde::{Deserialize, Serialize};

macro_rules! code_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "u16", into = "u16")]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            /// Every code, in numeric order (for docs and tests).
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The number on the wire.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// The code's name as docs/protocol.md spells it.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                }
            }
        }

        impl From<$name> for u16 {
            fn from(c: $name) -> u16 {
                c as u16
            }
        }

        impl TryFrom<u16> for $name {
            type Error = String;
            fn try_from(v: u16) -> Result<Self, String> {
                match v {
                    $($value => Ok($name::$variant),)*
                    other => Err(format!(concat!("unknown ", stringify!($name), " {}"), other)),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} ({})", self.name(), self.code())
            }
        }
    };
}

code_enum!(
    /// Why a request was refused. Sent in `Error` and in `MutationResult::Rejected`.
    ErrorCode {
        // 1xxx: the frame or the session
        /// The frame did not decode as a message.
        BadFrame = 1000,
        /// The frame is larger than the negotiated limit.
        FrameTooLarge = 1001,
        /// The frame's version byte is not one this server speaks.
        UnsupportedFrameVersion = 1002,
        /// `Hello.protocol` is not supported.
        UnsupportedProtocol = 1003,
        /// A message other than `Hello` came before `Hello`.
        HelloRequired = 1004,
        /// A second `Hello` on one connection.
        DuplicateHello = 1005,
        /// A text frame: the protocol is binary only.
        TextFrame = 1006,
        /// An HTTP request is malformed (a required header missing, a body that is not the
        /// documented JSON).
        BadRequest = 1007,
        // 2xxx: identity and permission (the auth issue fills these in)
        /// No token, or a token that does not verify.
        Unauthorized = 2000,
        /// The token has expired.
        TokenExpired = 2001,
        /// The identity lacks the permission for this action.
        Forbidden = 2002,
        /// The token is not a JWT, or lacks a required claim (`exp`, `sub`, `aud`, `iss`).
        MalformedToken = 2003,
        /// The token is signed with another algorithm than the configured one (or none).
        AlgorithmNotAllowed = 2004,
        /// The token's signature does not verify with the configured key.
        BadSignature = 2005,
        /// The token's `nbf` is in the future.
        TokenNotYetValid = 2006,
        /// The token's `aud` is not the configured audience.
        WrongAudience = 2007,
        /// The token's `iss` is not the configured issuer.
        WrongIssuer = 2008,
        /// A `Reauth` token names another user than the session's.
        UserChanged = 2009,
        // 3xxx: documents and subscriptions
        /// The message names a document this connection has not subscribed to.
        NotSubscribed = 3000,
        /// The document does not exist.
        UnknownDoc = 3001,
        /// The document is deleted.
        DocDeleted = 3002,
        /// The document's log is damaged; an operator must look at it.
        DocBroken = 3003,
        /// The document's snapshot is larger than a frame may carry.
        SnapshotTooLarge = 3004,
        /// A reconciliation message came when none was started, or could not be read.
        BadSyncMessage = 3005,
        /// A room name is not `doc:<id>`, `user:<id>` or `role:<name>`.
        UnknownRoom = 3006,
        // 4xxx: refused pushes (nothing of the push is logged)
        /// A change is larger than the limit.
        ChangeTooLarge = 4000,
        /// Bytes that are not an automerge change.
        MalformedChange = 4001,
        /// The change's actor is bound to another user.
        ActorOwnedByOther = 4002,
        /// The change skips a per-actor seq (its predecessor is not logged).
        SeqGap = 4003,
        /// The change depends on a change the log does not hold.
        MissingDependency = 4004,
        /// The change references an actor the document does not know.
        UnknownActor = 4005,
        /// Another change with the same actor and seq is already logged.
        SeqConflict = 4006,
        /// More changes in one push than allowed.
        TooManyChanges = 4007,
        // 5xxx: mutations and locks (their issue fills these in)
        /// A mutation id skips one that was never processed.
        MutationGap = 5000,
        /// The mutator refused.
        MutationRejected = 5001,
        /// The mutation's fence is not the current lock holder's token.
        StaleFence = 5002,
        /// Another session holds the lock.
        LockHeld = 5003,
        /// The lock is not held by this session (expired or released).
        LockNotHeld = 5004,
        /// No mutator with this name is registered.
        UnknownMutator = 5005,
        /// The mutation's arguments do not decode for this mutator.
        BadArgs = 5006,
        /// The mutator panicked; this mutation alone is rejected.
        MutatorPanicked = 5007,
        /// A lock request is malformed (a TTL of zero or over the maximum).
        BadLockRequest = 5008,
        // 6xxx: limits
        /// Too many messages; slow down.
        RateLimited = 6000,
        /// This connection subscribed to the maximum number of documents.
        TooManyDocs = 6001,
        /// A presence state is larger than allowed.
        PresenceTooLarge = 6002,
        /// A field (name, key, room) is longer than allowed.
        FieldTooLong = 6003,
        /// The user has the maximum number of connections open.
        TooManyConnections = 6004,
        /// An event's data is larger than allowed.
        EventTooLarge = 6005,
        // 9xxx: the server
        /// Something failed inside the server; the request may be retried.
        Internal = 9000,
        /// The server is shutting down.
        ShuttingDown = 9001,
        /// The log could not make the write durable; nothing is acknowledged.
        StorageFailed = 9002,
    }
);

code_enum!(
    /// WebSocket close codes (the 4000-4999 range applications may use).
    CloseCode {
        /// The server is shutting down; reconnect with backoff.
        ServerShutdown = 4000,
        /// The peer broke the protocol (garbage, a text frame, a second Hello, an unknown
        /// frame version). Reconnecting with the same client will fail the same way.
        ProtocolViolation = 4001,
        /// A frame exceeded the limit.
        FrameTooLarge = 4002,
        /// `Hello.protocol` is not supported by this server.
        UnsupportedProtocol = 4003,
        /// No `Hello` within the handshake timeout.
        HelloTimeout = 4004,
        /// No frame within the heartbeat timeout.
        HeartbeatTimeout = 4005,
        /// The client did not read fast enough; its outbound queue overflowed.
        SlowConsumer = 4006,
        /// The token was refused.
        Unauthorized = 4010,
        /// The token expired and no Reauth arrived.
        TokenExpired = 4011,
        /// The user's access was revoked.
        Revoked = 4012,
        /// The user already has the maximum number of connections open.
        TooManyConnections = 4013,
        /// The server failed; reconnect with backoff.
        Internal = 4500,
    }
);

impl CloseCode {
    /// Whether a client should reconnect after this close (with backoff).
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            CloseCode::ServerShutdown
                | CloseCode::HeartbeatTimeout
                | CloseCode::SlowConsumer
                | CloseCode::HelloTimeout
                | CloseCode::Internal
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.code()));
            assert_eq!(ErrorCode::try_from(c.code()), Ok(*c));
        }
        for c in CloseCode::ALL {
            assert!((4000..5000).contains(&c.code()));
            assert_eq!(CloseCode::try_from(c.code()), Ok(*c));
        }
        assert!(ErrorCode::try_from(1).is_err());
    }
}

//! converge-proto: the vocabulary every converge crate shares.
//!
//! This crate holds the identifier newtypes (so no bare `String` or `u64` crosses a crate boundary),
//! the size limits that bound everything a peer controls, the wire messages of the sync protocol
//! ([`ClientMsg`], [`ServerMsg`]), their frame codec, and the closed sets of error and close
//! codes. It does no I/O. docs/protocol.md specifies the protocol.
//!
//! ```
//! use converge_proto::DocId;
//!
//! let id = DocId::from_bytes([7; 16]);
//! let shown = id.to_string(); // base58check, as automerge-repo shows document ids
//! let parsed: DocId = format!("automerge:{shown}").parse().unwrap();
//! assert_eq!(parsed, id);
//! ```

mod codes;
mod frame;
mod ids;
pub mod limits;
mod msg;

pub use codes::{CloseCode, ErrorCode};
pub use frame::{
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_SERVER_FRAME_BYTES, FRAME_VERSION, FrameError,
    MAX_FRAME_CEILING, client_frame_kind, decode_args, decode_client, decode_server, encode_args,
    encode_client, encode_server, server_frame_kind,
};
pub use msg::{
    Blob, ClientMsg, Limits, LockOutcome, MutationOutcome, NotificationMsg, PROTOCOL_VERSION, Peer,
    Position, ServerMsg,
};

pub use ids::{
    ChangeHash, ClientId, DocId, Epoch, FencingToken, IdError, MutationId, Seq, SessionId, UserId,
};

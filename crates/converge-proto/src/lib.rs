//! converge-proto: the vocabulary every converge crate shares.
//!
//! This crate holds the identifier newtypes (so no bare `String` or `u64` crosses a crate boundary)
//! and the size limits that bound everything a peer controls. The wire messages of the sync protocol
//! join it with the sync issue. It does no I/O.
//!
//! ```
//! use converge_proto::DocId;
//!
//! let id = DocId::from_bytes([7; 16]);
//! let shown = id.to_string(); // base58check, as automerge-repo shows document ids
//! let parsed: DocId = format!("automerge:{shown}").parse().unwrap();
//! assert_eq!(parsed, id);
//! ```

mod ids;
pub mod limits;

pub use ids::{
    ChangeHash, ClientId, DocId, Epoch, FencingToken, IdError, MutationId, Seq, SessionId, UserId,
};

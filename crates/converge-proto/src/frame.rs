//! Frames: one version byte, then one bincode-encoded message.
//!
//! The size limit is checked against the frame before anything is decoded. bincode's own
//! allocation limit is the hard ceiling; lengths inside a frame that claim more than the frame
//! holds fail as soon as the bytes run out (serde preallocates at most a small bounded amount). The one bincode configuration of the
//! wire lives here (standard: varint integers, little endian).

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Serialize, de::DeserializeOwned};

use crate::msg::{ClientMsg, ServerMsg};

/// The frame format this build writes and reads (the first byte of every frame).
pub const FRAME_VERSION: u8 = 1;

/// Default largest client frame: one maximal change plus room for the message around it.
pub const DEFAULT_MAX_FRAME_BYTES: usize = crate::limits::MAX_CHANGE_BYTES + 64 * 1024;

/// Default largest server frame (snapshots are sent whole).
pub const DEFAULT_MAX_SERVER_FRAME_BYTES: usize = 64 << 20;

/// Hard ceiling on any frame, whatever the configuration says.
pub const MAX_FRAME_CEILING: usize = crate::limits::MAX_SNAPSHOT_BYTES + 64 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_FRAME_CEILING>>;
const CONFIG: Config = bincode::config::standard().with_limit::<MAX_FRAME_CEILING>();

/// The [`ClientMsg::kind`] of a frame from its first two bytes, without decoding it (for
/// metrics). A frame's second byte is the message's variant tag (a varint below 251 is one
/// byte). `None` for a frame that is not of this version or has an unknown tag.
pub fn client_frame_kind(frame: &[u8]) -> Option<&'static str> {
    frame_tag(frame).and_then(|t| ClientMsg::KINDS.get(t).copied())
}

/// The [`ServerMsg::kind`] of a frame, as [`client_frame_kind`].
pub fn server_frame_kind(frame: &[u8]) -> Option<&'static str> {
    frame_tag(frame).and_then(|t| ServerMsg::KINDS.get(t).copied())
}

fn frame_tag(frame: &[u8]) -> Option<usize> {
    match frame {
        [FRAME_VERSION, tag, ..] if *tag < 251 => Some(usize::from(*tag)),
        _ => None,
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {size} bytes is over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("frame version {0} is not supported (this build speaks {FRAME_VERSION})")]
    UnsupportedVersion(u8),
    #[error("frame does not decode: {0}")]
    Decode(String),
    #[error("frame has {0} bytes after the message")]
    TrailingBytes(usize),
    #[error("message does not encode: {0}")]
    Encode(String),
}

impl FrameError {
    /// The error code a peer is told.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            FrameError::TooLarge { .. } => crate::ErrorCode::FrameTooLarge,
            FrameError::UnsupportedVersion(_) => crate::ErrorCode::UnsupportedFrameVersion,
            FrameError::Encode(_) => crate::ErrorCode::Internal,
            _ => crate::ErrorCode::BadFrame,
        }
    }

    /// The close code for a connection that sent this frame.
    pub fn close_code(&self) -> crate::CloseCode {
        match self {
            FrameError::TooLarge { .. } => crate::CloseCode::FrameTooLarge,
            FrameError::Encode(_) => crate::CloseCode::Internal,
            _ => crate::CloseCode::ProtocolViolation,
        }
    }
}

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![FRAME_VERSION];
    bincode::serde::encode_into_std_write(msg, &mut out, CONFIG)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    Ok(out)
}

fn decode<T: DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, FrameError> {
    let limit = limit.min(MAX_FRAME_CEILING);
    if frame.len() > limit {
        return Err(FrameError::TooLarge {
            size: frame.len(),
            limit,
        });
    }
    let (&version, body) = frame.split_first().ok_or(FrameError::Empty)?;
    if version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let (msg, used) = bincode::serde::decode_from_slice(body, CONFIG)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::TrailingBytes(body.len() - used));
    }
    Ok(msg)
}

/// Encodes a client message as a frame.
pub fn encode_client(msg: &ClientMsg) -> Result<Vec<u8>, FrameError> {
    encode(msg)
}

/// Encodes a server message as a frame.
pub fn encode_server(msg: &ServerMsg) -> Result<Vec<u8>, FrameError> {
    encode(msg)
}

/// Decodes a client frame no larger than `limit` bytes.
pub fn decode_client(frame: &[u8], limit: usize) -> Result<ClientMsg, FrameError> {
    decode(frame, limit)
}

/// Decodes a server frame no larger than `limit` bytes.
pub fn decode_server(frame: &[u8], limit: usize) -> Result<ServerMsg, FrameError> {
    decode(frame, limit)
}

type ArgsConfig = Configuration<LittleEndian, Varint, Limit<{ crate::limits::MAX_ARGS_BYTES }>>;
const ARGS_CONFIG: ArgsConfig =
    bincode::config::standard().with_limit::<{ crate::limits::MAX_ARGS_BYTES }>();

/// Encodes a mutation's arguments (bincode, the wire's configuration; at most
/// [`crate::limits::MAX_ARGS_BYTES`]).
pub fn encode_args<T: Serialize>(args: &T) -> Result<Vec<u8>, FrameError> {
    let bytes = bincode::serde::encode_to_vec(args, ARGS_CONFIG)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    if bytes.len() > crate::limits::MAX_ARGS_BYTES {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            limit: crate::limits::MAX_ARGS_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes a mutation's arguments; every byte must be used.
pub fn decode_args<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    if bytes.len() > crate::limits::MAX_ARGS_BYTES {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            limit: crate::limits::MAX_ARGS_BYTES,
        });
    }
    let (args, used) = bincode::serde::decode_from_slice(bytes, ARGS_CONFIG)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(FrameError::TrailingBytes(bytes.len() - used));
    }
    Ok(args)
}

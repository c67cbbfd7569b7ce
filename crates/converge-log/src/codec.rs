//! The one bincode configuration of the on-disk format, and the format version it is part of.
//!
//! bincode 2 `standard()` (varint integers, little endian). Changing it changes the bytes on disk,
//! so it is recorded by [`FORMAT_VERSION`].

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Serialize, de::DeserializeOwned};

use converge_proto::limits::MAX_SNAPSHOT_BYTES;

/// The on-disk format this build writes and reads. Stored under the `format` key when a log is created.
///
/// 2: actor records may be unbound (`owner: None`) and streams may hold relayed changes.
pub const FORMAT_VERSION: u32 = 2;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_SNAPSHOT_BYTES>>;

const CONFIG: Config = bincode::config::standard().with_limit::<MAX_SNAPSHOT_BYTES>();

/// Encodes a value for storage. Only our own types pass through here, so this cannot fail for
/// reasons a peer controls; an error still comes back as a message rather than a panic.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, CONFIG).map_err(|e| e.to_string())
}

/// Decodes a stored value; trailing bytes are an error, since every record is exactly one value.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, CONFIG).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(value)
}

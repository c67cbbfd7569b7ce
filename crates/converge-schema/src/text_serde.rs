//! JSON form of CRDT text: a plain string.

use autosurgeon::Text;
use serde::{Deserialize, Deserializer, Serializer};

pub(crate) fn serialize<S: Serializer>(text: &Text, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(text.as_str())
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
    let s = String::deserialize(d)?;
    Ok(Text::with_value(s))
}

//! Any automerge document as JSON (the winning value of each field).

use automerge::{ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde_json::{Map, Number, Value as Json};

/// The document as JSON: maps become objects, lists arrays, text strings; where concurrent
/// writes conflict, the winning value is shown (see [`crate::conflicts`] for all of them).
pub fn to_json(doc: &impl ReadDoc) -> Json {
    object_to_json(doc, &ROOT, ObjType::Map)
}

pub(crate) fn value_to_json(doc: &impl ReadDoc, value: &Value<'_>, id: &ObjId) -> Json {
    match value {
        Value::Object(t) => object_to_json(doc, id, *t),
        Value::Scalar(s) => scalar_to_json(s),
    }
}

fn object_to_json(doc: &impl ReadDoc, obj: &ObjId, t: ObjType) -> Json {
    match t {
        ObjType::Map | ObjType::Table => {
            let mut m = Map::new();
            for item in doc.map_range(obj, ..) {
                m.insert(
                    item.key.to_string(),
                    value_to_json(doc, &item.value.clone().into_value(), &item.id()),
                );
            }
            Json::Object(m)
        }
        ObjType::List => Json::Array(
            doc.list_range(obj, ..)
                .map(|item| value_to_json(doc, &item.value.clone().into_value(), &item.id()))
                .collect(),
        ),
        ObjType::Text => Json::String(doc.text(obj).unwrap_or_default()),
    }
}

fn scalar_to_json(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Bytes(b) => Json::Array(b.iter().map(|x| Json::from(*x)).collect()),
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Json::from(*t),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Unknown { bytes, .. } => {
            Json::Array(bytes.iter().map(|x| Json::from(*x)).collect())
        }
        ScalarValue::Null => Json::Null,
    }
}

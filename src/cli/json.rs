//! `--json` output: one compact line through `serde_json` (the field's
//! standard writer: escaping, numbers, UTF-8), from `#[derive(Serialize)]`
//! types or, where a command still builds its answer field by field, the
//! small [`Json`] tree. Key order is declaration order; docs/cli.md has
//! the schemas and tests/cli.rs checks them.
#![forbid(unsafe_code)]

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(i128),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn obj(fields: Vec<(&str, Json)>) -> Json {
        Json::Obj(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }
    pub fn num(n: impl Into<i128>) -> Json {
        Json::Num(n.into())
    }
    pub fn opt_num(n: Option<u64>) -> Json {
        n.map(|v| Json::Num(v as i128)).unwrap_or(Json::Null)
    }

    pub fn render(&self) -> String {
        to_line(self)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Num(n) => s.serialize_i128(*n),
            Json::Str(v) => s.serialize_str(v),
            Json::Arr(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for x in v {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Json::Obj(v) => {
                let mut map = s.serialize_map(Some(v.len()))?;
                for (k, x) in v {
                    map.serialize_entry(k, x)?;
                }
                map.end()
            }
        }
    }
}

/// One compact line of JSON, keys in the order the type declares them.
pub fn to_line(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("--json values always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_escapes() {
        let j = Json::obj(vec![
            ("a", Json::num(1)),
            ("b", Json::str("x\"y\\z\n\u{1}é")),
            ("c", Json::Arr(vec![Json::Bool(true), Json::Null])),
        ]);
        assert_eq!(
            j.render(),
            r#"{"a":1,"b":"x\"y\\z\n\u0001é","c":[true,null]}"#
        );
        let big = Json::obj(vec![("n", Json::num(u64::MAX)), ("m", Json::num(-1))]);
        assert_eq!(big.render(), r#"{"n":18446744073709551615,"m":-1}"#);
    }
}

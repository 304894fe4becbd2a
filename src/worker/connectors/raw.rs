//! Records as JSON text. HTTP sources hand extraction each record's bytes as the system sent
//! them (slices of the response body, neither copied nor re-serialised), and extraction reads
//! only the few top-level fields it needs (key, cursor) without building the rest of the tree.
//! Building a `Value` per record and serialising it again was most of extraction's cost.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Each element of the JSON array `array` (text inside `body`) as a slice of `body`.
pub fn elements(body: &Bytes, array: &RawValue) -> serde_json::Result<Vec<Bytes>> {
    let items: Vec<&RawValue> = serde_json::from_str(array.get())?;
    Ok(items
        .into_iter()
        .map(|item| body.slice_ref(item.get().as_bytes()))
        .collect())
}

/// The top-level fields named in `wanted` of the JSON object `json`, parsed; every other field
/// is skipped without being built. None when `json` is not an object.
pub fn fields_of(json: &[u8], wanted: &[String]) -> Option<Map<String, Value>> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let fields = Sparse(wanted).deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(fields)
}

/// The largest value of `field` among `records`, compared as source versions, as text: the
/// cursor a page reached.
pub fn max_cursor(records: &[Bytes], field: &str) -> Option<String> {
    let wanted = [field.to_string()];
    records
        .iter()
        .filter_map(|record| {
            let value = fields_of(record, &wanted)?.remove(field)?;
            Some((crate::worker::version::version_of(&value)?, value))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, value)| match value {
            Value::String(s) => s,
            other => other.to_string(),
        })
}

/// Deserializes an object keeping only the wanted fields.
struct Sparse<'w>(&'w [String]);

impl<'de> DeserializeSeed<'de> for Sparse<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Sparse<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Map::new();
        while let Some(wanted) = map.next_key_seed(Wanted(self.0))? {
            match wanted {
                Some(index) => {
                    let value: Value = map.next_value()?;
                    fields.insert(self.0[index].clone(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// A key, as the index of the wanted name it equals (compared without allocating).
struct Wanted<'w>(&'w [String]);

impl<'de> DeserializeSeed<'de> for Wanted<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Wanted<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|w| w == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn elements_are_slices_of_the_body() {
        let body = Bytes::from_static(
            br#"{"value": [ {"a": 1, "b": "x\"y"} ,{"a":2}], "@odata.nextLink": "n"}"#,
        );
        #[derive(serde::Deserialize)]
        struct Page<'a> {
            #[serde(borrow)]
            value: &'a RawValue,
        }
        let page: Page = serde_json::from_slice(&body).unwrap();
        let records = elements(&body, page.value).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(&records[0][..], br#"{"a": 1, "b": "x\"y"}"#);
        assert_eq!(&records[1][..], br#"{"a":2}"#);
        assert!(elements(&body, &RawValue::from_string("{}".into()).unwrap()).is_err());
    }

    #[test]
    fn only_wanted_fields_are_read() {
        let wanted = [
            "SalesOrder".to_string(),
            "Stamp".to_string(),
            "N\"q".to_string(),
        ];
        let fields = fields_of(
            br#"{"SalesOrder":"1000","Big":{"deep":[1,2,{"x":null}]},"Stamp":"2024-01-01T00:00:00.001Z","N\"q":7}"#,
            &wanted,
        )
        .unwrap();
        assert_eq!(
            Value::Object(fields),
            json!({"SalesOrder": "1000", "Stamp": "2024-01-01T00:00:00.001Z", "N\"q": 7})
        );
        assert_eq!(fields_of(br#"{"other":1}"#, &wanted), Some(Map::new()));
        assert_eq!(fields_of(b"[1,2]", &wanted), None);
        assert_eq!(fields_of(br#""text""#, &wanted), None);
        assert_eq!(fields_of(br#"{"SalesOrder":"1"} trailing"#, &wanted), None);
    }

    #[test]
    fn the_cursor_is_the_newest_version() {
        let records: Vec<Bytes> = [
            r#"{"T":"2024-01-01T00:00:00.002Z"}"#,
            r#"{"T":"2024-01-01T00:00:00.010Z"}"#,
            r#"{"T":"not a time"}"#,
            r#"{"U":1}"#,
            r#"{"T":"2024-01-01T00:00:00.003Z"}"#,
        ]
        .into_iter()
        .map(Bytes::from)
        .collect();
        assert_eq!(
            max_cursor(&records, "T").as_deref(),
            Some("2024-01-01T00:00:00.010Z")
        );
        assert_eq!(max_cursor(&records, "V"), None);
    }
}

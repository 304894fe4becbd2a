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

/// One record as the source sent it, with the top-level fields extraction reads of it (its
/// primary key's source fields and the cursor field), parsed once where the page is read: the
/// page's cursor and each record's envelope both come from them.
pub struct JsonRecord {
    pub text: Bytes,
    /// None when the record is not a JSON object.
    pub fields: Option<Map<String, Value>>,
}

/// `records` with their `wanted` fields parsed.
pub fn with_fields(records: Vec<Bytes>, wanted: &[String]) -> Vec<JsonRecord> {
    records
        .into_iter()
        .map(|text| JsonRecord {
            fields: fields_of(&text, wanted),
            text,
        })
        .collect()
}

/// The largest value of `field` among `records` (which must have it parsed), compared as
/// source versions, as text: the cursor a page reached.
pub fn max_cursor(records: &[JsonRecord], field: &str) -> Option<String> {
    records
        .iter()
        .filter_map(|record| {
            let value = record.fields.as_ref()?.get(field)?;
            Some((crate::worker::version::version_of(value)?, value))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, value)| match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
}

/// What is wrong with a record that cannot be published as the source sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    /// A string in it is not valid UTF-8.
    InvalidUtf8,
    /// Objects and arrays in it nest deeper than the flow's `limits.maxJsonDepth`.
    TooDeep,
    /// A string in it is serde_json's private raw-value marker, which makes the reader slice
    /// the page wrongly (found by the odata_page fuzz target).
    ReservedString,
}

impl Flaw {
    /// The dead letter's detail.
    pub fn detail(self, max_depth: usize) -> String {
        match self {
            Flaw::InvalidUtf8 => "the record is not valid UTF-8".into(),
            Flaw::TooDeep => format!("the record nests deeper than {max_depth} levels"),
            Flaw::ReservedString => format!("the record holds the string {RESERVED:?}"),
        }
    }
}

/// A record refused at extraction, with the bytes the source sent.
#[derive(Clone, Debug)]
pub struct Refused {
    /// The record as the source sent it.
    pub text: Bytes,
    /// What is wrong with it.
    pub flaw: Flaw,
}

/// A response body made safe to parse, and where it was not. Invalid UTF-8 bytes inside
/// strings become `?`, and a value nested deeper than the limit becomes `0` padded with
/// spaces, in place: offsets do not move, so the parsed records are slices at the same
/// places as in the original, and those overlapping a flaw are set aside with their
/// original bytes ([`Checked::partition`]). serde_json refuses a whole page for one such
/// record (and recurses on nesting), which failed every pass of the flow forever.
pub struct Checked {
    /// The body to parse.
    pub body: Bytes,
    original: Bytes,
    flaws: Vec<(std::ops::Range<usize>, Flaw)>,
}

/// The string serde_json takes for its raw-value marker (`serde_json::raw::TOKEN`, private).
const RESERVED: &str = "$serde_json::private::RawValue";

/// Checks `body`; `max_depth` counts containers from the top of the body (callers add the
/// levels of the page's envelope). A body without flaws is not copied.
pub fn check(body: Bytes, max_depth: usize) -> Checked {
    let bytes: &[u8] = &body;
    let mut out: Option<Vec<u8>> = None;
    let mut flaws = Vec::new();
    // Nearly every body is valid UTF-8 throughout: one pass over all of it (std's, with its
    // ASCII fast path) spares looking into each string.
    let valid_utf8 = std::str::from_utf8(bytes).is_ok();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                if bytes[i + 1..].starts_with(RESERVED.as_bytes())
                    && bytes.get(i + 1 + RESERVED.len()) == Some(&b'"')
                {
                    out.get_or_insert_with(|| bytes.to_vec())[i + 1] = b'_';
                    flaws.push((i..i + RESERVED.len() + 2, Flaw::ReservedString));
                }
                let end = string_end(bytes, i);
                // Invalid UTF-8 becomes `?`, byte for byte, so offsets do not move.
                let mut at = i + 1;
                let chunks = if valid_utf8 {
                    &[][..]
                } else {
                    &bytes[i + 1..end]
                };
                for chunk in chunks.utf8_chunks() {
                    at += chunk.valid().len();
                    let invalid = at..at + chunk.invalid().len();
                    if !invalid.is_empty() {
                        out.get_or_insert_with(|| bytes.to_vec())[invalid.clone()].fill(b'?');
                        at = invalid.end;
                        flaws.push((invalid, Flaw::InvalidUtf8));
                    }
                }
                i = end;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth
                    && let Some(end) = matching_close(&bytes[i..])
                {
                    let out = out.get_or_insert_with(|| bytes.to_vec());
                    out[i] = b'0';
                    out[i + 1..i + end + 1].fill(b' ');
                    flaws.push((i..i + end + 1, Flaw::TooDeep));
                    depth -= 1;
                    i += end;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    let checked = match out {
        Some(out) => Bytes::from(out),
        None => body.clone(),
    };
    Checked {
        body: checked,
        original: body,
        flaws,
    }
}

/// The offset of the quote closing the string whose opening quote is at `open` (the body's
/// length if it never closes). A quote byte never occurs inside a multi-byte UTF-8 sequence.
fn string_end(bytes: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < bytes.len() && bytes[i] != b'"' {
        if bytes[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    i.min(bytes.len())
}

/// The offset of the bracket closing the container `bytes` starts with, without recursion.
fn matching_close(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i),
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Levels of a page's envelope above its records (`{"value": [ record ]}`), added to the
/// flow's depth limit for the whole body.
pub const ENVELOPE_DEPTH: usize = 2;

/// A page's records split into those to publish and those refused for a flaw, once the page
/// is within `limits.maxPageRecords` (a larger page is refused whole, as transient: it says
/// the source ignores the page size asked for, not that a record is bad).
pub fn admit(
    checked: &Checked,
    records: Vec<Bytes>,
    limits: &crate::api::integration_flow::Limits,
) -> Result<(Vec<Bytes>, Vec<Refused>), crate::worker::http::CallError> {
    if records.len() > limits.max_page_records as usize {
        return Err(crate::worker::http::CallError::Transient(format!(
            "a page of {} records, more than limits.maxPageRecords ({})",
            records.len(),
            limits.max_page_records
        )));
    }
    Ok(checked.partition(records))
}

impl Checked {
    /// Splits `records` (slices of [`Checked::body`]) into those to publish and those with a
    /// flaw, which come back with the bytes the source sent.
    pub fn partition(&self, records: Vec<Bytes>) -> (Vec<Bytes>, Vec<Refused>) {
        if self.flaws.is_empty() {
            return (records, Vec::new());
        }
        let base = self.body.as_ptr() as usize;
        let mut kept = Vec::with_capacity(records.len());
        let mut refused = Vec::new();
        for record in records {
            let start = (record.as_ptr() as usize).wrapping_sub(base);
            let range = start..start + record.len();
            let flaw = (range.end <= self.body.len())
                .then(|| {
                    self.flaws
                        .iter()
                        .find(|(at, _)| at.start < range.end && range.start < at.end)
                })
                .flatten();
            match flaw {
                Some((_, flaw)) => refused.push(Refused {
                    text: self.original.slice(range),
                    flaw: *flaw,
                }),
                None => kept.push(record),
            }
        }
        (kept, refused)
    }
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

    /// One record with invalid UTF-8 and one nested too deep are set aside with the bytes
    /// the source sent; their neighbours parse and are kept.
    #[test]
    fn a_page_with_invalid_utf8_and_a_too_deep_record_keeps_the_others() {
        let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        let mut page = br#"{"value":[{"k":1,"s":"caf\u00e9 ok"},{"k":2,"s":"bad "#.to_vec();
        page.extend_from_slice(&[0xFF, 0xC3]);
        page.extend_from_slice(br#""},{"k":3,"n":"#);
        page.extend_from_slice(deep.as_bytes());
        page.extend_from_slice("},{\"k\":4,\"s\":\"é\"}]}".as_bytes());
        let page = Bytes::from(page);
        assert!(
            serde_json::from_slice::<&RawValue>(&page).is_err(),
            "serde refuses the page"
        );
        let checked = check(page.clone(), 64 + 2);
        #[derive(serde::Deserialize)]
        struct Collection<'a> {
            #[serde(borrow)]
            value: &'a RawValue,
        }
        let collection: Collection = serde_json::from_slice(&checked.body).unwrap();
        let records = elements(&checked.body, collection.value).unwrap();
        assert_eq!(records.len(), 4);
        let (kept, refused) = checked.partition(records);
        let keys: Vec<_> = kept
            .iter()
            .map(|r| fields_of(r, &["k".to_string()]).unwrap()["k"].clone())
            .collect();
        assert_eq!(keys, vec![serde_json::json!(1), serde_json::json!(4)]);
        assert_eq!(refused.len(), 2);
        assert_eq!(refused[0].flaw, Flaw::InvalidUtf8);
        assert!(
            refused[0].text.windows(2).any(|w| w == [0xFF, 0xC3]),
            "original bytes"
        );
        assert_eq!(refused[1].flaw, Flaw::TooDeep);
        assert!(
            refused[1]
                .text
                .ends_with(format!("{}}}", "]".repeat(500)).as_bytes())
        );
        // serde_json's private raw-value marker as a key: that record is set aside.
        let page = Bytes::from_static(
            br#"{"value":[{"k":1},{"$serde_json::private::RawValue":"0","a":1},{"k":3}]}"#,
        );
        let checked = check(page, 66);
        let collection: Collection = serde_json::from_slice(&checked.body).unwrap();
        let records = elements(&checked.body, collection.value).unwrap();
        let (kept, refused) = checked.partition(records);
        assert_eq!(kept.len(), 2);
        assert_eq!(refused[0].flaw, Flaw::ReservedString);
        assert!(refused[0].text.starts_with(br#"{"$serde_json"#));
        // A clean page is not copied.
        let clean = Bytes::from_static(br#"[{"a":[1,[2]]}]"#);
        let checked = check(clean.clone(), 4);
        assert_eq!(checked.body.as_ptr(), clean.as_ptr());
        assert!(checked.flaws.is_empty());
    }
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
        let texts: Vec<Bytes> = [
            r#"{"T":"2024-01-01T00:00:00.002Z"}"#,
            r#"{"T":"2024-01-01T00:00:00.010Z"}"#,
            r#"{"T":"not a time"}"#,
            r#"{"U":1}"#,
            r#"{"T":"2024-01-01T00:00:00.003Z"}"#,
            "[1]",
        ]
        .into_iter()
        .map(Bytes::from)
        .collect();
        let records = with_fields(texts, &["T".to_string(), "V".to_string()]);
        assert_eq!(
            max_cursor(&records, "T").as_deref(),
            Some("2024-01-01T00:00:00.010Z")
        );
        assert_eq!(max_cursor(&records, "V"), None);
    }
}

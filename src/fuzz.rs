//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz and libFuzzer; `scripts/fuzz.sh`
//! runs them). Each takes arbitrary bytes, feeds them to a parser that reads untrusted input,
//! and panics only when something that must hold does not: a panic is a finding. They live in
//! the crate, not in `fuzz/`, so they reach crate-private parsers and so the unit tests below
//! replay the committed corpus and every input that once crashed, on the stable toolchain.

use bytes::Bytes;
use serde_json::Value;

use crate::api::DataContract;
use crate::api::data_contract::RecordSchema;
use crate::api::integration_flow::Limits;
use crate::contract::value::{is_date, is_timestamp, parse_decimal};
use crate::contract::{Candidate, Outcome, PublishedSchema, canonical_json, schema_hash};
use crate::sim::batch::{BatchResponse, parse_requests, write_responses};
use crate::worker::clock::parse_rfc3339_nanos;
use crate::worker::connectors::odata_batch::{
    MAX_PARTS, PartRequest, boundary_of, decode_responses, encode_requests,
};
use crate::worker::connectors::{files, odata, raw, rest};
use crate::worker::transform::Plan;
use crate::worker::version::version_of;
use crate::worker::{quality::Facts, sample};

/// Structured values drawn from the fuzzer's bytes (zeros once they run out).
struct Draw<'a>(&'a [u8]);

impl<'a> Draw<'a> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = (self.byte() as usize).min(max).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }

    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.byte() as usize % from.len()]
    }
}

/// The `$batch` codec: the response decoder on arbitrary bytes; responses written by the
/// simulator's writer and requests read by its MIME parser (mailparse, httparse) come back
/// exactly as they were.
pub fn odata_batch(data: &[u8]) {
    if let Ok(responses) = decode_responses("multipart/mixed; boundary=b", data) {
        assert!(responses.len() <= MAX_PARTS);
    }
    if let Some(line) = data.split(|b| *b == b'\n').next() {
        let content_type = String::from_utf8_lossy(line);
        if boundary_of(&content_type).is_some() {
            let _ = decode_responses(&content_type, data);
        }
    }
    let mut draw = Draw(data);
    let boundary = format!(
        "batch_flowplane_{:016x}",
        u64::from(draw.byte()) * 0x9E37_79B9
    );
    let delimiter = format!("--{boundary}");
    let contains =
        |body: &[u8], needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
    let header_value = |draw: &mut Draw| -> String {
        draw.text(40)
            .chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
            .trim()
            .to_string()
    };

    let mut responses = Vec::new();
    for n in 0..draw.byte() % 5 {
        let mut headers = Vec::new();
        for _ in 0..draw.byte() % 3 {
            let name = draw.pick(&["Content-Type", "ETag", "OData-Version", "Location"]);
            headers.push((name.to_string(), header_value(&mut draw)));
        }
        responses.push(BatchResponse {
            content_id: (draw.byte() % 2 == 0).then(|| (n + 1).to_string()),
            status: 100 + u16::from(draw.byte()) * 2 % 500,
            headers,
            body: draw.bytes(200).to_vec(),
        });
    }
    if !responses.iter().any(|r| contains(&r.body, &delimiter)) {
        let body = write_responses(&boundary, &responses);
        let content_type = format!("multipart/mixed; boundary={boundary}");
        let decoded = decode_responses(&content_type, &body).expect("a written batch reads back");
        assert_eq!(decoded.len(), responses.len());
        for (decoded, written) in decoded.iter().zip(&responses) {
            assert_eq!(decoded.content_id, written.content_id);
            assert_eq!(decoded.status, written.status);
            assert_eq!(decoded.headers, written.headers);
            assert_eq!(decoded.body, written.body);
        }
    }

    let mut requests = Vec::new();
    for n in 0..draw.byte() % 5 + 1 {
        let key = odata::encode(&draw.text(20));
        let (method, url) = match draw.byte() % 3 {
            0 => ("PATCH", format!("A_PlndIndepRqmtItem('{key}')")),
            1 => ("POST", "A_PlndIndepRqmtItem".to_string()),
            _ => (
                "GET",
                format!("A_PlndIndepRqmtItem('{key}')?$select=Version"),
            ),
        };
        let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        if draw.byte() % 2 == 0 {
            headers.push(("If-Match".to_string(), header_value(&mut draw)));
        }
        requests.push(PartRequest {
            content_id: Some((n + 1).to_string()),
            method: method.to_string(),
            url,
            headers,
            body: draw.bytes(200).to_vec(),
        });
    }
    if requests.iter().any(|r| contains(&r.body, &delimiter)) {
        return;
    }
    let body = encode_requests(&boundary, &requests);
    let content_type = format!("multipart/mixed; boundary={boundary}");
    let read = parse_requests(&content_type, &body).expect("a MIME parser reads the batch");
    assert_eq!(read.len(), requests.len());
    for (read, sent) in read.iter().zip(&requests) {
        assert_eq!(read.content_id, sent.content_id);
        assert_eq!((&read.method, &read.url), (&sent.method, &sent.url));
        assert_eq!(read.headers, sent.headers);
        assert_eq!(read.body, sent.body);
    }
}

/// Records a source publishes: UTF-8 JSON text within serde_json's nesting limit, so the
/// consumer either maps it or dead-letters it (Undecodable). Not "reads it": a number beyond
/// f64, like `1e444`, is JSON that serde_json refuses to build (the raw_fields target's first
/// finding); the record is published as the source sent it and dead-lettered when consumed.
fn assert_publishable(records: &[Bytes]) {
    for record in records {
        serde_json::from_slice::<serde::de::IgnoredAny>(record).expect("a kept record is JSON");
        std::str::from_utf8(record).expect("a kept record is UTF-8");
    }
}

/// Small limits, so the fuzzer reaches them.
fn small_limits() -> Limits {
    Limits {
        max_page_records: 50,
        max_json_depth: 8,
        ..Limits::default()
    }
}

/// The OData page splitter on an arbitrary response body, and its links resolved against a
/// service below a binding.
pub fn odata_page(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let Ok(page) = odata::split_page(body.clone(), &small_limits()) else {
        return;
    };
    assert!(page.records.len() + page.refused.len() <= 50);
    assert_publishable(&page.records);
    for refused in &page.refused {
        assert!(
            contains_slice(&body, &refused.text),
            "refused bytes are the source's"
        );
    }
    let request = "http://erp.test/sap/opu/odata4/sap/api/0001/A_SalesOrderItem?$skiptoken=5";
    for link in [&page.next_link, &page.delta_link].into_iter().flatten() {
        let _ = odata::next_url(request, page.context.as_deref(), link);
    }
}

fn contains_slice(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The REST page splitters (with and without configured settings) and the `Link` header
/// parser on arbitrary bytes.
pub fn rest_page(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    if let Ok((records, _next)) = rest::split_page(&body) {
        assert_publishable(&records);
    }
    for settings in [
        serde_json::json!({"pagination": "NextLink", "records": "/data", "nextLink": "/links/next"}),
        serde_json::json!({"pagination": "Cursor", "records": "/items/0/rows", "nextCursor": "/meta/next~1cursor"}),
        serde_json::json!({"pagination": "Page", "records": ""}),
    ] {
        let read = serde_json::from_value(settings).expect("valid settings");
        if let Ok(page) = rest::read_page(&read, &body) {
            assert_publishable(&page.records);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for (target, rels) in rest::parse_link_header(text) {
            assert!(!target.contains('>'));
            assert!(rels.iter().all(|r| !r.is_empty()));
        }
    }
}

/// The raw-JSON reader: the sparse field reader agrees with a full parse, and a body checked
/// for flaws parses into records that are each JSON or refused with the source's bytes.
pub fn raw_fields(data: &[u8]) {
    let wanted = ["SalesOrder".to_string(), "LastChangeDateTime".to_string()];
    let sparse = raw::fields_of(data, &wanted);
    if let Ok(Value::Object(full)) = serde_json::from_slice::<Value>(data) {
        let sparse = sparse.expect("an object's fields are read");
        for name in &wanted {
            assert_eq!(sparse.get(name), full.get(name), "field {name}");
        }
    }
    let body = Bytes::copy_from_slice(data);
    let checked = raw::check(body, 6);
    let Ok(array) = serde_json::from_slice::<&serde_json::value::RawValue>(&checked.body) else {
        return;
    };
    let Ok(records) = raw::elements(&checked.body, array) else {
        return;
    };
    let count = records.len();
    let (kept, refused) = checked.partition(records);
    assert_eq!(kept.len() + refused.len(), count);
    assert_publishable(&kept);
    let cursor = ["LastChangeDateTime".to_string()];
    let _ = raw::max_cursor(&raw::with_fields(kept, &cursor), "LastChangeDateTime");
}

/// The timestamp and number readers: the cursor's version, RFC 3339 by jiff, the contract's
/// date, timestamp and decimal checks; a timestamp the contract takes orders as a cursor.
pub fn timestamps(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let nanos = parse_rfc3339_nanos(&text);
    let version = version_of(&Value::String(text.to_string()));
    if let (Some(nanos), Ok(plain)) = (nanos, text.parse::<u64>()) {
        unreachable!("{text:?} is both {nanos} ns and the number {plain}");
    }
    if let (Some(nanos), Some(version)) = (nanos, version)
        && !text.starts_with("/Date(")
    {
        assert_eq!(u64::try_from(nanos).ok(), Some(version));
    }
    let _ = is_date(&text);
    let _ = parse_decimal(&text);
    if is_timestamp(&text) {
        let year: u32 = text[..4].parse().expect("four digits");
        let fraction = text[19..].trim_start_matches('.');
        let digits = fraction.len()
            - fraction
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        let leap_second = &text[17..19] == "60";
        if (1971..=2261).contains(&year) && digits <= 9 && !leap_second {
            assert!(
                nanos.is_some(),
                "{text:?} is a timestamp the cursor cannot order"
            );
        }
    }
}

/// The file source's readers: CSV rows become one object each with the header's names, and
/// rows written with RFC 4180 quoting read back cell for cell.
pub fn csv_file(data: &[u8]) {
    for record in files::parse_csv(data) {
        // An unreadable row is kept as its text, for the worker to dead-letter.
        assert!(record.is_object() || record.is_string(), "{record:?}");
    }
    let mut draw = Draw(data);
    let columns = usize::from(draw.byte() % 4) + 1;
    let header: Vec<String> = (0..columns).map(|n| format!("c{n}")).collect();
    let rows: Vec<Vec<String>> = (0..draw.byte() % 4)
        .map(|_| (0..columns).map(|_| draw.text(12)).collect())
        .collect();
    let quote = |cell: &str| format!("\"{}\"", cell.replace('"', "\"\""));
    let mut text = header.join(",") + "\r\n";
    for row in &rows {
        text += &row.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",");
        text += "\r\n";
    }
    let records = files::parse_csv(text.as_bytes());
    assert_eq!(records.len(), rows.len(), "{text:?}");
    for (record, row) in records.iter().zip(&rows) {
        for (name, cell) in header.iter().zip(row) {
            assert_eq!(record[name], Value::String(cell.clone()), "{text:?}");
        }
    }
}

/// DataContract manifests (YAML documents split by `---`, the last the candidate): parsed,
/// validated, hashed and checked for compatibility in every mode without a panic; a schema's
/// canonical form is a fixed point of its hash, and a version is compatible with itself.
pub fn contract(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let contracts: Vec<DataContract> = text
        .split("\n---\n")
        .filter_map(|document| crate::contract::cli::parse(document).ok())
        .collect();
    let Some((candidate, history)) = contracts.split_last() else {
        return;
    };
    for contract in &contracts {
        let schema = &contract.spec.schema;
        let canonical: RecordSchema =
            serde_json::from_str(&canonical_json(schema)).expect("the canonical form reads back");
        assert_eq!(schema_hash(&canonical), schema_hash(schema));
    }
    let hashes: Vec<String> = history
        .iter()
        .map(|c| schema_hash(&c.spec.schema))
        .collect();
    let published: Vec<PublishedSchema> = history
        .iter()
        .zip(&hashes)
        .map(|(c, hash)| PublishedSchema {
            version: &c.spec.version,
            schema_hash: hash,
            schema: &c.spec.schema,
        })
        .collect();
    let candidate_hash = schema_hash(&candidate.spec.schema);
    let itself = [PublishedSchema {
        version: &candidate.spec.version,
        schema_hash: &candidate_hash,
        schema: &candidate.spec.schema,
    }];
    for mode in crate::contract::cli::MODES {
        if let Ok(verdict) =
            crate::contract::check(&published, &Candidate::from(&candidate.spec), mode)
        {
            let _ = verdict.to_string();
            for broken in verdict.breaks() {
                let _ = broken.to_string();
            }
        }
        let verdict = crate::contract::check(&itself, &Candidate::from(&candidate.spec), mode)
            .expect("a parsed contract has a semantic version");
        assert_eq!(verdict.outcome, Outcome::AlreadyPublished);
    }
}

/// The mapping plan of the sample flow on an arbitrary record: it is mapped or rejected with
/// a reason, and a mapped record is a JSON object whose values the contract takes.
pub fn mapping(data: &[u8]) {
    let Ok(record) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let contract = sample::contract();
    let plan = Plan::compile(&sample::mapping(), &contract).expect("the sample plan compiles");
    let _ = plan.source_key(&record);
    let mut out = Vec::new();
    let mut facts = Facts::default();
    if plan.map_into_with(&record, &mut out, &mut facts).is_err() {
        return;
    }
    let Ok(Value::Object(mapped)) = serde_json::from_slice::<Value>(&out) else {
        panic!(
            "a mapped record is a JSON object: {}",
            String::from_utf8_lossy(&out)
        );
    };
    for field in &contract.schema.fields {
        let raw = match mapped.get(&field.name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let pattern = field
            .pattern
            .as_deref()
            .map(|p| regex::Regex::new(p).expect("valid"));
        crate::contract::value::check_value(field, pattern.as_ref(), &raw)
            .expect("a mapped value passes its contract field");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A fuzz target: `fuzz/fuzz_targets/<name>.rs` calls the function of that name.
    type Target = (&'static str, fn(&[u8]));

    const TARGETS: [Target; 8] = [
        ("odata_batch", odata_batch),
        ("odata_page", odata_page),
        ("rest_page", rest_page),
        ("raw_fields", raw_fields),
        ("timestamps", timestamps),
        ("csv_file", csv_file),
        ("contract", contract),
        ("mapping", mapping),
    ];

    /// Every committed corpus input of every target, as libFuzzer starts from them, plus the
    /// inputs that once failed (`fuzz/regressions/<target>/`), run through the target: the
    /// targets' invariants hold on them on the stable toolchain too.
    #[test]
    fn the_corpus_and_past_findings_pass_every_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut ran = 0;
        for (name, target) in TARGETS {
            let mut inputs = 0;
            for dir in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.unwrap().path();
                    let input = std::fs::read(&path).unwrap();
                    let outcome = std::panic::catch_unwind(|| target(&input));
                    assert!(outcome.is_ok(), "{name} fails on {}", path.display());
                    inputs += 1;
                }
            }
            assert!(inputs > 0, "no corpus for {name}");
            ran += inputs;
        }
        println!("{ran} corpus inputs passed");
    }
}

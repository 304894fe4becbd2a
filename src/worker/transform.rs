//! Map, translate and validate: one source record in, one canonical record (as JSON bytes) out,
//! or the reason it cannot be delivered.
//!
//! This is the hot path, so the mapping is compiled once into a [`Plan`]: source paths split
//! into segments, code tables in hash maps, patterns compiled, quality rules attached to the
//! field they check, and each output field's `"name":` prefix pre-escaped. Mapping a record
//! writes straight into a caller-owned buffer; the only allocations are on the error path.
//! The record itself is read from the message bytes as a [`Record`]: strings and keys borrowed
//! from the payload, not a `serde_json::Value` with an allocation per field.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use regex::Regex;
use serde_json::Value;
use serde_json_borrow::Value as Borrowed;

use super::lock;
use crate::api::data_contract::{
    AdditionalFields, FieldSpec, FieldType, QualityAction, QualityCheck, QualityRule,
};
use crate::api::integration_flow::OnUnmapped;
use crate::contract::value::check_value;
use crate::queue::codes::{MAX_CODES_PER_MAP, ObservedCodes};
use crate::worker::quality::{BatchCheck, BatchRule, Facts};
use crate::worker_config::{CodeTable, ContractConfig, MappingConfig};

/// Why a record cannot be delivered. The names are the dead-letter reasons (bounded set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The payload is not a JSON object.
    Undecodable,
    /// A code map does not know a code and says DeadLetter.
    UnmappedCode,
    /// A value breaks the contract's schema.
    ContractViolation,
    /// A quality rule with action DeadLetter or FailBatch failed.
    QualityRule,
    /// The target refused the record (4xx).
    TargetRejected,
    /// Transient failures outlasted the flow's maxDeliver.
    MaxDeliveries,
    /// A planner rejected the forecast delta.
    ReviewRejected,
    /// Nobody decided on the forecast delta in time and onTimeout is Reject.
    ReviewTimeout,
    /// The source record is larger than the flow takes (`limits.maxRecordBytes`, the NATS
    /// max payload); dead-lettered at extraction, cut to its first 64 KiB.
    RecordTooLarge,
    /// The source record is not valid UTF-8 or nests deeper than `limits.maxJsonDepth`;
    /// dead-lettered at extraction.
    Malformed,
}

impl Reason {
    /// The reason as it appears in headers, metrics and `dlq redrive --reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "Undecodable",
            Reason::UnmappedCode => "UnmappedCode",
            Reason::ContractViolation => "ContractViolation",
            Reason::QualityRule => "QualityRule",
            Reason::TargetRejected => "TargetRejected",
            Reason::MaxDeliveries => "MaxDeliveries",
            Reason::ReviewRejected => "ReviewRejected",
            Reason::ReviewTimeout => "ReviewTimeout",
            Reason::RecordTooLarge => "RecordTooLarge",
            Reason::Malformed => "Malformed",
        }
    }

    /// Every reason, for metrics.
    pub const ALL: [Reason; 10] = [
        Reason::Undecodable,
        Reason::UnmappedCode,
        Reason::ContractViolation,
        Reason::QualityRule,
        Reason::TargetRejected,
        Reason::MaxDeliveries,
        Reason::ReviewRejected,
        Reason::ReviewTimeout,
        Reason::RecordTooLarge,
        Reason::Malformed,
    ];
}

/// A record that cannot be delivered, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Short reason.
    pub reason: Reason,
    /// What exactly is wrong, naming the field.
    pub detail: String,
    /// A quality rule with action FailBatch failed: none of the record's batch is delivered.
    pub fails_batch: bool,
}

fn reject(reason: Reason, detail: String) -> Rejection {
    Rejection {
        reason,
        detail,
        fails_batch: false,
    }
}

enum Origin {
    /// A source field, by path segments.
    Path(Vec<String>),
    /// A constant from the mapping.
    Constant(String),
}

struct CompiledRule {
    name: String,
    check: QualityCheck,
    action: QualityAction,
    min: Option<f64>,
    max: Option<f64>,
    pattern: Option<Regex>,
    values: Vec<String>,
}

struct FieldPlan {
    /// `"name":`, escaped once.
    prefix: Vec<u8>,
    name: String,
    origin: Origin,
    code_map: Option<usize>,
    spec: FieldSpec,
    pattern: Option<Regex>,
    rules: Vec<CompiledRule>,
    /// Bit set in [`Facts::nulls`] when the field has no value (NullRatio rules); 0 if none.
    null_bit: u64,
    /// Part of the canonical key a DuplicateKeys rule needs.
    key_part: bool,
}

struct CodeMapPlan {
    name: String,
    on_unmapped: OnUnmapped,
    default: Option<String>,
    /// Source code -> (target code, index into `seen`).
    entries: HashMap<String, (String, usize)>,
    /// Which entries the source has sent (the drift report's input, see crate::queue::codes).
    seen: Vec<AtomicBool>,
    /// Codes the source sent that the table does not know (bounded).
    unmapped: Mutex<BTreeSet<String>>,
}

/// The compiled mapping of one flow.
pub struct Plan {
    fields: Vec<FieldPlan>,
    code_maps: Vec<CodeMapPlan>,
    /// Field indexes of the primary key, in primary-key order.
    key: Vec<usize>,
    key_names: Vec<String>,
    /// With no explicit mapping, source fields outside the contract are "additional".
    reject_additional: bool,
    /// Quality rules that judge a batch, not a record (NullRatio, DuplicateKeys).
    batch_rules: Vec<BatchRule>,
    /// A DuplicateKeys rule needs each record's canonical key.
    wants_key: bool,
    /// A code was seen for the first time since the last [`Plan::take_new_codes`].
    new_codes: AtomicBool,
}

/// One source record as the consumer decodes it from the message bytes: a JSON tree whose
/// strings and keys borrow from the payload where they have no escapes.
pub type Record<'a> = Borrowed<'a>;

/// Counts of Alert-action quality violations, reported by the caller as a metric.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alerts(pub u32);

impl Plan {
    /// Compiles the mapping against the contract. Fails on configuration the operator should
    /// have refused (a mapping to an undeclared field, an unknown code map, a bad pattern).
    pub fn compile(mapping: &MappingConfig, contract: &ContractConfig) -> Result<Plan, String> {
        let schema = &contract.schema;
        let mut code_maps = Vec::new();
        let mut code_map_index = HashMap::new();
        for (name, table) in &mapping.code_maps {
            code_map_index.insert(name.clone(), code_maps.len());
            code_maps.push(compile_code_map(name, table));
        }
        if let Some(problem) = mapping.problem(contract) {
            return Err(problem);
        }
        let mut fields = Vec::with_capacity(schema.fields.len());
        for spec in &schema.fields {
            let mapped = mapping.fields.iter().find(|m| m.to == spec.name);
            let origin = match mapped {
                Some(m) => match (&m.from, &m.value) {
                    (Some(path), _) => Origin::Path(path.split('.').map(str::to_string).collect()),
                    (None, Some(constant)) => Origin::Constant(constant.clone()),
                    (None, None) => Origin::Path(vec![spec.name.clone()]),
                },
                // Unmapped contract fields come from the source field of the same name.
                None => Origin::Path(vec![spec.name.clone()]),
            };
            let code_map = match mapped.and_then(|m| m.code_map.as_ref()) {
                Some(name) => Some(*code_map_index.get(name).ok_or_else(|| {
                    format!("field {:?} uses unknown code map {name:?}", spec.name)
                })?),
                None => None,
            };
            let pattern = spec
                .pattern
                .as_deref()
                .map(Regex::new)
                .transpose()
                .map_err(|e| format!("field {:?}: pattern: {e}", spec.name))?;
            let rules = contract
                .quality
                .iter()
                .filter(|r| r.field.as_deref() == Some(spec.name.as_str()))
                .filter(|r| !is_batch_rule(r))
                .map(compile_rule)
                .collect::<Result<Vec<_>, _>>()?;
            let mut prefix = Vec::with_capacity(spec.name.len() + 3);
            serde_json::to_writer(&mut prefix, &spec.name).map_err(|e| e.to_string())?;
            prefix.push(b':');
            fields.push(FieldPlan {
                prefix,
                name: spec.name.clone(),
                origin,
                code_map,
                spec: spec.clone(),
                pattern,
                rules,
                null_bit: 0,
                key_part: false,
            });
        }
        let key = schema
            .primary_key
            .iter()
            .map(|k| {
                fields
                    .iter()
                    .position(|f| &f.name == k)
                    .ok_or_else(|| format!("primary key field {k:?} is not declared"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Batch rules: one null bit per field a NullRatio rule watches.
        let mut next_bit = 0u32;
        for rule in contract.quality.iter().filter(|r| is_batch_rule(r)) {
            if rule.check == QualityCheck::NullRatio
                && let Some(field) = fields
                    .iter_mut()
                    .find(|f| rule.field.as_deref() == Some(f.name.as_str()))
                && field.null_bit == 0
                && next_bit < 64
            {
                field.null_bit = 1 << next_bit;
                next_bit += 1;
            }
        }
        let batch_rules = contract
            .quality
            .iter()
            .filter_map(|r| {
                BatchRule::compile(r, |name| {
                    fields
                        .iter()
                        .find(|f| f.name == name)
                        .map(|f| f.null_bit)
                        .filter(|bit| *bit != 0)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let wants_key = batch_rules
            .iter()
            .any(|r| r.check == BatchCheck::DuplicateKeys);
        if wants_key {
            for index in &key {
                fields[*index].key_part = true;
            }
        }
        Ok(Plan {
            fields,
            code_maps,
            key,
            key_names: schema.primary_key.clone(),
            reject_additional: mapping.fields.is_empty()
                && schema.additional_fields == AdditionalFields::Reject,
            batch_rules,
            wants_key,
            new_codes: AtomicBool::new(false),
        })
    }

    /// Marks the codes as not written yet (writing them failed), so the next pass tries again.
    pub fn keep_new_codes(&self) {
        self.new_codes.store(true, Ordering::Relaxed);
    }

    /// Every code seen per code map, when one was new since the last call: what the worker
    /// merges into the flow's record of observed codes. A hit costs one relaxed load.
    pub fn take_new_codes(&self) -> Option<ObservedCodes> {
        if !self.new_codes.swap(false, Ordering::Relaxed) {
            return None;
        }
        let mut observed = ObservedCodes::default();
        for table in &self.code_maps {
            let mut codes: BTreeSet<String> = table
                .entries
                .iter()
                .filter(|(_, (_, i))| table.seen[*i].load(Ordering::Relaxed))
                .map(|(code, _)| code.clone())
                .collect();
            codes.extend(lock(&table.unmapped).iter().cloned());
            if !codes.is_empty() {
                observed.maps.insert(table.name.clone(), codes);
            }
        }
        Some(observed)
    }

    /// The contract's primary key field names.
    pub fn key_names(&self) -> &[String] {
        &self.key_names
    }

    /// Quality rules judged per batch (see [`super::quality`]).
    pub fn batch_rules(&self) -> &[BatchRule] {
        &self.batch_rules
    }

    /// The record's key in source terms (primary-key fields' source values, before code
    /// translation), `value/value`. None when a key field is missing.
    pub fn source_key(&self, record: &Value) -> Option<String> {
        let mut key = String::new();
        for (n, index) in self.key.iter().enumerate() {
            if n > 0 {
                key.push('/');
            }
            match &self.fields[*index].origin {
                Origin::Constant(c) => key.push_str(c),
                Origin::Path(path) => match lookup(record, path)? {
                    Value::String(s) => key.push_str(s),
                    Value::Null => return None,
                    other => key.push_str(&other.to_string()),
                },
            }
        }
        Some(key)
    }

    /// Maps `record` into `out` as a canonical JSON object. On error `out` holds garbage.
    pub fn map_into(&self, record: &Value, out: &mut Vec<u8>) -> Result<Alerts, Rejection> {
        self.map_into_with(record, out, &mut Facts::default())
    }

    /// [`Plan::map_into`], also noting in `facts` what the batch rules need to know.
    pub fn map_into_with(
        &self,
        record: &Value,
        out: &mut Vec<u8>,
        facts: &mut Facts,
    ) -> Result<Alerts, Rejection> {
        self.map_record(&Record::from(record), out, facts)
    }

    /// [`Plan::map_into_with`] on a record decoded from message bytes (the consumer's path).
    pub fn map_record(
        &self,
        record: &Record<'_>,
        out: &mut Vec<u8>,
        facts: &mut Facts,
    ) -> Result<Alerts, Rejection> {
        facts.nulls = 0;
        facts.key = self.wants_key.then(String::new);
        let Borrowed::Object(object) = record else {
            return Err(reject(
                Reason::Undecodable,
                "the record is not a JSON object".into(),
            ));
        };
        if self.reject_additional
            && let Some(extra) = object
                .keys()
                .find(|k| !k.starts_with("@odata.") && !self.fields.iter().any(|f| f.name == *k))
        {
            return Err(reject(
                Reason::ContractViolation,
                format!("field {extra:?} is not in the contract (additionalFields: Reject)"),
            ));
        }
        let mut alerts = Alerts::default();
        out.push(b'{');
        let mut first = true;
        for field in &self.fields {
            let found = match &field.origin {
                Origin::Path(path) => lookup_borrowed(record, path),
                Origin::Constant(_) => None,
            };
            let mut number_text = NumberText::new();
            let raw: Option<&str> = match (&field.origin, found) {
                (Origin::Constant(c), _) => Some(c.as_str()),
                (_, Some(Borrowed::Str(s))) => Some(s.as_ref()),
                (_, Some(Borrowed::Number(n))) => Some(number_text.write_borrowed(n)),
                (_, Some(Borrowed::Bool(b))) => Some(if *b { "true" } else { "false" }),
                (_, Some(Borrowed::Null)) | (_, None) => None,
                (_, Some(_)) => {
                    return Err(reject(
                        Reason::ContractViolation,
                        format!("field {:?} is not a scalar value", field.name),
                    ));
                }
            };
            let raw = match raw {
                Some(code) => match field.code_map {
                    Some(index) => Some(self.translate(index, &field.name, code)?),
                    None => Some(code),
                },
                None => None,
            };
            let raw = raw.or(field.spec.default.as_deref());
            let Some(raw) = raw else {
                facts.nulls |= field.null_bit;
                if field.spec.required && !field.spec.nullable {
                    return Err(reject(
                        Reason::ContractViolation,
                        format!("required field {:?} is missing", field.name),
                    ));
                }
                check_rules(field, None, &mut alerts)?;
                if matches!(found, Some(Borrowed::Null)) {
                    write_field(out, &mut first, &field.prefix, b"null");
                }
                continue;
            };
            check_value(&field.spec, field.pattern.as_ref(), raw).map_err(|problem| {
                reject(
                    Reason::ContractViolation,
                    format!("field {:?}: {problem}", field.name),
                )
            })?;
            check_rules(field, Some(raw), &mut alerts)?;
            if field.key_part
                && let Some(key) = facts.key.as_mut()
            {
                if !key.is_empty() {
                    key.push('\u{1f}');
                }
                key.push_str(raw);
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&field.prefix);
            match field.spec.type_ {
                // check_value accepted it, so it parses; written back canonically ("+05" -> 5).
                FieldType::Int => {
                    let _ = write!(out, "{}", raw.parse::<i64>().unwrap_or_default());
                }
                FieldType::Boolean => out.extend_from_slice(raw.as_bytes()),
                _ => write_json_string(out, raw),
            }
        }
        out.push(b'}');
        Ok(alerts)
    }

    fn translate<'a>(
        &'a self,
        index: usize,
        field: &str,
        code: &'a str,
    ) -> Result<&'a str, Rejection> {
        let table = &self.code_maps[index];
        if let Some((target, seen)) = table.entries.get(code) {
            if !table.seen[*seen].load(Ordering::Relaxed) {
                table.seen[*seen].store(true, Ordering::Relaxed);
                self.new_codes.store(true, Ordering::Relaxed);
            }
            return Ok(target.as_str());
        }
        {
            let mut unmapped = lock(&table.unmapped);
            if unmapped.len() < MAX_CODES_PER_MAP && !unmapped.contains(code) {
                unmapped.insert(code.to_string());
                self.new_codes.store(true, Ordering::Relaxed);
            }
        }
        match (table.on_unmapped, &table.default) {
            (OnUnmapped::PassThrough, _) => Ok(code),
            (OnUnmapped::Default, Some(default)) => Ok(default.as_str()),
            _ => Err(reject(
                Reason::UnmappedCode,
                format!(
                    "field {field:?}: code {code:?} is not in code map {:?}",
                    table.name
                ),
            )),
        }
    }
}

fn is_batch_rule(rule: &QualityRule) -> bool {
    matches!(
        rule.check,
        QualityCheck::NullRatio | QualityCheck::DuplicateKeys
    )
}

fn compile_code_map(name: &str, table: &CodeTable) -> CodeMapPlan {
    CodeMapPlan {
        name: name.to_string(),
        on_unmapped: table.on_unmapped,
        default: table.default.clone(),
        entries: table
            .entries
            .iter()
            .enumerate()
            .map(|(i, (k, v))| (k.clone(), (v.clone(), i)))
            .collect(),
        seen: table
            .entries
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect(),
        unmapped: Mutex::default(),
    }
}

fn compile_rule(rule: &QualityRule) -> Result<CompiledRule, String> {
    Ok(CompiledRule {
        name: rule.name.clone(),
        check: rule.check,
        action: rule.action,
        min: rule.min,
        max: rule.max,
        pattern: rule
            .pattern
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| format!("quality rule {:?}: pattern: {e}", rule.name))?,
        values: rule.values.clone(),
    })
}

fn check_rules(field: &FieldPlan, raw: Option<&str>, alerts: &mut Alerts) -> Result<(), Rejection> {
    for rule in &field.rules {
        let passed = match (rule.check, raw) {
            (QualityCheck::NotNull, value) => value.is_some(),
            (_, None) => true,
            (QualityCheck::Range, Some(raw)) => raw.parse::<f64>().is_ok_and(|v| {
                rule.min.is_none_or(|min| v >= min) && rule.max.is_none_or(|max| v <= max)
            }),
            (QualityCheck::Regex, Some(raw)) => {
                rule.pattern.as_ref().is_none_or(|p| p.is_match(raw))
            }
            (QualityCheck::AllowedValues, Some(raw)) => rule.values.iter().any(|v| v == raw),
            (QualityCheck::NullRatio | QualityCheck::DuplicateKeys, Some(_)) => true,
        };
        if passed {
            continue;
        }
        match rule.action {
            QualityAction::Alert => alerts.0 += 1,
            QualityAction::DeadLetter | QualityAction::FailBatch => {
                let mut rejection = reject(
                    Reason::QualityRule,
                    format!(
                        "quality rule {:?} failed on field {:?} ({:?})",
                        rule.name,
                        field.name,
                        raw.unwrap_or("null")
                    ),
                );
                // The consume loop dead-letters the rest of the batch too.
                rejection.fails_batch = rule.action == QualityAction::FailBatch;
                return Err(rejection);
            }
        }
    }
    Ok(())
}

fn lookup<'a>(record: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = record;
    for segment in path {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

/// As [`lookup`]; of duplicate keys the last counts, as `serde_json` decides (and so the
/// extraction that computed the record's key).
fn lookup_borrowed<'r, 'a>(record: &'r Record<'a>, path: &[String]) -> Option<&'r Record<'a>> {
    let mut current = record;
    for segment in path {
        current = current
            .as_object()?
            .as_vec()
            .iter()
            .rev()
            .find_map(|(key, value)| (&**key == segment.as_str()).then_some(value))?;
    }
    Some(current)
}

fn write_field(out: &mut Vec<u8>, first: &mut bool, prefix: &[u8], value: &[u8]) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.extend_from_slice(prefix);
    out.extend_from_slice(value);
}

fn write_json_string(out: &mut Vec<u8>, value: &str) {
    let plain = value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// A JSON number as text, on the stack.
struct NumberText {
    buffer: [u8; 40],
    len: usize,
}

impl NumberText {
    fn new() -> NumberText {
        NumberText {
            buffer: [0; 40],
            len: 0,
        }
    }

    /// Writes a decoded number as `serde_json` writes it (floats by the shortest
    /// round-tripping form, `10.0` stays `10.0`).
    fn write_borrowed(&mut self, number: &serde_json_borrow::Number) -> &str {
        let number = match (number.as_u64(), number.as_i64(), number.as_f64()) {
            (Some(u), _, _) => serde_json::Number::from(u),
            (None, Some(i), _) => serde_json::Number::from(i),
            (None, None, Some(f)) => {
                serde_json::Number::from_f64(f).unwrap_or_else(|| serde_json::Number::from(0))
            }
            (None, None, None) => serde_json::Number::from(0),
        };
        self.write(&number)
    }

    fn write(&mut self, number: &serde_json::Number) -> &str {
        let mut cursor = std::io::Cursor::new(&mut self.buffer[..]);
        let _ = write!(cursor, "{number}");
        self.len = cursor.position() as usize;
        std::str::from_utf8(&self.buffer[..self.len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::sample;

    #[test]
    fn maps_translates_and_validates_an_order_line() {
        let plan = Plan::compile(&sample::mapping(), &sample::contract()).unwrap();
        let record = sample::order_line("1010", "5");
        let mut out = Vec::new();
        plan.map_into(&record, &mut out).unwrap();
        let mapped: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(mapped["location"], "DC-NORTH");
        assert_eq!(mapped["orderedQuantity"], 5);
        assert_eq!(mapped["orderDate"], "2024-03-01");
        assert_eq!(mapped["source"], "s4");
        assert_eq!(plan.source_key(&record).as_deref(), Some("1000001/10"));
    }

    #[test]
    fn codes_seen_are_reported_once_each_mapped_or_not() {
        let plan = Plan::compile(&sample::mapping(), &sample::contract()).unwrap();
        assert_eq!(plan.take_new_codes(), None);
        let mut out = Vec::new();
        for plant in ["1010", "9999", "1010", "1030"] {
            out.clear();
            let _ = plan.map_into(&sample::order_line(plant, "5"), &mut out);
        }
        let seen = plan.take_new_codes().unwrap();
        let plants: Vec<&str> = seen.maps["plant-to-location"]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(plants, ["1010", "1030", "9999"]);
        assert_eq!(seen.maps["item-category"].len(), 1, "TAN");
        // Nothing new: nothing to write.
        let _ = plan.map_into(&sample::order_line("1030", "5"), &mut out);
        assert_eq!(plan.take_new_codes(), None);
    }

    #[test]
    fn batch_rules_get_null_bits_and_keys_and_fail_batch_is_flagged() {
        let mut contract = sample::contract();
        contract.quality = serde_json::from_value(serde_json::json!([
            {"name": "customer-mostly-set", "check": "NullRatio", "field": "customer", "maxRatio": 0.1},
            {"name": "one-row-per-line", "check": "DuplicateKeys", "action": "FailBatch"},
            {"name": "sane-quantity", "check": "Range", "field": "orderedQuantity", "min": 0.0, "max": 100.0, "action": "FailBatch"}
        ]))
        .unwrap();
        let plan = Plan::compile(&sample::mapping(), &contract).unwrap();
        assert_eq!(plan.batch_rules().len(), 2);
        let mut out = Vec::new();
        let mut facts = Facts::default();
        let mut record = sample::order_line("1010", "5");
        plan.map_into_with(&record, &mut out, &mut facts).unwrap();
        assert_eq!(facts.nulls, 0);
        assert_eq!(facts.key.as_deref(), Some("1000001\u{1f}10"));
        record["to_SalesOrder"]
            .as_object_mut()
            .unwrap()
            .remove("SoldToParty");
        out.clear();
        plan.map_into_with(&record, &mut out, &mut facts).unwrap();
        assert_eq!(
            facts.nulls, 1,
            "customer is the first (only) NullRatio field"
        );
        out.clear();
        let rejection = plan
            .map_into_with(&sample::order_line("1010", "500"), &mut out, &mut facts)
            .unwrap_err();
        assert!(rejection.fails_batch, "{rejection:?}");
        assert_eq!(rejection.reason, Reason::QualityRule);
        // The default action stays per record.
        out.clear();
        let plain = Plan::compile(&sample::mapping(), &sample::contract()).unwrap();
        let rejection = plain
            .map_into(&sample::order_line("1010", "-3"), &mut out)
            .unwrap_err();
        assert!(!rejection.fails_batch);
    }

    #[test]
    fn bad_records_are_rejected_with_a_reason_not_a_panic() {
        let plan = Plan::compile(&sample::mapping(), &sample::contract()).unwrap();
        let mut out = Vec::new();
        let unmapped = plan
            .map_into(&sample::order_line("9999", "5"), &mut out)
            .unwrap_err();
        assert_eq!(unmapped.reason, Reason::UnmappedCode);
        assert!(unmapped.detail.contains("9999"), "{}", unmapped.detail);
        out.clear();
        let negative = plan
            .map_into(&sample::order_line("1010", "-3"), &mut out)
            .unwrap_err();
        assert_eq!(negative.reason, Reason::ContractViolation);
        out.clear();
        let text = plan
            .map_into(&sample::order_line("1010", "abc"), &mut out)
            .unwrap_err();
        assert_eq!(text.reason, Reason::ContractViolation);
        out.clear();
        let not_object = plan.map_into(&Value::Bool(true), &mut out).unwrap_err();
        assert_eq!(not_object.reason, Reason::Undecodable);
    }
}

//! Canonical JSON of a record schema and its SHA-256: the identity of a published version.
//!
//! Two schemas that accept the same records get the same hash however they are spelled: fields
//! are sorted by name, enum values sorted, every default spelled out (`required: false`,
//! `additionalFields: Ignore`, a Decimal's omitted scale as 0), and keys written in a fixed order
//! without whitespace. Descriptions are left out, as Avro's Parsing Canonical Form leaves out
//! `doc`: fixing a typo in documentation must not look like a new schema. The primary key keeps
//! its order, because it is the order of the idempotency key.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::data_contract::{AdditionalFields, FieldSpec, FieldType, RecordSchema};

/// Keys are declared in byte order, so serde writes them sorted without a map.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CanonicalSchema<'a> {
    additional_fields: AdditionalFields,
    fields: Vec<CanonicalField<'a>>,
    primary_key: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CanonicalField<'a> {
    default: Option<&'a str>,
    max_length: Option<u32>,
    maximum: Option<f64>,
    minimum: Option<f64>,
    name: &'a str,
    nullable: bool,
    pattern: Option<&'a str>,
    precision: Option<u32>,
    required: bool,
    scale: Option<u32>,
    #[serde(rename = "type")]
    type_: FieldType,
    values: Vec<&'a str>,
}

impl<'a> CanonicalField<'a> {
    fn new(field: &'a FieldSpec) -> Self {
        let mut values: Vec<&str> = field.values.iter().map(String::as_str).collect();
        values.sort_unstable();
        values.dedup();
        Self {
            default: field.default.as_deref(),
            max_length: field.max_length,
            maximum: field.maximum.map(positive_zero),
            minimum: field.minimum.map(positive_zero),
            name: &field.name,
            nullable: field.nullable,
            pattern: field.pattern.as_deref(),
            precision: field.precision,
            required: field.required,
            // DECIMAL(p) means DECIMAL(p, 0), as in SQL.
            scale: match field.type_ {
                FieldType::Decimal => Some(field.scale.unwrap_or(0)),
                _ => field.scale,
            },
            type_: field.type_,
            values,
        }
    }
}

/// `-0.0` and `0.0` are the same bound but serialize differently.
fn positive_zero(value: f64) -> f64 {
    if value == 0.0 { 0.0 } else { value }
}

/// The canonical JSON text of `schema`.
pub fn canonical_json(schema: &RecordSchema) -> String {
    let mut fields: Vec<(String, CanonicalField)> = schema
        .fields
        .iter()
        .map(|field| {
            let canonical = CanonicalField::new(field);
            // Sorting by the whole text keeps even (invalid) duplicate names in a fixed order.
            let text = serde_json::to_string(&canonical).unwrap_or_default();
            (text, canonical)
        })
        .collect();
    fields.sort_by(|(a_text, a), (b_text, b)| a.name.cmp(b.name).then_with(|| a_text.cmp(b_text)));
    let canonical = CanonicalSchema {
        additional_fields: schema.additional_fields,
        fields: fields.into_iter().map(|(_, field)| field).collect(),
        primary_key: &schema.primary_key,
    };
    // Plain structs, strings, numbers and enums: serialization cannot fail.
    serde_json::to_string(&canonical).unwrap_or_default()
}

/// SHA-256 of [`canonical_json`], as 64 lowercase hex digits.
pub fn schema_hash(schema: &RecordSchema) -> String {
    hex::encode(Sha256::digest(canonical_json(schema).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERSE: &str = r#"
primaryKey: [order_id, line_no]
fields:
  - { name: order_id, type: String, required: true }
  - { name: line_no, type: Int, required: true }
  - { name: quantity, type: Decimal, precision: 12, minimum: 0 }
  - { name: status, type: Enum, values: [OPEN, SHIPPED] }
"#;

    /// The same schema: fields and enum values reordered, defaults written out, other spacing,
    /// descriptions added, `-0.0` for `0`.
    const VERBOSE: &str = r#"
additionalFields: Ignore
primaryKey:
  - order_id
  - line_no
fields:
  -   name: status
      type: Enum
      required: false
      nullable: false
      values: [SHIPPED, OPEN]
  - name: quantity
    description: ordered quantity in the base unit of measure
    type: Decimal
    precision: 12
    scale: 0
    minimum: -0.0
  - { name: line_no,  type: Int,    required: true, nullable: false }
  - { name: order_id, type: String, required: true, description: ERP sales order number }
"#;

    fn schema(yaml: &str) -> RecordSchema {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn hash_is_stable_across_spelling() {
        assert_eq!(
            canonical_json(&schema(TERSE)),
            canonical_json(&schema(VERBOSE))
        );
        assert_eq!(schema_hash(&schema(TERSE)), schema_hash(&schema(VERBOSE)));
    }

    #[test]
    fn canonical_json_is_compact_with_sorted_keys_and_defaults_spelled_out() {
        let json = canonical_json(&schema(TERSE));
        assert!(json.starts_with(
            r#"{"additionalFields":"Ignore","fields":[{"default":null,"maxLength":null,"#
        ));
        assert!(json.contains(r#""name":"quantity","nullable":false,"pattern":null,"precision":12,"required":false,"scale":0,"type":"Decimal""#));
        assert!(json.ends_with(r#""primaryKey":["order_id","line_no"]}"#));
        assert!(!json.contains(' '));
        let names: Vec<usize> = ["line_no", "order_id", "quantity", "status"]
            .iter()
            .map(|name| json.find(&format!(r#""name":"{name}""#)).unwrap())
            .collect();
        assert!(names.is_sorted(), "fields sorted by name: {json}");
    }

    #[test]
    fn hash_is_sha256_hex() {
        let hash = schema_hash(&schema(TERSE));
        assert_eq!(hash.len(), 64);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn hash_changes_with_anything_a_reader_sees() {
        let base = schema_hash(&schema(TERSE));
        type Edit = fn(&mut RecordSchema);
        let edits: Vec<(&str, Edit)> = vec![
            ("required", |s| s.fields[2].required = true),
            ("nullable", |s| s.fields[2].nullable = true),
            ("type", |s| s.fields[1].type_ = FieldType::Decimal),
            ("default", |s| s.fields[2].default = Some("0".into())),
            ("precision", |s| s.fields[2].precision = Some(13)),
            ("scale", |s| s.fields[2].scale = Some(2)),
            ("minimum", |s| s.fields[2].minimum = Some(1.0)),
            ("maximum", |s| s.fields[2].maximum = Some(1e6)),
            ("pattern", |s| s.fields[0].pattern = Some("^SO".into())),
            ("maxLength", |s| s.fields[0].max_length = Some(20)),
            ("enum value", |s| {
                s.fields[3].values.push("CANCELLED".into())
            }),
            ("field name", |s| s.fields[2].name = "qty".into()),
            ("field added", |s| {
                let mut extra = s.fields[0].clone();
                extra.name = "sku".into();
                s.fields.push(extra);
            }),
            ("field removed", |s| {
                s.fields.pop();
            }),
            ("primary key order", |s| s.primary_key.reverse()),
            ("additionalFields", |s| {
                s.additional_fields = AdditionalFields::Reject
            }),
        ];
        for (what, edit) in edits {
            let mut changed = schema(TERSE);
            edit(&mut changed);
            assert_ne!(schema_hash(&changed), base, "{what} must change the hash");
        }
    }
}

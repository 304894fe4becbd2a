//! Semantic checks of a contract that the CRD's CEL rules do not make (or that offline commands
//! must make without an apiserver): each problem names the exact place and what is wrong.

use std::collections::HashSet;
use std::fmt;

use regex::Regex;

use super::value::{MAX_PRECISION, check_value};
use crate::api::data_contract::{
    DataContractSpec, FIELD_NAME_PATTERN, FieldSpec, FieldType, QualityCheck, RecordSchema,
};

/// One problem, e.g. `schema.fields[quantity].default: "x" is not an Int (a 64-bit integer)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a path into the spec (`schema.fields[quantity].default`, `quality[qty-positive]`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem of a contract spec: its version, schema and quality rules. Empty when usable.
pub fn validate_contract(spec: &DataContractSpec) -> Vec<Problem> {
    let mut problems = Problems::default();
    match semver::Version::parse(&spec.version) {
        // Build metadata does not take part in ordering, so two versions could tie.
        Ok(version) if !version.build.is_empty() => problems.push(
            "version",
            format!("{:?}: build metadata (+...) is not allowed", spec.version),
        ),
        Ok(_) => {}
        Err(e) => problems.push(
            "version",
            format!(
                "{:?} is not a semantic version (MAJOR.MINOR.PATCH): {e}",
                spec.version
            ),
        ),
    }
    check_schema(&spec.schema, &mut problems);
    check_quality(spec, &mut problems);
    problems.0
}

/// Every problem of a record schema. Empty when usable.
pub fn validate_schema(schema: &RecordSchema) -> Vec<Problem> {
    let mut problems = Problems::default();
    check_schema(schema, &mut problems);
    problems.0
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn check_schema(schema: &RecordSchema, problems: &mut Problems) {
    if schema.fields.is_empty() {
        problems.push("schema.fields", "a schema needs at least one field");
    }
    let name_pattern = Regex::new(FIELD_NAME_PATTERN).expect("FIELD_NAME_PATTERN is a valid regex");
    let mut seen = HashSet::new();
    for (index, field) in schema.fields.iter().enumerate() {
        let path = field_path(field, index);
        if !name_pattern.is_match(&field.name) {
            problems.push(
                format!("{path}.name"),
                format!(
                    "{:?} is not an identifier (letters, digits, _; not starting with a digit)",
                    field.name
                ),
            );
        }
        if !seen.insert(field.name.as_str()) {
            problems.push(&path, "duplicate field name: each field is declared once");
        }
        check_field(field, &path, problems);
    }

    if schema.primary_key.is_empty() {
        problems.push(
            "schema.primaryKey",
            "a schema needs a primary key (it is also the idempotency key)",
        );
    }
    let mut key_seen = HashSet::new();
    for (index, key) in schema.primary_key.iter().enumerate() {
        let path = format!("schema.primaryKey[{index}]");
        if !key_seen.insert(key.as_str()) {
            problems.push(&path, format!("{key:?} appears twice in the primary key"));
        }
        match schema.fields.iter().find(|f| &f.name == key) {
            None => problems.push(&path, format!("{key:?} is not declared in schema.fields")),
            Some(field) => {
                if !field.required {
                    problems.push(&path, format!("primary key field {key:?} must be required"));
                }
                if field.nullable {
                    problems.push(
                        &path,
                        format!("primary key field {key:?} must not be nullable"),
                    );
                }
            }
        }
    }
}

/// The regex crate's message spans lines with a caret diagram; its last line says what is wrong.
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    let last = text.lines().last().unwrap_or_default();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

fn field_path(field: &FieldSpec, index: usize) -> String {
    if field.name.is_empty() {
        format!("schema.fields[{index}]")
    } else {
        format!("schema.fields[{}]", field.name)
    }
}

fn is_numeric(type_: FieldType) -> bool {
    matches!(type_, FieldType::Int | FieldType::Decimal)
}

fn check_field(field: &FieldSpec, path: &str, problems: &mut Problems) {
    let type_ = field.type_;
    // Attributes that only make sense on some types: each mistake is reported where it is.
    if type_ == FieldType::Enum {
        if field.values.is_empty() {
            problems.push(
                format!("{path}.values"),
                "a field of type Enum needs values",
            );
        }
        let mut seen = HashSet::new();
        for value in &field.values {
            if !seen.insert(value.as_str()) {
                problems.push(
                    format!("{path}.values"),
                    format!("{value:?} is listed twice"),
                );
            }
        }
    } else if !field.values.is_empty() {
        problems.push(
            format!("{path}.values"),
            format!("values are only allowed on Enum fields, not {type_:?}"),
        );
    }

    let mut decimal_ok = true;
    if type_ == FieldType::Decimal {
        match field.precision {
            None => {
                problems.push(
                    format!("{path}.precision"),
                    "a field of type Decimal needs precision",
                );
                decimal_ok = false;
            }
            Some(precision) if !(1..=MAX_PRECISION).contains(&precision) => {
                problems.push(
                    format!("{path}.precision"),
                    format!("precision {precision} is outside 1..={MAX_PRECISION}"),
                );
                decimal_ok = false;
            }
            Some(precision) => {
                if let Some(scale) = field.scale
                    && scale > precision
                {
                    problems.push(
                        format!("{path}.scale"),
                        format!("scale {scale} exceeds precision {precision}"),
                    );
                    decimal_ok = false;
                }
            }
        }
    } else {
        for (attribute, set) in [
            ("precision", field.precision.is_some()),
            ("scale", field.scale.is_some()),
        ] {
            if set {
                problems.push(
                    format!("{path}.{attribute}"),
                    format!("{attribute} is only allowed on Decimal fields, not {type_:?}"),
                );
            }
        }
    }

    let mut bounds_ok = true;
    for (attribute, bound) in [("minimum", field.minimum), ("maximum", field.maximum)] {
        let Some(bound) = bound else { continue };
        if !is_numeric(type_) {
            problems.push(
                format!("{path}.{attribute}"),
                format!("{attribute} is only allowed on Int and Decimal fields, not {type_:?}"),
            );
            bounds_ok = false;
        } else if !bound.is_finite() {
            problems.push(
                format!("{path}.{attribute}"),
                format!("{attribute} must be a finite number"),
            );
            bounds_ok = false;
        }
    }
    if let (Some(min), Some(max)) = (field.minimum, field.maximum)
        && min > max
    {
        problems.push(
            format!("{path}.minimum"),
            format!("minimum {min} exceeds maximum {max}"),
        );
        bounds_ok = false;
    }

    let mut pattern = None;
    let mut string_ok = true;
    if type_ != FieldType::String {
        for (attribute, set) in [
            ("pattern", field.pattern.is_some()),
            ("maxLength", field.max_length.is_some()),
        ] {
            if set {
                problems.push(
                    format!("{path}.{attribute}"),
                    format!("{attribute} is only allowed on String fields, not {type_:?}"),
                );
            }
        }
    } else {
        if let Some(source) = &field.pattern {
            match Regex::new(source) {
                Ok(regex) => pattern = Some(regex),
                Err(e) => {
                    problems.push(
                        format!("{path}.pattern"),
                        format!(
                            "{source:?} is not a valid regular expression: {}",
                            regex_error(&e)
                        ),
                    );
                    string_ok = false;
                }
            }
        }
        if field.max_length == Some(0) {
            problems.push(format!("{path}.maxLength"), "maxLength must be at least 1");
            string_ok = false;
        }
    }

    // A default is checked only against constraints that are themselves valid, so one mistake
    // is not reported twice.
    if let Some(default) = &field.default
        && decimal_ok
        && bounds_ok
        && string_ok
        && let Err(message) = check_value(field, pattern.as_ref(), default)
    {
        problems.push(
            format!("{path}.default"),
            format!("the default does not fit its own field: {message}"),
        );
    }
}

fn check_quality(spec: &DataContractSpec, problems: &mut Problems) {
    let mut names = HashSet::new();
    for (index, rule) in spec.quality.iter().enumerate() {
        let path = if rule.name.is_empty() {
            format!("quality[{index}]")
        } else {
            format!("quality[{}]", rule.name)
        };
        if !names.insert(rule.name.as_str()) {
            problems.push(
                &path,
                "duplicate rule name: alerts and dead-letter reasons name rules",
            );
        }
        let field = match &rule.field {
            Some(name) => {
                let field = spec.schema.fields.iter().find(|f| &f.name == name);
                if field.is_none() {
                    problems.push(
                        format!("{path}.field"),
                        format!("{name:?} is not declared in schema.fields"),
                    );
                }
                field
            }
            None => {
                if rule.check != QualityCheck::DuplicateKeys {
                    problems.push(
                        format!("{path}.field"),
                        format!("a {:?} check needs a field", rule.check),
                    );
                }
                None
            }
        };
        match rule.check {
            QualityCheck::Range => {
                if rule.min.is_none() && rule.max.is_none() {
                    problems.push(&path, "a Range check needs min or max");
                }
                if let (Some(min), Some(max)) = (rule.min, rule.max)
                    && min > max
                {
                    problems.push(
                        format!("{path}.min"),
                        format!("min {min} exceeds max {max}"),
                    );
                }
                if let Some(field) = field
                    && !is_numeric(field.type_)
                {
                    problems.push(
                        format!("{path}.field"),
                        format!(
                            "a Range check needs an Int or Decimal field; {:?} is {:?}",
                            field.name, field.type_
                        ),
                    );
                }
            }
            QualityCheck::Regex => match &rule.pattern {
                None => problems.push(format!("{path}.pattern"), "a Regex check needs pattern"),
                Some(source) => {
                    if let Err(e) = Regex::new(source) {
                        problems.push(
                            format!("{path}.pattern"),
                            format!(
                                "{source:?} is not a valid regular expression: {}",
                                regex_error(&e)
                            ),
                        );
                    }
                }
            },
            QualityCheck::AllowedValues if rule.values.is_empty() => {
                problems.push(
                    format!("{path}.values"),
                    "an AllowedValues check needs values",
                );
            }
            QualityCheck::NullRatio => match rule.max_ratio {
                None => problems.push(
                    format!("{path}.maxRatio"),
                    "a NullRatio check needs maxRatio",
                ),
                Some(ratio) if !(0.0..=1.0).contains(&ratio) => {
                    problems.push(
                        format!("{path}.maxRatio"),
                        format!("maxRatio {ratio} is outside 0..1"),
                    );
                }
                Some(_) => {}
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::data_contract::DataContractSpec;

    const VALID: &str = r#"
domain: sales-order-lines
version: 1.0.0
owner: { team: demand-planning }
schema:
  primaryKey: [order_id, line_no]
  fields:
    - { name: order_id, type: String, required: true, maxLength: 20, pattern: "^SO-[0-9]+$" }
    - { name: line_no, type: Int, required: true, minimum: 1 }
    - { name: quantity, type: Decimal, precision: 12, scale: 3, default: "0", minimum: 0 }
    - { name: status, type: Enum, values: [OPEN, SHIPPED], default: OPEN }
    - { name: ship_date, type: Date, default: "2024-01-01" }
    - { name: updated_at, type: Timestamp, default: "2024-01-01T00:00:00Z" }
    - { name: promo, type: Boolean, default: "false" }
quality:
  - { name: qty-range, check: Range, field: quantity, min: 0 }
  - { name: no-dupes, check: DuplicateKeys }
"#;

    fn spec(yaml: &str) -> DataContractSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// Applies `edit` to the valid spec and returns the problem paths and messages.
    fn problems(edit: impl FnOnce(&mut DataContractSpec)) -> Vec<String> {
        let mut spec = spec(VALID);
        edit(&mut spec);
        validate_contract(&spec)
            .iter()
            .map(Problem::to_string)
            .collect()
    }

    fn field<'a>(spec: &'a mut DataContractSpec, name: &str) -> &'a mut FieldSpec {
        spec.schema
            .fields
            .iter_mut()
            .find(|f| f.name == name)
            .unwrap()
    }

    fn assert_one(found: Vec<String>, path: &str, fragment: &str) {
        assert_eq!(
            found.len(),
            1,
            "expected one problem at {path}, got {found:#?}"
        );
        assert!(
            found[0].starts_with(&format!("{path}: ")) && found[0].contains(fragment),
            "expected {path}: ...{fragment}..., got {}",
            found[0]
        );
    }

    #[test]
    fn a_valid_contract_has_no_problems() {
        assert_eq!(problems(|_| {}), Vec::<String>::new());
    }

    #[test]
    fn duplicate_field_names() {
        let found = problems(|s| {
            let copy = s.schema.fields[1].clone();
            s.schema.fields.push(copy);
        });
        assert_one(found, "schema.fields[line_no]", "duplicate field name");
    }

    #[test]
    fn field_names_are_identifiers() {
        let found = problems(|s| field(s, "promo").name = "2promo".into());
        assert_one(found, "schema.fields[2promo].name", "not an identifier");
    }

    #[test]
    fn primary_key_fields_are_declared_required_and_not_nullable() {
        assert_one(
            problems(|s| s.schema.primary_key.push("sku".into())),
            "schema.primaryKey[2]",
            "not declared",
        );
        assert_one(
            problems(|s| field(s, "line_no").required = false),
            "schema.primaryKey[1]",
            "must be required",
        );
        assert_one(
            problems(|s| field(s, "order_id").nullable = true),
            "schema.primaryKey[0]",
            "must not be nullable",
        );
        assert_one(
            problems(|s| s.schema.primary_key.push("order_id".into())),
            "schema.primaryKey[2]",
            "appears twice",
        );
    }

    #[test]
    fn defaults_must_fit_their_field() {
        let cases: [(&str, &str, &str); 11] = [
            ("line_no", "1.5", "not an Int"),
            ("line_no", "0", "below minimum 1"),
            ("quantity", "1.2345", "more than scale 3"),
            ("quantity", "1234567890", "more than precision 12 - scale 3"),
            ("quantity", "-1", "below minimum 0"),
            ("quantity", "ten", "not a Decimal"),
            ("promo", "yes", "not a Boolean"),
            ("ship_date", "2024-02-30", "not an ISO 8601 date"),
            (
                "updated_at",
                "2024-01-01 00:00",
                "not an RFC 3339 timestamp",
            ),
            ("status", "CANCELLED", "not one of OPEN, SHIPPED"),
            (
                "order_id",
                "SO-12345678901234567890",
                "more than maxLength 20",
            ),
        ];
        for (name, default, fragment) in cases {
            let found = problems(|s| field(s, name).default = Some(default.into()));
            assert_one(found, &format!("schema.fields[{name}].default"), fragment);
        }
        let found = problems(|s| field(s, "order_id").default = Some("PO-1".into()));
        assert_one(
            found,
            "schema.fields[order_id].default",
            "does not match pattern",
        );
    }

    #[test]
    fn decimal_needs_precision_at_least_its_scale() {
        assert_one(
            problems(|s| field(s, "quantity").scale = Some(13)),
            "schema.fields[quantity].scale",
            "scale 13 exceeds precision 12",
        );
        assert_one(
            problems(|s| field(s, "quantity").precision = None),
            "schema.fields[quantity].precision",
            "needs precision",
        );
        assert_one(
            problems(|s| field(s, "line_no").scale = Some(2)),
            "schema.fields[line_no].scale",
            "only allowed on Decimal",
        );
    }

    #[test]
    fn patterns_must_compile() {
        assert_one(
            problems(|s| field(s, "order_id").pattern = Some("^SO-[0-9+$".into())),
            "schema.fields[order_id].pattern",
            "not a valid regular expression",
        );
        assert_one(
            problems(|s| {
                let rule = &mut s.quality[0];
                rule.check = QualityCheck::Regex;
                rule.pattern = Some("(".into());
            }),
            "quality[qty-range].pattern",
            "not a valid regular expression",
        );
    }

    #[test]
    fn bounds_only_on_numbers_and_ordered() {
        assert_one(
            problems(|s| field(s, "ship_date").minimum = Some(0.0)),
            "schema.fields[ship_date].minimum",
            "only allowed on Int and Decimal",
        );
        assert_one(
            problems(|s| field(s, "line_no").maximum = Some(0.0)),
            "schema.fields[line_no].minimum",
            "minimum 1 exceeds maximum 0",
        );
        assert_one(
            problems(|s| field(s, "status").max_length = Some(4)),
            "schema.fields[status].maxLength",
            "only allowed on String",
        );
    }

    #[test]
    fn enum_values_are_needed_unique_and_only_on_enums() {
        assert_one(
            problems(|s| {
                let status = field(s, "status");
                status.values.clear();
                status.default = None;
            }),
            "schema.fields[status].values",
            "needs values",
        );
        assert_one(
            problems(|s| field(s, "status").values.push("OPEN".into())),
            "schema.fields[status].values",
            "listed twice",
        );
        assert_one(
            problems(|s| field(s, "promo").values.push("x".into())),
            "schema.fields[promo].values",
            "only allowed on Enum",
        );
    }

    #[test]
    fn quality_rules_refer_to_declared_fields() {
        assert_one(
            problems(|s| s.quality[0].field = Some("qty".into())),
            "quality[qty-range].field",
            "\"qty\" is not declared",
        );
        assert_one(
            problems(|s| s.quality[0].field = Some("order_id".into())),
            "quality[qty-range].field",
            "needs an Int or Decimal field",
        );
        assert_one(
            problems(|s| s.quality[1].name = "qty-range".into()),
            "quality[qty-range]",
            "duplicate rule name",
        );
    }

    #[test]
    fn versions_are_semver_without_build_metadata() {
        assert_one(
            problems(|s| s.version = "1.0".into()),
            "version",
            "not a semantic version",
        );
        assert_one(
            problems(|s| s.version = "1.0.0+b1".into()),
            "version",
            "build metadata",
        );
        assert_eq!(
            problems(|s| s.version = "2.0.0-rc.1".into()),
            Vec::<String>::new()
        );
    }
}

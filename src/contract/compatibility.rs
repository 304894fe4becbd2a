//! Compatibility of a candidate schema version with its published history.
//!
//! Semantics are Confluent Schema Registry's, in reader/writer terms, where "reading" means a
//! record written under the writer's schema passes the reader's schema (workers validate every
//! record against their contract version and dead-letter what fails):
//! - Backward: the new schema reads data written with the old one (upgrade consumers first).
//! - Forward: the old schema reads data written with the new one (upgrade producers first).
//! - Full: both. Transitive modes check every earlier version of the same major line; the others
//!   only the latest earlier one. A new major version starts a new line and is checked against
//!   nothing; `None` checks nothing. Semver and immutability rules apply in every mode.
//!
//! Widening (a writer type the reader accepts as another type, without conversion):
//! - `Int -> Decimal`, when the decimal holds every integer the writer allows: its integer digits
//!   (precision - scale) cover 19 digits, or the Int's minimum and maximum.
//! - `Enum -> String`, when every enum value fits the String's maxLength and pattern.
//!
//! Nothing else widens. `Date -> Timestamp` in particular does not: "2024-03-31" is not an
//! RFC 3339 timestamp, and workers do not convert values between types.

use std::fmt;

use regex::Regex;
use semver::Version;
use thiserror::Error;

use super::canonical::schema_hash;
use super::value::{INT_DIGITS, MAX_PRECISION};
use crate::api::data_contract::{
    AdditionalFields, Compatibility, DataContractSpec, FieldSpec, FieldType, RecordSchema,
};

/// A published version as the check needs it. The controller pairs each status history entry
/// (version and hash) with its schema from the contract's history ConfigMap.
#[derive(Debug, Clone, Copy)]
pub struct PublishedSchema<'a> {
    pub version: &'a str,
    /// [`schema_hash`] of the schema when it was published.
    pub schema_hash: &'a str,
    pub schema: &'a RecordSchema,
}

/// The version to check; borrow one from a spec with `from`.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub version: &'a str,
    pub schema: &'a RecordSchema,
}

impl<'a> From<&'a DataContractSpec> for Candidate<'a> {
    fn from(spec: &'a DataContractSpec) -> Self {
        Self {
            version: &spec.version,
            schema: &spec.schema,
        }
    }
}

/// Input the check cannot work with (validation normally catches these first).
#[derive(Debug, Error)]
pub enum CheckError {
    #[error("candidate version {version:?} is not a semantic version: {source}")]
    InvalidCandidateVersion {
        version: String,
        source: semver::Error,
    },
    #[error("published version {version:?} in the history is not a semantic version: {source}")]
    InvalidPublishedVersion {
        version: String,
        source: semver::Error,
    },
}

/// Which way data flows in a failed read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// The new schema reads data written with the old one.
    Backward,
    /// The old schema reads data written with the new one.
    Forward,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What changed from the old version to the new one, named the same whichever way it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    FieldAdded,
    FieldRemoved,
    FieldMadeRequired,
    FieldMadeOptional,
    FieldMadeNotNullable,
    FieldMadeNullable,
    /// A type change that is not a widening in the reading direction.
    TypeChanged,
    EnumValueAdded,
    EnumValueRemoved,
    MinimumTightened,
    MinimumRelaxed,
    MaximumTightened,
    MaximumRelaxed,
    MaxLengthTightened,
    MaxLengthRelaxed,
    PatternAdded,
    PatternRemoved,
    PatternChanged,
    /// Fewer digits before the decimal point (precision - scale).
    IntegerDigitsReduced,
    IntegerDigitsIncreased,
    /// Fewer digits after the decimal point.
    ScaleReduced,
    ScaleIncreased,
    /// Any change of the primary key: the record identity and idempotency key.
    PrimaryKeyChanged,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The variant name is the machine-readable kind.
        fmt::Debug::fmt(self, f)
    }
}

/// One breaking change against one published version.
#[derive(Debug, Clone, PartialEq)]
pub struct Break {
    /// The field, or `None` for schema-wide changes (the primary key).
    pub field: Option<String>,
    pub change: ChangeKind,
    /// The change from old to new, e.g. `Decimal(12,3) -> String`.
    pub detail: String,
    pub direction: Direction,
    /// The published version the candidate breaks against.
    pub against_version: Version,
    /// Why it breaks, in a sentence.
    pub reason: String,
}

impl fmt::Display for Break {
    /// `field quantity: TypeChanged (Decimal(12,3) -> String) breaks Backward against 1.1.0: ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field {field}: ")?,
            None => write!(f, "primary key: ")?,
        }
        write!(
            f,
            "{} ({}) breaks {} against {}: {}",
            self.change, self.detail, self.direction, self.against_version, self.reason
        )
    }
}

/// The answer for a candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub version: Version,
    pub mode: Compatibility,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// This version is already published with this very schema: nothing to do.
    AlreadyPublished,
    /// Publishable. `checked_against` is empty for the mode `None` and for the first version
    /// of a major line.
    Compatible { checked_against: Vec<Version> },
    /// Breaks the mode against one or more published versions.
    Breaking {
        checked_against: Vec<Version>,
        breaks: Vec<Break>,
    },
    /// A published version of the same major line is not older than the candidate.
    VersionNotIncreased { latest: Version },
    /// The version is published with another schema: published versions are immutable.
    PublishedVersionChanged {
        published_hash: String,
        candidate_hash: String,
    },
}

impl Verdict {
    /// May the candidate be published (or is it already)?
    pub fn is_compatible(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::AlreadyPublished | Outcome::Compatible { .. }
        )
    }

    /// A CamelCase reason for the `Compatible` condition.
    pub fn reason(&self) -> &'static str {
        match self.outcome {
            Outcome::AlreadyPublished => "AlreadyPublished",
            Outcome::Compatible { .. } => "Compatible",
            Outcome::Breaking { .. } => "BreakingChange",
            Outcome::VersionNotIncreased { .. } => "VersionNotIncreased",
            Outcome::PublishedVersionChanged { .. } => "PublishedVersionChanged",
        }
    }

    /// The breaking changes, empty unless the outcome is `Breaking`.
    pub fn breaks(&self) -> &[Break] {
        match &self.outcome {
            Outcome::Breaking { breaks, .. } => breaks,
            _ => &[],
        }
    }
}

impl fmt::Display for Verdict {
    /// A one-line summary, for a condition message or the last line of a report.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (version, mode) = (&self.version, self.mode);
        match &self.outcome {
            Outcome::AlreadyPublished => {
                write!(f, "{version} is already published with this schema")
            }
            Outcome::Compatible { checked_against } if mode == Compatibility::None => {
                debug_assert!(checked_against.is_empty());
                write!(
                    f,
                    "{version} can be published: mode None checks no compatibility"
                )
            }
            Outcome::Compatible { checked_against } if checked_against.is_empty() => write!(
                f,
                "{version} can be published: it is the first version of major line {}",
                version.major
            ),
            Outcome::Compatible { checked_against } => write!(
                f,
                "{version} is {mode:?} compatible with {}",
                list(checked_against)
            ),
            Outcome::Breaking {
                checked_against,
                breaks,
            } => write!(
                f,
                "{version} is not {mode:?} compatible with {}: {} breaking change{}; \
                 publish it as a new major version or keep the change compatible",
                list(checked_against),
                breaks.len(),
                if breaks.len() == 1 { "" } else { "s" }
            ),
            Outcome::VersionNotIncreased { latest } => write!(
                f,
                "{version} is not greater than the published {latest}: a new version must be \
                 greater than every published version of major line {}",
                version.major
            ),
            Outcome::PublishedVersionChanged {
                published_hash,
                candidate_hash,
            } => write!(
                f,
                "{version} is already published with another schema (published hash {}, now {}): \
                 published versions are immutable, publish the change under a new version",
                short(published_hash),
                short(candidate_hash)
            ),
        }
    }
}

fn list(versions: &[Version]) -> String {
    versions
        .iter()
        .map(Version::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Checks `candidate` against `history` (published versions, any order) under `mode`.
pub fn check(
    history: &[PublishedSchema<'_>],
    candidate: &Candidate<'_>,
    mode: Compatibility,
) -> Result<Verdict, CheckError> {
    let version = Version::parse(candidate.version).map_err(|source| {
        CheckError::InvalidCandidateVersion {
            version: candidate.version.to_owned(),
            source,
        }
    })?;
    let mut published = history
        .iter()
        .map(|p| {
            Version::parse(p.version).map(|v| (v, p)).map_err(|source| {
                CheckError::InvalidPublishedVersion {
                    version: p.version.to_owned(),
                    source,
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    published.sort_by(|(a, _), (b, _)| a.cmp(b));
    let verdict = |outcome| Verdict {
        version: version.clone(),
        mode,
        outcome,
    };

    let candidate_hash = schema_hash(candidate.schema);
    let same_version: Vec<_> = published.iter().filter(|(v, _)| *v == version).collect();
    if let Some((_, changed)) = same_version
        .iter()
        .find(|(_, p)| p.schema_hash != candidate_hash)
    {
        return Ok(verdict(Outcome::PublishedVersionChanged {
            published_hash: changed.schema_hash.to_owned(),
            candidate_hash,
        }));
    }
    if !same_version.is_empty() {
        return Ok(verdict(Outcome::AlreadyPublished));
    }

    let mut line: Vec<_> = published
        .iter()
        .filter(|(v, _)| v.major == version.major)
        .collect();
    line.dedup_by(|(a, _), (b, _)| a == b);
    if let Some((latest, _)) = line.last()
        && *latest > version
    {
        return Ok(verdict(Outcome::VersionNotIncreased {
            latest: latest.clone(),
        }));
    }

    let (directions, transitive): (&[Direction], bool) = match mode {
        Compatibility::None => (&[], false),
        Compatibility::Backward => (&[Direction::Backward], false),
        Compatibility::BackwardTransitive => (&[Direction::Backward], true),
        Compatibility::Forward => (&[Direction::Forward], false),
        Compatibility::ForwardTransitive => (&[Direction::Forward], true),
        Compatibility::Full => (&[Direction::Backward, Direction::Forward], false),
        Compatibility::FullTransitive => (&[Direction::Backward, Direction::Forward], true),
    };
    let against = match (directions.is_empty(), transitive) {
        (true, _) => &[][..],
        (false, true) => &line[..],
        (false, false) => &line[line.len().saturating_sub(1)..],
    };

    let new = Side {
        version: &version,
        schema: candidate.schema,
    };
    let mut breaks = Vec::new();
    for (old_version, old) in against {
        let old = Side {
            version: old_version,
            schema: old.schema,
        };
        for &direction in directions {
            let mut comparison = Comparison {
                direction,
                old,
                new,
                breaks: Vec::new(),
            };
            comparison.compare_schemas();
            breaks.append(&mut comparison.breaks);
        }
    }
    let checked_against = against.iter().map(|(v, _)| v.clone()).collect();
    Ok(verdict(if breaks.is_empty() {
        Outcome::Compatible { checked_against }
    } else {
        Outcome::Breaking {
            checked_against,
            breaks,
        }
    }))
}

#[derive(Clone, Copy)]
struct Side<'a> {
    version: &'a Version,
    schema: &'a RecordSchema,
}

/// One read of data written under one schema by a reader on another: old and new are fixed,
/// the direction says which of them reads.
struct Comparison<'a> {
    direction: Direction,
    old: Side<'a>,
    new: Side<'a>,
    breaks: Vec<Break>,
}

impl<'a> Comparison<'a> {
    fn reader(&self) -> Side<'a> {
        match self.direction {
            Direction::Backward => self.new,
            Direction::Forward => self.old,
        }
    }

    fn writer(&self) -> Side<'a> {
        match self.direction {
            Direction::Backward => self.old,
            Direction::Forward => self.new,
        }
    }

    /// The change kind, from the old -> new point of view: `when_reader_is_new` when the new
    /// schema reads (Backward), `when_reader_is_old` when the old one does (Forward).
    fn kind(&self, when_reader_is_new: ChangeKind, when_reader_is_old: ChangeKind) -> ChangeKind {
        match self.direction {
            Direction::Backward => when_reader_is_new,
            Direction::Forward => when_reader_is_old,
        }
    }

    /// `old -> new`, given the reader's and the writer's side of the same thing.
    fn detail(&self, reader: impl fmt::Display, writer: impl fmt::Display) -> String {
        match self.direction {
            Direction::Backward => format!("{writer} -> {reader}"),
            Direction::Forward => format!("{reader} -> {writer}"),
        }
    }

    fn push(&mut self, field: Option<&str>, change: ChangeKind, detail: String, reason: String) {
        self.breaks.push(Break {
            field: field.map(str::to_owned),
            change,
            detail,
            direction: self.direction,
            against_version: self.old.version.clone(),
            reason,
        });
    }

    fn compare_schemas(&mut self) {
        let (reader, writer) = (self.reader(), self.writer());
        let (r, w) = (reader.version, writer.version);
        if self.old.schema.primary_key != self.new.schema.primary_key {
            let detail = format!(
                "[{}] -> [{}]",
                self.old.schema.primary_key.join(", "),
                self.new.schema.primary_key.join(", ")
            );
            self.push(
                None,
                ChangeKind::PrimaryKeyChanged,
                detail,
                format!(
                    "the primary key is the record identity and idempotency key, so records \
                     written with {w} would be keyed differently by {r}"
                ),
            );
        }
        for read in &reader.schema.fields {
            match writer.schema.fields.iter().find(|f| f.name == read.name) {
                Some(written) => self.compare_fields(read, written),
                None if read.required && read.default.is_none() => self.push(
                    Some(&read.name),
                    self.kind(ChangeKind::FieldAdded, ChangeKind::FieldRemoved),
                    self.detail(type_label(read), "absent"),
                    format!(
                        "{r} requires it and has no default, but records written with {w} \
                         do not have it"
                    ),
                ),
                None => {}
            }
        }
        if reader.schema.additional_fields == AdditionalFields::Reject {
            for written in &writer.schema.fields {
                if !reader.schema.fields.iter().any(|f| f.name == written.name) {
                    self.push(
                        Some(&written.name),
                        self.kind(ChangeKind::FieldRemoved, ChangeKind::FieldAdded),
                        self.detail("absent", type_label(written)),
                        format!(
                            "records written with {w} may carry it, and {r} rejects undeclared \
                             fields (additionalFields: Reject)"
                        ),
                    );
                }
            }
        }
    }

    fn compare_fields(&mut self, read: &FieldSpec, written: &FieldSpec) {
        let (r, w) = (self.reader().version, self.writer().version);
        let name = Some(read.name.as_str());
        if read.required && !written.required && read.default.is_none() {
            self.push(
                name,
                self.kind(ChangeKind::FieldMadeRequired, ChangeKind::FieldMadeOptional),
                self.detail("required", "optional"),
                format!("{r} requires it and has no default, but {w} lets records leave it out"),
            );
        }
        if !read.nullable && written.nullable {
            self.push(
                name,
                self.kind(
                    ChangeKind::FieldMadeNotNullable,
                    ChangeKind::FieldMadeNullable,
                ),
                self.detail("not nullable", "nullable"),
                format!("{w} allows null in it, {r} does not"),
            );
        }

        match (written.type_, read.type_) {
            (same_w, same_r) if same_w == same_r => {}
            (FieldType::Int, FieldType::Decimal) => {}
            (FieldType::Enum, FieldType::String) => {
                self.compare_enum_to_string(read, written);
                return;
            }
            _ => {
                self.push(
                    name,
                    ChangeKind::TypeChanged,
                    self.detail(type_label(read), type_label(written)),
                    format!(
                        "{r} reads {:?} and {w} writes {:?}, which is not a widening",
                        read.type_, written.type_
                    ),
                );
                return;
            }
        }

        match read.type_ {
            FieldType::Enum => self.compare_enum_values(read, written),
            FieldType::String => self.compare_strings(read, written),
            FieldType::Int | FieldType::Decimal => self.compare_numbers(read, written),
            FieldType::Boolean | FieldType::Date | FieldType::Timestamp => {}
        }
    }

    fn compare_enum_values(&mut self, read: &FieldSpec, written: &FieldSpec) {
        let (r, w) = (self.reader().version, self.writer().version);
        let unknown: Vec<&str> = written
            .values
            .iter()
            .filter(|v| !read.values.contains(v))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let unknown = unknown.join(", ");
            self.push(
                Some(&read.name),
                self.kind(ChangeKind::EnumValueRemoved, ChangeKind::EnumValueAdded),
                unknown.clone(),
                format!("{w} may write {unknown}, which {r} does not accept"),
            );
        }
    }

    /// `Enum -> String` widens when every value fits the String.
    fn compare_enum_to_string(&mut self, read: &FieldSpec, written: &FieldSpec) {
        let (r, w) = (self.reader().version, self.writer().version);
        let pattern = read.pattern.as_deref().and_then(|p| Regex::new(p).ok());
        let misfits: Vec<&str> = written
            .values
            .iter()
            .filter(|value| {
                read.max_length
                    .is_some_and(|max| value.chars().count() > max as usize)
                    || pattern.as_ref().is_some_and(|p| !p.is_match(value))
            })
            .map(String::as_str)
            .collect();
        if !misfits.is_empty() {
            self.push(
                Some(&read.name),
                ChangeKind::TypeChanged,
                self.detail(type_label(read), type_label(written)),
                format!(
                    "Enum -> String widens only when every value fits the String, but {w}'s \
                     values {} do not fit {r}'s maxLength or pattern",
                    misfits.join(", ")
                ),
            );
        }
    }

    fn compare_strings(&mut self, read: &FieldSpec, written: &FieldSpec) {
        let (r, w) = (self.reader().version, self.writer().version);
        let name = Some(read.name.as_str());
        if let Some(max) = read.max_length
            && written
                .max_length
                .is_none_or(|written_max| written_max > max)
        {
            let allowed = written
                .max_length
                .map_or("any length".to_owned(), |m| format!("{m}"));
            self.push(
                name,
                self.kind(ChangeKind::MaxLengthTightened, ChangeKind::MaxLengthRelaxed),
                self.detail(
                    max,
                    written
                        .max_length
                        .map_or("none".to_owned(), |m| m.to_string()),
                ),
                format!("{r} accepts at most {max} characters, {w} allows {allowed}"),
            );
        }
        if let Some(pattern) = &read.pattern
            && written.pattern.as_ref() != Some(pattern)
        {
            // Whether one regular expression accepts all another does is not decidable here,
            // so any change to a pattern the reader has counts.
            let (change, theirs) = match &written.pattern {
                None => (
                    self.kind(ChangeKind::PatternAdded, ChangeKind::PatternRemoved),
                    "no pattern".to_owned(),
                ),
                Some(other) => (ChangeKind::PatternChanged, format!("pattern {other:?}")),
            };
            self.push(
                name,
                change,
                self.detail(
                    format!("{pattern:?}"),
                    written
                        .pattern
                        .as_ref()
                        .map_or("none".to_owned(), |p| format!("{p:?}")),
                ),
                format!(
                    "{r} requires pattern {pattern:?}, which values valid under {w} ({theirs}) \
                     need not match"
                ),
            );
        }
    }

    fn compare_numbers(&mut self, read: &FieldSpec, written: &FieldSpec) {
        let (r, w) = (self.reader().version, self.writer().version);
        let name = Some(read.name.as_str());
        let widened = read.type_ != written.type_;

        let room = integer_digits(read);
        let needed = integer_digits_needed(written);
        if needed > room {
            let change = if widened {
                ChangeKind::TypeChanged
            } else {
                self.kind(
                    ChangeKind::IntegerDigitsReduced,
                    ChangeKind::IntegerDigitsIncreased,
                )
            };
            self.push(
                name,
                change,
                self.detail(type_label(read), type_label(written)),
                format!(
                    "{r} holds {room} digits before the decimal point (precision - scale), \
                     {w} allows {needed}{}",
                    if widened {
                        " (bound the Int with minimum and maximum to widen it)"
                    } else {
                        ""
                    }
                ),
            );
        }
        let (read_scale, written_scale) = (scale(read), scale(written));
        if written_scale > read_scale {
            self.push(
                name,
                self.kind(ChangeKind::ScaleReduced, ChangeKind::ScaleIncreased),
                self.detail(type_label(read), type_label(written)),
                format!(
                    "{r} keeps {read_scale} digits after the decimal point, {w} allows \
                     {written_scale}"
                ),
            );
        }

        if let Some(min) = read.minimum
            && written.minimum.is_none_or(|written_min| written_min < min)
        {
            self.push(
                name,
                self.kind(ChangeKind::MinimumTightened, ChangeKind::MinimumRelaxed),
                self.detail(min, bound(written.minimum)),
                format!(
                    "{r} requires at least {min}, {w} allows {}",
                    written
                        .minimum
                        .map_or("any value".to_owned(), |m| format!("down to {m}"))
                ),
            );
        }
        if let Some(max) = read.maximum
            && written.maximum.is_none_or(|written_max| written_max > max)
        {
            self.push(
                name,
                self.kind(ChangeKind::MaximumTightened, ChangeKind::MaximumRelaxed),
                self.detail(max, bound(written.maximum)),
                format!(
                    "{r} requires at most {max}, {w} allows {}",
                    written
                        .maximum
                        .map_or("any value".to_owned(), |m| format!("up to {m}"))
                ),
            );
        }
    }
}

fn bound(value: Option<f64>) -> String {
    value.map_or("none".to_owned(), |v| v.to_string())
}

/// `Decimal(12,3)` for decimals, the type name otherwise.
fn type_label(field: &FieldSpec) -> String {
    match field.type_ {
        FieldType::Decimal => format!(
            "Decimal({},{})",
            field.precision.unwrap_or(MAX_PRECISION),
            scale(field)
        ),
        other => format!("{other:?}"),
    }
}

fn scale(field: &FieldSpec) -> u32 {
    match field.type_ {
        FieldType::Decimal => field.scale.unwrap_or(0),
        _ => 0,
    }
}

/// Digits a numeric field can hold before the decimal point.
fn integer_digits(field: &FieldSpec) -> u32 {
    match field.type_ {
        FieldType::Decimal => field
            .precision
            .unwrap_or(MAX_PRECISION)
            .saturating_sub(scale(field)),
        _ => INT_DIGITS,
    }
}

/// Digits before the decimal point that values of `field` may actually have: fewer than its
/// type allows when both bounds are set.
fn integer_digits_needed(field: &FieldSpec) -> u32 {
    let capacity = integer_digits(field);
    match (field.minimum, field.maximum) {
        (Some(min), Some(max)) => {
            let largest = min.abs().max(max.abs()).trunc();
            let digits = if largest < 1.0 {
                0
            } else {
                format!("{largest:.0}").len() as u32
            };
            digits.min(capacity)
        }
        _ => capacity,
    }
}

#[cfg(test)]
mod tests {
    use super::ChangeKind::*;
    use super::Direction::{Backward, Forward};
    use super::*;
    use crate::api::data_contract::Compatibility::{
        Backward as BackwardMode, BackwardTransitive, Forward as ForwardMode, ForwardTransitive,
        Full, FullTransitive, None as NoneMode,
    };

    const BASE: &str = r#"
primaryKey: [order_id, line_no]
fields:
  - { name: order_id, type: String, required: true }
  - { name: line_no, type: Int, required: true, minimum: 1 }
  - { name: sku, type: String, required: true, maxLength: 40, pattern: "^[A-Z0-9-]+$" }
  - { name: quantity, type: Decimal, precision: 12, scale: 3, required: true, minimum: 0 }
  - { name: unit_price, type: Decimal, precision: 10, scale: 2, nullable: true }
  - { name: status, type: Enum, values: [OPEN, SHIPPED, CANCELLED], required: true }
  - { name: currency, type: String, required: true, default: EUR }
  - { name: ship_date, type: Date }
  - { name: note, type: String }
  - { name: pieces, type: Int }
  - { name: line_count, type: Int, minimum: 0, maximum: 1000 }
"#;

    fn base() -> RecordSchema {
        serde_yaml::from_str(BASE).unwrap()
    }

    /// The base schema after `edit`.
    fn with(edit: impl FnOnce(&mut RecordSchema)) -> RecordSchema {
        let mut schema = base();
        edit(&mut schema);
        schema
    }

    fn field<'a>(schema: &'a mut RecordSchema, name: &str) -> &'a mut FieldSpec {
        schema.fields.iter_mut().find(|f| f.name == name).unwrap()
    }

    fn remove(schema: &mut RecordSchema, name: &str) {
        schema.fields.retain(|f| f.name != name);
    }

    fn new_field(yaml: &str) -> FieldSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// An expected break: field ("" for the primary key), change, direction, against version.
    type Expected = (&'static str, ChangeKind, Direction, &'static str);

    struct Case {
        name: &'static str,
        history: Vec<(&'static str, RecordSchema)>,
        candidate: (&'static str, RecordSchema),
        mode: Compatibility,
        expected: Vec<Expected>,
    }

    /// A one-step case: 1.0.0 is the base schema, 1.1.0 the base after `edit`.
    fn step(
        name: &'static str,
        mode: Compatibility,
        edit: impl FnOnce(&mut RecordSchema),
        expected: &[(&'static str, ChangeKind, Direction)],
    ) -> Case {
        Case {
            name,
            history: vec![("1.0.0", base())],
            candidate: ("1.1.0", with(edit)),
            mode,
            expected: expected
                .iter()
                .map(|&(f, c, d)| (f, c, d, "1.0.0"))
                .collect(),
        }
    }

    /// Three versions where 1.2.0 is fine against 1.1.0 under every mode but not against 1.0.0:
    /// 1.1.0 drops `note` (String, maxLength 10), 1.2.0 brings it back as an optional Int.
    fn note_comes_back(name: &'static str, mode: Compatibility, expected: &[Expected]) -> Case {
        Case {
            name,
            history: vec![
                ("1.0.0", with(|s| field(s, "note").max_length = Some(10))),
                ("1.1.0", with(|s| remove(s, "note"))),
            ],
            candidate: ("1.2.0", with(|s| field(s, "note").type_ = FieldType::Int)),
            mode,
            expected: expected.to_vec(),
        }
    }

    fn cases() -> Vec<Case> {
        let optional_field = |s: &mut RecordSchema| {
            s.fields.push(new_field(
                "{ name: discount, type: Decimal, precision: 5, scale: 2 }",
            ))
        };
        let required_field = |s: &mut RecordSchema| {
            s.fields
                .push(new_field("{ name: plant, type: String, required: true }"))
        };
        let add_enum_value =
            |s: &mut RecordSchema| field(s, "status").values.push("RETURNED".into());
        let remove_enum_value =
            |s: &mut RecordSchema| field(s, "status").values.retain(|v| v != "CANCELLED");
        let quantity_to_string = |s: &mut RecordSchema| {
            let quantity = field(s, "quantity");
            quantity.type_ = FieldType::String;
            (quantity.precision, quantity.scale, quantity.minimum) = (None, None, None);
        };
        let line_count_to_decimal = |s: &mut RecordSchema| {
            let count = field(s, "line_count");
            (count.type_, count.precision, count.scale) = (FieldType::Decimal, Some(6), Some(2));
        };
        let key_changed =
            |s: &mut RecordSchema| s.primary_key = vec!["order_id".into(), "sku".into()];

        vec![
            // None: nothing but semver is checked.
            step(
                "None allows a type change",
                NoneMode,
                quantity_to_string,
                &[],
            ),
            step(
                "None allows a primary key change",
                NoneMode,
                key_changed,
                &[],
            ),
            step(
                "None allows a required field",
                NoneMode,
                required_field,
                &[],
            ),
            // Backward: the new schema reads old data.
            step(
                "Backward: optional field added",
                BackwardMode,
                optional_field,
                &[],
            ),
            step(
                "Backward: required field without default added",
                BackwardMode,
                required_field,
                &[("plant", FieldAdded, Backward)],
            ),
            step(
                "Backward: required field with default added",
                BackwardMode,
                |s| {
                    s.fields.push(new_field(
                        "{ name: plant, type: String, required: true, default: DC01 }",
                    ))
                },
                &[],
            ),
            step(
                "Backward: nullable optional field added",
                BackwardMode,
                |s| {
                    s.fields
                        .push(new_field("{ name: batch, type: String, nullable: true }"))
                },
                &[],
            ),
            step(
                "Backward: optional field removed",
                BackwardMode,
                |s| remove(s, "note"),
                &[],
            ),
            step(
                "Backward: field removed, new schema rejects undeclared fields",
                BackwardMode,
                |s| {
                    remove(s, "note");
                    s.additional_fields = AdditionalFields::Reject;
                },
                &[("note", FieldRemoved, Backward)],
            ),
            step(
                "Backward: Reject alone breaks nothing",
                BackwardMode,
                |s| s.additional_fields = AdditionalFields::Reject,
                &[],
            ),
            step(
                "Backward: field made required",
                BackwardMode,
                |s| field(s, "note").required = true,
                &[("note", FieldMadeRequired, Backward)],
            ),
            step(
                "Backward: field made required with a default",
                BackwardMode,
                |s| {
                    let note = field(s, "note");
                    (note.required, note.default) = (true, Some("-".into()));
                },
                &[],
            ),
            step(
                "Backward: field made optional",
                BackwardMode,
                |s| field(s, "quantity").required = false,
                &[],
            ),
            step(
                "Backward: nullable made not nullable",
                BackwardMode,
                |s| field(s, "unit_price").nullable = false,
                &[("unit_price", FieldMadeNotNullable, Backward)],
            ),
            step(
                "Backward: field made nullable",
                BackwardMode,
                |s| field(s, "quantity").nullable = true,
                &[],
            ),
            step(
                "Backward: Decimal -> String",
                BackwardMode,
                quantity_to_string,
                &[("quantity", TypeChanged, Backward)],
            ),
            step(
                "Backward: bounded Int -> Decimal widens",
                BackwardMode,
                line_count_to_decimal,
                &[],
            ),
            step(
                "Backward: unbounded Int -> Decimal(20,0) widens",
                BackwardMode,
                |s| {
                    let pieces = field(s, "pieces");
                    (pieces.type_, pieces.precision) = (FieldType::Decimal, Some(20));
                },
                &[],
            ),
            step(
                "Backward: unbounded Int -> too small Decimal",
                BackwardMode,
                |s| {
                    let pieces = field(s, "pieces");
                    (pieces.type_, pieces.precision, pieces.scale) =
                        (FieldType::Decimal, Some(12), Some(2));
                },
                &[("pieces", TypeChanged, Backward)],
            ),
            step(
                "Backward: Date -> Timestamp is not a widening",
                BackwardMode,
                |s| field(s, "ship_date").type_ = FieldType::Timestamp,
                &[("ship_date", TypeChanged, Backward)],
            ),
            step(
                "Backward: String -> Enum",
                BackwardMode,
                |s| {
                    let note = field(s, "note");
                    (note.type_, note.values) = (FieldType::Enum, vec!["A".into()]);
                },
                &[("note", TypeChanged, Backward)],
            ),
            step(
                "Backward: Enum -> String widens",
                BackwardMode,
                |s| {
                    let status = field(s, "status");
                    (status.type_, status.values) = (FieldType::String, vec![]);
                },
                &[],
            ),
            step(
                "Backward: Enum -> String too short for a value",
                BackwardMode,
                |s| {
                    let status = field(s, "status");
                    (status.type_, status.values, status.max_length) =
                        (FieldType::String, vec![], Some(7));
                },
                &[("status", TypeChanged, Backward)],
            ),
            step(
                "Backward: enum value added",
                BackwardMode,
                add_enum_value,
                &[],
            ),
            step(
                "Backward: enum value removed",
                BackwardMode,
                remove_enum_value,
                &[("status", EnumValueRemoved, Backward)],
            ),
            step(
                "Backward: minimum raised",
                BackwardMode,
                |s| field(s, "quantity").minimum = Some(1.0),
                &[("quantity", MinimumTightened, Backward)],
            ),
            step(
                "Backward: minimum lowered",
                BackwardMode,
                |s| field(s, "quantity").minimum = Some(-5.0),
                &[],
            ),
            step(
                "Backward: maximum lowered",
                BackwardMode,
                |s| field(s, "line_count").maximum = Some(500.0),
                &[("line_count", MaximumTightened, Backward)],
            ),
            step(
                "Backward: maxLength reduced",
                BackwardMode,
                |s| field(s, "sku").max_length = Some(20),
                &[("sku", MaxLengthTightened, Backward)],
            ),
            step(
                "Backward: maxLength added",
                BackwardMode,
                |s| field(s, "note").max_length = Some(200),
                &[("note", MaxLengthTightened, Backward)],
            ),
            step(
                "Backward: pattern changed",
                BackwardMode,
                |s| field(s, "sku").pattern = Some("^[A-Z0-9]+$".into()),
                &[("sku", PatternChanged, Backward)],
            ),
            step(
                "Backward: pattern added",
                BackwardMode,
                |s| field(s, "note").pattern = Some("^\\S".into()),
                &[("note", PatternAdded, Backward)],
            ),
            step(
                "Backward: pattern removed",
                BackwardMode,
                |s| field(s, "sku").pattern = None,
                &[],
            ),
            step(
                "Backward: precision reduced",
                BackwardMode,
                |s| field(s, "quantity").precision = Some(10),
                &[("quantity", IntegerDigitsReduced, Backward)],
            ),
            step(
                "Backward: scale reduced",
                BackwardMode,
                |s| field(s, "quantity").scale = Some(2),
                &[("quantity", ScaleReduced, Backward)],
            ),
            step(
                "Backward: scale increased at the same precision",
                BackwardMode,
                |s| field(s, "quantity").scale = Some(4),
                &[("quantity", IntegerDigitsReduced, Backward)],
            ),
            step(
                "Backward: required field renamed",
                BackwardMode,
                |s| field(s, "sku").name = "item".into(),
                &[("item", FieldAdded, Backward)],
            ),
            step(
                "Backward: primary key changed",
                BackwardMode,
                key_changed,
                &[("", PrimaryKeyChanged, Backward)],
            ),
            // Forward: the old schema reads new data.
            step(
                "Forward: optional field added",
                ForwardMode,
                optional_field,
                &[],
            ),
            step(
                "Forward: required field added",
                ForwardMode,
                required_field,
                &[],
            ),
            step(
                "Forward: field added, old schema ignores undeclared fields",
                ForwardMode,
                |s| {
                    s.fields.push(new_field(
                        "{ name: plant, type: String, required: true, nullable: true }",
                    ))
                },
                &[],
            ),
            Case {
                name: "Forward: field added to a Reject schema",
                history: vec![(
                    "1.0.0",
                    with(|s| s.additional_fields = AdditionalFields::Reject),
                )],
                candidate: (
                    "1.1.0",
                    with(|s| {
                        s.additional_fields = AdditionalFields::Reject;
                        optional_field(s);
                    }),
                ),
                mode: ForwardMode,
                expected: vec![("discount", FieldAdded, Forward, "1.0.0")],
            },
            step(
                "Forward: required field removed",
                ForwardMode,
                |s| remove(s, "quantity"),
                &[("quantity", FieldRemoved, Forward)],
            ),
            step(
                "Forward: optional field removed",
                ForwardMode,
                |s| remove(s, "note"),
                &[],
            ),
            step(
                "Forward: required field with default removed",
                ForwardMode,
                |s| remove(s, "currency"),
                &[],
            ),
            step(
                "Forward: required field renamed",
                ForwardMode,
                |s| field(s, "sku").name = "item".into(),
                &[("sku", FieldRemoved, Forward)],
            ),
            step(
                "Forward: enum value added",
                ForwardMode,
                add_enum_value,
                &[("status", EnumValueAdded, Forward)],
            ),
            step(
                "Forward: enum value removed",
                ForwardMode,
                remove_enum_value,
                &[],
            ),
            step(
                "Forward: Int -> Decimal narrows for old readers",
                ForwardMode,
                line_count_to_decimal,
                &[("line_count", TypeChanged, Forward)],
            ),
            step(
                "Forward: String -> Enum widens for old readers",
                ForwardMode,
                |s| {
                    let note = field(s, "note");
                    (note.type_, note.values) = (FieldType::Enum, vec!["A".into()]);
                },
                &[],
            ),
            step(
                "Forward: minimum raised",
                ForwardMode,
                |s| field(s, "quantity").minimum = Some(1.0),
                &[],
            ),
            step(
                "Forward: minimum removed",
                ForwardMode,
                |s| field(s, "quantity").minimum = None,
                &[("quantity", MinimumRelaxed, Forward)],
            ),
            step(
                "Forward: maximum raised",
                ForwardMode,
                |s| field(s, "line_count").maximum = Some(5000.0),
                &[("line_count", MaximumRelaxed, Forward)],
            ),
            step(
                "Forward: maxLength raised",
                ForwardMode,
                |s| field(s, "sku").max_length = Some(80),
                &[("sku", MaxLengthRelaxed, Forward)],
            ),
            step(
                "Forward: pattern removed",
                ForwardMode,
                |s| field(s, "sku").pattern = None,
                &[("sku", PatternRemoved, Forward)],
            ),
            step(
                "Forward: field made optional",
                ForwardMode,
                |s| field(s, "quantity").required = false,
                &[("quantity", FieldMadeOptional, Forward)],
            ),
            step(
                "Forward: field with default made optional",
                ForwardMode,
                |s| field(s, "currency").required = false,
                &[],
            ),
            step(
                "Forward: field made nullable",
                ForwardMode,
                |s| field(s, "quantity").nullable = true,
                &[("quantity", FieldMadeNullable, Forward)],
            ),
            step(
                "Forward: precision and scale raised",
                ForwardMode,
                |s| {
                    let quantity = field(s, "quantity");
                    (quantity.precision, quantity.scale) = (Some(14), Some(4));
                },
                &[
                    ("quantity", IntegerDigitsIncreased, Forward),
                    ("quantity", ScaleIncreased, Forward),
                ],
            ),
            // Full: both ways.
            step("Full: optional field added", Full, optional_field, &[]),
            step(
                "Full: Decimal -> String",
                Full,
                quantity_to_string,
                &[
                    ("quantity", TypeChanged, Backward),
                    ("quantity", TypeChanged, Forward),
                ],
            ),
            step(
                "Full: enum value added",
                Full,
                add_enum_value,
                &[("status", EnumValueAdded, Forward)],
            ),
            step(
                "Full: enum value removed",
                Full,
                remove_enum_value,
                &[("status", EnumValueRemoved, Backward)],
            ),
            step(
                "Full: Int -> Decimal widens one way only",
                Full,
                line_count_to_decimal,
                &[("line_count", TypeChanged, Forward)],
            ),
            step(
                "Full: maxLength reduced",
                Full,
                |s| field(s, "sku").max_length = Some(20),
                &[("sku", MaxLengthTightened, Backward)],
            ),
            step(
                "Full: primary key changed",
                Full,
                key_changed,
                &[
                    ("", PrimaryKeyChanged, Backward),
                    ("", PrimaryKeyChanged, Forward),
                ],
            ),
            step(
                "Full: description and default edits",
                Full,
                |s| {
                    field(s, "note").description = Some("free text".into());
                    field(s, "currency").default = Some("USD".into());
                },
                &[],
            ),
            // Transitive modes check every earlier version of the line.
            note_comes_back("Backward checks the latest only", BackwardMode, &[]),
            note_comes_back(
                "BackwardTransitive checks 1.0.0 too",
                BackwardTransitive,
                &[("note", TypeChanged, Backward, "1.0.0")],
            ),
            note_comes_back("Forward checks the latest only", ForwardMode, &[]),
            note_comes_back(
                "ForwardTransitive checks 1.0.0 too",
                ForwardTransitive,
                &[("note", TypeChanged, Forward, "1.0.0")],
            ),
            note_comes_back("Full checks the latest only", Full, &[]),
            note_comes_back(
                "FullTransitive checks 1.0.0 both ways",
                FullTransitive,
                &[
                    ("note", TypeChanged, Backward, "1.0.0"),
                    ("note", TypeChanged, Forward, "1.0.0"),
                ],
            ),
            Case {
                name: "FullTransitive: an enum value removed breaks every earlier version",
                history: vec![("1.0.0", base()), ("1.1.0", with(optional_field))],
                candidate: (
                    "1.2.0",
                    with(|s| {
                        optional_field(s);
                        remove_enum_value(s);
                    }),
                ),
                mode: FullTransitive,
                expected: vec![
                    ("status", EnumValueRemoved, Backward, "1.0.0"),
                    ("status", EnumValueRemoved, Backward, "1.1.0"),
                ],
            },
            Case {
                name: "ForwardTransitive: maxLength tightened step by step",
                history: vec![
                    ("1.0.0", base()),
                    ("1.1.0", with(|s| field(s, "sku").max_length = Some(30))),
                ],
                candidate: ("1.2.0", with(|s| field(s, "sku").max_length = Some(30))),
                mode: ForwardTransitive,
                expected: vec![],
            },
            Case {
                name: "BackwardTransitive stays within the major line",
                history: vec![
                    ("1.0.0", base()),
                    ("2.0.0", with(quantity_to_string)),
                    (
                        "2.1.0",
                        with(|s| {
                            quantity_to_string(s);
                            optional_field(s);
                        }),
                    ),
                ],
                candidate: (
                    "2.2.0",
                    with(|s| {
                        quantity_to_string(s);
                        optional_field(s);
                        remove_enum_value(s);
                    }),
                ),
                mode: BackwardTransitive,
                expected: vec![
                    ("status", EnumValueRemoved, Backward, "2.0.0"),
                    ("status", EnumValueRemoved, Backward, "2.1.0"),
                ],
            },
        ]
    }

    #[test]
    fn compatibility_table() {
        let cases = cases();
        assert!(cases.len() >= 45, "{} cases", cases.len());
        for mode in [
            NoneMode,
            BackwardMode,
            BackwardTransitive,
            ForwardMode,
            ForwardTransitive,
            Full,
            FullTransitive,
        ] {
            assert!(cases.iter().any(|c| c.mode == mode), "no case for {mode:?}");
        }
        let mut failures = Vec::new();
        for case in &cases {
            let hashes: Vec<String> = case.history.iter().map(|(_, s)| schema_hash(s)).collect();
            let history: Vec<PublishedSchema> = case
                .history
                .iter()
                .zip(&hashes)
                .map(|((version, schema), hash)| PublishedSchema {
                    version,
                    schema_hash: hash,
                    schema,
                })
                .collect();
            let candidate = Candidate {
                version: case.candidate.0,
                schema: &case.candidate.1,
            };
            let verdict = check(&history, &candidate, case.mode).unwrap();
            let mut found: Vec<(String, ChangeKind, Direction, String)> = verdict
                .breaks()
                .iter()
                .map(|b| {
                    (
                        b.field.clone().unwrap_or_default(),
                        b.change,
                        b.direction,
                        b.against_version.to_string(),
                    )
                })
                .collect();
            let mut expected: Vec<(String, ChangeKind, Direction, String)> = case
                .expected
                .iter()
                .map(|&(f, c, d, v)| (f.to_owned(), c, d, v.to_owned()))
                .collect();
            found.sort();
            expected.sort();
            if verdict.is_compatible() != expected.is_empty() || found != expected {
                failures.push(format!(
                    "{}: expected {expected:?}, got {} {found:?}\n    {}",
                    case.name,
                    verdict.reason(),
                    verdict
                        .breaks()
                        .iter()
                        .map(Break::to_string)
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }

    fn published<'a>(
        version: &'a str,
        schema: &'a RecordSchema,
        hash: &'a str,
    ) -> PublishedSchema<'a> {
        PublishedSchema {
            version,
            schema_hash: hash,
            schema,
        }
    }

    #[test]
    fn same_version_same_schema_is_already_published() {
        let schema = base();
        let hash = schema_hash(&schema);
        let mut respelled = base();
        respelled.fields.reverse();
        let verdict = check(
            &[published("1.0.0", &schema, &hash)],
            &Candidate {
                version: "1.0.0",
                schema: &respelled,
            },
            BackwardMode,
        )
        .unwrap();
        assert_eq!(verdict.outcome, Outcome::AlreadyPublished);
        assert!(verdict.is_compatible());
    }

    #[test]
    fn same_version_other_schema_is_published_version_changed() {
        let schema = base();
        let hash = schema_hash(&schema);
        let changed = with(|s| field(s, "note").max_length = Some(10));
        // Even under None: published versions are immutable whatever the mode.
        let verdict = check(
            &[published("1.0.0", &schema, &hash)],
            &Candidate {
                version: "1.0.0",
                schema: &changed,
            },
            NoneMode,
        )
        .unwrap();
        assert!(
            matches!(&verdict.outcome, Outcome::PublishedVersionChanged { published_hash, .. } if *published_hash == hash)
        );
        assert_eq!(verdict.reason(), "PublishedVersionChanged");
        assert!(!verdict.is_compatible());
    }

    #[test]
    fn candidate_must_be_greater_than_its_line() {
        let schema = base();
        let hash = schema_hash(&schema);
        let history = [
            published("1.0.0", &schema, &hash),
            published("1.2.0", &schema, &hash),
            published("2.0.0", &schema, &hash),
        ];
        let candidate = with(optional_field_added);
        let verdict = check(
            &history,
            &Candidate {
                version: "1.1.0",
                schema: &candidate,
            },
            BackwardMode,
        )
        .unwrap();
        assert_eq!(
            verdict.outcome,
            Outcome::VersionNotIncreased {
                latest: Version::new(1, 2, 0)
            }
        );
        // A patch of an older line is fine and is checked against that line only.
        let verdict = check(
            &history,
            &Candidate {
                version: "1.2.1",
                schema: &candidate,
            },
            BackwardTransitive,
        )
        .unwrap();
        assert_eq!(
            verdict.outcome,
            Outcome::Compatible {
                checked_against: vec![Version::new(1, 0, 0), Version::new(1, 2, 0)]
            }
        );
        // A pre-release sorts before its release.
        let verdict = check(
            &history,
            &Candidate {
                version: "1.2.0-rc.1",
                schema: &candidate,
            },
            BackwardMode,
        )
        .unwrap();
        assert_eq!(verdict.reason(), "VersionNotIncreased");
    }

    fn optional_field_added(schema: &mut RecordSchema) {
        schema.fields.push(new_field(
            "{ name: discount, type: Decimal, precision: 5, scale: 2 }",
        ));
    }

    #[test]
    fn a_new_major_starts_a_new_line() {
        let schema = base();
        let hash = schema_hash(&schema);
        let incompatible = with(|s| field(s, "quantity").type_ = FieldType::Int);
        let history = [
            published("1.0.0", &schema, &hash),
            published("1.1.0", &schema, &hash),
        ];
        let verdict = check(
            &history,
            &Candidate {
                version: "2.0.0",
                schema: &incompatible,
            },
            FullTransitive,
        )
        .unwrap();
        assert_eq!(
            verdict.outcome,
            Outcome::Compatible {
                checked_against: vec![]
            }
        );
        assert_eq!(
            verdict.to_string(),
            "2.0.0 can be published: it is the first version of major line 2"
        );
        let verdict = check(
            &history,
            &Candidate {
                version: "1.2.0",
                schema: &incompatible,
            },
            FullTransitive,
        )
        .unwrap();
        assert_eq!(verdict.reason(), "BreakingChange");
    }

    #[test]
    fn unparsable_versions_are_errors() {
        let schema = base();
        let hash = schema_hash(&schema);
        let error = check(
            &[],
            &Candidate {
                version: "1.0",
                schema: &schema,
            },
            BackwardMode,
        )
        .unwrap_err();
        assert!(
            matches!(error, CheckError::InvalidCandidateVersion { .. }),
            "{error}"
        );
        let error = check(
            &[published("v1", &schema, &hash)],
            &Candidate {
                version: "1.0.0",
                schema: &schema,
            },
            BackwardMode,
        )
        .unwrap_err();
        assert!(error.to_string().contains("\"v1\""), "{error}");
    }

    #[test]
    fn breaks_read_as_sentences() {
        let old = base();
        let hash = schema_hash(&old);
        let new = with(|s| {
            let quantity = field(s, "quantity");
            quantity.type_ = FieldType::String;
            (quantity.precision, quantity.scale, quantity.minimum) = (None, None, None);
        });
        let verdict = check(
            &[published("1.1.0", &old, &hash)],
            &Candidate {
                version: "1.2.0",
                schema: &new,
            },
            BackwardMode,
        )
        .unwrap();
        assert_eq!(
            verdict.breaks()[0].to_string(),
            "field quantity: TypeChanged (Decimal(12,3) -> String) breaks Backward against 1.1.0: \
             1.2.0 reads String and 1.1.0 writes Decimal, which is not a widening"
        );
        assert!(
            verdict
                .to_string()
                .starts_with("1.2.0 is not Backward compatible with 1.1.0: 1 breaking change;")
        );
    }
}

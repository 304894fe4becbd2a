//! Checks one value, written as a string, against its field's type and constraints. Used for
//! schema defaults (which the CRD writes as strings) and usable for record values.

use regex::Regex;

use crate::api::data_contract::{FieldSpec, FieldType};

/// Digits an `Int` (64-bit) can have: `i64::MAX` is 9223372036854775807.
pub const INT_DIGITS: u32 = 19;

/// Largest decimal precision the schema allows.
pub const MAX_PRECISION: u32 = 38;

/// Checks `raw` against `field`. `pattern` is the field's compiled `pattern`, passed in so
/// callers compile it once; `None` skips the pattern check. Patterns search, as in JSON Schema:
/// anchor them with `^...$` to match the whole value.
pub fn check_value(field: &FieldSpec, pattern: Option<&Regex>, raw: &str) -> Result<(), String> {
    match field.type_ {
        FieldType::String => {
            if let Some(max) = field.max_length {
                let length = raw.chars().count();
                if length > max as usize {
                    return Err(format!(
                        "{raw:?} has {length} characters, more than maxLength {max}"
                    ));
                }
            }
            if let Some(pattern) = pattern
                && !pattern.is_match(raw)
            {
                return Err(format!(
                    "{raw:?} does not match pattern {:?}",
                    pattern.as_str()
                ));
            }
            Ok(())
        }
        FieldType::Int => {
            let value: i64 = raw
                .parse()
                .map_err(|_| format!("{raw:?} is not an Int (a 64-bit integer)"))?;
            check_bounds(field, raw, value as f64)
        }
        FieldType::Decimal => {
            let decimal = parse_decimal(raw).ok_or_else(|| {
                format!("{raw:?} is not a Decimal (digits with an optional sign and decimal point)")
            })?;
            let scale = field.scale.unwrap_or(0);
            let precision = field.precision.unwrap_or(MAX_PRECISION);
            if decimal.fraction_digits > scale {
                return Err(format!(
                    "{raw:?} has {} digits after the decimal point, more than scale {scale}",
                    decimal.fraction_digits
                ));
            }
            let integer_room = precision.saturating_sub(scale);
            if decimal.integer_digits > integer_room {
                return Err(format!(
                    "{raw:?} has {} digits before the decimal point, more than precision {precision} - scale {scale} = {integer_room}",
                    decimal.integer_digits
                ));
            }
            check_bounds(field, raw, decimal.value)
        }
        FieldType::Boolean => match raw {
            "true" | "false" => Ok(()),
            _ => Err(format!("{raw:?} is not a Boolean (true or false)")),
        },
        FieldType::Date => {
            if is_date(raw) {
                Ok(())
            } else {
                Err(format!("{raw:?} is not an ISO 8601 date like 2024-03-31"))
            }
        }
        FieldType::Timestamp => {
            if is_timestamp(raw) {
                Ok(())
            } else {
                Err(format!(
                    "{raw:?} is not an RFC 3339 timestamp like 2024-03-31T12:00:00Z"
                ))
            }
        }
        FieldType::Enum => {
            if field.values.iter().any(|v| v == raw) {
                Ok(())
            } else {
                Err(format!("{raw:?} is not one of {}", field.values.join(", ")))
            }
        }
    }
}

fn check_bounds(field: &FieldSpec, raw: &str, value: f64) -> Result<(), String> {
    if let Some(min) = field.minimum
        && value < min
    {
        return Err(format!("{raw} is below minimum {min}"));
    }
    if let Some(max) = field.maximum
        && value > max
    {
        return Err(format!("{raw} is above maximum {max}"));
    }
    Ok(())
}

/// A decimal literal, measured the way precision and scale count digits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecimalLiteral {
    /// Significant digits before the point (leading zeros do not count).
    pub integer_digits: u32,
    /// Digits after the point (trailing zeros do not count: 1.50 fits scale 1).
    pub fraction_digits: u32,
    /// Approximate value, for minimum/maximum.
    pub value: f64,
}

/// Parses `[+-]digits[.digits]`; no exponent, no thousands separators.
pub fn parse_decimal(raw: &str) -> Option<DecimalLiteral> {
    let unsigned = raw.strip_prefix(['+', '-']).unwrap_or(raw);
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if integer.is_empty() || !all_digits(integer) || !all_digits(fraction) {
        return None;
    }
    if unsigned.ends_with('.') {
        return None;
    }
    Some(DecimalLiteral {
        integer_digits: integer.trim_start_matches('0').len() as u32,
        fraction_digits: fraction.trim_end_matches('0').len() as u32,
        value: raw.parse().ok()?,
    })
}

/// `YYYY-MM-DD` naming a real calendar day.
pub fn is_date(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return false;
    }
    match (number(&raw[0..4]), number(&raw[5..7]), number(&raw[8..10])) {
        (Some(year), Some(month), Some(day)) => {
            (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month)
        }
        _ => false,
    }
}

/// RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`.
pub fn is_timestamp(raw: &str) -> bool {
    let Some((date, time)) = raw.split_once(['T', 't']) else {
        return false;
    };
    if !is_date(date) || time.len() < 9 {
        return false;
    }
    // Not split_at: a multi-byte character across byte 8 panicked it.
    let (Some(clock), Some(rest)) = (time.get(..8), time.get(8..)) else {
        return false;
    };
    if !is_clock(clock, 60) {
        return false;
    }
    let offset = match rest.strip_prefix('.') {
        Some(fraction) => {
            let digits = fraction
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(fraction.len());
            if digits == 0 {
                return false;
            }
            &fraction[digits..]
        }
        None => rest,
    };
    match offset {
        "Z" | "z" => true,
        _ => match offset.strip_prefix(['+', '-']) {
            Some(hhmm) => {
                hhmm.len() == 5
                    && hhmm.as_bytes()[2] == b':'
                    && matches!(number(&hhmm[0..2]), Some(0..=23))
                    && matches!(number(&hhmm[3..5]), Some(0..=59))
            }
            None => false,
        },
    }
}

/// `HH:MM:SS`, seconds up to `max_second` (60 allows a leap second, as RFC 3339 does).
fn is_clock(clock: &str, max_second: u32) -> bool {
    let bytes = clock.as_bytes();
    bytes.len() == 8
        && bytes[2] == b':'
        && bytes[5] == b':'
        && matches!(number(&clock[0..2]), Some(0..=23))
        && matches!(number(&clock[3..5]), Some(0..=59))
        && number(&clock[6..8]).is_some_and(|s| s <= max_second)
}

fn number(digits: &str) -> Option<u32> {
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(type_: FieldType) -> FieldSpec {
        FieldSpec {
            name: "f".into(),
            type_,
            description: None,
            required: false,
            nullable: false,
            default: None,
            precision: None,
            scale: None,
            minimum: None,
            maximum: None,
            pattern: None,
            max_length: None,
            values: vec![],
        }
    }

    #[test]
    fn dates_are_real_calendar_days() {
        assert!(is_date("2024-02-29"));
        assert!(!is_date("2023-02-29"));
        assert!(is_date("2000-02-29"));
        assert!(!is_date("1900-02-29"));
        assert!(!is_date("2024-04-31"));
        assert!(!is_date("2024-13-01"));
        assert!(!is_date("2024-1-01"));
        assert!(!is_date("24-01-01xx"));
    }

    #[test]
    fn timestamps_follow_rfc3339() {
        assert!(is_timestamp("2024-03-31T12:00:00Z"));
        assert!(is_timestamp("2024-03-31t12:00:00.123456+02:00"));
        assert!(is_timestamp("2016-12-31T23:59:60Z"));
        assert!(!is_timestamp("2024-03-31"));
        assert!(!is_timestamp("2024-03-31T12:00:00"));
        assert!(!is_timestamp("2024-03-31T24:00:00Z"));
        assert!(!is_timestamp("2024-03-31T12:00:00.Z"));
        // A multi-byte character across the end of the clock: refused, not a panic.
        assert!(!is_timestamp("2024-01-01T00:00:0\u{e9}Z"));
        assert!(!is_timestamp("2024-03-31T12:00:00+0200"));
    }

    #[test]
    fn decimals_count_digits_like_precision_and_scale() {
        let d = parse_decimal("-00123.4500").unwrap();
        assert_eq!((d.integer_digits, d.fraction_digits), (3, 2));
        assert_eq!(parse_decimal("0.5").unwrap().integer_digits, 0);
        assert!(parse_decimal("1e5").is_none());
        assert!(parse_decimal("1.").is_none());
        assert!(parse_decimal(".5").is_none());
        assert!(parse_decimal("1,5").is_none());

        let mut amount = field(FieldType::Decimal);
        amount.precision = Some(5);
        amount.scale = Some(2);
        assert!(check_value(&amount, None, "999.99").is_ok());
        assert!(check_value(&amount, None, "1000.0").is_err());
        assert!(check_value(&amount, None, "1.005").is_err());
    }

    #[test]
    fn strings_respect_length_in_characters_and_pattern() {
        let mut code = field(FieldType::String);
        code.max_length = Some(3);
        assert!(check_value(&code, None, "äöü").is_ok());
        assert!(check_value(&code, None, "abcd").is_err());
        let pattern = Regex::new("^[A-Z]+$").unwrap();
        assert!(check_value(&code, Some(&pattern), "EA").is_ok());
        assert!(check_value(&code, Some(&pattern), "ea").is_err());
    }

    #[test]
    fn numbers_respect_bounds() {
        let mut qty = field(FieldType::Int);
        qty.minimum = Some(0.0);
        qty.maximum = Some(10.0);
        assert!(check_value(&qty, None, "10").is_ok());
        assert!(check_value(&qty, None, "-1").is_err());
        assert!(check_value(&qty, None, "1.5").is_err());
    }
}

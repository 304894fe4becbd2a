//! Source versions: a number per record that grows with each change of its key, taken from
//! the source's cursor field (a change timestamp or a change counter). The target applies a
//! record only when its version is newer than the one it holds; that is what keeps a key's
//! changes in source order across workers and redeliveries.

use serde_json::Value;

use super::clock::parse_rfc3339_nanos;

/// What a cursor-field value says, read once per record: the version it stands for (integers
/// as they are, RFC 3339 timestamps as Unix nanoseconds, OData v2 `/Date(ms)/` as
/// nanoseconds), and the instant of the change in Unix milliseconds when it is a timestamp
/// (none for a change counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CursorValue {
    pub version: Option<u64>,
    pub changed_ms: Option<i64>,
}

pub fn read_cursor_value(value: &Value) -> CursorValue {
    let counter = |version| CursorValue {
        version,
        changed_ms: None,
    };
    match value {
        Value::Number(n) => counter(n.as_u64()),
        Value::String(s) => {
            if let Ok(n) = s.parse::<u64>() {
                return counter(Some(n));
            }
            if let Some(ms) = s
                .strip_prefix("/Date(")
                .and_then(|rest| rest.strip_suffix(")/"))
                .and_then(|ms| ms.split(['+', '-']).next())
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                return CursorValue {
                    version: ms.checked_mul(1_000_000),
                    changed_ms: i64::try_from(ms).ok(),
                };
            }
            let nanos = parse_rfc3339_nanos(s);
            CursorValue {
                version: nanos.and_then(|n| u64::try_from(n).ok()),
                changed_ms: nanos.map(|n| n / 1_000_000),
            }
        }
        _ => CursorValue::default(),
    }
}

/// The version a cursor-field value stands for (see [`read_cursor_value`]).
pub fn version_of(value: &Value) -> Option<u64> {
    read_cursor_value(value).version
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn change_times_come_only_from_timestamps() {
        let changed = |value| read_cursor_value(&value).changed_ms;
        assert_eq!(
            changed(json!("2024-01-01T00:00:00.025Z")),
            Some(1_704_067_200_025)
        );
        assert_eq!(
            changed(json!("/Date(1704067200025)/")),
            Some(1_704_067_200_025)
        );
        assert_eq!(changed(json!("42")), None);
        assert_eq!(changed(json!(42)), None);
        assert_eq!(changed(json!("yesterday")), None);
    }

    #[test]
    fn one_reading_gives_the_version_and_the_change_time() {
        assert_eq!(
            read_cursor_value(&json!("2024-01-01T00:00:00.025Z")),
            CursorValue {
                version: Some(1_704_067_200_025_000_000),
                changed_ms: Some(1_704_067_200_025),
            }
        );
        assert_eq!(
            read_cursor_value(&json!("/Date(1704067200025+0000)/")),
            CursorValue {
                version: Some(1_704_067_200_025_000_000),
                changed_ms: Some(1_704_067_200_025),
            }
        );
        // Before 1970: a change time, but no version (versions are unsigned).
        assert_eq!(
            read_cursor_value(&json!("1969-12-31T23:59:59.000Z")),
            CursorValue {
                version: None,
                changed_ms: Some(-1_000),
            }
        );
        assert_eq!(read_cursor_value(&json!(null)), CursorValue::default());
    }

    #[test]
    fn later_changes_have_larger_versions() {
        let a = version_of(&json!("2024-01-01T00:00:00.001Z")).unwrap();
        let b = version_of(&json!("2024-01-01T00:00:00.002Z")).unwrap();
        assert!(a < b);
        assert_eq!(version_of(&json!(42)), Some(42));
        assert_eq!(
            version_of(&json!("/Date(1704067200000)/")),
            Some(1_704_067_200_000_000_000)
        );
        assert_eq!(version_of(&json!("yesterday")), None);
    }
}

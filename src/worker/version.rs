//! Source versions: a number per record that grows with each change of its key, taken from
//! the source's cursor field (a change timestamp or a change counter). The target applies a
//! record only when its version is newer than the one it holds; that is what keeps a key's
//! changes in source order across workers and redeliveries.

use serde_json::Value;

use super::clock::parse_rfc3339_nanos;

/// The version a cursor-field value stands for: integers as they are, RFC 3339 timestamps as
/// Unix nanoseconds, OData v2 `/Date(ms)/` as nanoseconds.
pub fn version_of(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            if let Ok(n) = s.parse::<u64>() {
                return Some(n);
            }
            if let Some(ms) = s
                .strip_prefix("/Date(")
                .and_then(|rest| rest.strip_suffix(")/"))
                .and_then(|ms| ms.split(['+', '-']).next())
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                return ms.checked_mul(1_000_000);
            }
            parse_rfc3339_nanos(s).and_then(|n| u64::try_from(n).ok())
        }
        _ => None,
    }
}

/// The instant a cursor-field value names, Unix milliseconds: RFC 3339 timestamps and OData v2
/// `/Date(ms)/`; `None` for a change counter or anything else that is no time.
pub fn change_time_ms(value: &Value) -> Option<i64> {
    let Value::String(s) = value else {
        return None;
    };
    if let Some(ms) = s
        .strip_prefix("/Date(")
        .and_then(|rest| rest.strip_suffix(")/"))
        .and_then(|ms| ms.split(['+', '-']).next())
        .and_then(|ms| ms.parse::<i64>().ok())
    {
        return Some(ms);
    }
    parse_rfc3339_nanos(s).map(|ns| ns / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn change_times_come_only_from_timestamps() {
        assert_eq!(
            change_time_ms(&json!("2024-01-01T00:00:00.025Z")),
            Some(1_704_067_200_025)
        );
        assert_eq!(
            change_time_ms(&json!("/Date(1704067200025)/")),
            Some(1_704_067_200_025)
        );
        assert_eq!(change_time_ms(&json!("42")), None);
        assert_eq!(change_time_ms(&json!(42)), None);
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

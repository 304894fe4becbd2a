//! Wall-clock helpers: now as Unix time, and RFC 3339 timestamps (change-timestamp cursors)
//! as comparable Unix nanoseconds, parsed by jiff.

/// Milliseconds since the Unix epoch now.
pub fn now_unix_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Unix nanoseconds of an RFC 3339 timestamp (`Z` or `±HH:MM`, up to 9 fraction digits);
/// `None` for anything without an offset, which names no instant.
pub fn parse_rfc3339_nanos(raw: &str) -> Option<i64> {
    let timestamp: jiff::Timestamp = raw.parse().ok()?;
    i64::try_from(timestamp.as_nanosecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_with_any_offset_and_precision() {
        let ms = 1_704_067_200_123; // 2024-01-01T00:00:00.123Z
        assert_eq!(
            parse_rfc3339_nanos("2024-01-01T00:00:00.123Z"),
            Some(ms * 1_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-01-01T01:00:00+01:00"),
            Some(1_704_067_200 * 1_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-02-29T12:30:45.1234567Z"),
            Some(1_709_209_845_123_456_700)
        );
        assert!(parse_rfc3339_nanos("2024-01-01").is_none());
        assert!(parse_rfc3339_nanos("2024-01-01T00:00:00").is_none());
        assert!(parse_rfc3339_nanos("yesterday").is_none());
    }
}

//! What of a record's errors may be logged. A record's correlation id is derived from its
//! identity where it is needed (`queue::headers::trace_id`), not minted and carried.

/// What of an error may be logged: its words up to the first colon, brace or line break, and
/// of an HTTP status only the status (`HTTP 500`), at most 120 characters. Bodies a system
/// sends back can quote the records (and a dead letter's detail does): they stay in the
/// dead-letter stream, never in the log.
pub fn log_safe(error: &str) -> String {
    let head = error.split([':', '{', '\n']).next().unwrap_or("");
    let head = match head.find("HTTP ") {
        Some(at) => head.get(..at + 8).unwrap_or(head),
        None => head,
    };
    head.chars()
        .take(120)
        .collect::<String>()
        .trim()
        .to_string()
}

/// [`log_safe`] for every cause of an error chain, joined with `: `.
pub fn log_safe_chain(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|cause| log_safe(&cause.to_string()))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_error_keeps_its_status_and_drops_the_body() {
        assert_eq!(
            log_safe("HTTP 500 quantity 4711 for SKU-9 refused"),
            "HTTP 500"
        );
        assert_eq!(
            log_safe("request failed: error sending request for url"),
            "request failed"
        );
        assert_eq!(
            log_safe("circuit open for another 900ms after repeated failures (HTTP 503 qty 4711)"),
            "circuit open for another 900ms after repeated failures (HTTP 503"
        );
        let chained =
            anyhow::anyhow!("HTTP 502 <html>qty 4711</html>").context("opening the source");
        assert_eq!(log_safe_chain(&chained), "opening the source: HTTP 502");
    }
}

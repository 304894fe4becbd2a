//! Correlation ids: a W3C `traceparent` per record, minted at extraction and carried in the
//! message headers to the target or the dead-letter stream.

use rand::Rng;

/// A fresh `traceparent`: `00-<trace id>-<parent id>-00`. Not flagged sampled, because the
/// worker records no trace (it exports no spans; the id only correlates log lines and dead
/// letters). nats-server reads a sampled `traceparent` as a request for its message tracing:
/// it builds a map of the headers of every such message it receives and looks for the
/// account's trace destination (work the worker benchmark measured, BENCHMARKS.md).
pub fn new_traceparent() -> String {
    let mut rng = rand::thread_rng();
    let trace: u128 = rng.gen_range(1..=u128::MAX);
    let span: u64 = rng.gen_range(1..=u64::MAX);
    format!("00-{trace:032x}-{span:016x}-00")
}

/// The trace id part of a `traceparent` (what logs show), or the whole value when malformed.
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or(traceparent)
}

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
    fn traceparents_are_w3c_shaped() {
        let tp = new_traceparent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "00")
        );
        assert_eq!(trace_id(&tp), parts[1]);
        assert_ne!(tp, new_traceparent());
    }

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

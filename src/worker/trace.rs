//! Correlation ids: a W3C `traceparent` per record, minted at extraction and carried in the
//! message headers to the target or the dead-letter stream.

use rand::Rng;

/// A fresh sampled `traceparent`: `00-<trace id>-<parent id>-01`.
pub fn new_traceparent() -> String {
    let mut rng = rand::thread_rng();
    let trace: u128 = rng.gen_range(1..=u128::MAX);
    let span: u64 = rng.gen_range(1..=u64::MAX);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// The trace id part of a `traceparent` (what logs show), or the whole value when malformed.
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or(traceparent)
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
            ("00", 32, 16, "01")
        );
        assert_eq!(trace_id(&tp), parts[1]);
        assert_ne!(tp, new_traceparent());
    }
}

//! One ConnectorBinding's request quota, shared by every worker of every flow that uses the
//! binding: a token bucket (requests per second, with a burst) and a daily count, kept as one
//! record in a key-value bucket of the binding's own and changed only by compare-and-set on
//! the record's revision. A worker takes a token by writing the record back at the revision it
//! read; when another worker wrote in between, the write fails and it reads again. So the
//! quota holds across processes and nodes without a coordinator of our own: JetStream orders
//! the writes. The record also holds a not-before time that a `Retry-After` sets, pausing
//! every worker of the binding. The operator reads it for the binding's `status.quota`.

use serde::{Deserialize, Serialize};

use async_nats::jetstream::{self, kv};

use super::jetstream::{QueueError, read_json_entry};
use super::sanitize;

/// The key-value bucket holding the quota record of `binding` in `namespace`. One name for the
/// workers that take tokens, the operator that reports usage and the per-flow NATS permissions
/// that let a flow's workers reach the buckets of the bindings it uses.
pub fn binding_quota_bucket(namespace: &str, binding: &str) -> String {
    format!("FP_QUOTA_{}_{}", sanitize(namespace), sanitize(binding))
}

/// Key of the quota record in the binding's bucket.
pub const QUOTA_KEY: &str = "quota";

/// The shared state of a binding's quota.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QuotaState {
    /// Tokens left in the bucket at `refilled_ms` (at most the burst).
    #[serde(default)]
    pub tokens: f64,
    /// Unix milliseconds of the last refill (0: never; the bucket starts full).
    #[serde(default)]
    pub refilled_ms: i64,
    /// The UTC day `used_today` counts (YYYY-MM-DD).
    #[serde(default)]
    pub day: String,
    /// Requests sent on `day` by every worker of the binding.
    #[serde(default)]
    pub used_today: u64,
    /// Unix milliseconds before which no worker sends (the endpoint's `Retry-After`).
    #[serde(default)]
    pub not_before_ms: i64,
}

/// The quota bucket of `binding`, created with `replicas` when missing. The operator makes it
/// (a flow's NATS user may use it, not create it) with its `--queue-replicas` and keeps it at
/// that ([`super::jetstream::scale_bucket`]): every request of every flow on the binding takes
/// a token here first, so a bucket on one lost server would stop all of them however many
/// replicas their queues have. Its content needs no such care (a lost record only refills the
/// token bucket and restarts the day's count).
pub async fn quota_bucket(
    js: &jetstream::Context,
    namespace: &str,
    binding: &str,
    replicas: usize,
) -> Result<kv::Store, QueueError> {
    let name = binding_quota_bucket(namespace, binding);
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: name.clone(),
        description: "flowplane binding quota: token bucket, daily count, Retry-After pause".into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another worker created it in between.
        Err(e) => js
            .get_key_value(&name)
            .await
            .map_err(|_| QueueError::Bucket {
                name,
                message: e.to_string(),
            }),
    }
}

/// The binding's quota record as workers last wrote it; None when no worker used the binding
/// yet (no bucket or no record).
pub async fn read_quota(
    js: &jetstream::Context,
    namespace: &str,
    binding: &str,
) -> Result<Option<QuotaState>, QueueError> {
    let Ok(store) = js
        .get_key_value(binding_quota_bucket(namespace, binding))
        .await
    else {
        return Ok(None);
    };
    let (state, revision) = read_json_entry::<QuotaState>(&store, QUOTA_KEY).await?;
    Ok((revision != 0).then_some(state))
}

/// The UTC day of a Unix millisecond, as the quota record counts days.
pub fn utc_day(unix_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(unix_ms)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_jetstream_names_distinct_from_flow_buckets() {
        let name = binding_quota_bucket("team-eu", "erp.prod");
        assert_eq!(name, "FP_QUOTA_team-eu_erp_prod");
        assert_ne!(
            name,
            super::super::QueueNames::for_flow("team-eu", "erp.prod").state_bucket
        );
        assert_eq!(utc_day(1_704_067_199_999), "2023-12-31");
        assert_eq!(utc_day(1_704_067_200_000), "2024-01-01");
    }
}

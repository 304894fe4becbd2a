//! The extractor lease: one key in the flow's bucket, taken and renewed with compare-and-set
//! on its revision, so exactly one worker of a flow extracts at a time without depending on
//! Kubernetes. A holder that stops renewing loses it after the TTL; a brief overlap after a
//! pause only republishes records that JetStream's deduplication (Nats-Msg-Id) drops.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::clock::now_unix_ms;

/// Key of the extractor lease in the flow's bucket.
pub const LEASE_KEY: &str = "extractor-lease";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Holder {
    holder: String,
    expires_unix_ms: i64,
}

/// This worker's view of the lease.
pub struct Lease {
    store: kv::Store,
    holder: String,
    ttl: Duration,
    /// When this worker last took or renewed the lease (before asking), while it holds it.
    renewed: Mutex<Option<Instant>>,
}

impl Lease {
    /// A lease for worker `holder`.
    pub fn new(store: kv::Store, holder: String, ttl: Duration) -> Lease {
        Lease {
            store,
            holder,
            ttl,
            renewed: Mutex::new(None),
        }
    }

    /// How long the lease lasts without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease if it is free or expired, renews it if we hold it; true when we hold it.
    /// A lease taken or renewed less than a third of its TTL ago is held without asking:
    /// extraction asks before every page, and two bucket round trips per page were a large
    /// part of a page's time. Nobody else may take it before it expires, and a holder that
    /// lost it through clock skew only overlaps briefly (see the module's note).
    pub async fn acquire(&self) -> bool {
        let asked = Instant::now();
        if self
            .renewed()
            .is_some_and(|at| asked.duration_since(at) < self.ttl / 3)
        {
            return true;
        }
        let held = self.renew().await;
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = held.then_some(asked);
        held
    }

    fn renewed(&self) -> Option<Instant> {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn renew(&self) -> bool {
        let value = Bytes::from(
            serde_json::to_vec(&Holder {
                holder: self.holder.clone(),
                expires_unix_ms: now_unix_ms() + self.ttl.as_millis() as i64,
            })
            .unwrap_or_default(),
        );
        match self.store.entry(LEASE_KEY).await {
            Ok(None) => self.store.create(LEASE_KEY, value).await.is_ok(),
            Ok(Some(entry)) => {
                let current: Option<Holder> = if entry.operation == kv::Operation::Put {
                    serde_json::from_slice(&entry.value).ok()
                } else {
                    None
                };
                let free = match &current {
                    Some(h) => h.holder == self.holder || h.expires_unix_ms < now_unix_ms(),
                    None => true,
                };
                free && self
                    .store
                    .update(LEASE_KEY, value, entry.revision)
                    .await
                    .is_ok()
            }
            Err(_) => false,
        }
    }

    /// Gives the lease up if we hold it, so another worker takes over at once.
    pub async fn release(&self) {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Ok(Some(entry)) = self.store.entry(LEASE_KEY).await
            && let Ok(current) = serde_json::from_slice::<Holder>(&entry.value)
            && current.holder == self.holder
        {
            let _ = self
                .store
                .delete_expect_revision(LEASE_KEY, Some(entry.revision))
                .await;
        }
    }
}

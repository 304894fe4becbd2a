//! The statuses this process wrote, until its watch cache shows them.
//!
//! Each controller builds a new status against the object's status in its watch cache: each
//! condition keeps its `lastTransitionTime` from there, and transitions (events) are found
//! against it. Under load the cache can lag behind the operator's own last status write; a pass
//! on the older copy would then set new transition times, make a real write and repeat the
//! transition events. So every status write is remembered as the API server stored it, and a
//! pass whose cached copy does not show it yet builds against it instead, until the cache shows
//! it or [`PATIENCE`] has passed (after that, a status someone else wrote since wins).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Resource;
use kube::core::object::HasStatus;

/// How long a written status outranks a cached copy that differs from it: far beyond any lag
/// of the watch cache, short enough that a status changed by someone else is taken up soon.
pub const PATIENCE: Duration = Duration::from_secs(60);

struct Written {
    /// The status type of the object's kind (uids are unique across kinds).
    status: Box<dyn Any + Send + Sync>,
    at: Instant,
}

pub struct WrittenStatuses {
    patience: Duration,
    inner: Mutex<Entries>,
}

struct Entries {
    /// By object uid: a recreated object under the same name starts afresh.
    by_uid: HashMap<String, Written>,
    last_sweep: Instant,
}

impl Default for WrittenStatuses {
    fn default() -> Self {
        Self::with_patience(PATIENCE)
    }
}

impl WrittenStatuses {
    pub fn with_patience(patience: Duration) -> Self {
        WrittenStatuses {
            patience,
            inner: Mutex::new(Entries {
                by_uid: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// `object` as this process last knew it: the cached copy, or, while that copy does not
    /// yet show this process's last status write, the copy with that status.
    pub fn current<K>(&self, object: Arc<K>) -> Arc<K>
    where
        K: Resource + HasStatus + Clone,
        K::Status: Clone + PartialEq + 'static,
    {
        let Some(uid) = object.meta().uid.as_deref() else {
            return object;
        };
        let Ok(mut entries) = self.inner.lock() else {
            return object;
        };
        let Some(written) = entries.by_uid.get(uid) else {
            return object;
        };
        match written.status.downcast_ref::<K::Status>() {
            Some(status)
                if written.at.elapsed() < self.patience && object.status() != Some(status) =>
            {
                let mut newer = (*object).clone();
                *newer.status_mut() = Some(status.clone());
                Arc::new(newer)
            }
            // The cache has caught up (or the wait is over): it is the truth again.
            _ => {
                entries.by_uid.remove(uid);
                object
            }
        }
    }

    /// Remembers the status of `stored`, the object as the API server answered a status write.
    pub fn record<K>(&self, stored: &K)
    where
        K: Resource + HasStatus,
        K::Status: Clone + Send + Sync + 'static,
    {
        let (Some(uid), Some(status)) = (stored.meta().uid.clone(), stored.status().cloned())
        else {
            return;
        };
        let Ok(mut entries) = self.inner.lock() else {
            return;
        };
        let now = Instant::now();
        entries.by_uid.insert(
            uid,
            Written {
                status: Box::new(status),
                at: now,
            },
        );
        // Objects not reconciled again (or deleted) are dropped here, once per patience.
        if now.duration_since(entries.last_sweep) >= self.patience {
            entries.last_sweep = now;
            let patience = self.patience;
            entries
                .by_uid
                .retain(|_, w| now.duration_since(w.at) < patience);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|e| e.by_uid.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConnectorBinding;
    use crate::api::connector_binding::ConnectorBindingStatus;

    fn binding(uid: &str, revision: Option<&str>) -> Arc<ConnectorBinding> {
        let mut b: ConnectorBinding = serde_yaml::from_str(
            "apiVersion: flowplane.io/v1alpha1\nkind: ConnectorBinding\nmetadata: {name: b, namespace: n}\nspec:\n  system: Erp\n  protocol: Rest\n  endpoint: {url: 'https://erp.example.com'}\n",
        )
        .unwrap();
        b.metadata.uid = Some(uid.into());
        b.status = revision.map(|r| ConnectorBindingStatus {
            secret_revision: Some(r.into()),
            ..Default::default()
        });
        Arc::new(b)
    }

    fn revision(b: &ConnectorBinding) -> Option<&str> {
        b.status.as_ref()?.secret_revision.as_deref()
    }

    #[test]
    fn a_cached_copy_without_the_last_write_gets_it_until_the_cache_shows_it() {
        let written = WrittenStatuses::default();
        written.record(&*binding("u1", Some("written")));
        // The cache still has the status from before the write (or none at all).
        let stale = written.current(binding("u1", Some("before")));
        assert_eq!(revision(&stale), Some("written"));
        assert_eq!(
            revision(&written.current(binding("u1", None))),
            Some("written")
        );
        // The cache caught up: the entry goes, and what the cache says from then on is used.
        assert_eq!(
            revision(&written.current(binding("u1", Some("written")))),
            Some("written")
        );
        assert_eq!(written.len(), 0);
        assert_eq!(
            revision(&written.current(binding("u1", Some("later")))),
            Some("later")
        );
    }

    #[test]
    fn another_object_and_a_recreated_one_are_not_touched() {
        let written = WrittenStatuses::default();
        written.record(&*binding("u1", Some("written")));
        assert_eq!(
            revision(&written.current(binding("u2", Some("other")))),
            Some("other")
        );
        assert_eq!(written.len(), 1);
    }

    #[test]
    fn after_the_patience_the_cached_status_wins_and_old_entries_are_swept() {
        let written = WrittenStatuses::with_patience(Duration::ZERO);
        written.record(&*binding("u1", Some("written")));
        assert_eq!(
            revision(&written.current(binding("u1", Some("someone else's")))),
            Some("someone else's")
        );
        written.record(&*binding("u2", Some("written")));
        written.record(&*binding("u3", Some("written")));
        // Each record sweeps what is older than the patience (all, at zero).
        assert!(written.len() <= 1, "{} entries left", written.len());
    }

    #[test]
    fn an_object_without_a_status_in_the_answer_is_not_remembered() {
        let written = WrittenStatuses::default();
        written.record(&*binding("u1", None));
        assert_eq!(written.len(), 0);
    }
}

//! NATS subject source for event-driven flows (warehouse stock adjustments, returns), read
//! through JetStream on the source's server: a capture stream stores what is published on the
//! flow's subject and the flow's durable consumer hands it to the extractor, which acks an
//! event only once the flow's stream has stored it (see [`crate::queue::ensure_capture`]).
//! Events published while no worker runs, or while the lease changes hands, wait there.
//! Only the lease holder fetches, so each event is published to the flow's stream once; an
//! event fetched by a holder that died comes back to the next one after the ack wait, with the
//! same identity, and the flow's stream drops the copy.
//!
//! An extraction pass is one fetch: whatever arrived within a short window, as one page.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;

use super::{Page, Records};
use crate::queue::identity::{NatsAccess, same_server};
use crate::queue::{QueueNames, ensure_capture};
use crate::worker::http::CallError;
use crate::worker_config::SourceConfig;

const MAX_PAGE: usize = 1000;
const WINDOW: Duration = Duration::from_millis(200);

/// The flow's consumer on the capture stream of `config.entity`.
pub struct NatsSource {
    consumer: PullConsumer,
    /// Whether this pass has fetched its page.
    fetched: bool,
}

impl NatsSource {
    /// Connects to the source's server and ensures the capture stream and the flow's consumer;
    /// events are kept at most `retention`.
    ///
    /// On the platform's own server (`platform`, the flow's queue) the flow's user connects,
    /// whose permissions allow exactly its consumer over this subject on the capture stream
    /// the operator made (`queue::identity::flow_permissions`). Elsewhere the binding's own
    /// token, if any: the flow's credentials never go to a server the binding names.
    pub async fn connect(
        config: &SourceConfig,
        names: &QueueNames,
        platform: &NatsAccess,
        retention: Duration,
    ) -> anyhow::Result<NatsSource> {
        let mut options = if same_server(&config.endpoint.url, &platform.url) {
            platform.options().await?
        } else {
            async_nats::ConnectOptions::new()
        };
        if let Some(dir) = &config.endpoint.secret_dir {
            let token = std::path::Path::new(dir).join("token");
            if let Ok(token) = std::fs::read_to_string(&token) {
                options = options.token(token.trim().to_string());
            }
        }
        let client = options.connect(config.endpoint.url.as_str()).await?;
        let js = jetstream::new(client);
        // The operator made it with the flow's replicas where the source is the platform's server
        // (the flow's user may not change streams there): found in place. Elsewhere, 1 replica.
        let consumer = ensure_capture(&js, names, &config.entity, retention, None)
            .await
            .map_err(|e| {
                anyhow::anyhow!("capturing {} on the source's NATS server (JetStream must be enabled there): {e}", config.entity)
            })?;
        Ok(NatsSource {
            consumer,
            fetched: false,
        })
    }

    /// Starts a pass: the next page is a new fetch.
    pub fn begin(&mut self) {
        self.fetched = false;
    }

    /// The events that arrived within the window (waits for them up to the window); None once
    /// the pass has its page, or when nothing arrived.
    pub async fn next_page(&mut self) -> Result<Option<Page>, CallError> {
        if std::mem::replace(&mut self.fetched, true) {
            return Ok(None);
        }
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(MAX_PAGE)
            .expires(WINDOW)
            .messages()
            .await
            .map_err(|e| CallError::Transient(format!("fetching events: {e}")))?;
        let mut events = Vec::new();
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => events.push(message),
                // What was fetched is forwarded; the rest comes with the next pass.
                Err(e) if !events.is_empty() => {
                    tracing::debug!(error = %e, "fetch ended early");
                    break;
                }
                Err(e) => return Err(CallError::Transient(format!("fetching events: {e}"))),
            }
        }
        Ok((!events.is_empty()).then(|| Page {
            records: Records::Events(events),
            cursor: None,
            refused: Vec::new(),
        }))
    }
}

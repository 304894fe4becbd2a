//! NATS subject source for event-driven flows (warehouse stock adjustments, returns): a core
//! subscription on the extracting worker; each page is what arrived within a short window.
//! Only the lease holder subscribes, so each event is published to the flow's stream once.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::Page;
use crate::worker::http::CallError;
use crate::worker_config::SourceConfig;

const MAX_PAGE: usize = 1000;
const WINDOW: Duration = Duration::from_millis(200);

/// A subscription to `config.entity` on the source's NATS server.
pub struct NatsSource {
    subscriber: async_nats::Subscriber,
}

impl NatsSource {
    /// Connects and subscribes.
    pub async fn connect(config: &SourceConfig) -> anyhow::Result<NatsSource> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(dir) = &config.endpoint.secret_dir {
            let token = std::path::Path::new(dir).join("token");
            if let Ok(token) = std::fs::read_to_string(&token) {
                options = options.token(token.trim().to_string());
            }
        }
        let client = options.connect(config.endpoint.url.as_str()).await?;
        let subscriber = client.subscribe(config.entity.clone()).await?;
        Ok(NatsSource { subscriber })
    }

    /// Events that arrived within the window (waits for the first one up to the window).
    pub async fn next_page(&mut self) -> Result<Option<Page>, CallError> {
        let mut records = Vec::new();
        let deadline = tokio::time::Instant::now() + WINDOW;
        while records.len() < MAX_PAGE {
            match tokio::time::timeout_at(deadline, self.subscriber.next()).await {
                Ok(Some(message)) => records.push(
                    serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&message.payload).into_owned())
                    }),
                ),
                Ok(None) => return Err(CallError::Transient("subscription closed".into())),
                Err(_) => break,
            }
        }
        Ok(if records.is_empty() {
            None
        } else {
            Some(Page {
                records: records.into(),
                cursor: None,
            })
        })
    }
}

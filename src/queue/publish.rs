//! Publishing a page of records to a stream, each acknowledged by JetStream, with the page's
//! acks read from one subscription.
//!
//! Hand-written over async-nats' `Context::publish`, which gives every message a reply inbox
//! of its own, a oneshot, a response-map entry, an ack permit and a parse through an untagged
//! enum: about a tenth of the worker's CPU per record (BENCHMARKS.md, "One subscription for a
//! page's acks"). The server protocol is the same: each message carries a reply subject, here
//! `<inbox>.<n>` under one inbox per page, and JetStream answers each with its PubAck, an
//! error, or a 503 status when no stream takes the subject.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, HeaderMap, StatusCode, Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

/// What JetStream answered for a page: how many records it stored and how many it dropped as
/// duplicates of a stored `Nats-Msg-Id`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageAcks {
    pub stored: u64,
    pub duplicates: u64,
}

/// A PubAck or its error: the only fields read of either.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<jetstream::Error>,
}

/// A page being published: publish each record, then await [`PagePublish::acks`].
pub struct PagePublish {
    client: Client,
    /// Subscribed on the first publish, so an empty page costs no round trip.
    replies: Option<(String, Subscriber)>,
    sent: u64,
}

impl PagePublish {
    pub fn new(client: Client) -> PagePublish {
        PagePublish {
            client,
            replies: None,
            sent: 0,
        }
    }

    /// Sends one record; its ack is read by [`PagePublish::acks`].
    pub async fn publish(
        &mut self,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        let inbox = match &self.replies {
            Some((inbox, _)) => inbox,
            None => {
                // The client's own inbox prefix: the flow's NATS user may subscribe only there.
                let inbox = self.client.new_inbox();
                let replies = self.client.subscribe(format!("{inbox}.*")).await?;
                &self.replies.insert((inbox, replies)).0
            }
        };
        let reply = format!("{inbox}.{}", self.sent);
        self.client
            .publish_with_reply_and_headers(subject, reply, headers, payload)
            .await?;
        self.sent += 1;
        Ok(())
    }

    /// Waits for every record's ack; fails at the first error, or when `idle` passes without
    /// an answer (a lost ack: the page is published again and JetStream drops the copies it
    /// already stored as duplicates).
    pub async fn acks(self, idle: Duration) -> anyhow::Result<PageAcks> {
        let mut acks = PageAcks::default();
        let Some((_, mut replies)) = self.replies else {
            return Ok(acks);
        };
        while acks.stored + acks.duplicates < self.sent {
            let answer = match tokio::time::timeout(idle, replies.next()).await {
                Ok(Some(answer)) => answer,
                Ok(None) => anyhow::bail!("the connection closed before JetStream acked the page"),
                Err(_) => anyhow::bail!(
                    "JetStream acked {} of {} records, then nothing for {idle:?}",
                    acks.stored + acks.duplicates,
                    self.sent
                ),
            };
            if answer.status == Some(StatusCode::NO_RESPONDERS) {
                anyhow::bail!("no stream takes the page's subjects (no responders)");
            }
            let answer: Answer = serde_json::from_slice(&answer.payload)
                .map_err(|e| anyhow::anyhow!("JetStream's ack is not a PubAck: {e}"))?;
            if let Some(error) = answer.error {
                anyhow::bail!("JetStream refused a record: {error}");
            }
            if answer.duplicate {
                acks.duplicates += 1;
            } else {
                acks.stored += 1;
            }
        }
        Ok(acks)
    }
}

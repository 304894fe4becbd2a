//! Dead-letter streams made on demand. A flow's worker that has a record to dead-letter and
//! finds no dead-letter stream asks for it on `flowplane.api.<stream>.dead-letters`, a subject
//! only the flow's own NATS user may publish (`identity::flow_permissions`); the operator that
//! manages the flow makes the stream with the flow's policy and answers. The subject names the
//! flow's stream, not the flow: a flow's user can ask for its own dead-letter stream only.

use serde::{Deserialize, Serialize};

use super::QueueNames;
use super::identity::FLOW_SUBJECT_ROOT;

/// What the operator subscribes to: every flow's request subject.
pub const DEAD_LETTER_REQUESTS: &str = "flowplane.api.*.dead-letters";

/// The request subject of the flow whose names are `names`.
pub fn request_subject(names: &QueueNames) -> String {
    format!("{FLOW_SUBJECT_ROOT}.api.{}.dead-letters", names.stream)
}

/// The flow stream a request subject names, or None for any other subject.
pub fn requested_stream(subject: &str) -> Option<&str> {
    let stream = subject
        .strip_prefix(FLOW_SUBJECT_ROOT)?
        .strip_prefix(".api.")?
        .strip_suffix(".dead-letters")?;
    (!stream.is_empty() && !stream.contains('.')).then_some(stream)
}

/// The operator's answer: no error once the stream is there.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Asks the operator for the flow's dead-letter stream and waits for it to be made.
pub async fn ask_for_dead_letter_stream(
    client: &async_nats::Client,
    names: &QueueNames,
) -> Result<(), String> {
    use async_nats::RequestErrorKind;
    let reply = client
        .request(request_subject(names), bytes::Bytes::new())
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => {
                "no flowplane operator is listening on NATS (is it running?)".to_string()
            }
            RequestErrorKind::TimedOut => {
                "no flowplane operator that manages this flow answered".to_string()
            }
            _ => e.to_string(),
        })?;
    let answer: Answer = serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("the operator's answer is not one: {e}"))?;
    answer.error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_subject_names_its_flows_stream_and_nothing_else() {
        let names = QueueNames::for_flow("team-a", "orders.daily");
        let subject = request_subject(&names);
        assert_eq!(subject, "flowplane.api.FP_team-a_orders_daily.dead-letters");
        assert_eq!(requested_stream(&subject), Some(names.stream.as_str()));
        for other in [
            "flowplane.api..dead-letters",
            "flowplane.api.a.b.dead-letters",
            "flowplane.api.FP_x.redrive",
            "flowplane.FP_x.dead-letters",
            "other.api.FP_x.dead-letters",
        ] {
            assert_eq!(requested_stream(other), None, "{other}");
        }
    }

    #[test]
    fn the_operators_subscription_covers_every_request_subject() {
        let subject = request_subject(&QueueNames::for_flow("ns", "flow"));
        let pattern: Vec<&str> = DEAD_LETTER_REQUESTS.split('.').collect();
        let tokens: Vec<&str> = subject.split('.').collect();
        assert_eq!(pattern.len(), tokens.len());
        assert!(
            pattern
                .iter()
                .zip(&tokens)
                .all(|(p, t)| *p == "*" || p == t)
        );
    }
}

//! Errors of a reconcile, split the way error policies need them: a spec error waits for the
//! user to change something; a transient error is retried with backoff.

use std::time::Duration;

use kube::runtime::controller::Action;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object cannot be reconciled as written (or references something that is wrong).
    /// Reported in a False condition; retried only when something changes.
    #[error("{reason}: {message}")]
    Spec {
        reason: &'static str,
        message: String,
    },
    /// The Kubernetes API failed; retried with backoff.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// NATS JetStream failed; retried with backoff.
    #[error("NATS JetStream: {0}")]
    Nats(String),
    /// Serializing a child object failed (a bug, not user input).
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    pub fn spec(reason: &'static str, message: impl Into<String>) -> Error {
        Error::Spec {
            reason,
            message: message.into(),
        }
    }

    /// Bounded label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Spec { .. } => "spec",
            Error::Kube(_) => "kube",
            Error::Nats(_) => "nats",
            Error::Serialization(_) => "serialization",
        }
    }

    /// The apiserver refuses new objects in a namespace being deleted; retrying cannot help,
    /// and the deletion brings its own events.
    pub fn is_namespace_terminating(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(status))
            if status.code == 403 && status.message.contains("being terminated"))
    }

    /// What the controller does after this error. Spec errors have already been written to
    /// status; a slow periodic retry covers references that appear without an event.
    pub fn action(&self, attempt_backoff: Duration) -> Action {
        match self {
            _ if self.is_namespace_terminating() => Action::await_change(),
            Error::Spec { .. } => Action::requeue(Duration::from_secs(300)),
            _ => Action::requeue(attempt_backoff),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Errors of the webhook sink. Expected outcomes of a delivery (a 404, a timeout, a refused
//! address) are not errors of the API: they are counted and dead-lettered by the dispatcher.

use super::request::RequestError;
use super::ssrf::Refusal;
use ccstream_common::ConfigError;

/// Everything the webhook sink's API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The `[webhook]` configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A rule action's config does not make a webhook request.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The SSRF guard refuses the destination.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The outbox directory cannot be opened or read.
    #[error("cannot open the webhook outbox {}: {source}", dir.display())]
    Outbox {
        /// `webhook.outbox_dir`.
        dir: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The dispatcher did not take the firing.
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

/// Why [`WebhookHandle::enqueue`](super::WebhookHandle::enqueue) did not take a firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// The dispatcher is shutting down or gone.
    #[error("webhook dispatcher is shut down")]
    Closed,
}

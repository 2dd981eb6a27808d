//! The WEBHOOK sink: writes rule firings to a durable outbox and sends them over HTTP; ingest
//! waits only when the outbox is full.
//!
//! - [`config`]: the `[webhook]` section ([`WebhookConfig`]), defaults and validation.
//! - [`request`]: [`WebhookRequest`], built from a rule action's template-filled config.
//! - [`ssrf`]: the SSRF guard ([`SsrfPolicy`], [`check_url_now`] for rule CREATE/UPDATE time).
//! - [`resolve`]: [`GuardedResolver`], reqwest's DNS resolver, which checks every resolved
//!   address and connects only to checked ones.
//! - [`retry`]: which outcomes are retried and how long to wait (pure functions).
//! - [`outbox`]: the durable outbox every firing is written to before it counts as fired.
//! - [`dispatcher`]: the producers' handle and the start of everything below.
//! - `worker`: the loop that queues committed firings per destination and starts them, and the
//!   drain at shutdown; [`destination`]: the queues, per-destination limits and circuit
//!   breakers; `firing`: one firing's attempts, retries and end.
//! - [`replay`]: dead letters read back, summarised and sent again.
//! - [`dead_letter`]: JSON-lines records of firings that could not be delivered.
//! - `counters`: the atomics behind [`WebhookStats`], shared by the dispatcher and the
//!   dead-letter writer.
//! - [`telemetry`]: metric names.

pub mod config;
mod counters;
pub mod dead_letter;
pub mod destination;
pub mod dispatcher;
pub mod error;
mod firing;
pub mod outbox;
pub mod replay;
pub mod request;
pub mod resolve;
pub mod retry;
pub mod ssrf;
pub mod telemetry;
mod worker;

pub use config::WebhookConfig;
pub use counters::WebhookStats;
pub use dead_letter::{dead_letter_path, DeadLetter};
pub use dispatcher::{build_client, WebhookDispatcher, WebhookHandle, DEFAULT_DRAIN_DEADLINE};
pub use error::{EnqueueError, WebhookError};
pub use outbox::{OnDurable, OutboxStatus};
pub use request::{JsonBody, RequestError, WebhookBody, WebhookRequest};
pub use resolve::{resolve_checked, GuardedResolver, ResolveError};
pub use retry::{classify, parse_retry_after, retry_delay, AttemptOutcome, Retry};
pub use ssrf::{check_url_now, parse_cidr, Reason, Refusal, SsrfPolicy};
pub use telemetry::describe_metrics;

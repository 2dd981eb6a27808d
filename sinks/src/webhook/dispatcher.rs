//! The dispatcher: the producers' handle, and the start of the outbox, the worker and the
//! dead-letter writer. Committed firings go from the outbox ([`super::outbox`]) to the worker
//! ([`super::worker`]), which queues them per destination ([`super::destination`]) and starts
//! at most `concurrency` at once (a permit per firing, held through its retries), each a task
//! of [`super::firing`] that tells the outbox when its firing is finished.
//!
//! ```text
//! rule engine ─enqueue─▶ outbox (durable) ─committed─▶ worker: a queue and a breaker per
//!   (waits only when           ▲                        destination, round-robin ─▶ firing task
//!    the outbox is full)       └──── finished: delivered, or dead letter on disk ◀──┘ (reqwest)
//! ```
//!
//! Shutdown: [`WebhookHandle::close`] (or dropping every handle) stops intake at once; firings
//! keep being delivered until the drain deadline; what is still undelivered then stays in the
//! outbox and is sent at the next start (with the same `Idempotency-Key`), never dropped.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use ccstream_common::Backoff;

use super::config::WebhookConfig;
use super::counters::Counters;
// Also public here, beside the dispatcher whose task returns it (`counters` is private).
pub use super::counters::WebhookStats;
use super::dead_letter;
use super::destination::Destinations;
use super::error::{EnqueueError, WebhookError};
use super::firing::Sender;
use super::outbox::{self, Append, Committed, OnDurable, OutboxLog, OutboxStatus, OutboxTask};
use super::request::WebhookRequest;
use super::resolve::GuardedResolver;
use super::ssrf::SsrfPolicy;
use super::telemetry;
use super::worker::Worker;
use crate::intake::{CloseGate, LogLimiter};

/// Drain deadline used when every handle is dropped without [`WebhookHandle::close`].
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// What the handles share.
struct Shared {
    /// Stops intake; dropped with the last handle, which the consumers also read as a close.
    gate: CloseGate,
    counters: Arc<Counters>,
    status: Arc<OutboxStatus>,
    recovered_origins: std::sync::Mutex<Vec<u64>>,
}

/// The producer side: cheap to clone. `T` is the producer's token, handed back through the
/// dispatcher's `on_durable` once the firings it came with are on disk.
pub struct WebhookHandle<T> {
    tx: mpsc::Sender<Append<T>>,
    shared: Arc<Shared>,
}

impl<T> Clone for WebhookHandle<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for WebhookHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookHandle")
            .field("outbox", &self.shared.status)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> WebhookHandle<T> {
    /// Hands the firings of one observation to the outbox; `token` comes back through
    /// `on_durable` once they are on disk. `origin` (the observation's id) is stored with them
    /// and comes back from [`take_recovered_origins`](Self::take_recovered_origins) after a
    /// restart. Waits only while the outbox is full (or its disk fails): the producer then
    /// stops, which is the backpressure ingest needs.
    pub async fn enqueue(
        &self,
        firings: Vec<WebhookRequest>,
        origin: Option<u64>,
        token: T,
    ) -> Result<(), EnqueueError> {
        if self.is_closed() {
            return Err(EnqueueError::Closed);
        }
        let count = firings.len() as u64;
        self.tx
            .send(Append {
                firings,
                origin,
                token,
            })
            .await
            .map_err(|_| EnqueueError::Closed)?;
        self.shared
            .counters
            .enqueued
            .fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    /// Stops intake on every clone of this handle at once. The dispatcher delivers what it can
    /// until `drain_deadline` has passed; the rest stays in the outbox for the next start. A
    /// second call does not move the deadline.
    pub fn close(&self, drain_deadline: Duration) {
        self.shared.gate.close(drain_deadline);
    }

    /// Whether intake has stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.gate.is_closed() || self.tx.is_closed()
    }

    /// The origins of the firings the outbox held at start (finished or not), once: the
    /// observations whose redelivery must not fire again.
    pub fn take_recovered_origins(&self) -> Vec<u64> {
        match self.shared.recovered_origins.lock() {
            Ok(mut origins) => std::mem::take(&mut *origins),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    /// The outbox: size, unfinished firings, whether it is full.
    pub fn outbox(&self) -> Arc<OutboxStatus> {
        Arc::clone(&self.shared.status)
    }

    /// Counts since start.
    pub fn stats(&self) -> WebhookStats {
        self.shared.counters.snapshot()
    }
}

/// Starts webhook dispatchers.
#[derive(Debug)]
pub struct WebhookDispatcher;

impl WebhookDispatcher {
    /// Validates `config`, opens the outbox (the firings an earlier run left unfinished are sent
    /// first), builds the pooled HTTP client and starts the outbox, worker and dead-letter tasks
    /// (call inside a Tokio runtime). The task returns the final [`WebhookStats`] after
    /// [`WebhookHandle::close`], or after every handle is dropped (drain deadline
    /// [`DEFAULT_DRAIN_DEADLINE`]).
    pub fn start<T: Send + 'static>(
        config: &WebhookConfig,
        on_durable: OnDurable<T>,
    ) -> Result<(WebhookHandle<T>, JoinHandle<WebhookStats>), WebhookError> {
        config.validate()?;
        let policy = Arc::new(config.ssrf_policy()?);
        let client = build_client(config, Arc::clone(&policy))?;
        let (log, recovered) = OutboxLog::open(
            &config.outbox_dir,
            outbox::segment_bytes(config.outbox_max_bytes),
        )
        .map_err(|source| WebhookError::Outbox {
            dir: config.outbox_dir.clone(),
            source,
        })?;
        let outbox::Recovered {
            unfinished,
            origins,
        } = recovered;
        if !unfinished.is_empty() {
            tracing::info!(
                firings = unfinished.len(),
                dir = %config.outbox_dir.display(),
                "webhook outbox holds firings an earlier run did not finish; sending them first"
            );
        }
        let counters = Arc::new(Counters::default());
        let status = Arc::new(OutboxStatus::default());
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let (dead_letters, writer) = dead_letter::spawn_writer(
            config.dead_letter_dir.clone(),
            Arc::clone(&counters),
            finished_tx.clone(),
        );
        let (append_tx, append_rx) = mpsc::channel(outbox::APPEND_QUEUE);
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        for firing in unfinished {
            let _ = feed_tx.send(Committed::recovered(firing));
        }
        let (gate, close_rx) = CloseGate::new();
        let outbox_task = OutboxTask {
            log,
            max_bytes: config.outbox_max_bytes,
            memory_bodies: config.queue_capacity,
            appends: append_rx,
            finished: finished_rx,
            feed: feed_tx,
            close_rx: close_rx.clone(),
            on_durable,
            status: Arc::clone(&status),
        };
        let outbox_task = tokio::spawn(outbox_task.run());
        let ctx = Arc::new(Sender {
            client,
            policy,
            max_attempts: config.max_attempts,
            backoff: Backoff::new(
                Duration::from_millis(config.backoff_initial_ms),
                Duration::from_millis(config.backoff_max_ms),
            ),
            timeout: config.timeout(),
            max_age_ms: config.max_age_secs.saturating_mul(1000),
            probe_every: config.probe_interval(),
            dead_letters,
            finished: finished_tx,
            outbox_dir: config.outbox_dir.clone(),
            status: Arc::clone(&status),
            counters: Arc::clone(&counters),
            fail_log: LogLimiter::default(),
            breaker_log: LogLimiter::default(),
            attempt_metrics: telemetry::AttemptMetrics::register(),
            wall_ms_at_start: ccstream_common::time::now_ms(),
            started: tokio::time::Instant::now(),
        });
        let worker = Worker {
            rx: feed_rx,
            close_rx,
            ctx,
            concurrency: config.concurrency,
            destinations: Destinations::new(
                config.concurrency_per_destination,
                config.breaker_failures,
                config.probe_interval(),
            ),
            writer,
            outbox_task,
            counters: Arc::clone(&counters),
        };
        telemetry::queue_depth(0);
        let task = tokio::spawn(worker.run());
        let shared = Arc::new(Shared {
            gate,
            counters,
            status,
            recovered_origins: std::sync::Mutex::new(origins),
        });
        Ok((
            WebhookHandle {
                tx: append_tx,
                shared,
            },
            task,
        ))
    }
}

/// The one pooled keep-alive client: rustls, whole-request timeout, no redirects, no proxy, and
/// every host name resolved through the SSRF guard.
pub fn build_client(
    config: &WebhookConfig,
    policy: Arc<SsrfPolicy>,
) -> Result<reqwest::Client, WebhookError> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(config.timeout())
        .connect_timeout(config.timeout())
        // A redirect is the tenant's server choosing a second destination after the check.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve and connect on our behalf, past the guarded resolver.
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver::new(policy)))
        .user_agent(config.user_agent.clone())
        .pool_max_idle_per_host(config.concurrency)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(WebhookError::Client)
}

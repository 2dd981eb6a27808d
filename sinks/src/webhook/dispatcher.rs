//! The dispatcher: takes committed firings from the outbox ([`super::outbox`]), one worker loop
//! with at most `concurrency` firings in flight (a semaphore permit per firing, held through its
//! retries), and tells the outbox when each one is finished.
//!
//! ```text
//! rule engine ─enqueue─▶ outbox (durable) ─committed─▶ worker loop ─permit─▶ firing task ─▶ reqwest
//!   (waits only when                ▲                                           │ retries, backoff
//!    the outbox is full)            └──── finished: delivered, or dead letter on disk ◀┘
//! ```
//!
//! Shutdown: [`WebhookHandle::close`] (or dropping every handle) stops intake at once; firings
//! keep being delivered until the drain deadline; what is still undelivered then stays in the
//! outbox and is sent at the next start (with the same `Idempotency-Key`), never dropped.

use crate::error_text::error_chain;
use crate::intake::{sleep_until_opt, CloseGate, LogLimiter};
use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::RETRY_AFTER;
use tokio::sync::mpsc;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use ccstream_common::Backoff;

use super::config::WebhookConfig;
use super::counters::Counters;
// Also public here, beside the dispatcher whose task returns it (`counters` is private).
pub use super::counters::WebhookStats;
use super::dead_letter::{self, DeadLetter};
use super::error::{EnqueueError, WebhookError};
use super::outbox::{
    self, Append, Committed, Locator, OnDurable, OutboxLog, OutboxStatus, OutboxTask,
};
use super::request::{Prepared, WebhookRequest};
use super::resolve::{GuardedResolver, ResolveError};
use super::retry::{classify, parse_retry_after, retry_delay, AttemptOutcome, Retry};
use super::ssrf::{check_before_send, Refusal, SsrfPolicy};
use super::telemetry;

/// Drain deadline used when every handle is dropped without [`WebhookHandle::close`].
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Most response-body bytes read (and thrown away) so a keep-alive connection can be reused.
const MAX_DRAIN_BYTES: usize = 64 * 1024;
/// Longest error text kept in a dead letter, in bytes.
const ERROR_TEXT_MAX: usize = 400;

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
        for at in unfinished {
            let _ = feed_tx.send(Committed {
                at: Some(at),
                request: None,
            });
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
        let ctx = Arc::new(Ctx {
            client,
            policy,
            max_attempts: config.max_attempts,
            backoff: Backoff::new(
                Duration::from_millis(config.backoff_initial_ms),
                Duration::from_millis(config.backoff_max_ms),
            ),
            timeout: config.timeout(),
            dead_letters,
            finished: finished_tx,
            outbox_dir: config.outbox_dir.clone(),
            status: Arc::clone(&status),
            counters: Arc::clone(&counters),
            fail_log: LogLimiter::default(),
        });
        let worker = Worker {
            rx: feed_rx,
            close_rx,
            ctx,
            concurrency: config.concurrency,
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

/// What every firing task needs.
struct Ctx {
    client: reqwest::Client,
    policy: Arc<SsrfPolicy>,
    max_attempts: u32,
    backoff: Backoff,
    timeout: Duration,
    dead_letters: mpsc::Sender<(DeadLetter, Option<Locator>)>,
    /// Firings delivered, back to the outbox.
    finished: mpsc::UnboundedSender<Locator>,
    outbox_dir: PathBuf,
    status: Arc<OutboxStatus>,
    counters: Arc<Counters>,
    fail_log: LogLimiter,
}

struct Worker {
    rx: mpsc::UnboundedReceiver<Committed>,
    close_rx: watch::Receiver<Option<Duration>>,
    ctx: Arc<Ctx>,
    concurrency: usize,
    writer: JoinHandle<()>,
    outbox_task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl Worker {
    async fn run(self) -> WebhookStats {
        let Worker {
            mut rx,
            mut close_rx,
            ctx,
            concurrency,
            writer,
            outbox_task,
            counters,
        } = self;
        let semaphore = Arc::new(Semaphore::new(concurrency));
        let (abandon_tx, abandon_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut deadline: Option<Instant> = None;

        loop {
            while let Some(done) = tasks.try_join_next() {
                note_join(done);
            }
            // A permit first, then a firing: what waits for a permit waits in the bounded queue.
            // `biased;` so that a close is seen before more work is taken.
            let permit = tokio::select! {
                biased;
                changed = close_rx.changed(), if deadline.is_none() => {
                    deadline = Some(start_drain(changed.is_ok(), &close_rx));
                    continue;
                }
                () = sleep_until_opt(deadline) => break,
                permit = Arc::clone(&semaphore).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let committed = tokio::select! {
                biased;
                changed = close_rx.changed(), if deadline.is_none() => {
                    deadline = Some(start_drain(changed.is_ok(), &close_rx));
                    continue;
                }
                () = sleep_until_opt(deadline) => break,
                committed = rx.recv() => match committed {
                    Some(committed) => committed,
                    None => break,
                },
            };
            telemetry::queue_depth(rx.len());
            tasks.spawn(process(
                Arc::clone(&ctx),
                committed,
                abandon_rx.clone(),
                permit,
            ));
        }

        // Intake is over (closed and drained, or the deadline passed): let what is in flight
        // finish until the deadline, then make it give up.
        let deadline = deadline.unwrap_or_else(|| Instant::now() + DEFAULT_DRAIN_DEADLINE);
        let finished = tokio::time::timeout_at(deadline, async {
            while let Some(done) = tasks.join_next().await {
                note_join(done);
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                in_flight = tasks.len(),
                "webhook drain deadline passed; undelivered firings stay in the outbox for the next start"
            );
            let _ = abandon_tx.send(true);
            while let Some(done) = tasks.join_next().await {
                note_join(done);
            }
        }
        // Firings never taken: they stay in the outbox, sent at the next start.
        rx.close();
        let mut left = 0_u64;
        while rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            counters.abandoned.fetch_add(left, Ordering::Relaxed);
            tracing::info!(
                firings = left,
                "webhook firings not sent before the drain deadline stay in the outbox"
            );
        }
        telemetry::queue_depth(0);
        // The last dead-letter sender goes with `ctx`; the writer then writes what it holds and
        // ends, and with the last `finished` sender the outbox records what was finished.
        drop(ctx);
        if let Err(error) = writer.await {
            tracing::error!(%error, "webhook dead-letter writer failed");
        }
        if let Err(error) = outbox_task.await {
            tracing::error!(%error, "webhook outbox task failed");
        }
        let stats = counters.snapshot();
        tracing::info!(?stats, "webhook dispatcher stopped");
        stats
    }
}

fn start_drain(asked: bool, close_rx: &watch::Receiver<Option<Duration>>) -> Instant {
    // `asked`: close() was called; otherwise every handle was dropped.
    let grace = asked
        .then(|| *close_rx.borrow())
        .flatten()
        .unwrap_or(DEFAULT_DRAIN_DEADLINE);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "webhook dispatcher draining"
    );
    Instant::now() + grace
}

fn note_join(done: Result<(), JoinError>) {
    if let Err(error) = done {
        if error.is_panic() {
            tracing::error!(%error, "webhook firing task panicked");
        }
    }
}

/// How far one firing got.
#[derive(Debug, Default)]
struct Progress {
    attempts: u32,
    last_status: Option<u16>,
}

/// How one firing ended.
#[derive(Debug)]
enum End {
    Delivered,
    Failed(String),
    Refused(String),
    Abandoned,
}

/// One firing, from its first attempt to its last, holding its concurrency permit throughout.
async fn process(
    ctx: Arc<Ctx>,
    committed: Committed,
    mut abandon: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let Committed { at, request } = committed;
    let in_memory = request.is_some();
    let request = match (request, at) {
        (Some(request), _) => request,
        (None, Some(at)) => match ctx.read_back(at).await {
            Some(request) => request,
            None => return,
        },
        (None, None) => return,
    };
    let span = tracing::info_span!(
        "webhook",
        rule = %request.rule_id,
        key = %request.idempotency_key,
    );
    async move {
        let mut progress = Progress::default();
        let end = tokio::select! {
            biased;
            () = wait_abandon(&mut abandon) => End::Abandoned,
            end = ctx.deliver(&request, &mut progress) => end,
        };
        ctx.finish(&request, at, &progress, end).await;
        if in_memory {
            ctx.status.bodies.fetch_sub(1, Ordering::Relaxed);
        }
        drop(permit);
    }
    .instrument(span)
    .await;
}

async fn wait_abandon(abandon: &mut watch::Receiver<bool>) {
    if abandon.wait_for(|stop| *stop).await.is_err() {
        // The worker is gone without asking: keep going.
        std::future::pending::<()>().await;
    }
}

impl Ctx {
    /// The firing at `at`, read back from the outbox (its body was not kept in memory).
    async fn read_back(&self, at: Locator) -> Option<WebhookRequest> {
        let dir = self.outbox_dir.clone();
        match tokio::task::spawn_blocking(move || outbox::log::read(&dir, at)).await {
            Ok(Ok(stored)) => Some(stored.request),
            Ok(Err(error)) => {
                telemetry::outbox_read_failed();
                tracing::error!(?at, %error, "cannot read a webhook firing back from the outbox; it stays there");
                None
            }
            Err(error) => {
                tracing::error!(%error, "webhook outbox read panicked");
                None
            }
        }
    }

    async fn deliver(&self, request: &WebhookRequest, progress: &mut Progress) -> End {
        let prepared = match request.prepare() {
            Ok(prepared) => prepared,
            Err(error) => return End::Failed(format!("invalid request: {error}")),
        };
        // reqwest does not resolve IP-literal hosts, so the guarded resolver never sees them.
        if let Err(refusal) = check_before_send(&prepared.url, &self.policy) {
            telemetry::attempt(AttemptOutcome::Refused.label(), None);
            return End::Refused(refusal.to_string());
        }
        loop {
            progress.attempts += 1;
            Counters::bump(&self.counters.attempts);
            let started = Instant::now();
            let (outcome, detail) = self.send_once(&prepared).await;
            let took = (outcome != AttemptOutcome::Refused).then(|| started.elapsed());
            telemetry::attempt(outcome.label(), took);
            if let AttemptOutcome::Status { code, .. } = outcome {
                progress.last_status = Some(code);
            }
            if outcome.is_success() {
                return End::Delivered;
            }
            match classify(&outcome) {
                Retry::No => {
                    return match outcome {
                        AttemptOutcome::Refused => End::Refused(detail),
                        AttemptOutcome::Status {
                            code: 300..=399, ..
                        } => End::Failed(format!("{detail} (redirects are not followed)")),
                        _ => End::Failed(format!("{detail} (not retried)")),
                    };
                }
                Retry::Yes { .. } if progress.attempts >= self.max_attempts => {
                    return End::Failed(format!(
                        "{detail} (gave up after {} attempts)",
                        progress.attempts
                    ));
                }
                Retry::Yes { after } => {
                    let wait = retry_delay(after, progress.attempts, &self.backoff);
                    tracing::debug!(
                        attempt = progress.attempts,
                        outcome = outcome.label(),
                        %detail,
                        wait_ms = wait.as_millis() as u64,
                        "webhook attempt failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One HTTP attempt, classified, with a short description for logs and dead letters.
    async fn send_once(&self, prepared: &Prepared) -> (AttemptOutcome, String) {
        let sent = self
            .client
            .request(prepared.method.clone(), prepared.url.clone())
            .headers(prepared.headers.clone())
            .body(prepared.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => return self.error_outcome(&error),
        };
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        // Read (a bounded part of) the body so the connection can return to the pool; what it
        // says does not matter, and a failure reading it does not change the status.
        let mut read = 0;
        while read <= MAX_DRAIN_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        (
            AttemptOutcome::Status { code, retry_after },
            format!("HTTP {code}"),
        )
    }

    fn error_outcome(&self, error: &reqwest::Error) -> (AttemptOutcome, String) {
        // A refusal by the guarded resolver arrives wrapped in hyper's connect error.
        let mut source: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(current) = source {
            if let Some(refusal) = current.downcast_ref::<Refusal>() {
                return (AttemptOutcome::Refused, format!("refused: {refusal}"));
            }
            if let Some(ResolveError::Refused(refusal)) = current.downcast_ref::<ResolveError>() {
                return (AttemptOutcome::Refused, format!("refused: {refusal}"));
            }
            source = current.source();
        }
        if error.is_timeout() {
            let secs = self.timeout.as_secs();
            (AttemptOutcome::Timeout, format!("timed out after {secs} s"))
        } else if error.is_builder() {
            (AttemptOutcome::Invalid, error_chain(error, ERROR_TEXT_MAX))
        } else {
            (AttemptOutcome::Connect, error_chain(error, ERROR_TEXT_MAX))
        }
    }

    /// Counts the end of a firing: a delivery is finished in the outbox at once, a failure once
    /// its dead letter is on disk; an abandoned firing stays in the outbox for the next start.
    async fn finish(
        &self,
        request: &WebhookRequest,
        at: Option<Locator>,
        progress: &Progress,
        end: End,
    ) {
        let reason = match end {
            End::Delivered => {
                Counters::bump(&self.counters.delivered);
                telemetry::delivery("delivered");
                tracing::debug!(attempts = progress.attempts, "webhook delivered");
                if let Some(at) = at {
                    let _ = self.finished.send(at);
                }
                return;
            }
            End::Failed(reason) => {
                Counters::bump(&self.counters.failed);
                telemetry::delivery("failed");
                reason
            }
            End::Refused(reason) => {
                Counters::bump(&self.counters.refused);
                telemetry::delivery("refused");
                reason
            }
            End::Abandoned => {
                Counters::bump(&self.counters.abandoned);
                tracing::debug!(
                    attempts = progress.attempts,
                    "webhook not delivered before the drain deadline; it stays in the outbox"
                );
                return;
            }
        };
        if let Some(similar) = self.fail_log.hit(1) {
            tracing::warn!(
                rule = %request.rule_id,
                %reason,
                attempts = progress.attempts,
                similar,
                "webhook firing not delivered; written as a dead letter (logged at most every 10 s)"
            );
        }
        let letter = DeadLetter {
            time: SystemTime::now(),
            rule_id: request.rule_id.clone(),
            url: request.url.clone(),
            method: request.method.clone(),
            idempotency_key: request.idempotency_key.clone(),
            reason,
            attempts: progress.attempts,
            last_status: progress.last_status,
            body: request.body.clone(),
        };
        // Waits only while the writer's bounded channel is full; this task holds one permit.
        if self.dead_letters.send((letter, at)).await.is_err() {
            tracing::error!(rule = %request.rule_id, "webhook dead-letter writer is gone; the firing stays in the outbox");
        }
    }
}

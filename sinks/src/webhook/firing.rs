//! One firing, from its first attempt to its last: what every firing task needs ([`Sender`]),
//! the attempts with their retries and the destination's breaker, and how the firing ends
//! (delivered, dead-lettered, deferred by the breaker, or left in the outbox at shutdown).

use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::RETRY_AFTER;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::Instrument;

use ccstream_common::Backoff;

use super::counters::Counters;
use super::dead_letter::DeadLetter;
use super::destination::{is_failure, Destination, Next};
use super::outbox::{self, Committed, Locator, OutboxStatus};
use super::request::{Prepared, WebhookRequest};
use super::resolve::ResolveError;
use super::retry::{classify, parse_retry_after, retry_delay, AttemptOutcome, Retry};
use super::ssrf::{check_before_send, Refusal, SsrfPolicy};
use super::telemetry;
use crate::error_text::error_chain;
use crate::intake::LogLimiter;

/// Most response-body bytes read (and thrown away) so a keep-alive connection can be reused.
const MAX_DRAIN_BYTES: usize = 64 * 1024;
/// Longest error text kept in a dead letter, in bytes.
const ERROR_TEXT_MAX: usize = 400;

/// What every firing task needs.
pub(super) struct Sender {
    pub(super) client: reqwest::Client,
    pub(super) policy: Arc<SsrfPolicy>,
    pub(super) max_attempts: u32,
    pub(super) backoff: Backoff,
    pub(super) timeout: Duration,
    pub(super) max_age_ms: u64,
    pub(super) probe_every: Duration,
    pub(super) dead_letters: mpsc::Sender<(DeadLetter, Option<Locator>)>,
    /// Firings delivered, back to the outbox.
    pub(super) finished: mpsc::UnboundedSender<Locator>,
    pub(super) outbox_dir: PathBuf,
    pub(super) status: Arc<OutboxStatus>,
    pub(super) counters: Arc<Counters>,
    pub(super) fail_log: LogLimiter,
    pub(super) breaker_log: LogLimiter,
    pub(super) attempt_metrics: telemetry::AttemptMetrics,
    /// The wall clock (ms since the epoch) at `started`: ages are counted from it on the
    /// monotonic clock, so a jump of the wall clock does not expire (or revive) firings.
    pub(super) wall_ms_at_start: u64,
    pub(super) started: Instant,
}

/// A firing waiting for its destination, with how far it got.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) committed: Committed,
    pub(super) progress: Progress,
}

/// How far one firing got.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Attempts made.
    pub(super) attempts: u32,
    /// Attempts that count against `webhook.max_attempts` (the breaker's probes do not).
    pub(super) counted: u32,
    pub(super) last_status: Option<u16>,
}

/// How one firing ended.
#[derive(Debug)]
enum End {
    Delivered,
    Failed(String),
    Refused(String),
    /// Past `webhook.max_age_secs`, after this many seconds.
    Expired(u64),
    /// The destination's breaker opened: back to the front of its queue.
    Deferred,
    Abandoned,
}

/// What a firing task hands back to the worker: the destination's index and, when the breaker
/// deferred it, the firing to queue again.
pub(super) type TaskEnd = (usize, Option<Waiting>);

/// One firing, from its first attempt to its last, holding its concurrency permit throughout.
pub(super) async fn process(
    ctx: Arc<Sender>,
    next: Next<Waiting>,
    mut abandon: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> TaskEnd {
    let Next {
        index,
        destination,
        item: Waiting {
            committed,
            mut progress,
        },
        probe,
        expired,
    } = next;
    let Committed {
        at,
        request,
        destination: name,
        enqueued_ms,
    } = committed;
    let in_memory = request.is_some();
    let request = match (request, at) {
        (Some(request), _) => request,
        (None, Some(at)) => match ctx.read_back(at).await {
            Some(request) => request,
            None => {
                if probe {
                    destination.with_breaker(|b| b.probe_lost(Instant::now()));
                }
                return (index, None);
            }
        },
        (None, None) => return (index, None),
    };
    let span = tracing::info_span!(
        "webhook",
        rule = %request.rule_id,
        key = %request.idempotency_key,
    );
    async move {
        let attempts_before = progress.attempts;
        let end = if expired {
            let age_ms = ctx.now_ms().saturating_sub(enqueued_ms);
            End::Expired(age_ms / 1000)
        } else {
            tokio::select! {
                biased;
                () = wait_abandon(&mut abandon) => End::Abandoned,
                end = ctx.deliver(&request, &destination, probe, &mut progress) => end,
            }
        };
        if probe && progress.attempts == attempts_before {
            // The probe ended without an attempt (abandoned, invalid, refused by the guard):
            // the next firing probes instead, or the breaker would wait for it forever.
            destination.with_breaker(|b| b.probe_lost(Instant::now()));
        }
        if matches!(end, End::Deferred) && !abandon_asked(&abandon) {
            // Waits at the front of its destination's queue; a body read back from disk is
            // dropped again (memory stays bounded by the bodies kept in memory).
            let committed = Committed {
                at,
                request: in_memory.then_some(request),
                destination: name,
                enqueued_ms,
            };
            drop(permit);
            return (
                index,
                Some(Waiting {
                    committed,
                    progress,
                }),
            );
        }
        ctx.finish(&request, at, &destination, &progress, end).await;
        if in_memory {
            ctx.status.bodies.fetch_sub(1, Ordering::Relaxed);
        }
        drop(permit);
        (index, None)
    }
    .instrument(span)
    .await
}

fn abandon_asked(abandon: &watch::Receiver<bool>) -> bool {
    *abandon.borrow()
}

async fn wait_abandon(abandon: &mut watch::Receiver<bool>) {
    if abandon.wait_for(|stop| *stop).await.is_err() {
        // The worker is gone without asking: keep going.
        std::future::pending::<()>().await;
    }
}

impl Sender {
    /// The firing at `at`, read back from the outbox (its body was not kept in memory).
    pub(super) async fn read_back(&self, at: Locator) -> Option<WebhookRequest> {
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

    /// Attempts until delivered, refused, out of attempts, or deferred by the destination's
    /// breaker. `probe`: the first attempt is the breaker's probe (not counted against the
    /// firing's attempts: a dead receiver says nothing about the firing).
    async fn deliver(
        &self,
        request: &WebhookRequest,
        destination: &Destination,
        mut probe: bool,
        progress: &mut Progress,
    ) -> End {
        let prepared = match request.prepare() {
            Ok(prepared) => prepared,
            Err(error) => return End::Failed(format!("invalid request: {error}")),
        };
        // reqwest does not resolve IP-literal hosts, so the guarded resolver never sees them.
        if let Err(refusal) = check_before_send(&prepared.url, &self.policy) {
            self.attempt_metrics
                .attempt(AttemptOutcome::Refused.label(), None);
            return End::Refused(refusal.to_string());
        }
        loop {
            if !probe && !destination.with_breaker(|b| b.is_closed()) {
                return End::Deferred;
            }
            progress.attempts += 1;
            if !probe {
                progress.counted += 1;
            }
            probe = false;
            Counters::bump(&self.counters.attempts);
            let started = Instant::now();
            let (outcome, detail) = self.send_once(&prepared).await;
            let took = (outcome != AttemptOutcome::Refused).then(|| started.elapsed());
            self.attempt_metrics.attempt(outcome.label(), took);
            if let AttemptOutcome::Status { code, .. } = outcome {
                progress.last_status = Some(code);
            }
            let opened =
                destination.with_breaker(|b| b.record(is_failure(&outcome), Instant::now()));
            if opened {
                destination.counters.circuit_opened.increment(1);
                if let Some(similar) = self.breaker_log.hit(1) {
                    tracing::warn!(
                        destination = %destination.name,
                        %detail,
                        similar,
                        probe_every_secs = self.probe_every.as_secs(),
                        "webhook destination not answering: circuit open, its firings wait (one probe per interval); logged at most every 10 s"
                    );
                }
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
                Retry::Yes { .. } if progress.counted >= self.max_attempts => {
                    return End::Failed(format!(
                        "{detail} (retries exhausted: gave up after {} attempts)",
                        progress.attempts
                    ));
                }
                Retry::Yes { .. } if !destination.with_breaker(|b| b.is_closed()) => {
                    return End::Deferred;
                }
                Retry::Yes { after } => {
                    let wait = retry_delay(after, progress.counted, &self.backoff);
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

    /// Now, in ms since the epoch, by the monotonic clock since start.
    pub(super) fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.wall_ms_at_start.saturating_add(elapsed)
    }

    /// Whether a firing written at `enqueued_ms` is past `webhook.max_age_secs` at `now_ms`.
    pub(super) fn is_expired(&self, enqueued_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(enqueued_ms) > self.max_age_ms
    }

    /// Counts the end of a firing: a delivery is finished in the outbox at once, a failure once
    /// its dead letter is on disk; an abandoned firing stays in the outbox for the next start.
    async fn finish(
        &self,
        request: &WebhookRequest,
        at: Option<Locator>,
        destination: &Destination,
        progress: &Progress,
        end: End,
    ) {
        let reason = match end {
            End::Delivered => {
                Counters::bump(&self.counters.delivered);
                destination.counters.delivered.increment(1);
                tracing::debug!(attempts = progress.attempts, "webhook delivered");
                if let Some(at) = at {
                    let _ = self.finished.send(at);
                }
                return;
            }
            End::Failed(reason) => {
                Counters::bump(&self.counters.failed);
                destination.counters.failed.increment(1);
                reason
            }
            End::Expired(age_secs) => {
                Counters::bump(&self.counters.failed);
                Counters::bump(&self.counters.expired);
                destination.counters.expired.increment(1);
                format!(
                    "older than webhook.max_age_secs ({} s): not delivered in {age_secs} s",
                    self.max_age_ms / 1000
                )
            }
            End::Refused(reason) => {
                Counters::bump(&self.counters.refused);
                destination.counters.refused.increment(1);
                reason
            }
            End::Abandoned | End::Deferred => {
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
            headers: request.headers.clone(),
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

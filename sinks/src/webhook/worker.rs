//! The dispatcher's worker loop: takes committed firings from the outbox into their
//! destination's queue ([`super::destination`]), starts them round-robin within the global
//! `concurrency` and each destination's share, wakes for a breaker's next probe, and drains at
//! shutdown (what is not delivered by the deadline stays in the outbox).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;

use super::counters::{Counters, WebhookStats};
use super::destination::{Destinations, FORGET_IDLE_AFTER};
use super::dispatcher::DEFAULT_DRAIN_DEADLINE;
use super::firing::{process, Progress, Sender, TaskEnd, Waiting};
use super::outbox::Committed;
use super::telemetry;
use crate::intake::sleep_until_opt;

/// How often the per-destination gauges are refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Most firings moved from the outbox's feed into the queues between two scheduling rounds.
const INTAKE_PER_ROUND: usize = 4096;

pub(super) struct Worker {
    pub(super) rx: mpsc::UnboundedReceiver<Committed>,
    pub(super) close_rx: watch::Receiver<Option<Duration>>,
    pub(super) ctx: Arc<Sender>,
    pub(super) concurrency: usize,
    pub(super) destinations: Destinations<Waiting>,
    pub(super) writer: JoinHandle<()>,
    pub(super) outbox_task: JoinHandle<()>,
    pub(super) counters: Arc<Counters>,
}

impl Worker {
    pub(super) async fn run(self) -> WebhookStats {
        let Worker {
            mut rx,
            mut close_rx,
            ctx,
            concurrency,
            mut destinations,
            writer,
            outbox_task,
            counters,
        } = self;
        let semaphore = Arc::new(Semaphore::new(concurrency));
        let (abandon_tx, abandon_rx) = watch::channel(false);
        let mut tasks: JoinSet<TaskEnd> = JoinSet::new();
        let mut deadline: Option<Instant> = None;
        let mut feed_open = true;
        let mut reported = Instant::now();
        let depth = metrics::gauge!(telemetry::QUEUE_DEPTH);

        loop {
            // Start everything that can start now.
            let now = Instant::now();
            let now_ms = ctx.now_ms();
            while let Ok(permit) = Arc::clone(&semaphore).try_acquire_owned() {
                let expired = |w: &Waiting| ctx.is_expired(w.committed.enqueued_ms, now_ms);
                let Some(next) = destinations.next(now, expired) else {
                    break;
                };
                tasks.spawn(process(Arc::clone(&ctx), next, abandon_rx.clone(), permit));
            }
            depth.set((destinations.queued() + rx.len()) as f64);
            if now >= reported + REPORT_EVERY {
                reported = now;
                telemetry::destinations(destinations.report());
                if let Some(before) = now.checked_sub(FORGET_IDLE_AFTER) {
                    destinations.forget_idle(before);
                }
            }
            if !feed_open && tasks.is_empty() && destinations.queued() == 0 {
                break;
            }
            // A probe can start only with a permit free; else a task's end wakes the loop.
            let probe_at = (semaphore.available_permits() > 0)
                .then(|| destinations.next_probe_at())
                .flatten();
            let report_at =
                (destinations.queued() > 0 || !tasks.is_empty()).then_some(reported + REPORT_EVERY);
            tokio::select! {
                biased;
                changed = close_rx.changed(), if deadline.is_none() => {
                    deadline = Some(start_drain(changed.is_ok(), &close_rx));
                }
                () = sleep_until_opt(deadline) => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    requeue(&mut destinations, done);
                }
                committed = rx.recv(), if feed_open => match committed {
                    Some(committed) => {
                        let now = Instant::now();
                        queue(&mut destinations, committed, now);
                        for _ in 1..INTAKE_PER_ROUND {
                            match rx.try_recv() {
                                Ok(committed) => queue(&mut destinations, committed, now),
                                Err(_) => break,
                            }
                        }
                        tracing::debug!(
                            queued = destinations.queued(),
                            in_flight = tasks.len(),
                            "webhook firings taken from the outbox"
                        );
                    }
                    None => feed_open = false,
                },
                () = sleep_until_opt(probe_at.into_iter().chain(report_at).min()) => {}
            }
        }

        // Intake is over (closed and drained, or the deadline passed): let what is in flight
        // finish until the deadline, then make it give up.
        let deadline = deadline.unwrap_or_else(|| Instant::now() + DEFAULT_DRAIN_DEADLINE);
        let finished = tokio::time::timeout_at(deadline, async {
            while let Some(done) = tasks.join_next().await {
                requeue(&mut destinations, done);
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
                requeue(&mut destinations, done);
            }
        }
        // Firings never started (or deferred): they stay in the outbox, sent at the next start.
        rx.close();
        let mut left = destinations.drain().len() as u64;
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
        depth.set(0.0);
        telemetry::destinations(destinations.report());
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

/// A committed firing joins its destination's queue.
fn queue(destinations: &mut Destinations<Waiting>, committed: Committed, now: Instant) {
    let index = destinations.slot(&committed.destination, now);
    let waiting = Waiting {
        committed,
        progress: Progress::default(),
    };
    destinations.push_back(index, waiting, now);
}

/// A firing task ended: its destination has room again, and a deferred firing goes back to the
/// front of its queue.
fn requeue(destinations: &mut Destinations<Waiting>, done: Result<TaskEnd, JoinError>) {
    match done {
        Ok((index, deferred)) => {
            destinations.done(index, Instant::now());
            if let Some(waiting) = deferred {
                destinations.push_front(index, waiting);
            }
        }
        Err(error) => {
            if error.is_panic() {
                // Its destination keeps one slot taken; the firing stays in the outbox.
                tracing::error!(%error, "webhook firing task panicked");
            }
        }
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

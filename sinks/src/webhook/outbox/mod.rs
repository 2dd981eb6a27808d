//! The durable outbox: every firing is written here, group-committed, before it counts as fired,
//! and leaves only when it was delivered or its dead letter is on disk.
//!
//! ```text
//! rule engine ─enqueue(firings, token)─▶ [bounded mpsc] ─▶ outbox task ──commit──▶ segments
//!                                                             │ on_durable(tokens)   ▲
//!                                                             ▼                      │ finished
//!                                                        dispatcher ─delivered/dead-lettered┘
//! ```
//!
//! One task owns the files ([`log::OutboxLog`]); their writes run on the blocking pool, one
//! `fsync` for every firing that arrived meanwhile. The producer's token comes back through
//! `on_durable` once its firings are on disk: the binary acks the MQTT message only then, so a
//! firing is never acked without being written. Ingest waits on the outbox only when it is full
//! (`webhook.outbox_max_bytes`): the task then stops taking firings, its bounded channel fills
//! and the producer waits — acks stop, the broker keeps the messages — until deliveries free
//! space. The dispatcher gets each committed firing with its body while fewer than
//! `webhook.queue_capacity` bodies are in memory, and only its [`Locator`] beyond that (it reads
//! the body back when it sends it): memory stays bounded whatever the backlog.

pub mod log;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ccstream_common::Backoff;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

pub use log::{Locator, OutboxLog, Recovered, StoredFiring, Unfinished};

use super::destination::destination_of;
use super::request::WebhookRequest;
use super::telemetry;

/// Called with the tokens of firings once they are on disk.
pub type OnDurable<T> = Box<dyn FnMut(Vec<T>) + Send>;

/// Segment size: big enough that rolling is rare, small enough that one slow firing keeps
/// little finished data on disk.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// The segment size for an outbox of `max_bytes`: [`SEGMENT_BYTES`], or an eighth of a smaller
/// outbox, so that finished segments free space well before it is full.
pub fn segment_bytes(max_bytes: u64) -> u64 {
    SEGMENT_BYTES.min(max_bytes / 8).max(64 * 1024)
}
/// Appends (one per observation that fired) waiting for the task.
pub(crate) const APPEND_QUEUE: usize = 256;
/// Most appends written in one commit.
const APPENDS_PER_COMMIT: usize = 512;
/// Most finished locators recorded in one go.
const FINISHED_PER_ROUND: usize = 8192;
/// How often finished firings are recorded (and their space freed).
const FINISH_EVERY: Duration = Duration::from_millis(20);

/// The firings of one observation and the token to hand back once they are durable.
pub(crate) struct Append<T> {
    pub(crate) firings: Vec<WebhookRequest>,
    pub(crate) origin: Option<u64>,
    pub(crate) token: T,
}

/// A committed firing on its way to the dispatcher.
#[derive(Debug)]
pub(crate) struct Committed {
    /// Where it is; `None` for a firing the outbox refused (too big): it cannot be sent either,
    /// and becomes a dead letter.
    pub(crate) at: Option<Locator>,
    /// The request, unless it is left on disk to bound memory.
    pub(crate) request: Option<WebhookRequest>,
    /// Where it goes ([`destination_of`] its url).
    pub(crate) destination: String,
    /// When it was first written, ms since the epoch.
    pub(crate) enqueued_ms: u64,
}

impl Committed {
    /// A firing an earlier run left, its body on disk.
    pub(crate) fn recovered(unfinished: Unfinished) -> Self {
        Self {
            at: Some(unfinished.at),
            request: None,
            destination: unfinished.destination,
            enqueued_ms: unfinished.enqueued_ms,
        }
    }
}

/// What the outbox shows the rest of the service.
#[derive(Debug, Default)]
pub struct OutboxStatus {
    full: AtomicBool,
    failing: AtomicBool,
    bytes: AtomicU64,
    unfinished: AtomicU64,
    /// Firing bodies held in memory by the dispatcher.
    pub(crate) bodies: AtomicUsize,
}

impl OutboxStatus {
    /// Whether the outbox is at `webhook.outbox_max_bytes` (firings wait, acks stop).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Whether its last commit failed (firings wait until the disk takes them).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Bytes of its files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Firings written and neither delivered nor dead-lettered.
    pub fn unfinished(&self) -> u64 {
        self.unfinished.load(Ordering::Relaxed)
    }

    /// Why ingest waits on the outbox, if it does (for `/readyz`).
    pub fn backpressure_reason(&self) -> Option<String> {
        if self.is_failing() {
            Some("webhook outbox cannot be written (firings wait; acks stop)".to_owned())
        } else if self.is_full() {
            Some(format!(
                "webhook outbox full ({} bytes, webhook.outbox_max_bytes): acks stop until deliveries free space",
                self.bytes()
            ))
        } else {
            None
        }
    }

    fn update(&self, log: &OutboxLog, max_bytes: u64) {
        let bytes = log.bytes();
        let unfinished = log.unfinished();
        self.bytes.store(bytes, Ordering::Relaxed);
        self.unfinished.store(unfinished, Ordering::Relaxed);
        self.full.store(bytes >= max_bytes, Ordering::Relaxed);
        telemetry::outbox(bytes, unfinished, bytes >= max_bytes);
    }
}

/// The outbox task's ends.
pub(crate) struct OutboxTask<T> {
    pub(crate) log: OutboxLog,
    pub(crate) max_bytes: u64,
    /// Bodies handed to the dispatcher in memory, at most.
    pub(crate) memory_bodies: usize,
    pub(crate) appends: mpsc::Receiver<Append<T>>,
    pub(crate) finished: mpsc::UnboundedReceiver<Locator>,
    pub(crate) feed: mpsc::UnboundedSender<Committed>,
    pub(crate) close_rx: watch::Receiver<Option<Duration>>,
    pub(crate) on_durable: OnDurable<T>,
    pub(crate) status: Arc<OutboxStatus>,
}

impl<T: Send + 'static> OutboxTask<T> {
    /// Runs until intake is closed and the dispatcher is done with every firing it was given.
    pub(crate) async fn run(self) {
        let OutboxTask {
            log,
            max_bytes,
            memory_bodies,
            mut appends,
            mut finished,
            feed,
            mut close_rx,
            mut on_durable,
            status,
        } = self;
        let mut log = Some(log);
        let mut feed = Some(feed);
        let mut appends_open = true;
        let mut finished_open = true;
        let mut closing = false;
        // Appends taken and not yet written: while the outbox is full they wait here (at most
        // one commit's worth), and the producer waits on the channel behind them.
        let mut batch: Vec<Append<T>> = Vec::new();
        let mut done: Vec<Locator> = Vec::new();
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(FINISH_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        if let Some(log) = &log {
            status.update(log, max_bytes);
        }
        while appends_open || finished_open || !batch.is_empty() {
            // Once closing, what was taken is written even past the bound: its producers were
            // told it was taken (a shutdown overshoots by at most the channel's appends).
            let room = closing || !status.is_full();
            let want = APPENDS_PER_COMMIT.saturating_sub(batch.len());
            let take = appends_open && room && want > 0;
            let watch_close = appends_open && !closing;
            if finished_open || watch_close || take {
                tokio::select! {
                    biased;
                    // Finished firings are taken on a tick, not as each one comes: they only
                    // free space, and a wake-up per delivery costs more than the delivery's
                    // share of a tick.
                    _ = tick.tick(), if finished_open && appends_open => {}
                    // Once intake is over, the dispatcher's end (its last sender gone) is
                    // seen at once.
                    n = finished.recv_many(&mut done, FINISHED_PER_ROUND), if finished_open && !appends_open => {
                        finished_open = n > 0;
                    }
                    _ = close_rx.changed(), if watch_close => {
                        // Closed (or every handle gone): take what is buffered, then no more.
                        closing = true;
                        appends.close();
                    }
                    n = appends.recv_many(&mut batch, want), if take => {
                        appends_open = n > 0;
                    }
                }
            } else if !room {
                // Nothing can free space any more (the dispatcher is gone): what is left was
                // never acked, and the broker sends it again after the restart.
                break;
            }
            while done.len() < FINISHED_PER_ROUND {
                match finished.try_recv() {
                    Ok(at) => done.push(at),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        finished_open = false;
                        break;
                    }
                }
            }
            if !done.is_empty() {
                // Indices appended to the `.done` files, without an fsync: page-cache writes of
                // a few bytes, done here rather than on the blocking pool. First, so that the
                // space they free counts for what is written next.
                if let Some(log) = log.as_mut() {
                    if let Err(error) = log.finish(&done) {
                        // Kept unfinished: sent again after a restart, with the same key.
                        telemetry::outbox_commit_failed();
                        tracing::warn!(%error, "cannot record finished webhook firings; they may be sent again after a restart");
                    }
                    status.update(log, max_bytes);
                }
                done.clear();
            }
            let room = closing || !status.is_full();
            if batch.is_empty() || !room {
                if !appends_open && batch.is_empty() {
                    // Nothing more will come: the dispatcher ends once it has what it was given.
                    feed = None;
                }
                continue;
            }
            let Some(mut taken) = log.take() else { break };
            let limit = (!closing).then_some(max_bytes);
            let mut pending = std::mem::take(&mut batch);
            let mut placed = Vec::new();
            let mut failures = 0;
            loop {
                let work = tokio::task::spawn_blocking(move || write(taken, pending, limit));
                let written = match work.await {
                    Ok(written) => written,
                    Err(error) => {
                        tracing::error!(%error, "webhook outbox writer panicked; firings are no longer written");
                        status.failing.store(true, Ordering::Relaxed);
                        return;
                    }
                };
                taken = written.log;
                placed.extend(written.placed);
                pending = written.leftover;
                let Err(error) = written.committed else { break };
                failures += 1;
                status.failing.store(true, Ordering::Relaxed);
                telemetry::outbox_commit_failed();
                let wait = backoff.delay(failures);
                tracing::error!(dir = %taken.dir().display(), %error, retry_in = ?wait, "cannot write the webhook outbox; firings wait (and their messages stay unacked)");
                tokio::time::sleep(wait).await;
            }
            // Appends left because the outbox filled up wait for space.
            batch = pending;
            telemetry::outbox_committed();
            status.failing.store(false, Ordering::Relaxed);
            status.update(&taken, max_bytes);
            tracing::debug!(
                observations = placed.len(),
                waiting = batch.len(),
                bytes = taken.bytes(),
                unfinished = taken.unfinished(),
                "webhook outbox commit"
            );
            log = Some(taken);
            let mut tokens = Vec::with_capacity(placed.len());
            for (firings, token) in placed {
                tokens.push(token);
                for (request, at, enqueued_ms) in firings {
                    let keep =
                        status.bodies.load(Ordering::Relaxed) < memory_bodies || at.is_none();
                    if keep {
                        status.bodies.fetch_add(1, Ordering::Relaxed);
                    }
                    let committed = Committed {
                        at,
                        destination: destination_of(&request.url),
                        enqueued_ms,
                        request: keep.then_some(request),
                    };
                    if let Some(feed) = &feed {
                        // The dispatcher gone early (a panic) leaves the firing in the outbox.
                        let _ = feed.send(committed);
                    }
                }
            }
            if !tokens.is_empty() {
                on_durable(tokens);
            }
            if !appends_open && batch.is_empty() {
                feed = None;
            }
        }
        drop(feed);
        if !batch.is_empty() {
            tracing::warn!(
                observations = batch.len(),
                "webhook firings not written (the outbox stayed full); their messages were not acked and will be redelivered"
            );
        }
        if let Some(log) = &log {
            status.update(log, max_bytes);
            tracing::info!(
                unfinished = log.unfinished(),
                bytes = log.bytes(),
                "webhook outbox closed; unfinished firings are sent at the next start"
            );
        }
    }
}

/// An append as written: each firing with its locator (`None`: refused as too big) and the
/// time it was written, and the producer's token.
type Placed<T> = (Vec<(WebhookRequest, Option<Locator>, u64)>, T);

/// What [`write`] did: the log back, the appends placed (each firing with its locator, `None`
/// when refused as too big), the appends not placed (the outbox is full, or the disk refused a
/// new segment), and whether the commit went through.
struct Written<T> {
    log: OutboxLog,
    placed: Vec<Placed<T>>,
    leftover: Vec<Append<T>>,
    committed: io::Result<()>,
}

/// Places new firings while the outbox is below `limit`, and commits: one `fsync` for all of
/// them.
fn write<T>(mut log: OutboxLog, appended: Vec<Append<T>>, limit: Option<u64>) -> Written<T> {
    let now = ccstream_common::time::now_ms();
    let mut placed = Vec::with_capacity(appended.len());
    let mut appended = appended.into_iter();
    let mut leftover = Vec::new();
    let mut committed = Ok(());
    while let Some(append) = appended.next() {
        if limit.is_some_and(|max| log.bytes() >= max) {
            leftover.push(append);
            leftover.extend(appended);
            break;
        }
        // An append's firings go to one segment, so that a failure leaves none of them placed.
        if let Err(error) = log.roll_if_needed() {
            leftover.push(append);
            leftover.extend(appended);
            committed = Err(error);
            break;
        }
        let Append {
            firings,
            origin,
            token,
        } = append;
        let mut these = Vec::with_capacity(firings.len());
        for request in firings {
            let stored = StoredFiring {
                enqueued_ms: now,
                origin,
                request,
            };
            let at = match log.append(&stored) {
                Ok(at) => Some(at),
                Err(error) => {
                    // Too big to store (or to send): the dispatcher dead-letters it.
                    tracing::warn!(rule = %stored.request.rule_id, %error, "webhook firing not written to the outbox");
                    None
                }
            };
            these.push((stored.request, at, now));
        }
        placed.push((these, token));
    }
    if committed.is_ok() {
        committed = log.commit();
    }
    Written {
        log,
        placed,
        leftover,
        committed,
    }
}

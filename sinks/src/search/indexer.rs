//! The indexer: a bounded queue, and one task that owns it, batches records into bulk requests
//! and sends them one at a time with classified retries.
//!
//! ```text
//! follower ─send_replayable─▶ [bounded mpsc] ─▶ indexer task: Batcher ─▶ POST _bulk ─▶ OpenSearch
//!   + checkpoint               (waits when full)   (size/count/time)  │  429/5xx/connection:
//! reindex ─send─▶                                                      │    whole again
//! try_send (never waits; overflow counted)                             │  "errors": true: only
//!                                                                      │    the items with 429/5xx
//!                                                                      └─ other item failures ─▶
//!                                                                           callback (awaited;
//!                                                                           binary: errors/)
//! template task: PUT _index_template/<alias>, retried in the background; bulk requests wait
//! for it (records keep queueing) so that no daily index is created without the mappings and
//! the alias.
//! ```
//!
//! One bulk request at a time: with 5 MiB bodies that is tens of MB/s, more than ingest's
//! record rate, and it keeps retry order and the lag simple. Records from the spool
//! ([`IndexerHandle::send_replayable`], fed by [`super::follower`]) are retried without limit:
//! the spool keeps them until a [checkpoint](IndexerHandle::checkpoint) queued after them has
//! run, which happens once each is indexed or refused for good. Other records are given up
//! after `max_retries` and counted as dropped.
//!
//! Shutdown: [`IndexerHandle::close`] (or dropping every handle) stops intake at once; what is
//! queued is flushed until the drain deadline; what is left then is counted as dropped, or,
//! for records from the spool, as left in the spool for the next start.

use crate::intake::{sleep_until_opt, CloseGate, LogLimiter};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::Instrument;

use ccstream_common::Backoff;

use super::bulk::{self, Batcher, IndexNames, Item};
use super::client::{error_reason, Exchange, SearchClient};
use super::config::SearchConfig;
use super::error::{Full, SearchError};
use super::retry::{
    classify_items, classify_status, status_label, FailureReason, ItemOutcome, RequestClass,
};
use super::telemetry::{DropReason, Metrics};
use super::template::{index_template, template_name};

/// Drain deadline used when every handle is dropped without [`IndexerHandle::close`].
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// How often the lag and queue gauges are refreshed while nothing else happens.
const GAUGE_TICK: Duration = Duration::from_secs(1);

/// Called with a record OpenSearch refused for good (a mapping conflict, another 4xx, or
/// rejections until the retries ran out) and the reason (`HTTP 400 mapper_parsing_exception:
/// ...`). The indexer waits for the future before it goes on (and before a
/// [checkpoint](IndexerHandle::checkpoint) after the record is reached): hand the record to
/// something durable, waiting only for room.
pub type ItemFailureFn = Arc<dyn Fn(Bytes, String) -> BoxFuture + Send + Sync>;

/// The future of an [`ItemFailureFn`].
pub type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Run once every record queued before it is indexed or refused for good (and handed to the
/// failure callback); never run when the indexer stops first.
pub type Checkpoint = Box<dyn FnOnce() + Send>;

/// Counts since start, for tests, health checks and the summary returned at shutdown.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IndexerStats {
    /// Records taken into the queue.
    pub queued: u64,
    /// Records dropped because the queue was full.
    pub overflowed: u64,
    /// Records never indexed for any reason but a refusal: overflow (counted here too), sent
    /// after close, retries of whole requests exhausted, drain deadline passed. Records from the
    /// spool left at the deadline are not here but in `left_in_spool`.
    pub dropped: u64,
    /// Records from the spool ([`IndexerHandle::send_replayable`]) not indexed when the drain
    /// deadline passed: the spool keeps them and the next start indexes them.
    pub left_in_spool: u64,
    /// Records indexed.
    pub indexed: u64,
    /// Records refused for good and handed to the failure callback.
    pub item_failures: u64,
    /// Items sent again after a 429/5xx item result.
    pub items_retried: u64,
    /// Bulk requests sent (attempts).
    pub bulk_requests: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    overflowed: AtomicU64,
    dropped: AtomicU64,
    left_in_spool: AtomicU64,
    indexed: AtomicU64,
    item_failures: AtomicU64,
    items_retried: AtomicU64,
    bulk_requests: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> IndexerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IndexerStats {
            queued: get(&self.queued),
            overflowed: get(&self.overflowed),
            dropped: get(&self.dropped),
            left_in_spool: get(&self.left_in_spool),
            indexed: get(&self.indexed),
            item_failures: get(&self.item_failures),
            items_retried: get(&self.items_retried),
            bulk_requests: get(&self.bulk_requests),
        }
    }
}

/// What waits in the queue.
enum Queued {
    Record {
        record: Bytes,
        timestamp_ms: u64,
        received: Instant,
        /// Read from the spool, which keeps it until it is indexed: retried without limit.
        replayable: bool,
    },
    Checkpoint(Checkpoint),
}

/// What the handles share.
struct Shared {
    /// Stops intake; dropped with the last handle, which the consumer also reads as a close.
    gate: CloseGate,
    counters: Arc<Counters>,
    metrics: Metrics,
    overflow_log: LogLimiter,
}

/// The producer side: cheap to clone, never waits.
#[derive(Clone)]
pub struct IndexerHandle {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl fmt::Debug for IndexerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexerHandle")
            .field("queue_depth", &self.queue_depth())
            .field("capacity", &self.tx.max_capacity())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl IndexerHandle {
    /// Queues a record for indexing without waiting. `record` is the JSON observation record
    /// (device object with `thingName`, `timestamp` and `domain`); `timestamp_ms` picks its
    /// daily index. A full queue (or a stopped indexer) drops the record: counted in
    /// `ccstream_search_dropped_total` and logged at most every 10 s.
    pub fn try_send(&self, record: Bytes, timestamp_ms: u64) -> Result<(), Full> {
        let shared = &self.shared;
        if shared.gate.is_closed() {
            return Err(self.dropped(DropReason::Closed));
        }
        let queued = Queued::Record {
            record,
            timestamp_ms,
            received: Instant::now(),
            replayable: false,
        };
        match self.tx.try_send(queued) {
            Ok(()) => {
                Counters::add(&shared.counters.queued, 1);
                shared.metrics.queue_depth.set(self.queue_depth() as f64);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                Counters::add(&shared.counters.overflowed, 1);
                if let Some(dropped) = shared.overflow_log.hit(1) {
                    tracing::warn!(
                        dropped,
                        capacity = self.tx.max_capacity(),
                        "search indexing queue full: records not indexed (logged at most every 10 s)"
                    );
                }
                Err(self.dropped(DropReason::Overflow))
            }
            Err(TrySendError::Closed(_)) => Err(self.dropped(DropReason::Closed)),
        }
    }

    /// Queues a record, waiting while the queue is full: for a producer that may wait
    /// (`ccstream reindex`), unlike ingest. Err only when the indexer stopped (counted as
    /// dropped).
    pub async fn send(&self, record: Bytes, timestamp_ms: u64) -> Result<(), Full> {
        self.send_queued(record, timestamp_ms, false).await
    }

    /// [`send`](Self::send) for a record read from the spool, which keeps it until a
    /// [checkpoint](Self::checkpoint) after it has run: OpenSearch's 429s, 5xx and connection
    /// errors are retried without limit, and at shutdown it is left, not dropped.
    pub async fn send_replayable(&self, record: Bytes, timestamp_ms: u64) -> Result<(), Full> {
        self.send_queued(record, timestamp_ms, true).await
    }

    /// Queues `checkpoint`, waiting while the queue is full; it runs once every record queued
    /// before it is indexed or refused for good. Err when the indexer stopped.
    pub async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Full> {
        if self.shared.gate.is_closed() {
            return Err(Full);
        }
        self.tx
            .send(Queued::Checkpoint(checkpoint))
            .await
            .map_err(|_| Full)
    }

    async fn send_queued(
        &self,
        record: Bytes,
        timestamp_ms: u64,
        replayable: bool,
    ) -> Result<(), Full> {
        // A record from the spool that cannot go in stays there: not a drop.
        let refused = || {
            if replayable {
                Full
            } else {
                self.dropped(DropReason::Closed)
            }
        };
        if self.shared.gate.is_closed() {
            return Err(refused());
        }
        let queued = Queued::Record {
            record,
            timestamp_ms,
            received: Instant::now(),
            replayable,
        };
        match self.tx.send(queued).await {
            Ok(()) => {
                Counters::add(&self.shared.counters.queued, 1);
                self.shared
                    .metrics
                    .queue_depth
                    .set(self.queue_depth() as f64);
                Ok(())
            }
            Err(_) => Err(refused()),
        }
    }

    fn dropped(&self, reason: DropReason) -> Full {
        Counters::add(&self.shared.counters.dropped, 1);
        self.shared.metrics.dropped(reason, 1);
        Full
    }

    /// Stops intake on every clone of this handle at once. The indexer flushes what is queued
    /// until `drain_deadline` has passed, counts what is left as dropped, and its task returns.
    /// A second call does not move the deadline.
    pub fn close(&self, drain_deadline: Duration) {
        self.shared.gate.close(drain_deadline);
    }

    /// Whether intake has stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.gate.is_closed() || self.tx.is_closed()
    }

    /// Records waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Counts since start.
    pub fn stats(&self) -> IndexerStats {
        self.shared.counters.snapshot()
    }
}

/// Starts search indexers.
#[derive(Debug)]
pub struct SearchIndexer;

impl SearchIndexer {
    /// Validates `config`, builds the client and starts the indexer task and the template task
    /// (call inside a Tokio runtime). Nothing here waits for OpenSearch. `on_item_failure`
    /// receives every record refused for good (see [`ItemFailureFn`]). The task returns the
    /// final [`IndexerStats`] after [`IndexerHandle::close`], or after every handle is dropped
    /// (drain deadline [`DEFAULT_DRAIN_DEADLINE`]).
    ///
    /// [`SearchError::NotConfigured`] when `search.url` is not set.
    pub fn start<F>(
        config: &SearchConfig,
        on_item_failure: impl Fn(Bytes, String) -> F + Send + Sync + 'static,
    ) -> Result<(IndexerHandle, JoinHandle<IndexerStats>), SearchError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let client = SearchClient::new(config)?;
        let metrics = Metrics::new();
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (gate, close_rx) = CloseGate::new();
        let (ready_tx, ready_rx) = watch::channel(false);
        let backoff = Backoff::new(
            Duration::from_millis(config.backoff_initial_ms),
            Duration::from_millis(config.backoff_max_ms),
        );
        let template = tokio::spawn(install_template(
            client.clone(),
            template_name(config).to_owned(),
            index_template(config),
            ready_tx,
            backoff,
        ));
        let mut gauge_tick = tokio::time::interval(GAUGE_TICK);
        gauge_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let worker = Worker {
            rx,
            rx_closed: false,
            intake_done: false,
            drain: Drain {
                close_rx,
                deadline: None,
            },
            ready_rx,
            ready: false,
            template,
            client,
            batcher: Batcher::new(
                config.bulk_max_bytes,
                config.bulk_max_actions,
                config.flush_interval(),
            ),
            names: IndexNames::new(config.index_prefix.clone()),
            to_send: None,
            building: Vec::new(),
            after_send: Vec::new(),
            max_retries: config.max_retries,
            backoff,
            on_item_failure: Arc::new(move |record, reason| {
                Box::pin(on_item_failure(record, reason)) as BoxFuture
            }),
            counters: Arc::clone(&counters),
            metrics: metrics.clone(),
            fail_log: LogLimiter::default(),
            retry_log: LogLimiter::default(),
            gauge_tick,
        };
        metrics.queue_depth.set(0.0);
        metrics.queue_age.set(0.0);
        let task = tokio::spawn(worker.run());
        let shared = Arc::new(Shared {
            gate,
            counters,
            metrics,
            overflow_log: LogLimiter::default(),
        });
        Ok((IndexerHandle { tx, shared }, task))
    }
}

/// Puts the index template in place, retrying 429, 5xx and connection errors with backoff for
/// as long as it takes; then tells the indexer to go ahead. A refusal (another 4xx: a bad
/// template, or a user without the right to manage templates) is logged and indexing goes on
/// without it: an operator may have installed the template by hand.
async fn install_template(
    client: SearchClient,
    name: String,
    body: Value,
    ready_tx: watch::Sender<bool>,
    backoff: Backoff,
) {
    let mut failures = 0u32;
    loop {
        let reason = match client.put_template(&name, &body).await {
            Exchange::Response { status, body } => match classify_status(status) {
                RequestClass::Success => {
                    tracing::info!(template = %name, "OpenSearch index template in place");
                    break;
                }
                RequestClass::Fail => {
                    tracing::error!(
                        template = %name,
                        status,
                        reason = %error_reason(&body),
                        "OpenSearch refused the index template; indexing goes on without it \
                         (new daily indices may lack the mappings and the alias)"
                    );
                    break;
                }
                RequestClass::Retry => format!("HTTP {status}: {}", error_reason(&body)),
            },
            Exchange::Failed(reason) => reason,
        };
        failures = failures.saturating_add(1);
        let wait = backoff.delay(failures);
        tracing::warn!(
            template = %name,
            %reason,
            failures,
            retry_in_ms = wait.as_millis() as u64,
            "cannot put the OpenSearch index template yet; records queue until it is in place"
        );
        tokio::time::sleep(wait).await;
    }
    let _ = ready_tx.send(true);
}

/// The close signal and the drain deadline, apart from the rest of the worker's state so that
/// a request future may borrow the client while the deadline is watched.
struct Drain {
    close_rx: watch::Receiver<Option<Duration>>,
    deadline: Option<Instant>,
}

impl Drain {
    /// `asked`: close() was called; otherwise every handle was dropped.
    fn note_close(&mut self, asked: bool) {
        let grace = asked
            .then(|| *self.close_rx.borrow())
            .flatten()
            .unwrap_or(DEFAULT_DRAIN_DEADLINE);
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "search indexer closing: flushing queued records"
        );
        self.deadline = Some(Instant::now() + grace);
    }

    /// Runs `fut` unless the drain deadline passes first (`None`), noting a close on the way.
    async fn bounded<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                changed = self.close_rx.changed(), if self.deadline.is_none() => {
                    self.note_close(changed.is_ok());
                }
                () = sleep_until_opt(self.deadline) => return None,
                out = &mut fut => return Some(out),
            }
        }
    }
}

/// What follows a whole-request failure.
enum Next {
    /// Send it again.
    Again,
    /// Out of retries: the records are dropped and counted.
    GaveUp,
    /// The drain deadline passed.
    Deadline,
}

struct Worker {
    rx: mpsc::Receiver<Queued>,
    rx_closed: bool,
    /// The queue is closed and empty.
    intake_done: bool,
    drain: Drain,
    ready_rx: watch::Receiver<bool>,
    /// The template is in place (or given up): bulk requests may go.
    ready: bool,
    template: JoinHandle<()>,
    client: SearchClient,
    batcher: Batcher,
    names: IndexNames,
    /// A full batch waiting to be sent (the template is not in place yet).
    to_send: Option<Vec<Item>>,
    /// Checkpoints after the items in `batcher`, and after those in `to_send`.
    building: Vec<Checkpoint>,
    after_send: Vec<Checkpoint>,
    max_retries: u32,
    backoff: Backoff,
    on_item_failure: ItemFailureFn,
    counters: Arc<Counters>,
    metrics: Metrics,
    fail_log: LogLimiter,
    retry_log: LogLimiter,
    gauge_tick: Interval,
}

impl Worker {
    async fn run(mut self) -> IndexerStats {
        loop {
            if self.drain.deadline.is_some() && !self.rx_closed {
                // Intake stops: what is queued can still be received, nothing more comes.
                self.rx.close();
                self.rx_closed = true;
            }
            if self.ready {
                let batch = match self.to_send.take() {
                    Some(batch) => Some((batch, std::mem::take(&mut self.after_send))),
                    None if self.batcher.ready(Instant::now())
                        || (self.intake_done && !self.batcher.is_empty()) =>
                    {
                        Some((self.batcher.take(), std::mem::take(&mut self.building)))
                    }
                    None => None,
                };
                if let Some((batch, checkpoints)) = batch {
                    if !self.deliver(batch).await {
                        break;
                    }
                    checkpoints.into_iter().for_each(|checkpoint| checkpoint());
                    self.refresh_gauges();
                    continue;
                }
            }
            if self.intake_done && self.batcher.is_empty() && self.to_send.is_none() {
                break;
            }
            let can_take = !self.intake_done && self.to_send.is_none() && !self.batcher.is_full();
            let flush_at = if self.ready {
                self.batcher.due_at()
            } else {
                None
            };
            // `biased;`: a close and the deadline are seen before more work is taken.
            tokio::select! {
                biased;
                changed = self.drain.close_rx.changed(), if self.drain.deadline.is_none() => {
                    self.drain.note_close(changed.is_ok());
                }
                () = sleep_until_opt(self.drain.deadline) => break,
                changed = self.ready_rx.changed(), if !self.ready => {
                    // A template task that ended without a word (it panicked): go ahead.
                    self.ready = changed.is_err() || *self.ready_rx.borrow();
                }
                queued = self.rx.recv(), if can_take => match queued {
                    Some(queued) => {
                        self.take(queued);
                        // Take what else is waiting, up to a full batch, in one wake-up.
                        while self.to_send.is_none() && !self.batcher.is_full() {
                            match self.rx.try_recv() {
                                Ok(queued) => self.take(queued),
                                Err(_) => break,
                            }
                        }
                        self.metrics.queue_depth.set(self.rx.len() as f64);
                    }
                    None => self.intake_done = true,
                },
                () = sleep_until_opt(flush_at) => {}
                _ = self.gauge_tick.tick() => self.refresh_gauges(),
            }
        }
        self.finish()
    }

    /// Takes a record into the batcher, or a checkpoint after what it holds (`to_send` is
    /// empty whenever something is taken).
    fn take(&mut self, queued: Queued) {
        match queued {
            Queued::Record {
                record,
                timestamp_ms,
                received,
                replayable,
            } => {
                let item = Item {
                    index: self.names.get(timestamp_ms),
                    record,
                    received,
                    replayable,
                };
                if let Some(full) = self.batcher.push(item, received) {
                    self.to_send = Some(full);
                    self.after_send = std::mem::take(&mut self.building);
                }
            }
            // Nothing before it is unfinished: a delivery is awaited, never left in flight.
            Queued::Checkpoint(checkpoint) if self.batcher.is_empty() => checkpoint(),
            Queued::Checkpoint(checkpoint) => self.building.push(checkpoint),
        }
    }

    /// Sends `items` until each is indexed, refused for good, or out of retries. `false`: the
    /// drain deadline passed first (what was left is counted as dropped).
    async fn deliver(&mut self, mut items: Vec<Item>) -> bool {
        let mut retries = 0u32;
        loop {
            self.set_queue_age(items.first().map(|item| item.received));
            let span = tracing::info_span!("search_bulk", items = items.len(), retries);
            let body = bulk::encode(&items);
            let started = Instant::now();
            let Some(exchange) = self
                .drain
                .bounded(self.client.bulk(body).instrument(span))
                .await
            else {
                self.left_at_deadline(&items);
                return false;
            };
            self.metrics
                .bulk_duration
                .record(started.elapsed().as_secs_f64());
            Counters::add(&self.counters.bulk_requests, 1);
            retries += 1;

            // The reason to send the whole request again; every other outcome ends here or
            // continues with the items to retry.
            let reason = match exchange {
                Exchange::Failed(reason) => {
                    self.metrics.bulk_request("error");
                    reason
                }
                Exchange::Response { status, body } => match classify_status(status) {
                    RequestClass::Retry => {
                        self.metrics.bulk_request(status_label(status, false));
                        format!("HTTP {status}: {}", error_reason(&body))
                    }
                    // Credentials, permissions, a wrong URL, a request too large: an operator's
                    // fix, and the spool keeps its records meanwhile. (A 400 is the request
                    // itself, which sending again would not mend.)
                    RequestClass::Fail
                        if status != 400 && items.iter().any(|item| item.replayable) =>
                    {
                        self.metrics.bulk_request(status_label(status, false));
                        format!("HTTP {status}: {}", error_reason(&body))
                    }
                    RequestClass::Fail => {
                        self.metrics.bulk_request(status_label(status, false));
                        let detail = format!(
                            "bulk request refused: HTTP {status}: {}",
                            error_reason(&body)
                        );
                        let mut items = items.into_iter();
                        while let Some(item) = items.next() {
                            if let Err(item) =
                                self.fail(item, FailureReason::Other, detail.clone()).await
                            {
                                let mut rest: Vec<Item> = items.collect();
                                rest.push(item);
                                self.left_at_deadline(&rest);
                                return false;
                            }
                        }
                        return true;
                    }
                    RequestClass::Success => {
                        let parsed = bulk::parse_response(&body)
                            .ok()
                            .and_then(|r| Some((r.errors, classify_items(&r, items.len())?)));
                        match parsed {
                            Some((errors, outcomes)) => {
                                self.metrics.bulk_request(status_label(status, errors));
                                let again = match self.sort_items(items, outcomes, retries).await {
                                    Ok(Some(again)) => again,
                                    Ok(None) => return true,
                                    Err(()) => return false,
                                };
                                items = again;
                                if !self.pause(retries).await {
                                    self.left_at_deadline(&items);
                                    return false;
                                }
                                continue;
                            }
                            // A 2xx we cannot read item by item (a proxy's page, a truncated
                            // body): nothing says what was indexed, so all of it goes again.
                            None => {
                                self.metrics.bulk_request("error");
                                format!("HTTP {status} with an unreadable bulk response")
                            }
                        }
                    }
                },
            };
            match self.retry_whole(retries, &items, &reason).await {
                Next::Again => {}
                Next::GaveUp => return true,
                Next::Deadline => return false,
            }
        }
    }

    /// After retryable failure number `retries` of a whole request: waits the backoff, or gives
    /// the items up (out of retries, or the drain deadline passed).
    async fn retry_whole(&mut self, retries: u32, items: &[Item], reason: &str) -> Next {
        // The spool keeps replayable records until they are indexed: no limit for them.
        if retries > self.max_retries && !items.iter().any(|item| item.replayable) {
            tracing::error!(
                records = items.len(),
                retries = retries - 1,
                %reason,
                "OpenSearch bulk request failed; its records are not indexed (the object store has them)"
            );
            self.drop_items(DropReason::Unavailable, items.len());
            return Next::GaveUp;
        }
        if let Some(similar) = self.retry_log.hit(1) {
            tracing::warn!(
                records = items.len(),
                retry = retries,
                %reason,
                similar,
                "OpenSearch bulk request failed; retrying (logged at most every 10 s)"
            );
        }
        if !self.pause(retries).await {
            self.left_at_deadline(items);
            return Next::Deadline;
        }
        Next::Again
    }

    /// Counts the indexed, hands on the refused, and returns the items to send again (`None`
    /// when there are none). `next_retry`: the retry those items would be; past `max_retries`
    /// they are refused for good (`rejected`), unless they are from the spool. `Err`: the
    /// drain deadline passed while the failure callback waited (the rest is counted).
    async fn sort_items(
        &mut self,
        items: Vec<Item>,
        outcomes: Vec<ItemOutcome>,
        next_retry: u32,
    ) -> Result<Option<Vec<Item>>, ()> {
        let mut indexed = 0u64;
        let mut again = Vec::new();
        let mut last_detail = String::new();
        let mut pairs = items.into_iter().zip(outcomes);
        while let Some((item, outcome)) = pairs.next() {
            let failed = match outcome {
                ItemOutcome::Indexed => {
                    indexed += 1;
                    Ok(())
                }
                ItemOutcome::Failed { reason, detail } => self.fail(item, reason, detail).await,
                ItemOutcome::Retry { detail } => {
                    if next_retry > self.max_retries && !item.replayable {
                        let detail =
                            format!("still rejected after {} retries: {detail}", next_retry - 1);
                        self.fail(item, FailureReason::Rejected, detail).await
                    } else {
                        last_detail = detail;
                        again.push(item);
                        Ok(())
                    }
                }
            };
            if let Err(item) = failed {
                again.push(item);
                again.extend(pairs.map(|(item, _)| item));
                Counters::add(&self.counters.indexed, indexed);
                self.metrics.indexed.increment(indexed);
                self.left_at_deadline(&again);
                return Err(());
            }
        }
        Counters::add(&self.counters.indexed, indexed);
        self.metrics.indexed.increment(indexed);
        if again.is_empty() {
            return Ok(None);
        }
        let n = again.len() as u64;
        Counters::add(&self.counters.items_retried, n);
        self.metrics.items_retried.increment(n);
        tracing::debug!(
            items = n,
            retry = next_retry,
            reason = %last_detail,
            "OpenSearch rejected bulk items; sending only those again"
        );
        Ok(Some(again))
    }

    /// Waits the backoff before retry `retry`; `false` if the drain deadline passed first.
    async fn pause(&mut self, retry: u32) -> bool {
        let wait = self.backoff.delay(retry);
        self.drain.bounded(tokio::time::sleep(wait)).await.is_some()
    }

    /// A record refused for good: counted, logged (limited) and handed to the callback, which
    /// is waited for until the drain deadline (`Err`: it passed first; a copy of the item back).
    async fn fail(
        &mut self,
        item: Item,
        reason: FailureReason,
        detail: String,
    ) -> Result<(), Item> {
        Counters::add(&self.counters.item_failures, 1);
        self.metrics.item_failed(reason);
        if let Some(similar) = self.fail_log.hit(1) {
            tracing::warn!(
                reason = reason.label(),
                detail = %detail,
                index = %item.index,
                similar,
                "OpenSearch refused a record; handed to the failure callback (logged at most every 10 s)"
            );
        }
        let handed = (self.on_item_failure)(Bytes::clone(&item.record), detail);
        match self.drain.bounded(handed).await {
            Some(()) => Ok(()),
            None => Err(item),
        }
    }

    /// The drain deadline passed with `items` unfinished: records from the spool stay there
    /// for the next start; the others are dropped.
    fn left_at_deadline(&self, items: &[Item]) {
        let in_spool = items.iter().filter(|item| item.replayable).count();
        self.count_left(items.len(), in_spool);
    }

    fn count_left(&self, total: usize, in_spool: usize) {
        if in_spool > 0 {
            Counters::add(&self.counters.left_in_spool, in_spool as u64);
        }
        self.drop_items(DropReason::Shutdown, total - in_spool);
    }

    fn drop_items(&self, reason: DropReason, count: usize) {
        if count > 0 {
            Counters::add(&self.counters.dropped, count as u64);
            self.metrics.dropped(reason, count as u64);
        }
    }

    fn oldest(&self) -> Option<Instant> {
        self.to_send
            .as_ref()
            .and_then(|batch| batch.first().map(|item| item.received))
            .or_else(|| self.batcher.oldest())
    }

    fn set_queue_age(&self, oldest: Option<Instant>) {
        let age = oldest.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.metrics.queue_age.set(age);
    }

    fn refresh_gauges(&self) {
        self.set_queue_age(self.oldest());
        self.metrics.queue_depth.set(self.rx.len() as f64);
    }

    /// The loop is over: the queue is closed and flushed, or the drain deadline passed. Counts
    /// what was left as dropped.
    fn finish(mut self) -> IndexerStats {
        self.template.abort();
        let mut left: Vec<bool> = self
            .batcher
            .take()
            .iter()
            .chain(self.to_send.take().iter().flatten())
            .map(|item| item.replayable)
            .collect();
        self.rx.close();
        while let Ok(queued) = self.rx.try_recv() {
            if let Queued::Record { replayable, .. } = queued {
                left.push(replayable);
            }
        }
        let in_spool = left.iter().filter(|&&replayable| replayable).count();
        if left.len() > in_spool {
            tracing::warn!(
                records = left.len() - in_spool,
                "search indexer drain deadline passed; queued records not indexed"
            );
        }
        if in_spool > 0 {
            tracing::info!(
                records = in_spool,
                "search indexer drain deadline passed; the spool keeps the records not indexed \
                 for the next start"
            );
        }
        self.count_left(left.len(), in_spool);
        self.metrics.queue_depth.set(0.0);
        self.metrics.queue_age.set(0.0);
        let stats = self.counters.snapshot();
        tracing::info!(?stats, "search indexer stopped");
        stats
    }
}

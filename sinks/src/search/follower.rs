//! The follower: indexes the observations the spool has committed, in order, from the spool's
//! cursor ([`IndexLog`]), the way a consumer follows a log.
//!
//! ```text
//! IndexLog::next_chunk ─▶ read the frames (blocking pool) ─▶ IndexerHandle::send_replayable ×n
//!        ▲                                                   IndexerHandle::checkpoint ──┐
//!        └── changed() after each group commit                                           │
//!  IndexLog::indexed(id, end, n) ◀── runs when the indexer has finished those records ◀──┘
//!  cursor saved at most every CURSOR_EVERY; gauges every GAUGE_EVERY
//! ```
//!
//! It reads ahead of the index by at most the indexer's queue (`send_replayable` waits when it
//! is full), so an outage costs memory bounded by `search.queue_capacity`, and what is behind
//! waits on disk, in the spool. Ingest never waits for it.

use std::sync::Arc;
use std::time::Duration;

use ccstream_common::time::now_ms;
use ccstream_common::Backoff;
use metrics::gauge;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::indexer::IndexerHandle;
use super::telemetry::{LAG_SECONDS, RECORDS_BEHIND};
use crate::intake::LogLimiter;
use crate::objects::index_log::{Chunk, ChunkData, IndexLog};
use crate::objects::readback::record_timestamp;

/// Bytes of a spool file read at once, at most (unless one record is larger).
pub const CHUNK_BYTES: u64 = 1024 * 1024;
/// The cursor is written at most this often while the index makes progress.
const CURSOR_EVERY: Duration = Duration::from_millis(500);
/// The lag gauges are refreshed this often.
const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// Backoff while a spool file cannot be read.
const READ_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// What the follower did, returned when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FollowerStats {
    /// Records handed to the indexer.
    pub sent: u64,
    /// Records the indexer finished (indexed or refused for good).
    pub done: u64,
}

/// Records of one chunk the indexer finished.
struct Done {
    id: String,
    end: u64,
    records: u64,
    /// The file cannot be read past `end`: the rest is a gap, once these records are indexed.
    damaged: bool,
}

/// Stops the follower; see [`start`].
#[derive(Debug)]
pub struct Follower {
    stop: watch::Sender<bool>,
    task: JoinHandle<FollowerStats>,
}

impl Follower {
    /// Stops reading the spool; what was handed to the indexer is still followed until the
    /// indexer stops (close it after this), then the cursor is written and the task ends.
    pub async fn stop(self) -> FollowerStats {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }

    /// Asks the follower to stop reading, without waiting (see [`stop`](Self::stop)).
    pub fn begin_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the task after [`begin_stop`](Self::begin_stop) and the indexer's close.
    pub async fn join(self) -> FollowerStats {
        self.task.await.unwrap_or_default()
    }
}

/// Starts following `log` into `indexer` (call inside a Tokio runtime).
pub fn start(log: Arc<IndexLog>, indexer: IndexerHandle) -> Follower {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(log, indexer, stop_rx));
    Follower { stop, task }
}

async fn run(
    log: Arc<IndexLog>,
    indexer: IndexerHandle,
    mut stop_rx: watch::Receiver<bool>,
) -> FollowerStats {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut done_tx = Some(done_tx);
    let mut stats = FollowerStats::default();
    let mut cursor_dirty = false;
    let mut cursor_saved = Instant::now();
    // A task of its own: the follower waits for room in the indexer's queue for as long as
    // OpenSearch is away, which is when the lag matters.
    let gauges = tokio::spawn(refresh_gauges_every(Arc::clone(&log), GAUGE_EVERY));
    let read_log = LogLimiter::default();
    let mut read_failures = 0u32;

    loop {
        // What the indexer finished meanwhile, even while there is always more to read.
        while let Ok(done) = done_rx.try_recv() {
            finished(&log, &mut stats, &mut cursor_dirty, done);
        }
        if cursor_dirty && cursor_saved.elapsed() >= CURSOR_EVERY {
            save_cursor(&log).await;
            cursor_dirty = false;
            cursor_saved = Instant::now();
        }
        let chunk = match &done_tx {
            Some(_) if !*stop_rx.borrow() => log.next_chunk(),
            _ => None,
        };
        if let (Some(chunk), Some(tx)) = (chunk, &done_tx) {
            match read(&log, &chunk).await {
                Ok(data) => {
                    read_failures = 0;
                    log.read_to(&chunk.id, if data.damaged { chunk.to } else { data.end });
                    match hand_over(&indexer, &chunk, data, tx).await {
                        Ok(sent) => stats.sent += sent,
                        // The indexer stopped: nothing more goes in.
                        Err(()) => done_tx = None,
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Deleted to make room (written down as a gap) or moved to failed/.
                    log.forget(&chunk.id);
                }
                Err(e) => {
                    read_failures = read_failures.saturating_add(1);
                    if let Some(similar) = read_log.hit(1) {
                        tracing::error!(error = %e, file = %chunk.id, similar, "cannot read a spool file for the search index; retrying");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(READ_RETRY.delay(read_failures)) => {}
                        changed = stop_rx.changed() => {
                            if changed.is_err() {
                                // Every Follower handle is gone: stop as if asked.
                                done_tx = None;
                            }
                        }
                    }
                }
            }
            continue;
        }
        if *stop_rx.borrow() {
            // No more reading; the checkpoints already queued still report.
            done_tx = None;
        }
        let save_at = cursor_dirty.then(|| cursor_saved + CURSOR_EVERY);
        tokio::select! {
            () = log.changed(), if done_tx.is_some() => {}
            // Progress is written down soon even when nothing else happens.
            () = crate::intake::sleep_until_opt(save_at) => {}
            done = done_rx.recv() => match done {
                Some(done) => finished(&log, &mut stats, &mut cursor_dirty, done),
                // Stopped, and the indexer ran or dropped every checkpoint.
                None => break,
            },
            changed = stop_rx.changed(), if done_tx.is_some() => {
                if changed.is_err() {
                    done_tx = None;
                }
            }
        }
    }
    gauges.abort();
    save_cursor(&log).await;
    refresh_gauges(&log);
    tracing::info!(?stats, "search follower stopped");
    stats
}

fn finished(log: &IndexLog, stats: &mut FollowerStats, cursor_dirty: &mut bool, done: Done) {
    log.indexed(&done.id, done.end, done.records);
    if done.damaged {
        tracing::error!(file = %done.id, "a spool file is damaged past its last readable record; the rest is written down as an index gap");
        log.give_up_rest(&done.id);
    }
    stats.done += done.records;
    *cursor_dirty = true;
}

async fn read(log: &Arc<IndexLog>, chunk: &Chunk) -> std::io::Result<ChunkData> {
    let log = Arc::clone(log);
    let chunk = chunk.clone();
    tokio::task::spawn_blocking(move || log.read_chunk(&chunk, CHUNK_BYTES))
        .await
        .map_err(std::io::Error::other)?
}

/// Sends the chunk's records and a checkpoint after them; the number sent, or `Err` when the
/// indexer stopped.
async fn hand_over(
    indexer: &IndexerHandle,
    chunk: &Chunk,
    data: ChunkData,
    done_tx: &mpsc::UnboundedSender<Done>,
) -> Result<u64, ()> {
    let records = data.records.len() as u64;
    let damaged = data.damaged;
    for record in data.records {
        let timestamp = record_timestamp(&record).unwrap_or(chunk.created_ms);
        indexer
            .send_replayable(record, timestamp)
            .await
            .map_err(|_| ())?;
    }
    let done = Done {
        id: chunk.id.clone(),
        end: data.end,
        records,
        damaged,
    };
    let tx = done_tx.clone();
    indexer
        .checkpoint(Box::new(move || {
            let _ = tx.send(done);
        }))
        .await
        .map_err(|_| ())?;
    Ok(records)
}

async fn save_cursor(log: &Arc<IndexLog>) {
    let log = Arc::clone(log);
    let saved = tokio::task::spawn_blocking(move || log.save_cursor())
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    if let Err(e) = saved {
        // The index is ahead of what the cursor says: a restart indexes some records again,
        // under the same ids.
        tracing::warn!(error = %e, "cannot write the search index cursor");
    }
}

async fn refresh_gauges_every(log: Arc<IndexLog>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        refresh_gauges(&log);
    }
}

fn refresh_gauges(log: &IndexLog) {
    let behind = log.behind(now_ms());
    gauge!(LAG_SECONDS).set(behind.lag_secs);
    gauge!(RECORDS_BEHIND).set(behind.records as f64);
}

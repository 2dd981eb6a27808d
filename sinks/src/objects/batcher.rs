//! The batcher: a dedicated std thread that appends records to the spool with group commit,
//! acks them after the `fsync`, and rolls batches by size and age.
//!
//! A plain thread, not a tokio task: its work is blocking file I/O (`write`, `fsync`), and an
//! `fsync` can take milliseconds; on a runtime worker that would stall unrelated tasks.
//!
//! The loop: wait for a record (or the next batch's age deadline); take every record already
//! queued, up to a cap; frame them into their batch's buffer (records handed over in a
//! [`RecordBatch`] come framed, and are copied as they are); write and `fsync` each touched
//! file once; hand the round's tokens to `on_commit` in arrival order; pass sealed batches to
//! the uploader. The next round starts as soon as the `fsync` returns. Only a round that finds
//! a stream going on (records arrived during the last commit, and more behind the first)
//! lingers, up to `commit_linger` and never past a quarter millisecond that brought nothing
//! ([`Batcher::linger`]): a lone record, and a broker's in-flight window that is all in the
//! round (DESIGN.md: the window ÷ the commit latency caps a connection), are committed at once
//! or after one empty slice.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccstream_common::time::now_ms;
use ccstream_common::Backoff;
use metrics::{counter, histogram};
use tokio::sync::mpsc::Sender;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{error, info, warn};

use super::config::{Compression, Delimiter};
use super::index_log::IndexLog;
use super::key::{object_key, random_suffix};
use super::record::RecordKind;
use super::record_batch::{Entry, RecordBatch};
use super::spool::{sync_dir, SealedSpool, SpoolFile, SpoolHeader, FORMAT_VERSION};
use super::state::Shared;
use super::telemetry;

/// Records taken into one group commit, at most.
pub const COMMIT_MAX_RECORDS: usize = 4096;
/// Record bytes taken into one group commit, at most.
pub const COMMIT_MAX_BYTES: usize = 4 * 1024 * 1024;
/// How often a backpressured batcher looks again (it is also woken when space is freed).
const BACKPRESSURE_POLL: Duration = Duration::from_millis(100);
/// How long a lingering round sleeps between looks at the queue: short enough that a paused
/// stream costs little, long enough that a look is not a wake-up per record.
const LINGER_SLICE: Duration = Duration::from_micros(250);
/// Backoff while the spool disk fails: from 50 ms up to 5 s.
const DISK_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
/// Rounds committed at shutdown from what is still queued, at most (the producers have
/// stopped by then; this covers the queue's capacity).
const SHUTDOWN_ROUNDS: usize = 8;
/// Attempts to write the last round during shutdown before giving up (its records stay
/// unacked, so the broker redelivers them).
const SHUTDOWN_DISK_ATTEMPTS: u32 = 3;

/// Called on the batcher thread with the tokens of each group commit, in arrival order, after
/// the `fsync` that made their records durable. It should return quickly (queue the acks).
pub type OnCommit<T> = Box<dyn FnMut(Vec<T>) + Send>;

/// When a batch rolls. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollPolicy {
    /// Object size (records and delimiters, before compression) a batch does not pass.
    pub max_bytes: u64,
    /// Age since the batch's first record at which it rolls.
    pub max_age: Duration,
}

impl RollPolicy {
    /// Whether to seal a batch of `object_bytes` in `records` records before adding `add` bytes:
    /// yes when it would pass `max_bytes`. A record larger than `max_bytes` on its own still
    /// goes into an (empty) batch: it becomes an object alone.
    pub fn roll_before(&self, object_bytes: u64, records: usize, add: u64) -> bool {
        records > 0 && object_bytes.saturating_add(add) > self.max_bytes
    }

    /// Whether a batch of `object_bytes` is full and rolls now.
    pub fn is_full(&self, object_bytes: u64) -> bool {
        object_bytes >= self.max_bytes
    }

    /// When a batch opened at `opened` rolls by age.
    pub fn deadline(&self, opened: Instant) -> Instant {
        opened + self.max_age
    }

    /// Whether a batch opened at `opened` has reached its age at `now`.
    pub fn is_expired(&self, opened: Instant, now: Instant) -> bool {
        now >= self.deadline(opened)
    }
}

/// The batcher's settings.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// The spool directory.
    pub spool_dir: PathBuf,
    /// Key prefix.
    pub prefix: String,
    /// Stack name in keys.
    pub stack: String,
    /// Roll rules.
    pub policy: RollPolicy,
    /// Delimiter written into new batches' headers.
    pub delimiter: Delimiter,
    /// Compression written into new batches' headers (and keys).
    pub compression: Compression,
    /// Records per group commit, at most.
    pub commit_max_records: usize,
    /// Record bytes per group commit, at most.
    pub commit_max_bytes: usize,
    /// How long a round taken while records keep arriving may wait for more before its commit
    /// ([`Batcher::linger`]); zero commits at once.
    pub commit_linger: Duration,
}

/// What producers send the batcher.
pub(crate) enum Msg<T> {
    Record {
        record: Vec<u8>,
        kind: RecordKind,
        /// Written with the record, read back by recovery ([`super::spool::Recovered::ids`]).
        id: Option<u64>,
        /// When the record was received; a batch it opens is named after it (else: now).
        at_ms: Option<u64>,
        token: T,
    },
    /// A token without a record: acked with the round that takes it, so after every record
    /// queued before it is durable.
    Marker { token: T },
    /// Records framed by their producer, and markers, in order. Taken into one round whole,
    /// which may so pass the round's caps by one batch. The permit is the batch's room in the
    /// queue, freed when the batch is taken.
    Batch {
        batch: RecordBatch<T>,
        room: OwnedSemaphorePermit,
    },
    /// Look at the shutdown flag.
    Wake,
}

struct OpenBatch {
    file: SpoolFile,
    opened: Instant,
}

/// Per-round tallies, by kind.
struct Round<T> {
    /// Records' and markers' tokens, in arrival order.
    tokens: Vec<T>,
    /// Markers among `tokens`.
    markers: usize,
    records: [u64; 2],
    bytes: [u64; 2],
    taken_bytes: usize,
}

impl<T> Default for Round<T> {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            markers: 0,
            records: [0; 2],
            bytes: [0; 2],
            taken_bytes: 0,
        }
    }
}

fn slot(kind: RecordKind) -> usize {
    match kind {
        RecordKind::Observations => 0,
        RecordKind::Errors => 1,
    }
}

pub(crate) struct Batcher<T> {
    cfg: BatcherConfig,
    rx: Receiver<Msg<T>>,
    sealed_tx: Sender<SealedSpool>,
    on_commit: OnCommit<T>,
    shared: Arc<Shared>,
    /// The search index's view of the observation files, when it follows the spool.
    index_log: Option<Arc<IndexLog>>,
    open: [Option<OpenBatch>; 2],
    /// Batches sealed in this round, committed with it and then handed to the uploader.
    sealing: Vec<SpoolFile>,
    /// A spool file was created since the last commit: the directory needs an `fsync` too.
    dir_dirty: bool,
    /// A record could not be written (shutting down with a failing disk): markers are no
    /// longer acked, since the record a marker follows may be the one lost.
    refused_records: bool,
}

impl<T: Send + 'static> Batcher<T> {
    pub(crate) fn new(
        cfg: BatcherConfig,
        rx: Receiver<Msg<T>>,
        sealed_tx: Sender<SealedSpool>,
        on_commit: OnCommit<T>,
        shared: Arc<Shared>,
        index_log: Option<Arc<IndexLog>>,
    ) -> Self {
        Self {
            cfg,
            rx,
            sealed_tx,
            on_commit,
            shared,
            index_log,
            open: [None, None],
            sealing: Vec::new(),
            dir_dirty: false,
            refused_records: false,
        }
    }

    /// The thread's body; returns after shutdown (or when every sender is gone), with every
    /// batch sealed and handed over.
    pub(crate) fn run(mut self) {
        // A record that arrived while the last round was being committed: the stream goes on.
        let mut carried = None;
        loop {
            if self.shared.is_shutting_down() {
                return self.finish(carried);
            }
            if self.shared.over_limit() {
                // Files kept only for the index go first: ingest never waits on the index.
                if !self.index_log.as_ref().is_some_and(|log| log.make_room()) {
                    self.hold_back();
                }
                continue;
            }
            if self.shared.is_backpressured() {
                info!(
                    spool_bytes = self.shared.spool_bytes(),
                    "objects spool below its limit again; taking observations"
                );
                self.shared.set_backpressure(false, None);
            }
            let now = Instant::now();
            if self.roll_expired(now) {
                self.commit_round(Round::default());
            }
            let streaming = carried.is_some();
            let first = match (carried.take(), self.next_deadline()) {
                (Some(msg), _) => Ok(msg),
                (None, Some(deadline)) => self
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(now)),
                (None, None) => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match first {
                Ok(msg) => {
                    let mut round = Round::default();
                    self.take(msg, &mut round);
                    self.drain_queued(&mut round);
                    // One record carried over a commit alone is no stream yet.
                    if streaming && round.tokens.len() > 1 {
                        self.linger(&mut round, now);
                    }
                    self.commit_round(round);
                    carried = self.rx.try_recv().ok();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.finish(None),
            }
        }
    }

    /// A round taken while records keep arriving (some came during the last commit, and more
    /// were queued behind the first) waits up to `commit_linger` from `started` for more, a
    /// slice at a time, so that one `fsync` and one ack flush cover more records: per record,
    /// the commit's system calls, the disk's interrupts and the wake-ups of the threads that
    /// ack cost more than everything else the spool does. It stops at a slice that brought nothing (the stream paused, or the
    /// broker's window of unacked messages is all in this round, so more waiting gains
    /// nothing), at the round's caps and at shutdown. A lone record, or the first after a
    /// pause, is committed at once.
    fn linger(&mut self, round: &mut Round<T>, started: Instant) {
        let until = started + self.cfg.commit_linger;
        loop {
            let now = Instant::now();
            if now >= until || self.is_full(round) || self.shared.is_shutting_down() {
                return;
            }
            std::thread::sleep(LINGER_SLICE.min(until - now));
            let before = round.tokens.len();
            self.drain_queued(round);
            if round.tokens.len() == before {
                return;
            }
        }
    }

    fn is_full(&self, round: &Round<T>) -> bool {
        round.tokens.len() >= self.cfg.commit_max_records
            || round.taken_bytes >= self.cfg.commit_max_bytes
    }

    /// Takes the records already queued, up to one round's cap, without waiting.
    fn drain_queued(&mut self, round: &mut Round<T>) {
        while !self.is_full(round) {
            match self.rx.try_recv() {
                Ok(msg) => self.take(msg, round),
                Err(_) => break,
            }
        }
    }

    /// The spool is over its limit: stop taking records (so nothing more is acked and the broker
    /// keeps the rest), seal the open batches (only stored batches free space), and wait.
    fn hold_back(&mut self) {
        if !self.shared.is_backpressured() {
            let reason = format!(
                "objects spool holds {} bytes, over objects.spool_max_bytes ({}): the object store \
                 is not keeping up, so observations are neither taken nor acked",
                self.shared.spool_bytes(),
                self.shared.spool_max_bytes()
            );
            warn!(%reason, "objects spool full");
            self.shared.set_backpressure(true, Some(reason));
        }
        if self.seal_all() {
            self.commit_round(Round::default());
        }
        self.shared.wait_for_change(BACKPRESSURE_POLL);
    }

    /// Shutdown: commits (and acks) what is already queued — a bounded number of rounds, as
    /// the queue is bounded — unless the spool is full, then seals every batch.
    fn finish(mut self, mut carried: Option<Msg<T>>) {
        for _ in 0..SHUTDOWN_ROUNDS {
            if self.shared.over_limit()
                && !self.index_log.as_ref().is_some_and(|log| log.make_room())
            {
                break;
            }
            let mut round = Round::default();
            if let Some(msg) = carried.take() {
                self.take(msg, &mut round);
            }
            self.drain_queued(&mut round);
            if round.tokens.is_empty() {
                break;
            }
            self.commit_round(round);
        }
        self.seal_all();
        self.commit_round(Round::default());
        // Stopped: intake is over either way (readiness now follows the sink being stopped).
        self.shared.set_backpressure(false, None);
        info!("objects batcher stopped; every batch sealed");
    }

    fn take(&mut self, msg: Msg<T>, round: &mut Round<T>) {
        match msg {
            Msg::Record {
                record,
                kind,
                id,
                at_ms,
                token,
            } => {
                let taken = self.append(kind, record.len(), at_ms, |file| file.push(&record, id));
                self.tally(round, kind, record.len(), token, taken);
            }
            Msg::Marker { token } => self.take_marker(token, round),
            Msg::Batch { batch, room } => {
                // Its room in the queue is free once it is out of the queue.
                drop(room);
                self.take_batch(batch, round);
            }
            Msg::Wake => {}
        }
    }

    /// A producer's [`RecordBatch`], entry by entry as [`take`](Self::take) would.
    fn take_batch(&mut self, batch: RecordBatch<T>, round: &mut Round<T>) {
        let mut at = 0;
        for entry in batch.entries {
            match entry {
                Entry::Record {
                    kind,
                    frame_len,
                    record_len,
                    at_ms,
                    token,
                } => {
                    let Some(frame) = batch.frames.get(at..at + frame_len) else {
                        // Not built by `RecordBatch`: never acked, nor anything after it.
                        error!(
                            frame_len,
                            "a handed-over record's frame is missing; not stored"
                        );
                        self.refused_records = true;
                        continue;
                    };
                    at += frame_len;
                    let taken = self.append(kind, record_len, Some(at_ms), |file| {
                        file.push_frame(frame, record_len);
                    });
                    self.tally(round, kind, record_len, token, taken);
                }
                Entry::Marker { token } => self.take_marker(token, round),
            }
        }
    }

    /// A marker's token joins the round (see [`Msg::Marker`]).
    fn take_marker(&mut self, token: T, round: &mut Round<T>) {
        // Channel order: every record queued before it is in this round or an earlier one, so
        // it is durable when this round's tokens are handed out — unless the spool refused one
        // (disk failing at shutdown): then no marker is acked.
        if self.refused_records {
            return;
        }
        round.markers += 1;
        round.tokens.push(token);
    }

    /// Counts a record the spool `taken` into the round, its token with it; one it could not
    /// take (the disk failing during shutdown) is not acked, nor any marker after it.
    fn tally(&mut self, round: &mut Round<T>, kind: RecordKind, len: usize, token: T, taken: bool) {
        if !taken {
            self.refused_records = true;
            return;
        }
        let k = slot(kind);
        round.records[k] += 1;
        round.bytes[k] += len as u64;
        round.taken_bytes += len;
        round.tokens.push(token);
    }

    /// Adds a `record_len`-byte record to its kind's open batch (`push` frames it there),
    /// rolling first or after as the policy says.
    fn append(
        &mut self,
        kind: RecordKind,
        record_len: usize,
        at_ms: Option<u64>,
        push: impl FnOnce(&mut SpoolFile),
    ) -> bool {
        let k = slot(kind);
        let policy = self.cfg.policy;
        if let Some(open) = &self.open[k] {
            let add = open.file.object_bytes_of(record_len);
            if policy.roll_before(open.file.object_bytes(), open.file.records(), add) {
                self.seal(k);
            }
        }
        if self.open[k].is_none() {
            let Some(file) = self.create(kind, at_ms) else {
                return false;
            };
            self.open[k] = Some(OpenBatch {
                file,
                opened: Instant::now(),
            });
        }
        let Some(open) = &mut self.open[k] else {
            return false;
        };
        push(&mut open.file);
        if policy.is_full(open.file.object_bytes()) {
            self.seal(k);
        }
        true
    }

    /// Creates a new batch's spool file, retrying while the disk fails; `None` only when
    /// shutting down.
    fn create(&mut self, kind: RecordKind, first_record_ms: Option<u64>) -> Option<SpoolFile> {
        let mut attempt = 0;
        loop {
            let created_ms = first_record_ms.unwrap_or_else(now_ms);
            let random = random_suffix();
            let header = SpoolHeader {
                version: FORMAT_VERSION,
                key: object_key(
                    &self.cfg.prefix,
                    kind,
                    &self.cfg.stack,
                    created_ms,
                    &random,
                    self.cfg.compression,
                ),
                created_ms,
                kind,
                delimiter: self.cfg.delimiter,
                compression: self.cfg.compression,
            };
            match SpoolFile::create(&self.cfg.spool_dir, &random, header) {
                Ok(file) => {
                    self.dir_dirty = true;
                    self.shared.add_spool(0, 1);
                    return Some(file);
                }
                Err(e) => {
                    error!(error = %e, dir = %self.cfg.spool_dir.display(), "cannot create a spool file; retrying");
                    counter!(telemetry::SPOOL_WRITE_ERRORS_TOTAL).increment(1);
                    if !self.disk_backoff(attempt) {
                        return None;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Moves the open batch of slot `k` to this round's sealing list.
    fn seal(&mut self, k: usize) {
        if let Some(open) = self.open[k].take() {
            self.sealing.push(open.file);
        }
    }

    /// Seals every open batch; whether there was one.
    fn seal_all(&mut self) -> bool {
        let before = self.sealing.len();
        self.seal(0);
        self.seal(1);
        self.sealing.len() > before
    }

    /// Seals the batches whose age has come; whether there was one.
    fn roll_expired(&mut self, now: Instant) -> bool {
        let before = self.sealing.len();
        for k in 0..self.open.len() {
            if self.open[k]
                .as_ref()
                .is_some_and(|o| self.cfg.policy.is_expired(o.opened, now))
            {
                self.seal(k);
            }
        }
        self.sealing.len() > before
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.open
            .iter()
            .flatten()
            .map(|o| self.cfg.policy.deadline(o.opened))
            .min()
    }

    /// Writes and `fsync`s every touched file (one `fsync` each, whatever the number of
    /// records), then acks the round and hands sealed batches to the uploader.
    fn commit_round(&mut self, round: Round<T>) {
        let mut written = 0u64;
        let mut attempt = 0;
        let durable = loop {
            match self.write_and_sync(&mut written) {
                Ok(()) => break true,
                Err(e) => {
                    error!(error = %e, dir = %self.cfg.spool_dir.display(), "spool write or fsync failed; retrying, nothing acked meanwhile");
                    counter!(telemetry::SPOOL_WRITE_ERRORS_TOTAL).increment(1);
                    if !self.disk_backoff(attempt) {
                        break false;
                    }
                    attempt += 1;
                }
            }
        };
        self.shared.add_spool(written, 0);
        let records = round.tokens.len() - round.markers;
        if durable && records > 0 {
            self.shared
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.shared
                .records
                .fetch_add(records as u64, std::sync::atomic::Ordering::AcqRel);
            counter!(telemetry::SPOOL_COMMITS_TOTAL).increment(1);
            histogram!(telemetry::SPOOL_COMMIT_RECORDS).record(records as f64);
            for kind in [RecordKind::Observations, RecordKind::Errors] {
                let k = slot(kind);
                if round.records[k] > 0 {
                    counter!(telemetry::RECORDS_TOTAL, "kind" => kind.as_str())
                        .increment(round.records[k]);
                    counter!(telemetry::BYTES_TOTAL, "kind" => kind.as_str())
                        .increment(round.bytes[k]);
                }
            }
        }
        // What is durable in each file, sealed or not: after a failed last commit too, so that
        // the sealed files do not wait for records that never reached the disk.
        self.publish_to_index();
        if durable && !round.tokens.is_empty() {
            (self.on_commit)(round.tokens);
        } else if !durable && records > 0 {
            warn!(
                records,
                "spool commit abandoned at shutdown; these observations are not acked and will be redelivered"
            );
        }
        for file in self.sealing.drain(..) {
            let sealed = file.seal();
            self.shared
                .batches_sealed
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            info!(key = %sealed.header.key, records = sealed.records, bytes = sealed.file_bytes, "batch sealed");
            let key = sealed.header.key.clone();
            // Blocking: the uploader takes sealed batches eagerly into its queue, so this waits
            // only when it is far behind — which the spool limit turns into backpressure anyway.
            if self.sealed_tx.blocking_send(sealed).is_err() {
                warn!(%key, "uploader stopped; the batch stays in the spool for the next start");
            }
        }
    }

    /// Tells the index what is durable in the observation files (before a sealed one reaches
    /// the uploader, which asks the index whether it may delete it).
    fn publish_to_index(&self) {
        let Some(log) = &self.index_log else { return };
        let sealing = self.sealing.iter().map(|file| (file, true));
        let open = self.open[slot(RecordKind::Observations)]
            .iter()
            .map(|o| (&o.file, false));
        for (file, sealed) in sealing.chain(open) {
            if file.header().kind == RecordKind::Observations && file.committed() > 0 {
                log.committed(file, sealed);
            }
        }
    }

    fn write_and_sync(&mut self, written: &mut u64) -> std::io::Result<()> {
        for file in self
            .sealing
            .iter_mut()
            .chain(self.open.iter_mut().flatten().map(|o| &mut o.file))
        {
            *written += file.commit()?;
        }
        if self.dir_dirty {
            sync_dir(&self.cfg.spool_dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Sleeps before retrying a failed disk operation; `false` to give up (shutting down).
    fn disk_backoff(&self, attempt: u32) -> bool {
        if self.shared.is_shutting_down() && attempt + 1 >= SHUTDOWN_DISK_ATTEMPTS {
            return false;
        }
        std::thread::sleep(DISK_RETRY.delay(attempt.saturating_add(1)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::sync::Mutex;

    use crate::objects::spool::read_sealed;

    #[test]
    fn roll_policy_decisions() {
        let p = RollPolicy {
            max_bytes: 100,
            max_age: Duration::from_secs(300),
        };
        // An empty batch takes any record, even one larger than max_bytes.
        assert!(!p.roll_before(0, 0, 1_000));
        assert!(!p.roll_before(60, 3, 40));
        assert!(p.roll_before(60, 3, 41));
        assert!(!p.is_full(99));
        assert!(p.is_full(100));
        let t0 = Instant::now();
        assert!(!p.is_expired(t0, t0 + Duration::from_secs(299)));
        assert!(p.is_expired(t0, t0 + Duration::from_secs(300)));
        assert_eq!(p.deadline(t0), t0 + Duration::from_secs(300));
    }

    struct Harness {
        tx: std::sync::mpsc::SyncSender<Msg<u32>>,
        shared: Arc<Shared>,
        acks: Arc<Mutex<Vec<Vec<u32>>>>,
        sealed_rx: tokio::sync::mpsc::Receiver<SealedSpool>,
        thread: std::thread::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn start(max_bytes: u64, max_age: Duration, delimiter: Delimiter) -> Harness {
        start_full(max_bytes, max_age, delimiter, Duration::ZERO)
    }

    /// One open batch for the whole test, rounds lingering up to `commit_linger`.
    fn start_lingering(commit_linger: Duration) -> Harness {
        start_full(
            u64::MAX,
            Duration::from_secs(3600),
            Delimiter::None,
            commit_linger,
        )
    }

    fn start_full(
        max_bytes: u64,
        max_age: Duration,
        delimiter: Delimiter,
        commit_linger: Duration,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = BatcherConfig {
            spool_dir: dir.path().to_path_buf(),
            prefix: String::new(),
            stack: "test".into(),
            policy: RollPolicy { max_bytes, max_age },
            delimiter,
            compression: Compression::None,
            commit_max_records: COMMIT_MAX_RECORDS,
            commit_max_bytes: COMMIT_MAX_BYTES,
            commit_linger,
        };
        let (tx, rx) = sync_channel(100_000);
        let (sealed_tx, sealed_rx) = tokio::sync::mpsc::channel(1024);
        let shared = Arc::new(Shared::new(u64::MAX));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let acks2 = acks.clone();
        let shared2 = shared.clone();
        let spool_dir = dir.path().to_path_buf();
        let on_commit: OnCommit<u32> = Box::new(move |tokens: Vec<u32>| {
            // Acked only after the commit: the commit is counted and every acked record is on
            // disk by now.
            assert!(shared2.stats().commits > 0);
            assert!(std::fs::read_dir(&spool_dir).expect("dir").count() > 0);
            acks2.lock().expect("lock").push(tokens);
        });
        let batcher = Batcher::new(cfg, rx, sealed_tx, on_commit, shared.clone(), None);
        let thread = std::thread::spawn(move || batcher.run());
        Harness {
            tx,
            shared,
            acks,
            sealed_rx,
            thread,
            _dir: dir,
        }
    }

    fn send(h: &Harness, token: u32, record: &[u8]) {
        h.tx.send(Msg::Record {
            record: record.to_vec(),
            kind: RecordKind::Observations,
            id: Some(u64::from(token) + 1000),
            at_ms: None,
            token,
        })
        .expect("batcher alive");
    }

    type Stopped = (
        Vec<Vec<u32>>,
        Vec<SealedSpool>,
        Arc<Shared>,
        tempfile::TempDir,
    );

    fn stop(h: Harness) -> Stopped {
        h.shared.begin_shutdown();
        let _ = h.tx.send(Msg::Wake);
        h.thread.join().expect("batcher thread");
        let mut sealed_rx = h.sealed_rx;
        let mut sealed = Vec::new();
        while let Ok(s) = sealed_rx.try_recv() {
            sealed.push(s);
        }
        let acks = h.acks.lock().expect("lock").clone();
        (acks, sealed, h.shared, h._dir)
    }

    #[test]
    fn group_commit_acks_in_order_with_few_fsyncs() {
        let h = start(u64::MAX, Duration::from_secs(3600), Delimiter::None);
        // Queue many records before the thread can take them one by one.
        for i in 0..20_000u32 {
            send(&h, i, format!("{{\"n\":{i}}}").as_bytes());
        }
        let (acks, sealed, shared, _dir) = stop(h);
        let flat: Vec<u32> = acks.iter().flatten().copied().collect();
        assert_eq!(flat.len(), 20_000, "every token acked");
        assert!(
            flat.iter().enumerate().all(|(i, t)| *t as usize == i),
            "tokens acked in arrival order"
        );
        let stats = shared.stats();
        assert_eq!(stats.records, 20_000);
        assert_eq!(stats.commits as usize, acks.len());
        assert!(
            stats.commits < 200,
            "group commit: {} commits for 20,000 records",
            stats.commits
        );
        assert_eq!(sealed.len(), 1, "one batch, sealed at shutdown");
        let contents = read_sealed(&sealed[0].path).expect("read");
        assert_eq!(contents.records.len(), 20_000);
        assert_eq!(&contents.records[7][..], b"{\"n\":7}");
        let ids: Vec<u64> = (0..20_000).map(|t| t + 1000).collect();
        assert_eq!(contents.ids, ids, "every record's id is in the spool");
    }

    fn wait_acked(h: &Harness, n: usize, within: Duration) -> Duration {
        let started = Instant::now();
        while h.acks.lock().expect("lock").concat().len() < n {
            assert!(
                started.elapsed() < within,
                "{n} tokens not acked in {within:?}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        started.elapsed()
    }

    #[test]
    fn a_lone_record_is_committed_without_lingering() {
        // A linger far longer than the test's patience: a record with nothing arriving after
        // it must not wait for it.
        let h = start_lingering(Duration::from_secs(60));
        for token in 0..3 {
            send(&h, token, b"{}");
            wait_acked(&h, token as usize + 1, Duration::from_secs(20));
            // A pause between records: the next one is not part of a stream.
            std::thread::sleep(Duration::from_millis(5));
        }
        let (acks, _, _, _dir) = stop(h);
        assert_eq!(acks.concat(), [0, 1, 2]);
    }

    #[test]
    fn a_steady_stream_lingers_into_fewer_commits() {
        // A record every 60 µs for about 60 ms: committed greedily, each commit takes
        // what arrived during the last fsync; lingering (at most 20 ms a round) takes more.
        let commits = |linger: Duration| {
            let h = start_lingering(linger);
            let records = 1_000u32;
            let mut next = Instant::now();
            for token in 0..records {
                send(&h, token, b"{\"v\":1}");
                next += Duration::from_micros(60);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            wait_acked(&h, records as usize, Duration::from_secs(60));
            let (acks, _, shared, _dir) = stop(h);
            assert_eq!(
                acks.concat(),
                (0..records).collect::<Vec<_>>(),
                "every record acked, in order"
            );
            shared.stats().commits
        };
        let greedy = commits(Duration::ZERO);
        let lingering = commits(Duration::from_millis(20));
        assert!(
            lingering * 2 <= greedy,
            "{lingering} commits lingering against {greedy} greedy"
        );
    }

    #[test]
    fn a_record_carried_over_a_commit_is_committed_at_shutdown() {
        let h = start_lingering(Duration::from_millis(50));
        for token in 0..2_000u32 {
            send(&h, token, b"{}");
        }
        // Shut down while the batcher is still working through them: whatever it holds
        // between rounds is committed and acked with the rest.
        let (acks, sealed, _, _dir) = stop(h);
        assert_eq!(acks.concat(), (0..2_000u32).collect::<Vec<_>>());
        let contents = read_sealed(&sealed[0].path).expect("read");
        assert_eq!(contents.records.len(), 2_000);
    }

    #[test]
    fn markers_are_acked_in_order_after_the_records_before_them() {
        let h = start(u64::MAX, Duration::from_secs(3600), Delimiter::None);
        send(&h, 0, b"{}");
        send(&h, 1, b"{}");
        h.tx.send(Msg::Marker { token: 2 }).expect("alive");
        send(&h, 3, b"{}");
        h.tx.send(Msg::Marker { token: 4 }).expect("alive");
        // A marker alone, once everything before it is acked: acked without a record or an
        // fsync of its own.
        let acked = || h.acks.lock().expect("lock").concat().len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked() < 5 {
            assert!(Instant::now() < deadline, "tokens 0 to 4 not acked");
            std::thread::sleep(Duration::from_millis(1));
        }
        h.tx.send(Msg::Marker { token: 5 }).expect("alive");
        let (acks, sealed, shared, _dir) = stop(h);
        assert_eq!(acks.concat(), [0, 1, 2, 3, 4, 5]);
        let stats = shared.stats();
        assert_eq!(stats.records, 3, "markers are not records");

        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].records, 3);
        let contents = read_sealed(&sealed[0].path).expect("read");
        assert_eq!(contents.ids, [1000, 1001, 1003]);
    }

    #[test]
    fn rolls_by_size_without_passing_max_bytes() {
        // 10-byte records + newline = 11 object bytes; 3 fit in 35.
        let h = start(35, Duration::from_secs(3600), Delimiter::Newline);
        for i in 0..10u32 {
            send(&h, i, b"0123456789");
        }
        let (_, sealed, _, _dir) = stop(h);
        let counts: Vec<usize> = sealed.iter().map(|s| s.records).collect();
        assert_eq!(counts, [3, 3, 3, 1]);
        // Keys differ (random suffix), files are distinct.
        let mut keys: Vec<_> = sealed.iter().map(|s| s.header.key.clone()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn exact_fit_rolls_immediately_and_big_records_stand_alone() {
        let h = start(20, Duration::from_secs(3600), Delimiter::None);
        send(&h, 0, b"0123456789");
        send(&h, 1, b"0123456789"); // exactly 20: sealed now
        send(&h, 2, &[b'x'; 50]); // larger than max_bytes: alone
        send(&h, 3, b"y");
        let (_, sealed, _, _dir) = stop(h);
        let counts: Vec<usize> = sealed.iter().map(|s| s.records).collect();
        assert_eq!(counts, [2, 1, 1]);
    }

    #[test]
    fn rolls_by_age_when_idle() {
        let mut h = start(u64::MAX, Duration::from_millis(200), Delimiter::None);
        send(&h, 0, b"{}");
        send(&h, 1, b"{}");
        // No further record: the batcher wakes up by itself to roll the batch.
        let sealed = h.sealed_rx.blocking_recv().expect("a batch rolled by age");
        assert_eq!(sealed.records, 2);
        let acks = h.acks.lock().expect("lock").concat();
        assert_eq!(acks, [0, 1]);
        send(&h, 2, b"{}");
        let (_, rest, _, _dir) = stop(h);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].records, 1);
    }

    #[test]
    fn kinds_are_separate_streams() {
        let h = start(u64::MAX, Duration::from_secs(3600), Delimiter::None);
        send(&h, 0, b"{}");
        h.tx.send(Msg::Record {
            record: b"{\"reason\":1}".to_vec(),
            kind: RecordKind::Errors,
            id: None,
            at_ms: None,
            token: 1,
        })
        .expect("alive");
        send(&h, 2, b"{}");
        let (acks, sealed, _, _dir) = stop(h);
        assert_eq!(acks.concat(), [0, 1, 2]);
        let mut kinds: Vec<_> = sealed.iter().map(|s| (s.header.kind, s.records)).collect();
        kinds.sort_by_key(|(k, _)| slot(*k));
        assert_eq!(
            kinds,
            [(RecordKind::Observations, 2), (RecordKind::Errors, 1)]
        );
        let errors = sealed
            .iter()
            .find(|s| s.header.kind == RecordKind::Errors)
            .expect("errors batch");
        assert!(errors.header.key.starts_with("errors/"));
    }
}

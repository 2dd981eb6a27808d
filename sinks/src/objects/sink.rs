//! The object sink's entry point: starts the batcher thread and the uploader task, and the
//! handle producers append through.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info};

use ccstream_common::panic::panic_text;
use ccstream_common::Backoff;

use super::batcher::{
    Batcher, BatcherConfig, Msg, OnCommit, RollPolicy, COMMIT_MAX_BYTES, COMMIT_MAX_RECORDS,
};
use super::config::ObjectsConfig;
use super::error::{check_size, AppendError, ObjectsError};
use super::index_log::{abandon_stored, IndexLog};
use super::record::RecordKind;
use super::record_batch::RecordBatch;
use super::spool;
use super::state::{ObjectStats, Shared};
use super::stored_ids::{StoredIds, IDS_PER_FILE};
use super::uploader::{BatchStore, ShutdownReport, Uploader};
use super::writer::Writer;

/// Records waiting for the batcher, whether sent one by one or in [`RecordBatch`]es. When full,
/// `append` waits: that is the backpressure that reaches the MQTT client (no ack, so the
/// broker's in-flight window closes).
pub const RECORD_QUEUE: usize = 8192;
/// Sealed batches waiting to be taken by the uploader (it takes them eagerly).
const SEALED_QUEUE: usize = 1024;

/// Starts the object sink.
pub struct ObjectSink;

impl ObjectSink {
    /// Recovers spool files left by an earlier run (they are stored first, under the keys in
    /// their headers), then starts the batcher thread and the uploader task. Must be called
    /// within a tokio runtime. The ids of the records committed by earlier runs — those of the
    /// recovered spool files and of the last stored batches ([`super::stored_ids`]) — wait in
    /// [`ObjectSinkHandle::take_recovered_ids`]. `stack` is the stack name in keys (`<stack>-firehose-1-...`).
    /// `on_commit` receives the tokens of each group commit, in order, after the `fsync`.
    ///
    /// The returned task ends after [`ObjectSinkHandle::shutdown`], with the same report.
    pub fn start<T: Send + 'static>(
        cfg: &ObjectsConfig,
        stack: &str,
        writer: Writer,
        on_commit: OnCommit<T>,
    ) -> Result<(ObjectSinkHandle<T>, JoinHandle<ShutdownReport>), ObjectsError> {
        Self::start_with_store(cfg, stack, writer, on_commit)
    }

    /// [`start`](Self::start) with any [`BatchStore`] (tests, or a wrapped writer).
    pub fn start_with_store<T: Send + 'static, S: BatchStore>(
        cfg: &ObjectsConfig,
        stack: &str,
        store: S,
        on_commit: OnCommit<T>,
    ) -> Result<(ObjectSinkHandle<T>, JoinHandle<ShutdownReport>), ObjectsError> {
        Self::start_full(cfg, stack, store, on_commit, IndexFollow::Off)
    }

    /// [`start_with_store`](Self::start_with_store), and with [`IndexFollow::On`] the spool
    /// is also the search index's log: observation files stay until they are both stored and
    /// indexed ([`ObjectSinkHandle::index_log`], [`super::index_log`]).
    pub fn start_full<T: Send + 'static, S: BatchStore>(
        cfg: &ObjectsConfig,
        stack: &str,
        store: S,
        on_commit: OnCommit<T>,
        follow: IndexFollow,
    ) -> Result<(ObjectSinkHandle<T>, JoinHandle<ShutdownReport>), ObjectsError> {
        cfg.validate()?;
        let spool_err = |source| ObjectsError::Spool {
            path: cfg.spool_dir.clone(),
            source,
        };
        let spool::Recovered {
            spools: recovered,
            ids: spooled_ids,
        } = spool::recover(&cfg.spool_dir).map_err(spool_err)?;
        let (stored_ids, mut recovered_ids) =
            StoredIds::open(&cfg.spool_dir, IDS_PER_FILE).map_err(spool_err)?;
        // Oldest first: stored batches are older than the ones still in the spool.
        recovered_ids.extend(spooled_ids);
        let shared = Arc::new(Shared::new(cfg.spool_max_bytes));
        for sealed in &recovered {
            shared.add_spool(sealed.file_bytes, 1);
        }
        if !recovered.is_empty() {
            info!(
                files = recovered.len(),
                bytes = shared.spool_bytes(),
                "storing spool files left by an earlier run first"
            );
        }

        let index_log = match follow {
            IndexFollow::On => Some(Arc::new(
                IndexLog::open(&cfg.spool_dir, Arc::clone(&shared), &recovered)
                    .map_err(spool_err)?,
            )),
            IndexFollow::Off => {
                let abandoned = abandon_stored(&cfg.spool_dir).map_err(spool_err)?;
                if abandoned > 0 {
                    tracing::warn!(
                        files = abandoned,
                        "the search index is off: stored spool files an earlier run kept for it \
                         were deleted and written down in index-gaps.jsonl"
                    );
                }
                None
            }
        };

        let (record_tx, record_rx) = sync_channel(RECORD_QUEUE);
        let (sealed_tx, sealed_rx) = mpsc::channel(SEALED_QUEUE);
        let (deadline_tx, deadline_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(None);

        let batcher = Batcher::new(
            BatcherConfig {
                spool_dir: cfg.spool_dir.clone(),
                prefix: cfg.prefix.clone(),
                stack: stack.to_owned(),
                policy: RollPolicy {
                    max_bytes: cfg.max_bytes,
                    max_age: cfg.max_age(),
                },
                delimiter: cfg.delimiter,
                compression: cfg.compression,
                commit_max_records: COMMIT_MAX_RECORDS,
                commit_max_bytes: COMMIT_MAX_BYTES,
                commit_linger: cfg.commit_linger(),
            },
            record_rx,
            sealed_tx,
            on_commit,
            shared.clone(),
            index_log.clone(),
        );
        let batcher_shared = Arc::clone(&shared);
        // Room for the records of `RecordBatch`es, as the channel's capacity is for records sent
        // one by one (a batch is one message). Closed when the batcher ends, so that a producer
        // waiting for room learns the sink is gone.
        let room = Arc::new(Semaphore::new(RECORD_QUEUE));
        let batcher_room = Arc::clone(&room);
        let batcher_thread = std::thread::Builder::new()
            .name("ccstream-spool".into())
            .spawn(move || {
                // Caught so that the death is reported at once, not when someone joins.
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| batcher.run())) {
                    batcher_died(&batcher_shared, panic_text(&*panic));
                }
                batcher_room.close();
            })
            .map_err(ObjectsError::Thread)?;

        let uploader = Uploader {
            store: Arc::new(store),
            shared: shared.clone(),
            concurrency: cfg.upload_concurrency,
            retry: Backoff::new(
                Duration::from_millis(cfg.retry_initial_ms),
                Duration::from_millis(cfg.retry_max_ms),
            ),
            stored_ids: Some(Arc::new(Mutex::new(stored_ids))),
            index_log: index_log.clone(),
        };
        let task = tokio::spawn(async move {
            let report = uploader.run(recovered, sealed_rx, deadline_rx).await;
            let _ = done_tx.send(Some(report));
            report
        });

        let handle = ObjectSinkHandle {
            tx: record_tx,
            room,
            shared,
            deadline_tx: Arc::new(deadline_tx),
            done_rx,
            recovered_ids: Arc::new(Mutex::new(recovered_ids)),
            batcher_thread: Arc::new(Mutex::new(Some(batcher_thread))),
            index_log,
        };
        Ok((handle, task))
    }
}

/// Appends records and reports readiness; cheap to clone.
pub struct ObjectSinkHandle<T> {
    tx: SyncSender<Msg<T>>,
    /// The queue's room for records sent in batches.
    room: Arc<Semaphore>,
    shared: Arc<Shared>,
    deadline_tx: Arc<watch::Sender<Option<Instant>>>,
    done_rx: watch::Receiver<Option<ShutdownReport>>,
    recovered_ids: Arc<Mutex<Vec<u64>>>,
    /// Joined at shutdown, so that the process ends only after the thread has.
    batcher_thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    index_log: Option<Arc<IndexLog>>,
}

/// Whether the search index follows the spool ([`ObjectSink::start_full`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexFollow {
    /// Observation files are deleted once stored.
    Off,
    /// Observation files stay until stored and indexed.
    On,
}

impl<T> Clone for ObjectSinkHandle<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            room: Arc::clone(&self.room),
            shared: self.shared.clone(),
            deadline_tx: self.deadline_tx.clone(),
            done_rx: self.done_rx.clone(),
            recovered_ids: self.recovered_ids.clone(),
            batcher_thread: self.batcher_thread.clone(),
            index_log: self.index_log.clone(),
        }
    }
}

impl<T: Send + 'static> ObjectSinkHandle<T> {
    /// Queues a record; `token` comes back through `on_commit` once the record is durable.
    /// Waits while the queue is full (the spool is over its limit, or the disk is slow).
    pub async fn append(
        &self,
        record: Vec<u8>,
        kind: RecordKind,
        token: T,
    ) -> Result<(), AppendError> {
        check_size(&record)?;
        self.send(Msg::Record {
            record,
            kind,
            id: None,
            at_ms: None,
            token,
        })
        .await
    }

    /// [`append`](Self::append) with the record's id, written to the spool with it (after a
    /// restart, the ids of the records committed before are in
    /// [`take_recovered_ids`](Self::take_recovered_ids)), and the time the record was received,
    /// which names the batch it opens (the key is the time of a batch's first record, spec
    /// 5.2, even when the record waited while the spool was full).
    pub async fn append_with_id(
        &self,
        record: Vec<u8>,
        kind: RecordKind,
        id: u64,
        received_at_ms: u64,
        token: T,
    ) -> Result<(), AppendError> {
        check_size(&record)?;
        self.send(Msg::Record {
            record,
            kind,
            id: Some(id),
            at_ms: Some(received_at_ms),
            token,
        })
        .await
    }

    /// Queues a token without a record: it comes back through `on_commit`, in order, once
    /// every record appended before it is durable (at once when those already are). For a
    /// message that needs no record of its own but must not be acked before an earlier one
    /// is safe, such as a redelivered duplicate.
    pub async fn append_marker(&self, token: T) -> Result<(), AppendError> {
        self.send(Msg::Marker { token }).await
    }

    /// Queues a producer's batch of records and markers, framed already; each token comes back
    /// through `on_commit` as if its record or marker had been appended alone, in the batch's
    /// order. Waits while the queue holds [`RECORD_QUEUE`] records (a batch bigger than that
    /// waits for an empty queue). On an error no token of the batch is acked.
    pub async fn append_batch(&self, batch: RecordBatch<T>) -> Result<(), AppendError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Both are at most RECORD_QUEUE, far below u32::MAX.
        let records = batch.len().min(RECORD_QUEUE) as u32;
        let room = Arc::clone(&self.room)
            .acquire_many_owned(records)
            .await
            .map_err(|_| AppendError::Closed)?;
        self.send(Msg::Batch { batch, room }).await
    }

    /// The ids of the records that earlier runs committed and that may have been acked: those
    /// of the spool files recovered at start and of the last batches stored (up to
    /// [`IDS_PER_FILE`]` × 2`), oldest first. Taken once: later calls return nothing.
    pub fn take_recovered_ids(&self) -> Vec<u64> {
        std::mem::take(
            &mut *self
                .recovered_ids
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    async fn send(&self, msg: Msg<T>) -> Result<(), AppendError> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(AppendError::Closed),
            Err(TrySendError::Full(msg)) => {
                // Rare (the batcher is behind or held back): wait on a blocking-pool thread,
                // never on a runtime worker.
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(msg).map_err(|_| AppendError::Closed))
                    .await
                    .map_err(|_| AppendError::Closed)?
            }
        }
    }

    /// [`append`](Self::append) for a thread that may block.
    pub fn append_blocking(
        &self,
        record: Vec<u8>,
        kind: RecordKind,
        token: T,
    ) -> Result<(), AppendError> {
        check_size(&record)?;
        self.tx
            .send(Msg::Record {
                record,
                kind,
                id: None,
                at_ms: None,
                token,
            })
            .map_err(|_| AppendError::Closed)
    }

    /// The search index's log of the spool, when the sink was started with
    /// [`IndexFollow::On`].
    pub fn index_log(&self) -> Option<Arc<IndexLog>> {
        self.index_log.clone()
    }

    /// Whether intake is stopped because the spool is over `objects.spool_max_bytes` (for
    /// `/readyz`).
    pub fn is_backpressured(&self) -> bool {
        self.shared.is_backpressured()
    }

    /// Why intake is stopped, when it is.
    pub fn backpressure_reason(&self) -> Option<String> {
        self.shared.backpressure_reason()
    }

    /// Why the sink can no longer take records, once its batcher thread has died (for
    /// `/readyz`). Records appended after that are refused ([`AppendError::Closed`]) and never
    /// acked, so the broker keeps them for the next start.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Counters.
    pub fn stats(&self) -> ObjectStats {
        self.shared.stats()
    }

    /// Whether the sink has stopped (after shutdown).
    pub fn is_stopped(&self) -> bool {
        self.done_rx.borrow().is_some()
    }

    /// Stops intake, seals every open batch and stores everything within `grace`. What cannot
    /// be stored in time stays in the spool and is stored at the next start: nothing is lost.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let deadline = Instant::now() + grace;
        self.shared.begin_shutdown();
        let _ = self.tx.try_send(Msg::Wake);
        self.deadline_tx.send_replace(Some(deadline));
        let mut done = self.done_rx.clone();
        // The uploader honours the deadline; the margin covers its last cancellations.
        let waited = tokio::time::timeout(grace + Duration::from_secs(2), async {
            done.wait_for(Option::is_some).await.map(|r| *r)
        })
        .await;
        self.join_batcher().await;
        match waited {
            Ok(Ok(Some(report))) => report,
            _ => ShutdownReport {
                left_in_spool: self.shared.stats().spool_files,
                ..ShutdownReport::default()
            },
        }
    }
}

impl<T> ObjectSinkHandle<T> {
    /// Waits for the batcher thread to end (it has sealed everything by the time the uploader
    /// reports) on a blocking-pool thread.
    async fn join_batcher(&self) {
        let thread = self
            .batcher_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            if tokio::task::spawn_blocking(move || thread.join())
                .await
                .is_err()
            {
                tracing::warn!("cannot join the objects batcher thread");
            }
        }
    }
}

/// Records the batcher's death where `/readyz`, the metrics and the log show it.
fn batcher_died(shared: &Shared, cause: String) {
    let reason = format!(
        "the objects batcher thread died ({cause}): observations are no longer stored or acked; \
         restart ccstream (the broker keeps what was not acked)"
    );
    error!(%reason, "objects batcher died");
    shared.set_failed(reason);
}

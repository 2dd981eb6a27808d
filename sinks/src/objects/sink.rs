//! The object sink's entry point: starts the batcher thread and the uploader task, and the
//! handle producers append through.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

use super::batcher::{
    Batcher, BatcherConfig, Msg, OnCommit, RollPolicy, COMMIT_MAX_BYTES, COMMIT_MAX_RECORDS,
};
use super::config::ObjectsConfig;
use super::error::{AppendError, ObjectsError};
use super::record::RecordKind;
use super::spool::{self, MAX_RECORD_BYTES};
use super::state::{ObjectStats, Shared};
use super::uploader::{BatchStore, RetryPolicy, ShutdownReport, Uploader};
use super::writer::Writer;

/// Records waiting for the batcher. When full, `append` waits: that is the backpressure that
/// reaches the MQTT client (no ack, so the broker's in-flight window closes).
pub const RECORD_QUEUE: usize = 8192;
/// Sealed batches waiting to be taken by the uploader (it takes them eagerly).
const SEALED_QUEUE: usize = 1024;

/// Starts the object sink.
pub struct ObjectSink;

impl ObjectSink {
    /// Recovers spool files left by an earlier run (they are stored first, under the keys in
    /// their headers), then starts the batcher thread and the uploader task. Must be called
    /// within a tokio runtime. `stack` is the stack name in keys (`<stack>-firehose-1-...`).
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
        cfg.validate()?;
        let spool_err = |source| ObjectsError::Spool {
            path: cfg.spool_dir.clone(),
            source,
        };
        let recovered = spool::recover(&cfg.spool_dir).map_err(spool_err)?;
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
            },
            record_rx,
            sealed_tx,
            on_commit,
            shared.clone(),
        );
        std::thread::Builder::new()
            .name("ccstream-spool".into())
            .spawn(move || batcher.run())
            .map_err(ObjectsError::Thread)?;

        let uploader = Uploader {
            store: Arc::new(store),
            shared: shared.clone(),
            concurrency: cfg.upload_concurrency,
            retry: RetryPolicy {
                initial: Duration::from_millis(cfg.retry_initial_ms),
                max: Duration::from_millis(cfg.retry_max_ms),
            },
        };
        let task = tokio::spawn(async move {
            let report = uploader.run(recovered, sealed_rx, deadline_rx).await;
            let _ = done_tx.send(Some(report));
            report
        });

        let handle = ObjectSinkHandle {
            tx: record_tx,
            shared,
            deadline_tx: Arc::new(deadline_tx),
            done_rx,
        };
        Ok((handle, task))
    }
}

/// Appends records and reports readiness; cheap to clone.
pub struct ObjectSinkHandle<T> {
    tx: SyncSender<Msg<T>>,
    shared: Arc<Shared>,
    deadline_tx: Arc<watch::Sender<Option<Instant>>>,
    done_rx: watch::Receiver<Option<ShutdownReport>>,
}

impl<T> Clone for ObjectSinkHandle<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            deadline_tx: self.deadline_tx.clone(),
            done_rx: self.done_rx.clone(),
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
        match self.tx.try_send(Msg::Record {
            record,
            kind,
            token,
        }) {
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
                token,
            })
            .map_err(|_| AppendError::Closed)
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
        match waited {
            Ok(Ok(Some(report))) => report,
            _ => ShutdownReport {
                left_in_spool: self.shared.stats().spool_files,
                ..ShutdownReport::default()
            },
        }
    }
}

fn check_size(record: &[u8]) -> Result<(), AppendError> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(AppendError::TooLarge {
            len: record.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    Ok(())
}

//! The uploader: stores sealed spool files through the writer, at most `upload_concurrency` at
//! once, retrying retryable failures with capped, jittered exponential backoff until they
//! succeed or shutdown's grace runs out. A spool file is deleted only after its store
//! succeeded, and after the ids of its records went to the [`StoredIds`] journal; a permanent
//! failure moves it to `failed/`.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use flate2::write::GzEncoder;
use metrics::{counter, histogram};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn, Instrument};

use ccstream_common::Backoff;

use super::config::Compression;
use super::index_log::{mark_stored, AfterStore, IndexLog};
use super::spool::{move_to_failed, read_sealed, SealedSpool, SpoolContents};
use super::state::Shared;
use super::stored_ids::StoredIds;
use super::telemetry;
use super::writer::{Batch, WriteError, Writer};
use crate::intake::sleep_until_opt;

/// Where batches are stored: [`Writer`], or a stand-in in tests.
pub trait BatchStore: Send + Sync + 'static {
    /// Stores one batch; the same batch twice writes the same key.
    fn store(&self, batch: &Batch) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// A label for logs and metrics (`local`, `s3`, ...).
    fn label(&self) -> &'static str;
}

impl BatchStore for Writer {
    fn store(&self, batch: &Batch) -> impl Future<Output = Result<(), WriteError>> + Send {
        Writer::store(self, batch)
    }

    fn label(&self) -> &'static str {
        self.kind()
    }
}

/// The object body: records joined with the delimiter, gzip-compressed when configured.
pub fn build_batch(contents: SpoolContents) -> std::io::Result<Batch> {
    let delimiter = contents.header.delimiter.bytes();
    let size: usize = contents
        .records
        .iter()
        .map(|r| r.len() + delimiter.len())
        .sum();
    let mut plain = Vec::with_capacity(size);
    for record in &contents.records {
        plain.extend_from_slice(record);
        plain.extend_from_slice(delimiter);
    }
    let body = match contents.header.compression {
        Compression::None => plain,
        Compression::Gzip => {
            let mut gz = GzEncoder::new(
                Vec::with_capacity(size / 4 + 64),
                flate2::Compression::default(),
            );
            gz.write_all(&plain)?;
            gz.finish()?
        }
    };
    Ok(Batch {
        key: contents.header.key,
        body: Bytes::from(body),
        records: contents.records,
    })
}

/// How shutdown ended for the batches that were in the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Batches stored during the run (recovered ones included).
    pub stored: u64,
    /// Batches moved to `failed/` during the run.
    pub failed: u64,
    /// Batches still in the spool when the grace period ran out; stored at the next start.
    pub left_in_spool: u64,
    /// Whether everything was stored before the grace period ran out.
    pub completed: bool,
}

enum Outcome {
    Stored,
    Failed,
    /// Cancelled at the end of the grace period; the file stays in the spool.
    Left,
}

pub(crate) struct Uploader<S> {
    pub(crate) store: Arc<S>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) concurrency: usize,
    pub(crate) retry: Backoff,
    /// Where the ids of stored batches go before their spool files are deleted.
    pub(crate) stored_ids: Option<Arc<Mutex<StoredIds>>>,
    /// When the search index follows the spool: asked whether a stored file may go.
    pub(crate) index_log: Option<Arc<IndexLog>>,
}

impl<S: BatchStore> Uploader<S> {
    /// Stores `recovered` first, then what arrives on `sealed_rx`, until that channel closes
    /// (the batcher stopped) and everything is stored, or the deadline set on `deadline_rx`
    /// passes.
    pub(crate) async fn run(
        self,
        recovered: Vec<SealedSpool>,
        mut sealed_rx: mpsc::Receiver<SealedSpool>,
        mut deadline_rx: watch::Receiver<Option<Instant>>,
    ) -> ShutdownReport {
        // The queue holds small descriptors only; its length is bounded by the spool limit,
        // which stops the batcher when too much waits here.
        let mut queue: VecDeque<SealedSpool> = recovered.into();
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let mut tasks: JoinSet<Outcome> = JoinSet::new();
        let mut report = ShutdownReport::default();
        let mut intake_open = true;
        let mut deadline: Option<Instant> = None;

        loop {
            while !queue.is_empty() {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    break;
                };
                let Some(sealed) = queue.pop_front() else {
                    break;
                };
                tasks.spawn(self.store_one(sealed, permit, cancel_rx.clone()));
            }
            if !intake_open && queue.is_empty() && tasks.is_empty() {
                report.completed = true;
                break;
            }
            tokio::select! {
                biased;
                () = sleep_until_opt(deadline) => break,
                Ok(()) = deadline_rx.changed(), if deadline.is_none() => {
                    deadline = *deadline_rx.borrow_and_update();
                }
                Some(done) = tasks.join_next() => {
                    match done {
                        Ok(Outcome::Stored) => report.stored += 1,
                        Ok(Outcome::Failed) => report.failed += 1,
                        Ok(Outcome::Left) => report.left_in_spool += 1,
                        Err(e) => error!(error = %e, "store task panicked; its batch stays in the spool"),
                    }
                }
                sealed = sealed_rx.recv(), if intake_open => match sealed {
                    Some(sealed) => queue.push_back(sealed),
                    None => intake_open = false,
                },
            }
        }

        if !report.completed {
            // Grace period over: stop retrying; what is not stored stays in the spool.
            let _ = cancel_tx.send(true);
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Outcome::Stored) => report.stored += 1,
                    Ok(Outcome::Failed) => report.failed += 1,
                    Ok(Outcome::Left) | Err(_) => report.left_in_spool += 1,
                }
            }
            sealed_rx.close();
            while let Ok(sealed) = sealed_rx.try_recv() {
                queue.push_back(sealed);
            }
            report.left_in_spool += queue.len() as u64;
            warn!(
                left = report.left_in_spool,
                "shutdown grace period over; unstored batches stay in the spool for the next start"
            );
        }
        info!(
            stored = report.stored,
            failed = report.failed,
            left = report.left_in_spool,
            "objects uploader stopped"
        );
        report
    }

    fn store_one(
        &self,
        sealed: SealedSpool,
        permit: OwnedSemaphorePermit,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let store = self.store.clone();
        let shared = self.shared.clone();
        let retry = self.retry;
        let stored_ids = self.stored_ids.clone();
        let index_log = self.index_log.clone();
        let span = tracing::info_span!("store", key = %sealed.header.key, records = sealed.records);
        async move {
            let outcome =
                store_with_retry(&*store, &shared, retry, &sealed, stored_ids, cancel).await;
            match outcome {
                Outcome::Stored => after_store(&shared, &sealed, index_log).await,
                Outcome::Failed => {
                    // In failed/ now, where an operator finds its records.
                    if let (Some(log), Some(id)) = (index_log, sealed.path.file_stem()) {
                        log.store_failed(&id.to_string_lossy());
                    }
                }
                Outcome::Left => {}
            }
            drop(permit);
            outcome
        }
        .instrument(span)
    }
}

async fn store_with_retry<S: BatchStore>(
    store: &S,
    shared: &Shared,
    retry: Backoff,
    sealed: &SealedSpool,
    stored_ids: Option<Arc<Mutex<StoredIds>>>,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let path = sealed.path.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        read_sealed(&path).and_then(|mut contents| {
            let ids = std::mem::take(&mut contents.ids);
            build_batch(contents).map(|batch| (batch, ids))
        })
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    let (batch, ids) = match loaded {
        Ok(batch) => batch,
        Err(e) => {
            error!(error = %e, path = %sealed.path.display(), "cannot read a sealed spool file");
            return fail(shared, sealed);
        }
    };
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => return Outcome::Left,
            r = store.store(&batch) => r,
        };
        match result {
            Ok(()) => {
                histogram!(telemetry::STORE_DURATION_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                counter!(telemetry::BATCHES_STORED_TOTAL, "sink" => store.label()).increment(1);
                shared.batches_stored.fetch_add(1, Ordering::AcqRel);
                info!(bytes = batch.body.len(), "batch stored");
                if let Some(journal) = stored_ids {
                    record_stored_ids(journal, ids).await;
                }
                return Outcome::Stored;
            }
            Err(e) if e.is_retryable() => {
                counter!(telemetry::STORE_RETRIES_TOTAL).increment(1);
                shared.store_retries.fetch_add(1, Ordering::AcqRel);
                attempt = attempt.saturating_add(1);
                let wait = retry.delay(attempt);
                warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "store failed; retrying");
                tokio::select! {
                    biased;
                    _ = cancel.wait_for(|c| *c) => return Outcome::Left,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => {
                error!(error = %e, "store failed permanently");
                return fail(shared, sealed);
            }
        }
    }
}

/// A stored spool file is deleted, unless the search index still needs it: then it is renamed
/// `<id>.stored` (so that a restart does not store it again) and the index deletes it.
async fn after_store(shared: &Shared, sealed: &SealedSpool, index_log: Option<Arc<IndexLog>>) {
    let after = index_log.map_or(AfterStore::Delete, |log| log.stored(&sealed.path));
    match after {
        AfterStore::Delete => {
            if let Err(e) = tokio::fs::remove_file(&sealed.path).await {
                // Stored; at worst it is stored again (same key) at the next start.
                warn!(error = %e, path = %sealed.path.display(), "cannot remove a stored spool file");
            }
            shared.release_spool(sealed.file_bytes);
        }
        AfterStore::Keep => {
            let path = sealed.path.clone();
            let renamed = tokio::task::spawn_blocking(move || mark_stored(&path))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            if let Err(e) = renamed {
                // Stored; at worst it is stored again (same key) at the next start.
                warn!(error = %e, path = %sealed.path.display(), "cannot mark a spool file stored");
            }
        }
    }
}

/// Appends a stored batch's ids to the journal, so that they outlive its spool file. A failure
/// is logged: at worst a redelivery after a crash is stored twice.
async fn record_stored_ids(journal: Arc<Mutex<StoredIds>>, ids: Vec<u64>) {
    if ids.is_empty() {
        return;
    }
    let written = tokio::task::spawn_blocking(move || {
        journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(&ids)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    if let Err(e) = written {
        counter!(telemetry::SPOOL_WRITE_ERRORS_TOTAL).increment(1);
        warn!(error = %e, "cannot record the ids of a stored batch; a redelivery after a crash may be stored twice");
    }
}

/// Moves a batch that cannot be stored to `failed/` for an operator; it no longer counts
/// against the spool limit.
fn fail(shared: &Shared, sealed: &SealedSpool) -> Outcome {
    counter!(telemetry::STORE_FAILURES_TOTAL).increment(1);
    shared.store_failures.fetch_add(1, Ordering::AcqRel);
    match move_to_failed(&sealed.path) {
        Ok(to) => error!(moved_to = %to.display(), "batch kept in the spool's failed folder"),
        Err(e) => {
            error!(error = %e, path = %sealed.path.display(), "cannot move a failed batch aside")
        }
    }
    shared.release_spool(sealed.file_bytes);
    Outcome::Failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::config::Delimiter;
    use crate::objects::record::RecordKind;
    use crate::objects::spool::{SpoolFile, SpoolHeader, FORMAT_VERSION};
    use std::io::Read;
    use std::sync::Mutex;
    use std::time::Duration;

    fn contents(delimiter: Delimiter, compression: Compression) -> SpoolContents {
        SpoolContents {
            header: SpoolHeader {
                version: FORMAT_VERSION,
                key: "k".into(),
                created_ms: 0,
                kind: RecordKind::Observations,
                delimiter,
                compression,
            },
            records: vec![Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")],
            ids: vec![1, 2],
        }
    }

    #[test]
    fn bodies_by_delimiter_and_compression() {
        let b = build_batch(contents(Delimiter::None, Compression::None)).expect("batch");
        assert_eq!(&b.body[..], b"{\"a\":1}{}");
        assert_eq!(b.records.len(), 2);
        let b = build_batch(contents(Delimiter::Newline, Compression::None)).expect("batch");
        assert_eq!(&b.body[..], b"{\"a\":1}\n{}\n");
        let b = build_batch(contents(Delimiter::Newline, Compression::Gzip)).expect("batch");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&b.body[..])
            .read_to_end(&mut plain)
            .expect("gunzip");
        assert_eq!(plain, b"{\"a\":1}\n{}\n");
        assert_eq!(&b.records[1][..], b"{}");
    }

    /// Fails with the scripted errors first, then succeeds; records the keys stored.
    struct Scripted {
        errors: Mutex<Vec<WriteError>>,
        stored: Mutex<Vec<String>>,
    }

    impl BatchStore for Scripted {
        fn store(&self, batch: &Batch) -> impl Future<Output = Result<(), WriteError>> + Send {
            let next = self.errors.lock().expect("lock").pop();
            if next.is_none() {
                self.stored.lock().expect("lock").push(batch.key.clone());
            }
            async move { next.map_or(Ok(()), Err) }
        }

        fn label(&self) -> &'static str {
            "scripted"
        }
    }

    fn sealed_in(dir: &std::path::Path, id: &str) -> SealedSpool {
        let mut f = SpoolFile::create(
            dir,
            id,
            SpoolHeader {
                version: FORMAT_VERSION,
                key: format!("key-{id}"),
                created_ms: 0,
                kind: RecordKind::Observations,
                delimiter: Delimiter::None,
                compression: Compression::None,
            },
        )
        .expect("create");
        f.push(b"{}", Some(1));
        f.commit().expect("commit");
        f.seal()
    }

    async fn run_with(
        errors: Vec<WriteError>,
    ) -> (
        ShutdownReport,
        Arc<Scripted>,
        Arc<Shared>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealed = sealed_in(dir.path(), "a");
        let shared = Arc::new(Shared::new(u64::MAX));
        shared.add_spool(sealed.file_bytes, 1);
        let store = Arc::new(Scripted {
            errors: Mutex::new(errors),
            stored: Mutex::new(Vec::new()),
        });
        let uploader = Uploader {
            store: store.clone(),
            shared: shared.clone(),
            concurrency: 2,
            retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            stored_ids: None,
            index_log: None,
        };
        let (tx, rx) = mpsc::channel(4);
        drop(tx);
        let (_deadline_tx, deadline_rx) = watch::channel(None);
        let report = uploader.run(vec![sealed], rx, deadline_rx).await;
        (report, store, shared, dir)
    }

    // The clock is paused (tokio's test-util): waits cost no real time and their lengths are
    // exact, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn retryable_errors_are_retried_then_the_file_is_deleted() {
        let started = Instant::now();
        let (report, store, shared, dir) = run_with(vec![
            WriteError::Retryable("503".into()),
            WriteError::Retryable("timeout".into()),
        ])
        .await;
        assert_eq!(report.stored, 1);
        assert!(report.completed);
        assert_eq!(*store.stored.lock().expect("lock"), ["key-a"]);
        let stats = shared.stats();
        assert_eq!(stats.store_retries, 2);
        assert_eq!((stats.spool_bytes, stats.spool_files), (0, 0));
        assert!(!dir.path().join("a.spool").exists());
        // Two backoff waits: 250-500 ms, then 500-1000 ms.
        let waited = started.elapsed();
        assert!(
            (Duration::from_millis(750)..=Duration::from_millis(1500)).contains(&waited),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_move_the_file_to_failed() {
        let (report, store, shared, dir) =
            run_with(vec![WriteError::Permanent("403".into())]).await;
        assert_eq!(report.failed, 1);
        assert!(store.stored.lock().expect("lock").is_empty());
        assert_eq!(shared.stats().store_failures, 1);
        assert!(!dir.path().join("a.spool").exists());
        assert!(dir.path().join("failed/a.spool").exists());
    }

    #[tokio::test(start_paused = true)]
    async fn grace_deadline_leaves_unstored_batches_in_the_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealed = sealed_in(dir.path(), "b");
        let store = Arc::new(Scripted {
            errors: Mutex::new(
                (0..10_000)
                    .map(|_| WriteError::Retryable("down".into()))
                    .collect(),
            ),
            stored: Mutex::new(Vec::new()),
        });
        let shared = Arc::new(Shared::new(u64::MAX));
        let uploader = Uploader {
            store,
            shared: Arc::clone(&shared),
            concurrency: 1,
            retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            stored_ids: None,
            index_log: None,
        };
        let (_tx, rx) = mpsc::channel(4);
        let (deadline_tx, deadline_rx) = watch::channel(None);
        let task = tokio::spawn(uploader.run(vec![sealed], rx, deadline_rx));
        // The store has failed and is being retried.
        while shared.stats().store_retries == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        deadline_tx.send(Some(deadline)).expect("uploader alive");
        let report = task.await.expect("join");
        assert_eq!(
            Instant::now(),
            deadline,
            "the uploader gives up at the deadline"
        );
        assert!(!report.completed);
        assert_eq!(report.left_in_spool, 1);
        assert!(dir.path().join("b.spool").exists());
    }
}

//! State shared by the batcher thread, the uploader task and the handles: spool occupancy,
//! backpressure, the shutdown flag and counters.
//!
//! std `Mutex`/`Condvar` and atomics, not tokio's: the batcher is a plain thread, and no lock
//! here is held across an `.await`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use metrics::gauge;

use super::telemetry;

/// A snapshot of the object sink's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectStats {
    /// Records committed (and so acked).
    pub records: u64,
    /// Group commits.
    pub commits: u64,
    /// Batches sealed and handed to the uploader.
    pub batches_sealed: u64,
    /// Batches stored.
    pub batches_stored: u64,
    /// Store attempts retried.
    pub store_retries: u64,
    /// Batches that failed permanently.
    pub store_failures: u64,
    /// Bytes in the spool.
    pub spool_bytes: u64,
    /// Files in the spool.
    pub spool_files: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    spool_max_bytes: u64,
    spool_bytes: AtomicU64,
    spool_files: AtomicU64,
    backpressured: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Why the batcher thread died, once it has: nothing is stored or acked any more.
    failure: Mutex<Option<String>>,
    shutdown: AtomicBool,
    /// Bumped whenever space is freed or shutdown begins; the backpressured batcher waits on it.
    generation: Mutex<u64>,
    changed: Condvar,
    pub(crate) records: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) batches_sealed: AtomicU64,
    pub(crate) batches_stored: AtomicU64,
    pub(crate) store_retries: AtomicU64,
    pub(crate) store_failures: AtomicU64,
}

impl Shared {
    pub(crate) fn new(spool_max_bytes: u64) -> Self {
        Self {
            spool_max_bytes,
            ..Self::default()
        }
    }

    /// A file was created or recovered (`files` 1 or 0) and `bytes` were written to the spool.
    pub(crate) fn add_spool(&self, bytes: u64, files: u64) {
        let total = self.spool_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        gauge!(telemetry::SPOOL_BYTES).set(total as f64);
        if files > 0 {
            let n = self.spool_files.fetch_add(files, Ordering::AcqRel) + files;
            gauge!(telemetry::SPOOL_FILES).set(n as f64);
        }
    }

    /// A spool file of `bytes` was removed (stored) or moved to `failed/`.
    pub(crate) fn release_spool(&self, bytes: u64) {
        let total = sub(&self.spool_bytes, bytes);
        let files = sub(&self.spool_files, 1);
        gauge!(telemetry::SPOOL_BYTES).set(total as f64);
        gauge!(telemetry::SPOOL_FILES).set(files as f64);
        self.notify();
    }

    pub(crate) fn spool_bytes(&self) -> u64 {
        self.spool_bytes.load(Ordering::Acquire)
    }

    pub(crate) fn spool_max_bytes(&self) -> u64 {
        self.spool_max_bytes
    }

    pub(crate) fn over_limit(&self) -> bool {
        self.spool_bytes() > self.spool_max_bytes
    }

    pub(crate) fn set_backpressure(&self, on: bool, reason: Option<String>) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason;
        self.backpressured.store(on, Ordering::Release);
        gauge!(telemetry::SPOOL_BACKPRESSURE).set(if on { 1.0 } else { 0.0 });
    }

    pub(crate) fn is_backpressured(&self) -> bool {
        self.backpressured.load(Ordering::Acquire)
    }

    pub(crate) fn backpressure_reason(&self) -> Option<String> {
        if !self.is_backpressured() {
            return None;
        }
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The batcher thread died: intake is over for good (its queue's receiver is gone).
    pub(crate) fn set_failed(&self, reason: String) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        gauge!(telemetry::BATCHER_FAILED).set(1.0);
        self.notify();
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.notify();
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    fn notify(&self) {
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }

    /// Waits until space is freed or shutdown begins, at most `timeout`.
    pub(crate) fn wait_for_change(&self, timeout: Duration) {
        let guard = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = *guard;
        let _ = self
            .changed
            .wait_timeout_while(guard, timeout, |g| *g == seen)
            .unwrap_or_else(PoisonError::into_inner);
    }

    pub(crate) fn stats(&self) -> ObjectStats {
        let load = |a: &AtomicU64| a.load(Ordering::Acquire);
        ObjectStats {
            records: load(&self.records),
            commits: load(&self.commits),
            batches_sealed: load(&self.batches_sealed),
            batches_stored: load(&self.batches_stored),
            store_retries: load(&self.store_retries),
            store_failures: load(&self.store_failures),
            spool_bytes: load(&self.spool_bytes),
            spool_files: load(&self.spool_files),
        }
    }
}

/// Saturating subtract; returns the new value.
fn sub(a: &AtomicU64, n: u64) -> u64 {
    let mut cur = a.load(Ordering::Acquire);
    loop {
        let new = cur.saturating_sub(n);
        match a.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return new,
            Err(actual) => cur = actual,
        }
    }
}

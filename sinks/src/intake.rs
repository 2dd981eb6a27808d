//! Pieces the sinks share around their queues: the close gate and drain deadline of the
//! queue-fed ones (webhook dispatcher, search indexer), rate-limited warnings, and waiting for a
//! deadline that may not be set.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How often a rate-limited warning may be logged.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Lets one warning through per [`LOG_EVERY`] and counts the ones it holds back.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    // A std mutex, only ever `try_lock`ed and never held across an await: producers on the
    // ingest path must not wait for it.
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl LogLimiter {
    /// Counts `n` events; `Some(total)`: log now, `total` events since the last log line.
    pub(crate) fn hit(&self, n: u64) -> Option<u64> {
        self.held_back.fetch_add(n, Ordering::Relaxed);
        let mut last = self.last.try_lock().ok()?;
        let now = Instant::now();
        if last.is_some_and(|then| now.duration_since(then) < LOG_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

/// Stops intake once, for every clone of a handle, and tells the consumer task the drain
/// deadline. Dropping it (with the last handle) is read by the consumer as a close too.
#[derive(Debug)]
pub(crate) struct CloseGate {
    closed: AtomicBool,
    deadline: watch::Sender<Option<Duration>>,
}

impl CloseGate {
    /// The gate and the receiver the consumer task watches for the drain deadline.
    pub(crate) fn new() -> (CloseGate, watch::Receiver<Option<Duration>>) {
        let (deadline, rx) = watch::channel(None);
        let gate = CloseGate {
            closed: AtomicBool::new(false),
            deadline,
        };
        (gate, rx)
    }

    /// Stops intake; a second call does not move the deadline.
    pub(crate) fn close(&self, drain_deadline: Duration) {
        self.closed.store(true, Ordering::Release);
        self.deadline.send_if_modified(|asked| {
            let first = asked.is_none();
            if first {
                *asked = Some(drain_deadline);
            }
            first
        });
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Sleeps until `deadline`, or forever when there is none (a `select!` branch that only fires
/// once a drain deadline is set).
pub(crate) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_close_sets_the_deadline() {
        let (gate, rx) = CloseGate::new();
        assert!(!gate.is_closed());
        gate.close(Duration::from_secs(3));
        gate.close(Duration::from_secs(9));
        assert!(gate.is_closed());
        assert_eq!(*rx.borrow(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn the_limiter_counts_what_it_holds_back() {
        let limiter = LogLimiter::default();
        assert_eq!(limiter.hit(1), Some(1));
        assert_eq!(limiter.hit(2), None);
        assert_eq!(limiter.hit(1), None);
        assert_eq!(limiter.held_back.load(Ordering::Relaxed), 3);
    }
}

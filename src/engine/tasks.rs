//! The engine's own tasks (the workers, the dispatcher, the router of the resolver's answers):
//! one that panics has taken messages it will never ack, and the acker holds every later ack
//! behind them, so intake is over until a restart. Its death is recorded for `/healthz` and
//! `/readyz` at once, not when the shutdown joins it: a liveness probe then restarts the
//! process, and the broker sends again what was not acked.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use ccstream_common::panic::panic_text;
use futures_util::FutureExt;
use tokio::task::JoinHandle;

/// Why the engine stopped working, once one of its tasks has died.
#[derive(Debug, Clone, Default)]
pub struct TaskFailure(Arc<OnceLock<String>>);

impl TaskFailure {
    /// The first death's reason, for the health checks.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    fn record(&self, reason: String) {
        // Only the first death is reported: the others follow from it.
        let _ = self.0.set(reason);
    }
}

/// Spawns `task` as the engine's task `name`. A panic is caught in the task itself, logged with
/// its message, counted (`ccstream_engine_tasks_failed_total`) and recorded in `failure`
/// without it (the health checks answer without authentication, and a panic's message may
/// quote what a device sent); the task then ends as if it had returned.
pub fn spawn_watched<F>(name: String, failure: &TaskFailure, task: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let failure = failure.clone();
    tokio::spawn(async move {
        // Nothing the task owned is looked at after the panic: it is dropped with the future.
        let Err(payload) = AssertUnwindSafe(task).catch_unwind().await else {
            return;
        };
        let reason = format!(
            "the engine's {name} task panicked (its message is in the log): its messages are no \
             longer evaluated or acked; restart ccstream (the broker keeps what was not acked)"
        );
        tracing::error!(%reason, panic = %panic_text(&*payload), "engine task died");
        metrics::counter!("ccstream_engine_tasks_failed_total").increment(1);
        failure.record(reason);
    })
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "ccstream_engine_tasks_failed_total",
        "Engine tasks (workers, the dispatcher, the resolver answers router) that panicked: /healthz and /readyz turn 503"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_is_no_failure() {
        let failure = TaskFailure::default();
        spawn_watched("worker 0".into(), &failure, async {})
            .await
            .expect("the watcher ends");
        assert_eq!(failure.reason(), None);
    }

    #[tokio::test]
    async fn a_panic_is_recorded_with_its_task_not_its_message() {
        let failure = TaskFailure::default();
        let id = 7;
        spawn_watched("worker 1".into(), &failure, async move {
            panic!("thing {id} broke it");
        })
        .await
        .expect("the watcher itself does not panic");
        let reason = failure.reason().expect("recorded");
        assert!(reason.contains("worker 1"), "{reason}");
        // The message stays in the log: it may quote a device's payload.
        assert!(!reason.contains("thing 7 broke it"), "{reason}");
    }

    #[tokio::test]
    async fn the_first_death_is_the_one_reported() {
        let failure = TaskFailure::default();
        spawn_watched("dispatcher".into(), &failure, async { panic!("first") })
            .await
            .expect("watcher");
        spawn_watched("worker 0".into(), &failure, async { panic!("second") })
            .await
            .expect("watcher");
        let reason = failure.reason().expect("recorded");
        assert!(reason.contains("dispatcher"), "{reason}");
    }
}

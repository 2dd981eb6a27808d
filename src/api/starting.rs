//! The API while the service starts: loading ten million things takes seconds, and a probe that
//! finds no listener cannot tell a slow start from a dead process. Until the service is built,
//! `/healthz` answers 200 (alive), `/readyz` and everything else 503 with what it is doing.
//!
//! It serves a clone of the API's socket; when the service is built it stops accepting and the
//! service serves the same socket, so connections made meanwhile wait in its queue.

use std::net::TcpListener;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`Starting::finish`] waits for requests in flight.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The starting API, serving until [`Starting::finish`].
pub struct Starting {
    stop: oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
}

impl Starting {
    /// Serves `listener` (a clone of the API's socket) until [`Self::finish`].
    pub fn serve(listener: TcpListener) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = Router::new()
            .route("/healthz", get(|| async { "ok (starting)\n" }))
            .fallback(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: starting (loading the rule store and the directory)\n",
                )
            });
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Starting { stop, served })
    }

    /// Stops accepting and waits a little for the requests in flight: a client that opened a
    /// connection and sends nothing must not hold the start (hyper has no header timeout
    /// here); what is still open after that is dropped with the task.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(FINISH_WAIT, self.served).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the starting API stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the starting API panicked"),
            Err(_) => tracing::debug!("the starting API's open connections dropped"),
        }
    }
}

//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::AppState;

/// The process is up and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to serve: the rule store answers. Later stages (MQTT, spool) add their reasons here.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.inner.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: rule store");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: rule store unreachable\n".to_owned(),
            )
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.metrics.render(),
    )
}

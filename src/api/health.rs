//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use std::sync::atomic::Ordering;

use super::{AppState, EngineStatus};

/// The process serves HTTP and can still do its work: 503 once the objects batcher thread or
/// an engine worker has died, which only a restart mends (nothing is lost: what they did not
/// commit was not acked, and the spool is stored at the next start), so that a liveness probe
/// restarts the process.
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let engine = state.inner.engine.read().ok().and_then(|s| s.clone());
    match engine.and_then(|status| dead_part(&status)) {
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
        None => (StatusCode::OK, "ok\n".to_owned()),
    }
}

/// Ready to serve: not shutting down, the rule store answers, the MQTT source is connected and
/// subscribed, the spool is under `objects.spool_max_bytes` (over it, messages are left to the
/// broker) and its batcher thread is alive, the webhook outbox is below
/// `webhook.outbox_max_bytes` and writable, and Redis answered its last round trip when it
/// holds the threshold state.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if state.inner.shutting_down.load(Ordering::Acquire) {
        reasons.push("shutting down".to_owned());
    }
    if let Err(e) = state.inner.store.ping().await {
        tracing::warn!(error = %e, "readiness check failed: rule store");
        reasons.push("rule store unreachable".to_owned());
    }
    let engine = state.inner.engine.read().ok().and_then(|s| s.clone());
    if let Some(status) = engine {
        if !status.mqtt.is_connected() {
            reasons.push("MQTT broker not connected".to_owned());
        } else if !status.mqtt.is_subscribed() {
            reasons.push("MQTT subscriptions not confirmed".to_owned());
        }
        if let Some(why) = dead_part(&status) {
            reasons.push(why);
        }
        if let Some(why) = status.objects.backpressure_reason() {
            reasons.push(why);
        }
        if let Some(why) = status.outbox.backpressure_reason() {
            reasons.push(why);
        }
        if let Some(why) = status.threshold_state.and_then(|s| s.unavailable()) {
            reasons.push(format!(
                "Redis (threshold state) unreachable, nothing is evaluated or acked: {why}"
            ));
        }
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}

/// Why a part that only a restart mends is dead: the objects batcher first (nothing is stored),
/// then an engine task.
fn dead_part(status: &EngineStatus) -> Option<String> {
    status
        .objects
        .failure()
        .or_else(|| status.tasks.reason().map(str::to_owned))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.metrics.render(),
    )
}

//! The management API: the AWS Lambda invoke endpoint that RuleLambda clients call, and the
//! operational endpoints `/healthz`, `/readyz`, `/metrics`.
//!
//! - [`invoke`]: `POST /2015-03-31/functions/{FunctionName}/invocations`, the Lambda protocol.
//! - [`rule_lambda`]: the Rule API actions behind it.
//! - [`error`]: function errors (spec 1.2) and protocol errors (Lambda's).
//! - [`health`]: liveness, readiness and Prometheus metrics.
//! - [`sts`], [`cognito`]: `POST /`, web identity tokens exchanged for temporary credentials
//!   (STS `AssumeRoleWithWebIdentity`, Cognito Identity `GetId`/`GetCredentialsForIdentity`).

pub mod cognito;
pub mod directory;
pub mod error;
pub mod health;
pub mod invoke;
pub mod observation_lambda;
pub mod rule_lambda;
pub mod starting;
pub mod sts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use ingest::SourceStatus;
use sinks::objects::ObjectSinkHandle;

use crate::engine::outputs::Token;
use rule_engine::Directory;

use crate::auth::exchange::Exchange;
use crate::auth::Authenticator;
use crate::store::RuleStore;
use observation_lambda::ObservationApi;
use rule_lambda::RuleApi;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    auth: Authenticator,
    /// STS and Cognito Identity, when `api.oidc.issuer` is set.
    exchange: Option<Exchange>,
    rules: RuleApi,
    /// FIND, when `search.url` is set.
    observations: Option<ObservationApi>,
    store: RuleStore,
    directory: Arc<RwLock<Directory>>,
    metrics: PrometheusHandle,
    max_body_bytes: usize,
    /// The MQTT connection and the object spool, once the engine runs.
    engine: RwLock<Option<EngineStatus>>,
    /// Set on SIGTERM: `/readyz` answers 503 from then on, while the drain runs.
    shutting_down: AtomicBool,
}

/// What `/readyz` asks of the running engine.
#[derive(Clone)]
pub struct EngineStatus {
    pub mqtt: SourceStatus,
    pub objects: ObjectSinkHandle<Token>,
    /// Redis, with `engine.state = "redis"`.
    pub threshold_state: Option<crate::engine::redis_state::StateStatus>,
    /// The webhook outbox (full: acks stop).
    pub outbox: Arc<sinks::webhook::OutboxStatus>,
    /// Set once a worker or the dispatcher has panicked.
    pub tasks: crate::engine::tasks::TaskFailure,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        auth: Authenticator,
        exchange: Option<Exchange>,
        rules: RuleApi,
        observations: Option<ObservationApi>,
        store: RuleStore,
        directory: Arc<RwLock<Directory>>,
        metrics: PrometheusHandle,
        max_body_bytes: usize,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                auth,
                exchange,
                rules,
                observations,
                store,
                directory,
                metrics,
                max_body_bytes,
                engine: RwLock::new(None),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// `/readyz` answers 503 from now on, so that load balancers stop sending API traffic
    /// while the service drains; the API itself keeps answering until the drain is over.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    /// From now on `/readyz` also needs the MQTT source connected and subscribed, and the
    /// spool under its limit.
    pub fn set_engine_status(&self, status: EngineStatus) {
        if let Ok(mut slot) = self.inner.engine.write() {
            *slot = Some(status);
        }
    }
}

/// The whole HTTP surface, so tests can drive it with `oneshot` as well as over a socket.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/", post(exchange))
        .route(
            "/2015-03-31/functions/{function}/invocations",
            post(invoke::invoke),
        )
        .route(
            "/directory",
            get(directory::export)
                .post(directory::import)
                .layer(DefaultBodyLimit::max(directory::MAX_IMPORT_BYTES)),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `POST /`: Cognito Identity when the call names an `X-Amz-Target`, STS otherwise.
async fn exchange(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(exchange) = &state.inner.exchange else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "message": "POST / (STS and Cognito Identity) is served when api.oidc.issuer is set"
            })),
        )
            .into_response();
    };
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok());
    let (api, (outcome, response)) = match target {
        Some(target) => ("cognito", cognito::handle(exchange, target, &body).await),
        None => ("sts", sts::handle(exchange, &body).await),
    };
    metrics::counter!("ccstream_api_exchanges_total", "api" => api, "outcome" => outcome)
        .increment(1);
    response
}

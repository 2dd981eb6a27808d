//! `GET /directory` exports and `POST /directory` imports (merges) the directory of things and
//! domains, in the [`DirectorySnapshot`] format:
//!
//! ```json
//! {"domains": [{"id": "sub1", "parent": "root"}],
//!  "things": [{"thingName": "t1", "thingType": "Pump", "domain": "sub1"}]}
//! ```
//!
//! The directory spans every tenant, so only callers of the root domain may use it (and only
//! `ReadWrite` callers may import). With `api.auth = "none"` every caller is root; SigV4
//! callers sign for the `lambda` service, as for the Rule API.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rule_engine::directory::DirectorySnapshot;
use serde_json::json;

use super::invoke::LAMBDA;
use super::AppState;
use crate::auth::{Caller, Request, Role};

/// Largest import body: 100,000 things take about 8 MB.
pub const MAX_IMPORT_BYTES: usize = 64 * 1024 * 1024;

/// A refusal: the status and a message for the client.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "message": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    Refused(status, message.into()).into_response()
}

/// The caller of `method` on the URI `uri` with `body`; SigV4 callers sign for the `lambda`
/// service, as for the Rule API.
async fn caller(
    state: &AppState,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Caller, Refused> {
    let request = Request {
        method,
        path_and_query: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
        headers,
        body,
    };
    let caller = state
        .inner
        .auth
        .authenticate(&request, LAMBDA)
        .await
        .map_err(|e| {
            let status =
                StatusCode::from_u16(e.aws_error().status).unwrap_or(StatusCode::UNAUTHORIZED);
            Refused(status, e.to_string())
        })?;
    if caller.domain != rule_engine::ROOT {
        return Err(Refused(
            StatusCode::FORBIDDEN,
            "the directory spans every domain: only callers of the root domain may use it".into(),
        ));
    }
    Ok(caller)
}

pub async fn export(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    // HEAD reaches this handler too, and is signed as HEAD.
    if let Err(r) = caller(&state, method.as_str(), &uri, &headers, b"").await {
        return r.into_response();
    }
    let snapshot = {
        let directory = match state.inner.directory.read() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        directory.export()
    };
    Json(snapshot).into_response()
}

pub async fn import(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match caller(&state, "POST", &uri, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if caller.role != Role::ReadWrite {
        return error(
            StatusCode::FORBIDDEN,
            "importing the directory needs ReadWrite",
        );
    }
    let snapshot: DirectorySnapshot = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not a directory snapshot: {e}"),
            )
        }
    };
    let (domains, things) = (snapshot.domains.len(), snapshot.things.len());
    // Applied in memory first: `import` checks the whole snapshot against the current tree and
    // changes nothing when it fails.
    {
        let mut directory = match state.inner.directory.write() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = directory.import(&snapshot) {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    }
    if let Err(e) = state.inner.store.import_directory(&snapshot).await {
        tracing::error!(error = %e, "directory imported in memory but not persisted");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the directory is in use but could not be stored; it will be lost at restart",
        );
    }
    tracing::info!(domains, things, user = %caller.user, "directory imported");
    Json(json!({ "domains": domains, "things": things })).into_response()
}

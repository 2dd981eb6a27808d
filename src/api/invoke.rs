//! `POST /2015-03-31/functions/{FunctionName}/invocations`: the AWS Lambda invoke protocol.
//!
//! The body is the payload. `FunctionName` is matched by what it contains, so the platform's
//! deployed names (`dev-RuleLambda-12345`) work as well as the bare `RuleLambda`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::error::{FunctionError, ProtocolError};
use crate::auth::Request;

/// The service a Lambda client's credential scope names.
pub const LAMBDA: &str = "lambda";
use super::rule_lambda::Action;
use super::AppState;

/// The functions this endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Rule,
    Observation,
}

impl Function {
    fn from_name(name: &str) -> Option<Function> {
        if name.contains("RuleLambda") {
            Some(Function::Rule)
        } else if name.contains("ObservationLambda") {
            Some(Function::Observation)
        } else {
            None
        }
    }

    fn label(self) -> &'static str {
        match self {
            Function::Rule => "RuleLambda",
            Function::Observation => "ObservationLambda",
        }
    }
}

/// `X-Amz-Invocation-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    /// Asynchronous: Lambda answers 202 with no body; the action still runs.
    Event,
    /// Lambda checks the request and the caller's rights, answers 204 and runs nothing.
    DryRun,
}

pub async fn invoke(
    State(state): State<AppState>,
    Path(function_name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let (function, action, outcome, response) =
        run(&state, &function_name, path_and_query, &headers, body).await;
    metrics::counter!(
        "ccstream_api_requests_total",
        "function" => function,
        "action" => action,
        "outcome" => outcome,
    )
    .increment(1);
    metrics::histogram!("ccstream_api_request_duration_seconds", "function" => function)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Returns the metric labels (function, action, outcome) with the response; all of them come
/// from fixed sets so the label cardinality stays bounded whatever clients send.
async fn run(
    state: &AppState,
    function_name: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Body,
) -> (&'static str, &'static str, &'static str, Response) {
    let inner = &state.inner;
    // Before the function is known, refusals are labelled as unknown.
    let refuse = |err: ProtocolError| ("unknown", "none", err.type_label(), err.into_response());
    // A SigV4 signature covers the body, so it is read first for those; anyone else is
    // authenticated before the server buffers anything of theirs.
    let body_first = inner.auth.reads_body(headers);
    let mut unread = Some(body);
    let mut bytes = Vec::new();
    if let Some(body) = unread.take_if(|_| body_first) {
        bytes = match read_body(headers, body, inner.max_body_bytes).await {
            Ok(read) => read,
            Err(err) => return refuse(err),
        };
    }
    let request = Request {
        method: "POST",
        path_and_query,
        headers,
        body: &bytes,
    };
    let caller = match inner.auth.authenticate(&request, LAMBDA).await {
        Ok(caller) => caller,
        Err(e) => return refuse(ProtocolError::Unauthenticated(e)),
    };
    if let Some(body) = unread {
        bytes = match read_body(headers, body, inner.max_body_bytes).await {
            Ok(read) => read,
            Err(err) => return refuse(err),
        };
    }
    let body = bytes;
    let Some(function) = Function::from_name(function_name) else {
        return refuse(ProtocolError::FunctionNotFound(function_name.to_owned()));
    };
    if function == Function::Observation && inner.observations.is_none() {
        return refuse(ProtocolError::FunctionNotFound(format!(
            "{function_name} (ObservationLambda is served when search.url is set)"
        )));
    }
    let label = function.label();
    let invocation = match invocation_type(headers) {
        Ok(t) => t,
        Err(err) => return (label, "none", err.type_label(), err.into_response()),
    };
    let payload = match parse_payload(&body) {
        Ok(p) => p,
        Err(err) => return (label, "none", err.type_label(), err.into_response()),
    };

    let (action, map) = match parse_action(&payload) {
        Ok(found) => found,
        Err(e) => return (label, "invalid", e.key_label(), e.into_response()),
    };
    let action = match (function, action) {
        (Function::Rule, name) => Action::parse(name).map(Call::Rule),
        (Function::Observation, "FIND") => Some(Call::Find),
        _ => None,
    };
    let Some(action) = action else {
        let e = FunctionError::invalid_action(payload.get("action").unwrap_or(&Value::Null));
        return (label, "invalid", e.key_label(), e.into_response());
    };
    let action_label = action.label();
    if invocation == InvocationType::DryRun {
        return (
            label,
            action_label,
            "dry_run",
            StatusCode::NO_CONTENT.into_response(),
        );
    }
    let result = match action {
        Call::Rule(action) => inner.rules.handle(&caller, action, map).await,
        Call::Find => match &inner.observations {
            Some(api) => api.find(&caller, map).await,
            // Checked above; kept total rather than panicking.
            None => Err(FunctionError::invalid_action(&Value::from("FIND"))),
        },
    };
    match result {
        Ok(_) if invocation == InvocationType::Event => (
            label,
            action_label,
            "ok",
            StatusCode::ACCEPTED.into_response(),
        ),
        Ok(value) => (label, action_label, "ok", axum::Json(value).into_response()),
        Err(e) => (label, action_label, e.key_label(), e.into_response()),
    }
}

fn invocation_type(headers: &HeaderMap) -> Result<InvocationType, ProtocolError> {
    match headers.get("x-amz-invocation-type").map(|v| v.to_str()) {
        None => Ok(InvocationType::RequestResponse),
        Some(Ok("RequestResponse")) => Ok(InvocationType::RequestResponse),
        Some(Ok("Event")) => Ok(InvocationType::Event),
        Some(Ok("DryRun")) => Ok(InvocationType::DryRun),
        Some(Ok(other)) => Err(ProtocolError::InvocationType(other.to_owned())),
        Some(Err(_)) => Err(ProtocolError::InvocationType("<not text>".to_owned())),
    }
}

/// Reads at most `limit` bytes.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n.min(limit as u64) as usize));
    let mut too_large = false;
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProtocolError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if received > limit as u64 {
            too_large = true;
            // Answering while the client is still sending makes it see a broken pipe instead
            // of the 413, so a moderately oversized body is read to its end and dropped.
            // Beyond the drain limit the connection is cut: that is the client's problem.
            if received > drain_limit(limit) {
                break;
            }
            continue;
        }
        bytes.extend_from_slice(&data);
    }
    if too_large {
        return Err(ProtocolError::TooLarge { limit });
    }
    Ok(bytes)
}

/// The payload as JSON; an empty body is `{}` as in Lambda.
fn parse_payload(bytes: &[u8]) -> Result<Value, ProtocolError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(bytes).map_err(|e| ProtocolError::InvalidJson(e.to_string()))
}

/// How much of an oversized body is read (and dropped) before answering 413.
fn drain_limit(limit: usize) -> u64 {
    (limit as u64).saturating_mul(8).max(8 * 1024 * 1024)
}

/// A function's action, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Rule(Action),
    Find,
}

impl Call {
    fn label(self) -> &'static str {
        match self {
            Call::Rule(a) => a.as_str(),
            Call::Find => "FIND",
        }
    }
}

/// The payload must be an object with a string `action`; which actions exist depends on the
/// function.
fn parse_action(payload: &Value) -> Result<(&str, &Map<String, Value>), FunctionError> {
    let Value::Object(map) = payload else {
        return Err(FunctionError::invalid_arguments(
            "payload",
            "the payload must be a JSON object",
        ));
    };
    match map.get("action") {
        None | Some(Value::Null) => Err(FunctionError::property_required("action")),
        Some(Value::String(s)) => Ok((s.as_str(), map)),
        Some(other) => Err(FunctionError::invalid_action(other)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn function_names_containing_rule_lambda_match() {
        assert_eq!(Function::from_name("RuleLambda"), Some(Function::Rule));
        assert_eq!(
            Function::from_name("dev-RuleLambda-12345"),
            Some(Function::Rule)
        );
        assert_eq!(
            Function::from_name("dev-ObservationLambda-1"),
            Some(Function::Observation)
        );
        assert_eq!(Function::from_name("UserLambda"), None);
        assert_eq!(Function::from_name("rulelambda"), None);
    }

    #[test]
    fn action_errors_follow_the_spec() {
        let key = |v: Value| parse_action(&v).unwrap_err();
        let e = key(json!([1]));
        assert_eq!(e.message_key, Some("INVALID_ARGUMENTS"));
        assert_eq!(e.property.as_deref(), Some("payload"));
        let e = key(json!({}));
        assert_eq!(e.message_key, Some("PROPERTY_REQUIRED"));
        assert_eq!(e.property.as_deref(), Some("action"));
        let e = key(json!({"action": 7}));
        assert_eq!(e.message_key, Some("INVALID_ACTION"));
        assert_eq!(e.message_params.unwrap()["action"], json!(7));
        let payload = json!({"action": "LIST"});
        let (action, _) = parse_action(&payload).unwrap();
        assert_eq!(action, "LIST");
    }

    #[test]
    fn invocation_types() {
        let mut h = HeaderMap::new();
        assert_eq!(
            invocation_type(&h).unwrap(),
            InvocationType::RequestResponse
        );
        h.insert("x-amz-invocation-type", "DryRun".parse().unwrap());
        assert_eq!(invocation_type(&h).unwrap(), InvocationType::DryRun);
        h.insert("x-amz-invocation-type", "Sometimes".parse().unwrap());
        assert!(invocation_type(&h).is_err());
    }

    #[tokio::test]
    async fn payload_reading() {
        let h = HeaderMap::new();
        let v = parse_payload(&read_body(&h, Body::from("  "), 10).await.unwrap()).unwrap();
        assert_eq!(v, json!({}));
        let e = parse_payload(b"{nope").unwrap_err();
        assert!(matches!(e, ProtocolError::InvalidJson(_)));
        let e = read_body(&h, Body::from("[1,2,3,4,5,6,7]"), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, ProtocolError::TooLarge { .. }), "{e:?}");
    }
}

//! The two ways an invocation fails.
//!
//! - [`FunctionError`]: the function ran and refused the input. Spec 1.2: HTTP 200 with
//!   `X-Amz-Function-Error: Unhandled` and `{"errorMessage": "<JSON string>"}`, because clients
//!   call `JSON.parse(payload.errorMessage)`.
//! - [`ProtocolError`]: the invoke request itself is wrong (unknown function, body not JSON, too
//!   large, no identity). Answered as AWS Lambda answers them (status code plus
//!   `x-amzn-ErrorType`), so AWS SDKs raise their usual exceptions.
//!
//! Neither shows internals: store and other unexpected failures are logged with a reference and
//! the client gets only the reference.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rule_engine::validate::Invalid;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Name of the header that marks a function error (AWS Lambda invoke API).
pub const FUNCTION_ERROR_HEADER: &str = "x-amz-function-error";
/// Name of the header that carries a protocol error's type (AWS REST-JSON protocol).
pub const ERROR_TYPE_HEADER: &str = "x-amzn-errortype";

/// An error in the spec's format: `message` always, `messageKey`, `messageParams` and
/// `property` when they apply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_key: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_params: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
}

impl FunctionError {
    fn keyed(key: &'static str, message: impl Into<String>) -> Self {
        FunctionError {
            message: message.into(),
            message_key: Some(key),
            message_params: None,
            property: None,
        }
    }

    fn on(mut self, property: impl Into<String>) -> Self {
        self.property = Some(property.into());
        self
    }

    fn with_params(mut self, params: Value) -> Self {
        if let Value::Object(map) = params {
            self.message_params = Some(map);
        }
        self
    }

    /// An error whose key and property come from a library check (the keys are spec 1.2's).
    pub fn keyed_on(key: &'static str, property: &str, message: impl Into<String>) -> Self {
        Self::keyed(key, message).on(property)
    }

    pub fn property_required(property: &str) -> Self {
        Self::keyed("PROPERTY_REQUIRED", format!("{property} is required")).on(property)
    }

    pub fn invalid_arguments(property: &str, message: impl Into<String>) -> Self {
        Self::keyed("INVALID_ARGUMENTS", message).on(property)
    }

    /// Spec 1.2.1.
    pub fn invalid_action(action: &Value) -> Self {
        let shown = match action {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Self::keyed("INVALID_ACTION", format!("invalid action: {shown}"))
            .with_params(json!({ "action": action }))
    }

    /// Spec 1.2.1: the caller's role does not allow the operation.
    pub fn not_authorized(operation: &str, object_type: &str) -> Self {
        Self::keyed(
            "NOT_AUTHORIZED",
            format!("not authorized to {operation} {object_type}"),
        )
        .with_params(json!({ "operation": operation, "objectType": object_type }))
    }

    pub fn not_authorized_domain(domain: &str) -> Self {
        Self::keyed(
            "NOT_AUTHORIZED_DOMAIN",
            format!("not authorized for domain {domain}"),
        )
    }

    pub fn rule_not_found(id: &str) -> Self {
        Self::keyed("RULE_NOT_FOUND", format!("rule {id} not found")).on("id")
    }

    pub fn rule_id_exists(id: &str) -> Self {
        Self::keyed(
            "RULE_ID_EXISTS",
            format!("a rule with id {id} already exists"),
        )
        .on("id")
    }

    /// Something failed that the caller cannot fix; details are in the log under `reference`.
    /// Spec 1.2: `message` alone is what unknown errors carry.
    pub fn internal(reference: &str) -> Self {
        FunctionError {
            message: format!("internal error (reference {reference})"),
            message_key: None,
            message_params: None,
            property: None,
        }
    }

    pub fn key_label(&self) -> &'static str {
        self.message_key.unwrap_or("INTERNAL")
    }
}

impl From<Invalid> for FunctionError {
    fn from(e: Invalid) -> Self {
        FunctionError {
            message: e.message,
            message_key: Some(e.key.as_str()),
            message_params: e.params,
            property: Some(e.property),
        }
    }
}

impl IntoResponse for FunctionError {
    fn into_response(self) -> Response {
        // serde_json cannot fail on this struct (string keys, plain values).
        let inner = serde_json::to_string(&self).unwrap_or_else(|_| self.message.clone());
        let mut response =
            (StatusCode::OK, axum::Json(json!({ "errorMessage": inner }))).into_response();
        response.headers_mut().insert(
            HeaderName::from_static(FUNCTION_ERROR_HEADER),
            HeaderValue::from_static("Unhandled"),
        );
        response
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("Function not found: {0}")]
    FunctionNotFound(String),
    #[error("Could not parse request body into json: {0}")]
    InvalidJson(String),
    #[error("Request must be smaller than {limit} bytes for the InvokeFunction operation")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Unauthenticated(crate::auth::AuthError),
    #[error("Unsupported invocation type: {0}")]
    InvocationType(String),
    #[error("Could not read the request body: {0}")]
    Body(String),
}

impl ProtocolError {
    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            ProtocolError::FunctionNotFound(_) => {
                (StatusCode::NOT_FOUND, "ResourceNotFoundException")
            }
            ProtocolError::InvalidJson(_) => {
                (StatusCode::BAD_REQUEST, "InvalidRequestContentException")
            }
            ProtocolError::TooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLargeException")
            }
            ProtocolError::Unauthenticated(e) => {
                let aws = e.aws_error();
                (
                    StatusCode::from_u16(aws.status).unwrap_or(StatusCode::FORBIDDEN),
                    aws.error_type,
                )
            }
            ProtocolError::InvocationType(_) => {
                (StatusCode::BAD_REQUEST, "InvalidParameterValueException")
            }
            ProtocolError::Body(_) => (StatusCode::BAD_REQUEST, "InvalidRequestContentException"),
        }
    }

    pub fn type_label(&self) -> &'static str {
        self.status_and_type().1
    }
}

impl IntoResponse for ProtocolError {
    fn into_response(self) -> Response {
        let (status, error_type) = self.status_and_type();
        let mut response = (
            status,
            axum::Json(json!({ "Type": "User", "message": self.to_string() })),
        )
            .into_response();
        response.headers_mut().insert(
            HeaderName::from_static(ERROR_TYPE_HEADER),
            HeaderValue::from_static(error_type),
        );
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn error_message_is_a_json_string_in_spec_shape() {
        let e = FunctionError::property_required("name");
        let s = serde_json::to_string(&e).unwrap();
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            back,
            json!({"message": "name is required", "messageKey": "PROPERTY_REQUIRED", "property": "name"})
        );
    }

    #[test]
    fn internal_errors_carry_only_a_message() {
        let v = serde_json::to_value(FunctionError::internal("abc")).unwrap();
        assert_eq!(v, json!({"message": "internal error (reference abc)"}));
    }
}

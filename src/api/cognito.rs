//! Cognito Identity `GetId` and `GetCredentialsForIdentity` on `POST /` (JSON 1.1, the action in
//! `X-Amz-Target`), so that aws-sdk-js v2's `AWS.CognitoIdentityCredentials` (the spec's own
//! client example) and v3's `fromCognitoIdentity` work with their endpoint pointed at ccstream.
//! `Logins` maps the provider name (the issuer without `https://`) to the OIDC token.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::auth::exchange::{self, Exchange, ExchangeError};
use crate::auth::oidc::OidcError;

/// The target prefix of Cognito Identity's operations.
pub const TARGET_PREFIX: &str = "AWSCognitoIdentityService.";

struct CognitoError {
    error_type: &'static str,
    message: String,
}

impl CognitoError {
    fn new(error_type: &'static str, message: impl Into<String>) -> CognitoError {
        CognitoError {
            error_type,
            message: message.into(),
        }
    }
}

impl From<OidcError> for CognitoError {
    fn from(e: OidcError) -> CognitoError {
        match e {
            OidcError::Unavailable => CognitoError::new("ExternalServiceException", e.to_string()),
            _ => CognitoError::new("NotAuthorizedException", e.to_string()),
        }
    }
}

impl From<ExchangeError> for CognitoError {
    fn from(e: ExchangeError) -> CognitoError {
        match e {
            ExchangeError::Token(e) => e.into(),
            ExchangeError::Seal(_) => {
                tracing::error!(error = %e, "Cognito: sealing credentials failed");
                CognitoError::new("InternalErrorException", "internal error")
            }
        }
    }
}

impl IntoResponse for CognitoError {
    fn into_response(self) -> Response {
        let status = match self.error_type {
            "InternalErrorException" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut response = (
            status,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/x-amz-json-1.1",
            )],
            json!({"__type": self.error_type, "message": self.message}).to_string(),
        )
            .into_response();
        response.headers_mut().insert(
            HeaderName::from_static(super::error::ERROR_TYPE_HEADER),
            HeaderValue::from_static(self.error_type),
        );
        response
    }
}

/// Answers one Cognito Identity call named by `target`; the label says how it went.
pub async fn handle(exchange: &Exchange, target: &str, body: &[u8]) -> (&'static str, Response) {
    let result = match target.strip_prefix(TARGET_PREFIX) {
        Some("GetId") => get_id(exchange, body).await,
        Some("GetCredentialsForIdentity") => get_credentials(exchange, body).await,
        _ => Err(CognitoError::new(
            "UnknownOperationException",
            format!(
                "{target} is not served here; ccstream serves GetId and GetCredentialsForIdentity"
            ),
        )),
    };
    match result {
        Ok(answer) => (
            "ok",
            (
                StatusCode::OK,
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/x-amz-json-1.1",
                )],
                answer.to_string(),
            )
                .into_response(),
        ),
        Err(e) => {
            tracing::info!(error_type = e.error_type, message = %e.message, "Cognito call refused");
            (e.error_type, e.into_response())
        }
    }
}

fn input(body: &[u8]) -> Result<Map<String, Value>, CognitoError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(CognitoError::new(
            "InvalidParameterException",
            "the body must be a JSON object",
        )),
    }
}

/// The OIDC token under this issuer's provider name in `Logins`.
fn login<'a>(exchange: &Exchange, input: &'a Map<String, Value>) -> Result<&'a str, CognitoError> {
    let provider = exchange.oidc.provider_name();
    let logins = input.get("Logins").and_then(Value::as_object);
    if logins.is_none_or(Map::is_empty) {
        return Err(CognitoError::new(
            "NotAuthorizedException",
            "Unauthenticated access is not supported: give Logins with an identity token",
        ));
    }
    logins
        .and_then(|l| l.get(provider))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CognitoError::new(
                "NotAuthorizedException",
                format!("Invalid login token: Logins has no token for the provider {provider}"),
            )
        })
}

async fn get_id(exchange: &Exchange, body: &[u8]) -> Result<Value, CognitoError> {
    let input = input(body)?;
    let pool = input
        .get("IdentityPoolId")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CognitoError::new("InvalidParameterException", "IdentityPoolId is required")
        })?;
    if !exchange.accepts_pool(pool) {
        return Err(CognitoError::new(
            "ResourceNotFoundException",
            format!("IdentityPool '{pool}' not found"),
        ));
    }
    let identity = exchange.oidc.verify(login(exchange, &input)?).await?;
    Ok(json!({"IdentityId": exchange.identity_id(&identity)}))
}

async fn get_credentials(exchange: &Exchange, body: &[u8]) -> Result<Value, CognitoError> {
    let input = input(body)?;
    let identity_id = input
        .get("IdentityId")
        .and_then(Value::as_str)
        .ok_or_else(|| CognitoError::new("InvalidParameterException", "IdentityId is required"))?;
    let identity = exchange.oidc.verify(login(exchange, &input)?).await?;
    if exchange.identity_id(&identity) != identity_id {
        return Err(CognitoError::new(
            "NotAuthorizedException",
            "Logins don't match. Please include at least one valid login for this identity",
        ));
    }
    let issued = exchange.issue(&identity, exchange::COGNITO_DURATION)?;
    Ok(json!({
        "IdentityId": identity_id,
        "Credentials": {
            "AccessKeyId": issued.access_key_id,
            "SecretKey": issued.secret_access_key,
            "SessionToken": issued.session_token,
            "Expiration": issued.expires,
        }
    }))
}

//! STS `AssumeRoleWithWebIdentity` on `POST /` (AWS Query protocol: a form-encoded body, an XML
//! answer), so that `boto3.client("sts").assume_role_with_web_identity(...)` and the SDKs'
//! web-identity credential providers work with their endpoint pointed at ccstream. The caller
//! comes from the token's claims; `RoleArn` is only repeated in the answer.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use sha2::{Digest, Sha256};

use crate::auth::exchange::{self, Exchange, ExchangeError};
use crate::auth::oidc::OidcError;
use crate::auth::random;

const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// An STS error: its code (what SDKs raise) and message.
struct StsError {
    code: &'static str,
    message: String,
}

impl StsError {
    fn new(code: &'static str, message: impl Into<String>) -> StsError {
        StsError {
            code,
            message: message.into(),
        }
    }
}

impl From<OidcError> for StsError {
    fn from(e: OidcError) -> StsError {
        let code = match e {
            OidcError::Invalid(_) => "InvalidIdentityToken",
            OidcError::Expired => "ExpiredTokenException",
            OidcError::Unavailable => "IDPCommunicationError",
        };
        StsError::new(code, e.to_string())
    }
}

impl From<ExchangeError> for StsError {
    fn from(e: ExchangeError) -> StsError {
        match e {
            ExchangeError::Token(e) => e.into(),
            ExchangeError::Seal(_) => {
                tracing::error!(error = %e, "STS: sealing credentials failed");
                StsError::new("InternalFailure", "internal error")
            }
        }
    }
}

impl IntoResponse for StsError {
    fn into_response(self) -> Response {
        let (status, kind) = match self.code {
            "InternalFailure" => (StatusCode::INTERNAL_SERVER_ERROR, "Receiver"),
            _ => (StatusCode::BAD_REQUEST, "Sender"),
        };
        let body = format!(
            "<ErrorResponse xmlns=\"{NAMESPACE}\"><Error><Type>{kind}</Type><Code>{}</Code>\
             <Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
            self.code,
            escape(&self.message),
            random::request_id()
        );
        xml(status, body)
    }
}

/// Answers one STS call; the label says how it went, for the metric.
pub async fn handle(exchange: &Exchange, body: &[u8]) -> (&'static str, Response) {
    match assume_role_with_web_identity(exchange, body).await {
        Ok(response) => ("ok", response),
        Err(e) => {
            tracing::info!(code = e.code, message = %e.message, "STS call refused");
            (e.code, e.into_response())
        }
    }
}

async fn assume_role_with_web_identity(
    exchange: &Exchange,
    body: &[u8],
) -> Result<Response, StsError> {
    let param = |name: &str| {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let required = |name: &str| {
        param(name).ok_or_else(|| StsError::new("MissingParameter", format!("{name} is required")))
    };
    match param("Action").as_deref() {
        Some("AssumeRoleWithWebIdentity") => {}
        other => {
            return Err(StsError::new(
                "InvalidAction",
                format!(
                    "{} is not served here; ccstream serves AssumeRoleWithWebIdentity",
                    other.unwrap_or("(no Action)")
                ),
            ))
        }
    }
    let token = required("WebIdentityToken")?;
    let role_arn = required("RoleArn")?;
    let session_name = required("RoleSessionName")?;
    // STS's own constraints, so that what works here works against AWS too.
    if !(20..=2048).contains(&role_arn.len()) {
        return Err(StsError::new(
            "ValidationError",
            "RoleArn must be 20 to 2048 characters long",
        ));
    }
    let session_name_ok = (2..=64).contains(&session_name.len())
        && session_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    if !session_name_ok {
        return Err(StsError::new(
            "ValidationError",
            "RoleSessionName must be 2 to 64 characters of [A-Za-z0-9_+=,.@-]",
        ));
    }
    let lifetime = match param("DurationSeconds") {
        None => exchange::DEFAULT_DURATION,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
            .filter(|d| (exchange::MIN_DURATION..=exchange::MAX_DURATION).contains(d))
            .ok_or_else(|| {
                StsError::new(
                    "ValidationError",
                    "DurationSeconds must be a number from 900 to 43200",
                )
            })?,
    };
    let identity = exchange.oidc.verify(&token).await?;
    let issued = exchange.issue(&identity, lifetime)?;
    let role_name = role_arn.rsplit('/').next().unwrap_or(&role_arn);
    let body = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"{NAMESPACE}\">\
         <AssumeRoleWithWebIdentityResult>\
         <SubjectFromWebIdentityToken>{subject}</SubjectFromWebIdentityToken>\
         <Audience>{audience}</Audience>\
         <AssumedRoleUser><Arn>arn:aws:sts::000000000000:assumed-role/{role}/{session}</Arn>\
         <AssumedRoleId>{role_id}:{session}</AssumedRoleId></AssumedRoleUser>\
         <Credentials><SessionToken>{token}</SessionToken>\
         <SecretAccessKey>{secret}</SecretAccessKey>\
         <Expiration>{expiration}</Expiration>\
         <AccessKeyId>{key}</AccessKeyId></Credentials>\
         <Provider>{provider}</Provider>\
         </AssumeRoleWithWebIdentityResult>\
         <ResponseMetadata><RequestId>{request}</RequestId></ResponseMetadata>\
         </AssumeRoleWithWebIdentityResponse>",
        subject = escape(&identity.subject),
        audience = escape(&identity.audience),
        role = escape(role_name),
        session = escape(&session_name),
        key = issued.access_key_id,
        token = issued.session_token,
        secret = escape(&issued.secret_access_key),
        expiration = iso8601_secs(issued.expires),
        provider = escape(exchange.oidc.issuer()),
        role_id = role_id(role_name),
        request = random::request_id(),
    );
    Ok(xml(StatusCode::OK, body))
}

/// A role id in AWS's shape (`AROA` and 17 characters), the same for the same role name.
fn role_id(role_name: &str) -> String {
    let digest = Sha256::digest(role_name.as_bytes());
    let tail: String = hex::encode_upper(&digest[..9]).chars().take(17).collect();
    format!("AROA{tail}")
}

fn xml(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}

/// `2026-12-03T15:04:05Z`.
fn iso8601_secs(secs: u64) -> String {
    let text = sinks::utc::rfc3339(secs.saturating_mul(1000));
    // Drop the milliseconds (always .000 here): STS answers whole seconds.
    match text.split_once('.') {
        Some((whole, _)) => format!("{whole}Z"),
        None => text,
    }
}

/// Text for an XML element.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_times_are_whole_seconds() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(iso8601_secs(1_460_661_813), "2016-04-14T19:23:33Z");
    }
}

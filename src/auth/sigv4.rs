//! SigV4 verification of an incoming request.
//!
//! The signature is not recomputed by hand: the request is signed again with `aws-sigv4` (the
//! crate the AWS SDKs sign with) from the headers the caller listed in `SignedHeaders`, the
//! body, the time of its `X-Amz-Date` and the secret of its access key, and the two signatures
//! are compared in constant time. Before that, what the signer would take on trust is checked:
//! the scope's date matches `X-Amz-Date`, the date is within [`MAX_SKEW`] of now, every signed
//! header is present (`host` among them: the signer cannot do without it), and a sent
//! `x-amz-content-sha256` is the body's hash. [`precheck`] does these alone, so that a request
//! that fails them costs no key lookup.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SessionTokenMode, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Request;

/// How far `X-Amz-Date` may be from now, either way.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// The one signing algorithm SigV4 headers name.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The header a client may send the body's SHA-256 in (hex).
const CONTENT_SHA256: &str = "x-amz-content-sha256";

/// The header temporary credentials' session token travels in.
pub const SESSION_TOKEN: &str = "x-amz-security-token";

/// Why a request's signature is refused. The texts name no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error(
        "Authorization header is not AWS4-HMAC-SHA256 with Credential, SignedHeaders and Signature"
    )]
    Malformed,
    #[error("X-Amz-Date is missing or not yyyyMMddTHHmmssZ")]
    BadDate,
    #[error("the credential scope's date does not match X-Amz-Date")]
    ScopeDate,
    #[error("X-Amz-Date is more than 5 minutes from the server's time")]
    Stale,
    #[error("signed header {0} is not in the request")]
    MissingSignedHeader(String),
    #[error("host must be a signed header")]
    HostNotSigned,
    #[error("x-amz-content-sha256 does not match the body")]
    BodyHash,
    #[error("the signature does not match")]
    Mismatch,
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    /// `yyyyMMdd` of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case names, in the order given.
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Authorization {
    /// Parses `AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/service/aws4_request,
    /// SignedHeaders=host;x-amz-date, Signature=...`.
    pub fn parse(value: &str) -> Result<Authorization, SigV4Error> {
        let rest = value
            .strip_prefix(ALGORITHM)
            .filter(|r| r.starts_with(' '))
            .ok_or(SigV4Error::Malformed)?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (key, val) = part.trim().split_once('=').ok_or(SigV4Error::Malformed)?;
            match key {
                "Credential" => credential = Some(val),
                "SignedHeaders" => signed = Some(val),
                "Signature" => signature = Some(val),
                _ => return Err(SigV4Error::Malformed),
            }
        }
        let (credential, signed, signature) = match (credential, signed, signature) {
            (Some(c), Some(h), Some(s)) => (c, h, s),
            _ => return Err(SigV4Error::Malformed),
        };
        let scope: Vec<&str> = credential.split('/').collect();
        let [key, date, region, service, "aws4_request"] = scope[..] else {
            return Err(SigV4Error::Malformed);
        };
        // AWS's ids are at most 128 upper-case letters and digits; holding others to that
        // keeps made-up ids from growing the key cache or the logs.
        let well_formed = (1..=128).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && date.len() == 8
            && date.bytes().all(|b| b.is_ascii_digit())
            && !region.is_empty()
            && !service.is_empty()
            && signature.len() == 64
            && signature.bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed || signed.is_empty() {
            return Err(SigV4Error::Malformed);
        }
        Ok(Authorization {
            access_key_id: key.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers: signed.split(';').map(str::to_ascii_lowercase).collect(),
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// Checks `request`, signed as `auth` says, against the secret (and session token) of its
/// access key, at `now`.
pub fn verify(
    request: &Request<'_>,
    auth: &Authorization,
    secret_access_key: &str,
    session_token: Option<&str>,
    now: SystemTime,
) -> Result<(), SigV4Error> {
    let signed_at = precheck(request, auth, now)?;
    check_signature(request, auth, signed_at, secret_access_key, session_token)
}

/// What needs no secret: the date (returned, as signed), the signed headers, the body's hash.
pub fn precheck(
    request: &Request<'_>,
    auth: &Authorization,
    now: SystemTime,
) -> Result<SystemTime, SigV4Error> {
    let date = request.header("x-amz-date").ok_or(SigV4Error::BadDate)?;
    let signed_at = parse_amz_date(date).ok_or(SigV4Error::BadDate)?;
    if !date.starts_with(&auth.date) {
        return Err(SigV4Error::ScopeDate);
    }
    let skew = match now.duration_since(signed_at) {
        Ok(behind) => behind,
        Err(ahead) => ahead.duration(),
    };
    if skew > MAX_SKEW {
        return Err(SigV4Error::Stale);
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::HostNotSigned);
    }
    if let Some(missing) = auth
        .signed_headers
        .iter()
        .find(|name| !request.headers.contains_key(name.as_str()))
    {
        return Err(SigV4Error::MissingSignedHeader(missing.clone()));
    }
    if let Some(sent) = request.header(CONTENT_SHA256) {
        let actual = hex::encode(Sha256::digest(request.body));
        if !sent.eq_ignore_ascii_case(&actual) {
            return Err(SigV4Error::BodyHash);
        }
    }
    Ok(signed_at)
}

/// Signs `request` again as `auth` says, at `signed_at`, and compares. Only for a request that
/// passed [`precheck`] (which also checked a sent body hash: this trusts it).
pub fn check_signature(
    request: &Request<'_>,
    auth: &Authorization,
    signed_at: SystemTime,
    secret_access_key: &str,
    session_token: Option<&str>,
) -> Result<(), SigV4Error> {
    let mut headers: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        // The signer adds these itself, from the time and the identity.
        if name == "x-amz-date" || name == SESSION_TOKEN {
            continue;
        }
        let value = header_value(request, name)
            .ok_or_else(|| SigV4Error::MissingSignedHeader(name.clone()))?;
        headers.push((name.as_str(), value));
    }
    let identity: Identity = Credentials::new(
        &auth.access_key_id,
        secret_access_key,
        session_token.map(str::to_owned),
        None,
        "ccstream",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&auth.region)
        .name(&auth.service)
        .time(signed_at)
        .settings(settings(auth))
        .build()
        .map_err(|_| SigV4Error::Malformed)?
        .into();
    // precheck already hashed the body when the client sent its hash: not again.
    let body = match request.header(CONTENT_SHA256) {
        Some(hash) => SignableBody::Precomputed(hash.to_ascii_lowercase()),
        None => SignableBody::Bytes(request.body),
    };
    let signable = SignableRequest::new(
        request.method,
        request.path_and_query,
        headers.iter().map(|(name, value)| (*name, value.as_ref())),
        body,
    )
    .map_err(|_| SigV4Error::Malformed)?;
    let expected = sign(signable, &params).map_err(|_| SigV4Error::Malformed)?;
    if bool::from(
        expected
            .signature()
            .as_bytes()
            .ct_eq(auth.signature.as_bytes()),
    ) {
        Ok(())
    } else {
        Err(SigV4Error::Mismatch)
    }
}

/// A header's values as SigV4 canonicalizes them: repeated ones joined with commas; `None` when
/// it is absent or not text.
fn header_value<'r>(request: &'r Request<'_>, name: &str) -> Option<Cow<'r, str>> {
    let mut values = request.headers.get_all(name).iter();
    let first = values.next()?.to_str().ok()?;
    let mut joined: Option<String> = None;
    for more in values {
        let text = joined.get_or_insert_with(|| first.to_owned());
        text.push(',');
        text.push_str(more.to_str().ok()?);
    }
    Some(joined.map_or(Cow::Borrowed(first), Cow::Owned))
}

/// The signer's settings for a request signed as `auth` says: no header left out (only the
/// signed ones are given, and a client may sign `user-agent`), and the session token inside
/// the signature exactly when the client signed it.
fn settings(auth: &Authorization) -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    settings.session_token_mode = if auth.signed_headers.iter().any(|h| h == SESSION_TOKEN) {
        SessionTokenMode::Include
    } else {
        SessionTokenMode::Exclude
    };
    settings
}

/// `yyyyMMddTHHmmssZ` as a time.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
    };
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(digits(4..6)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(digits(0..4)?).ok()?,
        month,
        u8::try_from(digits(6..8)?).ok()?,
    )
    .ok()?;
    let at = time::Time::from_hms(
        u8::try_from(digits(9..11)?).ok()?,
        u8::try_from(digits(11..13)?).ok()?,
        u8::try_from(digits(13..15)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, at).assume_utc().into())
}

#[cfg(test)]
mod tests;

//! SigV4 (`Authorization: AWS4-HMAC-SHA256 ...`): any header value parses or is refused without
//! a panic, and any request an AWS SDK signer signs (method, path and query, headers, body,
//! session token, body hash header or not) verifies, while the same request with its body or
//! signature changed does not.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use ccstream::auth::sigv4::{verify, Authorization, SigV4Error};
use ccstream::auth::Request;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Parsed as an Authorization header, then checked against the request below.
    raw_authorization: String,
    method: u8,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    session_token: Option<String>,
    body_hash_header: bool,
    /// Seconds after 2001-09-09.
    signed_at: u32,
    secret: String,
    region: u8,
    flip: (u16, u8),
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];
const REGIONS: &[&str] = &["eu-west-1", "us-east-1", "cn-north-1", "local"];
const KEY_ID: &str = "AKIDEXAMPLE";

fuzz_target!(|input: Input| {
    let at = UNIX_EPOCH + Duration::from_secs(1_000_000_000 + u64::from(input.signed_at));
    let method = METHODS[usize::from(input.method) % METHODS.len()];

    // Text that a signer can sign and HTTP can carry: visible ASCII and spaces.
    let printable = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
    let mut path = format!("/{}", input.path.trim_start_matches('/'));
    if !input.query.is_empty() {
        let query: Vec<String> = input
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let mut pairs: Vec<(String, String)> = vec![("host".into(), "ccstream.example.com".into())];
    for (name, value) in &input.headers {
        let name = name.to_ascii_lowercase();
        if HeaderName::try_from(name.as_str()).is_err() || !printable(value) {
            continue;
        }
        // The signer sets these; SDK clients never send them themselves.
        if matches!(
            name.as_str(),
            "authorization"
                | "x-amz-date"
                | "x-amz-security-token"
                | "x-amz-content-sha256"
                | "host"
        ) {
            continue;
        }
        pairs.push((name, value.trim().to_owned()));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.append(n, v);
        }
    }

    // Any Authorization header: parsed or refused, checked or refused, never a panic. The
    // request carries an X-Amz-Date of the header's own scope date, so that the checks past the
    // date are reached.
    if let Ok(auth) = Authorization::parse(&input.raw_authorization) {
        let mut headers = headers.clone();
        let amz_date = format!("{}T000000Z", auth.date);
        if let Ok(v) = HeaderValue::try_from(amz_date.as_str()) {
            headers.insert("x-amz-date", v);
        }
        let at = parse_date(&amz_date).unwrap_or(at);
        assert_eq!(auth.signature.len(), 64);
        assert!(auth
            .access_key_id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
        let request = Request {
            method,
            path_and_query: &path,
            headers: &headers,
            body: &input.body,
        };
        let _ = verify(
            &request,
            &auth,
            &input.secret,
            input.session_token.as_deref(),
            at,
        );
    }

    // Signed by the SDK's signer: verifies.
    let token = input
        .session_token
        .filter(|t| !t.is_empty() && printable(t) && t.trim() == t);
    let identity: Identity =
        Credentials::new(KEY_ID, &input.secret, token.clone(), None, "fuzz").into();
    let mut settings = SigningSettings::default();
    if input.body_hash_header {
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
    }
    let Ok(params) = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGIONS[usize::from(input.region) % REGIONS.len()])
        .name("lambda")
        .time(at)
        .settings(settings)
        .build()
    else {
        return;
    };
    let params = params.into();
    let Ok(signable) = SignableRequest::new(
        method,
        &path,
        pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(&input.body),
    ) else {
        return;
    };
    let Ok(signed) = sign(signable, &params) else {
        return;
    };
    let (instructions, _) = signed.into_parts();
    let (added, _) = instructions.into_parts();
    let mut authorization = None;
    for h in added {
        if h.name() == "authorization" {
            authorization = Some(h.value().to_owned());
        }
        headers.append(
            HeaderName::try_from(h.name()).expect("the signer's header name"),
            HeaderValue::try_from(h.value()).expect("the signer's header value"),
        );
    }
    let authorization = authorization.expect("the signer adds authorization");
    let auth = Authorization::parse(&authorization)
        .unwrap_or_else(|e| panic!("the SDK's header refused ({e}): {authorization}"));
    let request = Request {
        method,
        path_and_query: &path,
        headers: &headers,
        body: &input.body,
    };
    let now = at + Duration::from_secs(u64::from(input.flip.1) % 300);
    assert_eq!(
        verify(&request, &auth, &input.secret, token.as_deref(), now),
        Ok(()),
        "{method} {path} {headers:?}"
    );

    // The body changed: refused.
    let mut body = input.body.clone();
    let i = usize::from(input.flip.0);
    if body.is_empty() {
        body.push(input.flip.1);
    } else {
        let len = body.len();
        body[i % len] ^= input.flip.1.max(1);
    }
    let changed = Request {
        body: &body,
        ..request
    };
    let refused = verify(&changed, &auth, &input.secret, token.as_deref(), now);
    assert!(
        matches!(refused, Err(SigV4Error::BodyHash | SigV4Error::Mismatch)),
        "a changed body: {refused:?}"
    );

    // Another method, or the date a second later: refused.
    let other_method = METHODS[(usize::from(input.method) + 1) % METHODS.len()];
    let changed = Request {
        method: other_method,
        ..request
    };
    assert!(verify(&changed, &auth, &input.secret, token.as_deref(), now).is_err());
    let mut later = headers.clone();
    let date = later
        .get("x-amz-date")
        .and_then(|d| d.to_str().ok())
        .and_then(parse_date)
        .expect("the signer's date");
    let next = date + Duration::from_secs(1);
    later.insert(
        "x-amz-date",
        HeaderValue::try_from(amz_date(next)).expect("a date"),
    );
    let changed = Request {
        headers: &later,
        ..request
    };
    assert!(verify(&changed, &auth, &input.secret, token.as_deref(), now).is_err());

    // The signature changed: refused.
    let mut other = auth.clone();
    let mut sig = other.signature.into_bytes();
    let j = i % sig.len();
    sig[j] = if sig[j] == b'0' { b'1' } else { b'0' };
    other.signature = String::from_utf8(sig).expect("hex");
    assert_eq!(
        verify(&request, &other, &input.secret, token.as_deref(), now),
        Err(SigV4Error::Mismatch)
    );
});

/// `yyyyMMddTHHmmssZ` as a time (the test's own reading, not the service's).
fn parse_date(text: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = time::PrimitiveDateTime::parse(text, format).ok()?;
    Some(at.assume_utc().into())
}

fn amz_date(at: SystemTime) -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::from(at)
        .format(format)
        .expect("a date formats")
}

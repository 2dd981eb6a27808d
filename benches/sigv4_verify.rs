//! SigV4 verification of one Rule API invoke as an AWS SDK signs it (issue 13's goal: at most
//! 20 µs per invoke on one core): parse the Authorization header, check the date and the body's
//! hash, sign again with aws-sigv4 and compare. With temporary credentials (STS, Cognito) the
//! session token is opened first (AES-256-GCM, JSON) to find the secret and the caller.
//!
//! Run: `cargo bench --bench sigv4_verify`.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::http::{HeaderMap, HeaderName};
use ccstream::auth::seal::MasterKey;
use ccstream::auth::sigv4::{verify, Authorization, SESSION_TOKEN};
use ccstream::auth::{session, Caller, Request, Role};
use criterion::{criterion_group, criterion_main, Criterion};
use sha2::{Digest, Sha256};

const KEY: &str = "AKIDCCSTREAMBENCH";
const SECRET: &str = "bench/secret/key/of/forty/characters/xx";
const PATH: &str = "/2015-03-31/functions/dev-RuleLambda/invocations";
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The headers an SDK sends for `body` (Authorization among them), signed at `now`.
fn signed(key: &str, secret: &str, token: Option<&str>, body: &[u8], now: SystemTime) -> HeaderMap {
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), "ccstream.example.com".into()),
        ("content-type".into(), "application/x-amz-json-1.1".into()),
        ("user-agent".into(), "aws-sdk-js/2.1692.0 promise".into()),
        (
            "x-amz-content-sha256".into(),
            hex::encode(Sha256::digest(body)),
        ),
    ];
    let identity: Identity =
        Credentials::new(key, secret, token.map(str::to_owned), None, "bench").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name("lambda")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let signable = SignableRequest::new(
        "POST",
        PATH,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signs").into_parts();
    let (added, _) = instructions.into_parts();
    for header in added {
        headers.push((header.name().to_owned(), header.value().to_owned()));
    }
    headers
        .iter()
        .map(|(n, v)| {
            (
                HeaderName::try_from(n.as_str()).expect("name"),
                v.parse().expect("value"),
            )
        })
        .collect()
}

/// The Rule API invoke these headers and body make.
fn invoke<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Request<'a> {
    Request {
        method: "POST",
        path_and_query: PATH,
        headers,
        body,
    }
}

fn authorization(headers: &HeaderMap) -> String {
    headers["authorization"].to_str().expect("text").to_owned()
}

fn bench(c: &mut Criterion) {
    let body = serde_json::to_vec(&serde_json::json!({
        "action": "LIST",
        "attributes": {"filter": {"domain": "tenant-a"}, "pageSize": 100}
    }))
    .expect("json");
    let now = SystemTime::now();

    let headers = signed(KEY, SECRET, None, &body, now);
    let header = authorization(&headers);
    let request = invoke(&headers, &body);
    let check = || {
        let auth = Authorization::parse(black_box(&header)).expect("parses");
        verify(black_box(&request), &auth, SECRET, None, now)
    };
    assert_eq!(check(), Ok(()), "the bench's own request verifies");
    c.bench_function("sigv4 verify one invoke", |b| b.iter(|| black_box(check())));

    // Temporary credentials: the secret and the caller come out of the sealed session token.
    let master = MasterKey::from_base64(MASTER_KEY).expect("key");
    let caller = Caller {
        user: "ann".into(),
        role: Role::ReadWrite,
        domain: "tenant-a".into(),
    };
    let issued = session::issue(&master, &caller, Duration::from_secs(3600), now).expect("issued");
    let headers = signed(
        &issued.access_key_id,
        &issued.secret_access_key,
        Some(&issued.session_token),
        &body,
        now,
    );
    let header = authorization(&headers);
    let request = invoke(&headers, &body);
    let check = || {
        let auth = Authorization::parse(black_box(&header)).expect("parses");
        let token = headers[SESSION_TOKEN].to_str().expect("text");
        let session = session::open(&master, token, now).expect("opens");
        verify(
            black_box(&request),
            &auth,
            &session.secret,
            Some(token),
            now,
        )
    };
    assert_eq!(check(), Ok(()), "the session-signed request verifies");
    c.bench_function("sigv4 verify one invoke with temporary credentials", |b| {
        b.iter(|| black_box(check()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

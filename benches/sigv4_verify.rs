//! SigV4 verification of one Rule API invoke as an AWS SDK signs it (issue 13's goal: at most
//! 20 µs per invoke on one core): parse the Authorization header, check the date and the body's
//! hash, sign again with aws-sigv4 and compare.
//!
//! Run: `cargo bench --bench sigv4_verify`.

use std::hint::black_box;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use ccstream::auth::sigv4::{verify, Authorization};
use ccstream::auth::Request;
use criterion::{criterion_group, criterion_main, Criterion};
use sha2::{Digest, Sha256};

const KEY: &str = "AKIDCCSTREAMBENCH";
const SECRET: &str = "bench/secret/key/of/forty/characters/xx";
const PATH: &str = "/2015-03-31/functions/dev-RuleLambda/invocations";

fn bench(c: &mut Criterion) {
    let body = serde_json::to_vec(&serde_json::json!({
        "action": "LIST",
        "attributes": {"filter": {"domain": "tenant-a"}, "pageSize": 100}
    }))
    .expect("json");
    let now = SystemTime::now();
    let date = httpdate_amz(now);
    let hash = hex::encode(Sha256::digest(&body));
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), "ccstream.example.com".into()),
        ("content-type".into(), "application/x-amz-json-1.1".into()),
        ("user-agent".into(), "aws-sdk-js/2.1692.0 promise".into()),
        ("x-amz-content-sha256".into(), hash),
        ("x-amz-date".into(), date),
    ];
    // The client's side: what an SDK sends, signed by the same signer.
    let identity: Identity = Credentials::new(KEY, SECRET, None, None, "bench").into();
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
        SignableBody::Bytes(&body),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signs").into_parts();
    let (signed, _) = instructions.into_parts();
    for header in signed {
        headers.push((header.name().to_owned(), header.value().to_owned()));
    }
    let authorization = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.clone())
        .expect("signed");
    let headers: axum::http::HeaderMap = headers
        .iter()
        .map(|(n, v)| {
            (
                axum::http::HeaderName::try_from(n.as_str()).expect("name"),
                v.parse().expect("value"),
            )
        })
        .collect();
    let request = Request {
        method: "POST",
        path_and_query: PATH,
        headers: &headers,
        body: &body,
    };
    let check = || {
        let auth = Authorization::parse(black_box(&authorization)).expect("parses");
        verify(black_box(&request), &auth, SECRET, None, now)
    };
    assert_eq!(check(), Ok(()), "the bench's own request verifies");
    c.bench_function("sigv4 verify one invoke", |b| b.iter(|| black_box(check())));
}

/// `yyyyMMddTHHmmssZ` of `t`.
fn httpdate_amz(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! `api.auth = "sigv4"` against the built binary: static access keys made with
//! `ccstream credentials create`, used by unmodified boto3 clients (tests/sdk_tenants.py) and by
//! requests signed here with aws-sigv4 (the AWS SDKs' signer) where a test must control the
//! signature, the date or the body. FIND goes to the OpenSearch stand-in (no OpenSearch can run
//! here), which records the searches that reach it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use common::{metric_value, sdk_tenants, Ccstream, LISTEN};
use serde_json::{json, Value};
use testkit::search_standin::StandIn;

const MASTER_KEY: &str = "c2lndjQtdGVzdC1tYXN0ZXIta2V5LW9mLTMyLWJ5dGU=";
const PATH: &str = "/2015-03-31/functions/RuleLambda/invocations";

fn config(search: &StandIn) -> String {
    format!(
        "[api]\nlisten = \"{LISTEN}\"\nauth = \"sigv4\"\n\
         [api.sigv4]\nmaster_key = \"{MASTER_KEY}\"\nregion = \"eu-west-1\"\n\
         [search]\nurl = \"{}\"\n\
         [directory]\nimport_file = \"{}/fixtures/directory/small.json\"\n",
        search.url(),
        env!("CARGO_MANIFEST_DIR"),
    )
}

struct Key {
    id: String,
    secret: String,
}

fn create_key(svc: &Ccstream, user: &str, role: &str, domain: &str) -> Key {
    let out = svc.run_command(&[
        "credentials",
        "create",
        "--user",
        user,
        "--role",
        role,
        "--domain",
        domain,
    ]);
    assert!(out.status.success(), "credentials create: {}", out.stderr);
    let made: Value = serde_json::from_str(&out.stdout).unwrap();
    Key {
        id: made["accessKeyId"].as_str().unwrap().to_owned(),
        secret: made["secretAccessKey"].as_str().unwrap().to_owned(),
    }
}

/// A Rule API invoke as an SDK signs it, at `at`, with `extra` headers signed too.
struct Signed {
    method: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
}

/// Signed headers only: what `send` adds to a request.
fn unsigned(headers: Vec<(String, String)>) -> Signed {
    Signed {
        method: "POST",
        path: PATH,
        headers,
    }
}

fn signed(
    svc: &Ccstream,
    key: &Key,
    body: &[u8],
    at: SystemTime,
    extra: &[(&str, &str)],
) -> Signed {
    signed_call(svc, key, "POST", PATH, body, at, extra)
}

fn signed_call(
    svc: &Ccstream,
    key: &Key,
    method: &'static str,
    path: &'static str,
    body: &[u8],
    at: SystemTime,
    extra: &[(&str, &str)],
) -> Signed {
    let host = svc.addr().to_string();
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), host),
        ("content-type".into(), "application/json".into()),
    ];
    headers.extend(
        extra
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
    );
    let identity: Identity = Credentials::new(&key.id, &key.secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name("lambda")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        method,
        path,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let (added, _) = instructions.into_parts();
    for h in added {
        headers.push((h.name().to_owned(), h.value().to_owned()));
    }
    Signed {
        method,
        path,
        headers,
    }
}

impl Signed {
    fn without(mut self, name: &str) -> Signed {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Sends with `body` (which may differ from what was signed): status, error type, body.
    async fn send(&self, svc: &Ccstream, body: &[u8]) -> (u16, String, Value) {
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).unwrap();
        let mut request = svc
            .client()
            .request(method, format!("{}{}", svc.base_url(), self.path))
            .body(body.to_vec());
        for (name, value) in &self.headers {
            if name != "host" {
                request = request.header(name, value);
            }
        }
        let resp = request.send().await.unwrap();
        let status = resp.status().as_u16();
        let error_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, error_type, body)
    }
}

const LIST: &[u8] = br#"{"action":"LIST"}"#;

#[tokio::test]
async fn tenants_with_static_keys_drive_the_api_through_boto3() {
    let search = StandIn::start();
    let svc = Ccstream::start(&config(&search)).await;
    let mut keys = BTreeMap::new();
    for (tenant, role, domain) in [
        ("root_rw", "ReadWrite", "root"),
        ("root_read", "Read", "root"),
        ("sub1_rw", "ReadWrite", "sub1"),
        ("sub2_read", "Read", "sub2"),
        ("other_rw", "ReadWrite", "other"),
    ] {
        let key = create_key(&svc, tenant, role, domain);
        keys.insert(
            tenant,
            json!({"accessKeyId": key.id, "secretAccessKey": key.secret}),
        );
    }
    let keys_file = svc.dir().join("keys.json");
    std::fs::write(&keys_file, serde_json::to_vec(&keys).unwrap()).unwrap();
    sdk_tenants(
        &svc,
        &["matrix", &svc.base_url(), keys_file.to_str().unwrap()],
    )
    .await;

    // Each FIND reached OpenSearch restricted to its caller's subtree.
    let searches: Vec<Value> = search
        .seen()
        .into_iter()
        .filter(|s| s.path.ends_with("/_search"))
        .map(|s| s.json())
        .collect();
    assert_eq!(searches.len(), 2, "{searches:?}");
    let filters: Vec<String> = searches
        .iter()
        .map(|s| s["query"]["bool"]["filter"].to_string())
        .collect();
    assert!(filters[0].contains("\"root/sub1\""), "{}", filters[0]);
    assert!(filters[1].contains("\"root/other\""), "{}", filters[1]);
    assert!(!filters[1].contains("sub1"), "{}", filters[1]);

    // The SDK raises its usual exceptions for a wrong secret and an unknown key.
    let sub1 = &keys["sub1_rw"]["accessKeyId"];
    sdk_tenants(
        &svc,
        &[
            "refused",
            &svc.base_url(),
            sub1.as_str().unwrap(),
            "not-the-secret",
            "InvalidSignatureException",
        ],
    )
    .await;
    sdk_tenants(
        &svc,
        &[
            "refused",
            &svc.base_url(),
            "AKIANOSUCHKEY0000000",
            "whatever",
            "UnrecognizedClientException",
        ],
    )
    .await;

    // `list` shows every key and never a secret.
    let listed = svc.run_command(&["credentials", "list", "--json"]);
    assert!(listed.status.success(), "{}", listed.stderr);
    assert_eq!(listed.stdout.lines().count(), 5, "{}", listed.stdout);
    for key in keys.values() {
        let secret = key["secretAccessKey"].as_str().unwrap();
        assert!(!listed.stdout.contains(secret), "list shows a secret");
        assert!(listed.stdout.contains(key["accessKeyId"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn a_revoked_key_is_refused_within_a_second_and_bad_signatures_are_named() {
    let search = StandIn::start();
    // Two replicas sharing one store, as replicas share PostgreSQL.
    let shared = tempfile::TempDir::new().unwrap();
    let config = format!(
        "{}[store]\nurl = \"sqlite://{}/ccstream.db\"\n",
        config(&search),
        shared.path().display()
    );
    let svc = Ccstream::start(&config).await;
    let replica = Ccstream::start(&config).await;
    let key = create_key(&svc, "ann", "ReadWrite", "sub1");
    let now = SystemTime::now();

    for r in [&svc, &replica] {
        let (status, _, body) = signed(r, &key, LIST, now, &[]).send(r, LIST).await;
        assert_eq!((status, &body), (200, &json!([])));
    }

    // The directory takes signed requests too, from root callers only.
    let export = |key: &Key| signed_call(&svc, key, "GET", "/directory", b"", now, &[]);
    let (status, _, body) = export(&key).send(&svc, b"").await;
    assert_eq!(status, 403, "{body}");
    let root = create_key(&svc, "ops", "Read", "root");
    let (status, _, body) = export(&root).send(&svc, b"").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["things"].as_array().map(Vec::len), Some(6), "{body}");

    // What must be refused, and as what.
    let six_minutes = Duration::from_secs(6 * 60);
    let cases: Vec<(&str, Signed, &[u8], u16, &str)> = vec![
        (
            "body changed after signing",
            signed(&svc, &key, LIST, now, &[]),
            br#"{"action":"LIST","x":1}"#,
            403,
            "InvalidSignatureException",
        ),
        (
            "a signed header missing",
            signed(&svc, &key, LIST, now, &[("x-extra", "1")]).without("x-extra"),
            LIST,
            403,
            "InvalidSignatureException",
        ),
        (
            "six minutes old",
            signed(&svc, &key, LIST, now - six_minutes, &[]),
            LIST,
            403,
            "InvalidSignatureException",
        ),
        (
            "six minutes ahead",
            signed(&svc, &key, LIST, now + six_minutes, &[]),
            LIST,
            403,
            "InvalidSignatureException",
        ),
        (
            "garbage Authorization",
            unsigned(vec![(
                "authorization".into(),
                "AWS4-HMAC-SHA256 garbage".into(),
            )]),
            LIST,
            403,
            "IncompleteSignatureException",
        ),
        (
            "no Authorization",
            unsigned(vec![]),
            LIST,
            403,
            "MissingAuthenticationTokenException",
        ),
    ];
    for (what, request, body, want_status, want_type) in cases {
        let (status, error_type, answer) = request.send(&svc, body).await;
        assert_eq!(
            (status, error_type.as_str()),
            (want_status, want_type),
            "{what}: {answer}"
        );
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains(&key.secret),
            "{what}: the answer shows the secret"
        );
    }
    let (_, metrics) = svc.get("/metrics").await;
    assert_eq!(
        metric_value(&metrics, "ccstream_api_auth_failures_total"),
        6.0,
        "{metrics}"
    );
    assert!(
        !svc.logs().contains(&key.secret),
        "a log line shows the secret"
    );

    // Revoked with the CLI (another process, as an operator would): refused by both replicas
    // within a second.
    let revoked = svc.run_command(&["credentials", "revoke", &key.id]);
    assert!(revoked.status.success(), "{}", revoked.stderr);
    let since = Instant::now();
    let mut accepting = vec![&svc, &replica];
    while !accepting.is_empty() {
        let mut still = Vec::new();
        for r in accepting {
            let (status, error_type, _) = signed(r, &key, LIST, SystemTime::now(), &[])
                .send(r, LIST)
                .await;
            if status == 403 {
                assert_eq!(error_type, "UnrecognizedClientException");
                continue;
            }
            assert_eq!(status, 200);
            assert!(
                since.elapsed() < Duration::from_secs(1),
                "{} still accepts the key {:?} after the revocation",
                r.base_url(),
                since.elapsed()
            );
            still.push(r);
        }
        accepting = still;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = svc.run_command(&["credentials", "revoke", &key.id]);
    assert!(!again.status.success());
    assert!(again.stderr.contains("revoked already"), "{}", again.stderr);
}

#[tokio::test]
async fn sigv4_needs_a_master_key_and_check_config_hides_it() {
    let search = StandIn::start();
    let svc = Ccstream::start(&config(&search)).await;
    let shown = svc.run_command(&["check-config"]);
    assert!(shown.status.success(), "{}", shown.stderr);
    assert!(!shown.stdout.contains(MASTER_KEY), "{}", shown.stdout);
    assert!(
        shown.stdout.contains("master_key = \"***\""),
        "{}",
        shown.stdout
    );

    let run = |config: String, args: &[&str]| {
        let path = svc.dir().join("other.toml");
        std::fs::write(&path, config.replace(LISTEN, &svc.addr().to_string())).unwrap();
        let out = std::process::Command::new(common::binary())
            .arg("--config")
            .arg(&path)
            .args(args)
            .current_dir(svc.dir())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let without = config(&search).replace(&format!("master_key = \"{MASTER_KEY}\"\n"), "");
    let (code, stderr) = run(without, &["check-config"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("api.sigv4"), "{stderr}");

    let short = config(&search).replace(MASTER_KEY, "c2hvcnQ=");
    let (code, stderr) = run(
        short,
        &[
            "credentials",
            "create",
            "--user",
            "u",
            "--role",
            "Read",
            "--domain",
            "root",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("api.sigv4.master_key") && stderr.contains("32 bytes"),
        "{stderr}"
    );
}

//! OIDC tokens exchanged for temporary credentials on `POST /` against the built binary, driven
//! by unmodified boto3 clients (tests/sdk_tenants.py): STS `AssumeRoleWithWebIdentity` and
//! Cognito Identity `GetId` + `GetCredentialsForIdentity`, then `lambda.invoke` with the
//! credentials they hand out. Tokens are signed here with a key pair made by `openssl` and served
//! as a JSON Web Key Set (a file, or a URL served by this test).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use ccstream::auth::seal::MasterKey;
use ccstream::auth::{session, Caller, Role};
use common::jwt::{self, RsaKey};
use common::{free_port, metric_value, now_secs, sdk_script, sdk_tenants, Ccstream, LISTEN};
use serde_json::{json, Value};

const MASTER_KEY: &str = "d2ViLWlkZW50aXR5LXRlc3QtbWFzdGVyLWtleS0zMmI=";
const ISSUER: &str = "https://login.ccstream.test";
const PROVIDER: &str = "login.ccstream.test";
const AUDIENCE: &str = "ccstream-clients";
const KID: &str = "key-1";

fn config(jwks: &str) -> String {
    format!(
        "[api]\nlisten = \"{LISTEN}\"\nauth = \"sigv4\"\n\
         [api.sigv4]\nmaster_key = \"{MASTER_KEY}\"\n\
         [api.oidc]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{jwks}\n\
         [directory]\nimport_file = \"{}/fixtures/directory/small.json\"\n",
        env!("CARGO_MANIFEST_DIR"),
    )
}

/// The provider's claims for a user of `domain`, valid for an hour; `change` edits them.
fn claims(domain: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-of-{domain}"),
        "role": "ReadWrite", "domain": domain, "exp": now_secs() + 3600
    });
    change(&mut claims);
    claims
}

/// A token with `alg: none` and no signature.
fn unsigned_token(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

struct Provider {
    key: RsaKey,
    _dir: tempfile::TempDir,
    jwks_file: std::path::PathBuf,
}

impl Provider {
    fn new() -> Provider {
        let dir = tempfile::TempDir::new().unwrap();
        let key = RsaKey::generate(dir.path());
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, key.jwks(KID).to_string()).unwrap();
        Provider {
            key,
            _dir: dir,
            jwks_file,
        }
    }

    fn token(&self, claims: &Value) -> String {
        jwt::rs256_kid(claims, &self.key, KID)
    }
}

#[tokio::test]
async fn sts_and_cognito_credentials_drive_the_api_through_boto3() {
    let idp = Provider::new();
    let svc = start_with_keys_file(&idp).await;
    let url = svc.base_url();

    let sub1 = idp.token(&claims("sub1", |_| {}));
    sdk_tenants(&svc, &["web-identity", &url, &sub1, "sub1", "other"]).await;
    let other = idp.token(&claims("other", |_| {}));
    sdk_tenants(&svc, &["cognito", &url, PROVIDER, &other, "other"]).await;

    // Tokens STS must refuse, with the code boto3 raises.
    let other_key = RsaKey::generate(svc.dir());
    let refused: Vec<(&str, String, &str)> = vec![
        (
            "another issuer",
            idp.token(&claims("sub1", |c| c["iss"] = json!("https://evil.test"))),
            "InvalidIdentityToken",
        ),
        (
            "another audience",
            idp.token(&claims("sub1", |c| c["aud"] = json!("someone-else"))),
            "InvalidIdentityToken",
        ),
        (
            "an unknown key id",
            jwt::rs256_kid(&claims("sub1", |_| {}), &idp.key, "key-2"),
            "InvalidIdentityToken",
        ),
        (
            "signed by another key",
            jwt::rs256_kid(&claims("sub1", |_| {}), &other_key, KID),
            "InvalidIdentityToken",
        ),
        (
            "HS256 with a guessable secret",
            jwt::hs256(&claims("sub1", |_| {}), "0123456789abcdef0123456789abcdef"),
            "InvalidIdentityToken",
        ),
        (
            "no domain claim",
            idp.token(&claims("sub1", |c| {
                c.as_object_mut().unwrap().remove("domain");
            })),
            "InvalidIdentityToken",
        ),
        (
            "expired",
            idp.token(&claims("sub1", |c| c["exp"] = json!(now_secs() - 3600))),
            "ExpiredTokenException",
        ),
        ("garbage", "not.a.token".to_owned(), "InvalidIdentityToken"),
        (
            "unsigned (alg none)",
            unsigned_token(&claims("sub1", |_| {})),
            "InvalidIdentityToken",
        ),
    ];
    for (what, token, code) in &refused {
        eprintln!("STS with a token: {what}");
        sdk_tenants(&svc, &["sts-refused", &url, token, code]).await;
    }

    // Temporary credentials past their expiry: sealed here as STS would have an hour ago.
    let master = MasterKey::from_base64(MASTER_KEY).unwrap();
    let ann = Caller {
        user: "ann".into(),
        role: Role::ReadWrite,
        domain: "sub1".into(),
    };
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let stale = session::issue(&master, &ann, Duration::from_secs(3600), two_hours_ago).unwrap();
    sdk_tenants(
        &svc,
        &[
            "refused",
            &url,
            &stale.access_key_id,
            &stale.secret_access_key,
            "ExpiredTokenException",
            &stale.session_token,
        ],
    )
    .await;

    let (_, metrics) = svc.get("/metrics").await;
    let count = |labels: &str| {
        metric_value(
            &metrics,
            &format!("ccstream_api_exchanges_total{{{labels}}}"),
        )
    };
    assert_eq!(count("api=\"sts\",outcome=\"ok\""), 1.0, "{metrics}");
    assert_eq!(count("api=\"cognito\",outcome=\"ok\""), 3.0, "{metrics}");
    assert_eq!(
        count("api=\"sts\",outcome=\"InvalidIdentityToken\""),
        8.0,
        "{metrics}"
    );
    for (_, token, _) in &refused {
        assert!(
            !svc.logs().contains(token.as_str()),
            "a log line shows a token"
        );
    }
}

/// Runs tests/node/sdk.js (the AWS SDKs for JavaScript, installed by
/// scripts/setup-test-deps.sh) with `args`.
async fn node_sdk(svc: &Ccstream, args: &[&str]) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
    sdk_script(svc, ("node", dir, "sdk.js"), args, "sdk.js: OK").await;
}

/// Starts ccstream with `idp`'s keys in a JWKS file.
async fn start_with_keys_file(idp: &Provider) -> Ccstream {
    Ccstream::start(&config(&format!(
        "jwks_file = \"{}\"",
        idp.jwks_file.display()
    )))
    .await
}

#[tokio::test]
async fn the_javascript_sdks_v2_and_v3_work_with_only_their_endpoints_changed() {
    let idp = Provider::new();
    let svc = start_with_keys_file(&idp).await;
    let url = svc.base_url();
    let sub1 = idp.token(&claims("sub1", |_| {}));
    let other = idp.token(&claims("other", |_| {}));
    node_sdk(
        &svc,
        &["v2-cognito", &url, PROVIDER, &sub1, "sub1", "other"],
    )
    .await;
    node_sdk(&svc, &["v3-web-token", &url, &other, "other", "sub1"]).await;
    node_sdk(
        &svc,
        &["v3-cognito", &url, PROVIDER, &sub1, "sub2", "other"],
    )
    .await;
}

#[tokio::test]
async fn a_jwks_url_that_does_not_answer_at_start_delays_exchanges_not_the_service() {
    let idp = Provider::new();
    let port = free_port();
    let started = Instant::now();
    let svc = Ccstream::start(&config(&format!(
        "jwks_url = \"http://127.0.0.1:{port}/jwks\""
    )))
    .await;
    let url = svc.base_url();
    assert!(
        svc.logs()
            .contains("the identity provider's keys could not be fetched"),
        "{}",
        svc.logs()
    );

    // Static keys work meanwhile; exchanges say why they cannot.
    let made = svc.run_command(&[
        "credentials",
        "create",
        "--user",
        "ops",
        "--role",
        "Read",
        "--domain",
        "root",
    ]);
    assert!(made.status.success(), "{}", made.stderr);
    let made: Value = serde_json::from_str(&made.stdout).unwrap();
    let (id, secret) = (
        made["accessKeyId"].as_str().unwrap(),
        made["secretAccessKey"].as_str().unwrap(),
    );
    sdk_tenants(&svc, &["list", &url, id, secret]).await;
    let token = idp.token(&claims("sub1", |_| {}));
    sdk_tenants(
        &svc,
        &["sts-refused", &url, &token, "IDPCommunicationError"],
    )
    .await;

    // The provider comes up: once the refresh interval has passed, exchanges work.
    let jwks = idp.key.jwks(KID);
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let refresh = ccstream::auth::oidc::MIN_REFRESH + Duration::from_millis(200);
    tokio::time::sleep(refresh.saturating_sub(started.elapsed())).await;
    sdk_tenants(&svc, &["web-identity", &url, &token, "sub1", "other"]).await;
}

use super::*;
use crate::config::AuthModes;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SessionTokenMode, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::http::{HeaderName, HeaderValue};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const PATH: &str = "/2015-03-31/functions/RuleLambda/invocations";

async fn store() -> RuleStore {
    RuleStore::connect("sqlite::memory:").await.unwrap()
}

fn api(modes: &[AuthMode]) -> ApiConfig {
    let mut api = ApiConfig {
        auth: AuthModes::Many(modes.to_vec()),
        ..ApiConfig::default()
    };
    api.jwt.hs256_secret = Some(SECRET.to_owned());
    api.sigv4.master_key = Some(MASTER.to_owned());
    api
}

async fn jwt_auth() -> Authenticator {
    Authenticator::from_config(&api(&[AuthMode::Jwt]), &store().await).unwrap()
}

/// `auth` on a POST with these headers and body.
async fn call(auth: &Authenticator, headers: &HeaderMap, body: &[u8]) -> Result<Caller, AuthError> {
    let request = Request {
        method: "POST",
        path_and_query: PATH,
        headers,
        body,
    };
    auth.authenticate(&request, "lambda").await
}

fn with_authorization(value: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("ccstream.test"));
    if let Some(v) = value {
        headers.insert(header::AUTHORIZATION, v.parse().unwrap());
    }
    headers
}

fn token(claims: Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn exp() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600
}

/// The headers an SDK sends for `body`, signed with `key`/`secret` for `service` in
/// `eu-west-1`.
fn signed(key: &str, secret: &str, service: &str, body: &[u8]) -> HeaderMap {
    signed_session(key, secret, None, service, body)
}

/// The same with a session token, inside the signature when `mode` says so.
fn signed_session(
    key: &str,
    secret: &str,
    token: Option<(&str, SessionTokenMode)>,
    service: &str,
    body: &[u8],
) -> HeaderMap {
    let now = SystemTime::now();
    let identity: Identity =
        Credentials::new(key, secret, token.map(|(t, _)| t.to_owned()), None, "test").into();
    let mut settings = SigningSettings::default();
    if let Some((_, mode)) = token {
        settings.session_token_mode = mode;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name(service)
        .time(now)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let base = [
        ("host", "ccstream.test"),
        ("content-type", "application/json"),
    ];
    let signable = SignableRequest::new(
        "POST",
        PATH,
        base.iter().copied(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let (added, _) = instructions.into_parts();
    let mut headers = HeaderMap::new();
    for (name, value) in base {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    for h in added {
        headers.insert(
            HeaderName::try_from(h.name()).unwrap(),
            h.value().parse().unwrap(),
        );
    }
    headers
}

#[tokio::test]
async fn none_mode_is_root_and_ignores_sigv4() {
    let auth = Authenticator::from_config(&ApiConfig::default(), &store().await).unwrap();
    let headers = with_authorization(Some(
        "AWS4-HMAC-SHA256 Credential=x/20260101/eu-west-1/lambda",
    ));
    assert_eq!(call(&auth, &headers, b"").await.unwrap(), Caller::root());
}

#[tokio::test]
async fn jwt_claims_become_the_caller() {
    let t = token(
        json!({"sub": "ann", "role": "Read", "domain": "sub1", "exp": exp()}),
        SECRET,
    );
    let headers = with_authorization(Some(&format!("Bearer {t}")));
    let c = call(&jwt_auth().await, &headers, b"").await.unwrap();
    assert_eq!(c.user, "ann");
    assert_eq!(c.role, Role::Read);
    assert_eq!(c.domain, "sub1");
}

#[tokio::test]
async fn jwt_refusals() {
    let auth = jwt_auth().await;
    let refused = |t: String| {
        let headers = with_authorization(Some(&format!("Bearer {t}")));
        let auth = &auth;
        async move { call(auth, &headers, b"").await.unwrap_err() }
    };
    assert!(matches!(
        call(&auth, &with_authorization(None), b"").await,
        Err(AuthError::Missing)
    ));
    let wrong = token(
        json!({"sub": "a", "role": "Read", "domain": "root", "exp": exp()}),
        "another-secret-another-secret-xx",
    );
    assert!(matches!(refused(wrong).await, AuthError::Invalid(_)));
    let expired = token(
        json!({"sub": "a", "role": "Read", "domain": "root", "exp": 1000}),
        SECRET,
    );
    assert!(matches!(refused(expired).await, AuthError::Invalid(_)));
    let bad_role = token(
        json!({"sub": "a", "role": "Admin", "domain": "root", "exp": exp()}),
        SECRET,
    );
    assert!(matches!(refused(bad_role).await, AuthError::Claim { .. }));
}

#[tokio::test]
async fn a_signed_request_is_its_keys_caller_and_bearer_tokens_still_work_beside_it() {
    let store = store().await;
    let master = master_key(&api(&[]).sigv4).unwrap();
    let tenant = Caller {
        user: "ann".into(),
        role: Role::ReadWrite,
        domain: "a".into(),
    };
    let (row, secret) = keys::generate(&master, &tenant).unwrap();
    store.insert_credential(&row).await.unwrap();
    let auth = Authenticator::from_config(&api(&[AuthMode::Sigv4, AuthMode::Jwt]), &store).unwrap();
    let body = br#"{"action":"LIST"}"#;
    let key = row.access_key_id.as_str();

    let headers = signed(key, &secret, "lambda", body);
    assert_eq!(call(&auth, &headers, body).await.unwrap(), tenant);

    let refusal = |e: AuthError| (e.aws_error().status, e.aws_error().error_type);
    let e = call(&auth, &headers, br#"{"action":"LIST","x":1}"#)
        .await
        .unwrap_err();
    assert_eq!(refusal(e), (403, "InvalidSignatureException"));
    let e = call(&auth, &signed(key, "wrong", "lambda", body), body)
        .await
        .unwrap_err();
    assert_eq!(refusal(e), (403, "InvalidSignatureException"));
    let e = call(&auth, &signed(key, &secret, "s3", body), body)
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::Scope(_)), "{e}");
    let e = call(
        &auth,
        &signed("AKIANOSUCHKEY", &secret, "lambda", body),
        body,
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(e), (403, "UnrecognizedClientException"));
    let e = call(
        &auth,
        &with_authorization(Some("AWS4-HMAC-SHA256 nonsense")),
        body,
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(e), (403, "IncompleteSignatureException"));
    let e = call(&auth, &with_authorization(None), body)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("SigV4") && text.contains("Bearer"), "{text}");
    assert_eq!(refusal(e), (403, "MissingAuthenticationTokenException"));

    let t = token(
        json!({"sub": "bob", "role": "Read", "domain": "b", "exp": exp()}),
        SECRET,
    );
    let c = call(
        &auth,
        &with_authorization(Some(&format!("Bearer {t}"))),
        body,
    )
    .await
    .unwrap();
    assert_eq!(c.user, "bob");
}

#[tokio::test]
async fn the_region_is_checked_when_configured() {
    let store = store().await;
    let mut config = api(&[AuthMode::Sigv4]);
    config.sigv4.region = Some("us-east-1".into());
    let master = master_key(&config.sigv4).unwrap();
    let (row, secret) = keys::generate(&master, &Caller::root()).unwrap();
    store.insert_credential(&row).await.unwrap();
    let auth = Authenticator::from_config(&config, &store).unwrap();
    let e = call(
        &auth,
        &signed(&row.access_key_id, &secret, "lambda", b""),
        b"",
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Credential should be scoped to the region us-east-1"
    );
}

#[tokio::test]
async fn temporary_credentials_verify_whether_or_not_the_token_is_signed_and_only_for_their_key() {
    let config = api(&[AuthMode::Sigv4]);
    let master = master_key(&config.sigv4).unwrap();
    let auth = Authenticator::from_config(&config, &store().await).unwrap();
    let ann = Caller {
        user: "ann".into(),
        role: Role::Read,
        domain: "sub1".into(),
    };
    let issued = session::issue(
        &master,
        &ann,
        std::time::Duration::from_secs(900),
        SystemTime::now(),
    )
    .unwrap();
    let (key, secret, token) = (
        issued.access_key_id.as_str(),
        issued.secret_access_key.as_str(),
        issued.session_token.as_str(),
    );
    let body = b"{}";
    for mode in [SessionTokenMode::Include, SessionTokenMode::Exclude] {
        let headers = signed_session(key, secret, Some((token, mode)), "lambda", body);
        assert_eq!(call(&auth, &headers, body).await.unwrap(), ann, "{mode:?}");
    }
    // The token of one temporary key does not vouch for another key id.
    let other = session::issue(
        &master,
        &ann,
        std::time::Duration::from_secs(900),
        SystemTime::now(),
    )
    .unwrap();
    let headers = signed_session(
        &other.access_key_id,
        secret,
        Some((token, SessionTokenMode::Include)),
        "lambda",
        body,
    );
    assert!(matches!(
        call(&auth, &headers, body).await,
        Err(AuthError::UnknownKey)
    ));
}

#[tokio::test]
async fn made_up_key_ids_are_refused_before_any_lookup() {
    let auth = Authenticator::from_config(&api(&[AuthMode::Sigv4]), &store().await).unwrap();
    for key in [
        "A".repeat(129),
        "akialowercase".to_owned(),
        "AKIA/X".to_owned(),
    ] {
        let headers = signed(&key, "secret", "lambda", b"");
        let e = call(&auth, &headers, b"").await.unwrap_err();
        assert_eq!(
            e.aws_error().error_type,
            "IncompleteSignatureException",
            "{key}"
        );
    }
}

//! OpenID Connect tokens from the platform's identity provider, checked before STS or Cognito
//! Identity exchange them for temporary credentials: signature against the provider's JSON Web
//! Key Set, `iss`, `aud`, `exp`/`nbf`, and the claims that name the caller.
//!
//! The key set comes from a file or a URL. A URL is fetched at start-up and again when a token
//! names a key id the set does not hold (providers rotate keys), at most every
//! [`MIN_REFRESH`]; when it does not answer at start the service still starts (static keys work)
//! and exchanges fail with a clear error until it does.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{AuthError, Caller, ClaimNames};
use crate::config::{JwtConfig, OidcConfig};

/// Fetches of a JWKS URL are at least this far apart.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a web identity token is refused. Messages name the problem, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("{0}")]
    Invalid(String),
    #[error("the web identity token is expired")]
    Expired,
    /// The key set could not be read (the provider does not answer); why is logged, not told
    /// to the caller (it may name internal addresses).
    #[error("the identity provider's keys could not be fetched")]
    Unavailable,
}

/// A checked token: who it names, and the facts an STS answer repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub caller: Caller,
    pub subject: String,
    pub issuer: String,
    pub audience: String,
}

enum Source {
    /// Read once, at start.
    File,
    Url(String, reqwest::Client),
}

pub struct OidcVerifier {
    issuer: String,
    audience: String,
    claims: ClaimNames,
    leeway_secs: u64,
    source: Source,
    keys: RwLock<Arc<JwkSet>>,
    /// Whether the last read of the key set failed.
    unreadable: RwLock<bool>,
    /// When the URL was last fetched; one fetch at a time.
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    #[error("api.oidc.jwks_file {path}: {message}")]
    File { path: String, message: String },
    #[error("api.oidc: {0}")]
    Config(String),
}

impl OidcVerifier {
    /// `None` when `api.oidc.issuer` is unset. A key file must read; a key URL is fetched here
    /// but may fail (logged).
    pub async fn from_config(
        oidc: &OidcConfig,
        jwt: &JwtConfig,
    ) -> Result<Option<OidcVerifier>, OidcSetupError> {
        let Some(issuer) = oidc.issuer.clone() else {
            return Ok(None);
        };
        let audience = oidc
            .audience
            .clone()
            .ok_or_else(|| OidcSetupError::Config("audience is not set".into()))?;
        let (source, keys) = match (&oidc.jwks_file, &oidc.jwks_url) {
            (Some(path), _) => {
                let keys = read_file(path).map_err(|message| OidcSetupError::File {
                    path: path.clone(),
                    message,
                })?;
                (Source::File, keys)
            }
            (None, Some(url)) => {
                let client = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| OidcSetupError::Config(e.to_string()))?;
                (
                    Source::Url(url.clone(), client),
                    JwkSet { keys: Vec::new() },
                )
            }
            (None, None) => {
                return Err(OidcSetupError::Config(
                    "set jwks_file or jwks_url".to_owned(),
                ))
            }
        };
        let verifier = OidcVerifier {
            issuer,
            audience,
            claims: ClaimNames::of(jwt),
            leeway_secs: jwt.leeway_secs,
            source,
            keys: RwLock::new(Arc::new(keys)),
            unreadable: RwLock::new(false),
            fetched: tokio::sync::Mutex::new(None),
        };
        // A key file was read above; a URL is fetched now.
        if matches!(verifier.source, Source::Url(..)) && verifier.refresh(false).await.is_err() {
            tracing::error!(
                "api.oidc: the identity provider's keys could not be fetched; web identity \
                 exchanges fail until they can"
            );
        }
        Ok(Some(verifier))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The provider name Cognito gives this issuer: the issuer without `https://`.
    pub fn provider_name(&self) -> &str {
        self.issuer.strip_prefix("https://").unwrap_or(&self.issuer)
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| OidcError::Invalid(format!("not a JWT: {e}")))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(OidcError::Invalid(
                "identity tokens must be signed with the provider's key pair, not HS*".into(),
            ));
        }
        let key = match self.key(header.kid.as_deref())? {
            Some(key) => key,
            None => {
                // A failed refresh is reported below, with what was read before.
                let _ = self.refresh(true).await;
                match self.key(header.kid.as_deref())? {
                    Some(key) => key,
                    None => {
                        if self.unreadable.read().map_or(true, |u| *u) {
                            return Err(OidcError::Unavailable);
                        }
                        return Err(OidcError::Invalid(format!(
                            "the token's key id {:?} is not among the provider's keys",
                            header.kid.as_deref().unwrap_or("")
                        )));
                    }
                }
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => OidcError::Expired,
                    _ => OidcError::Invalid(format!("the web identity token is refused: {e}")),
                }
            })?;
        let claims = data.claims;
        let caller = self.claims.caller(&claims).map_err(|e| match e {
            AuthError::Claim { claim } => {
                OidcError::Invalid(format!("the token has no usable {claim} claim"))
            }
            other => OidcError::Invalid(other.to_string()),
        })?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or(&caller.user)
            .to_owned();
        Ok(Identity {
            caller,
            subject,
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
        })
    }

    /// The key the token names (or the only key, when it names none).
    fn key(&self, kid: Option<&str>) -> Result<Option<DecodingKey>, OidcError> {
        let keys = self
            .keys
            .read()
            .map(|k| Arc::clone(&k))
            .map_err(|_| OidcError::Unavailable)?;
        let jwk = match kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        };
        jwk.map(|jwk| {
            DecodingKey::from_jwk(jwk)
                .map_err(|e| OidcError::Invalid(format!("the provider's key is unusable: {e}")))
        })
        .transpose()
    }

    /// Fetches the key set from its URL again. With `only_if_stale` it is fetched only
    /// when the last fetch is [`MIN_REFRESH`] old: tokens naming unknown keys cannot make the
    /// service hammer the provider. One fetch at a time; the others wait for it and then find
    /// it recent.
    async fn refresh(&self, only_if_stale: bool) -> Result<(), OidcError> {
        let read = match &self.source {
            // A changed file needs a restart, as the rest of the configuration does.
            Source::File => return Ok(()),
            Source::Url(url, client) => {
                let mut fetched = self.fetched.lock().await;
                if only_if_stale && fetched.is_some_and(|at| at.elapsed() < MIN_REFRESH) {
                    return Ok(());
                }
                *fetched = Some(Instant::now());
                fetch(client, url).await
            }
        };
        if let Ok(mut unreadable) = self.unreadable.write() {
            *unreadable = read.is_err();
        }
        let keys = read.map_err(|why| {
            tracing::warn!(error = %why, "api.oidc: reading the identity provider's keys failed");
            OidcError::Unavailable
        })?;
        if let Ok(mut slot) = self.keys.write() {
            *slot = Arc::new(keys);
        }
        Ok(())
    }
}

fn read_file(path: &str) -> Result<JwkSet, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| format!("not a JSON Web Key Set: {e}"))
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    resp.json::<JwkSet>()
        .await
        .map_err(|e| format!("{url}: not a JSON Web Key Set: {e}"))
}

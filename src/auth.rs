//! Who is calling: the caller's user name, role and domain (DESIGN.md, Authorization).
//!
//! `api.auth` names the ways a caller may prove it, one or several:
//! - `none` makes every caller root with ReadWrite; config validation only allows it alone and
//!   on a loopback address;
//! - `jwt` reads `Authorization: Bearer <token>` and takes the three facts from configurable
//!   claims;
//! - `sigv4` checks an AWS SDK's signature ([`sigv4`]) with the secret of its access key
//!   ([`keys`]), which resolves to the three facts.

pub mod exchange;
pub mod keys;
pub mod oidc;
pub mod random;
pub mod seal;
pub mod session;
pub mod sigv4;

use std::fmt;
use std::time::SystemTime;

use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{ApiConfig, AuthMode, JwtConfig, SigV4Config};
use crate::store::RuleStore;
use keys::{KeyError, StaticKeys};
use seal::MasterKey;
use session::SessionError;
use sigv4::{Authorization, SigV4Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Read,
    ReadWrite,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "Read" => Some(Role::Read),
            "ReadWrite" => Some(Role::ReadWrite),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "Read",
            Role::ReadWrite => "ReadWrite",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub role: Role,
    pub domain: String,
}

impl Caller {
    pub fn root() -> Caller {
        Caller {
            user: "root".to_owned(),
            role: Role::ReadWrite,
            domain: rule_engine::domain::ROOT.to_owned(),
        }
    }
}

/// Why a request carries no usable identity. The message goes back to the client, so it says
/// what is wrong without echoing a token, a signature or a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token in the Authorization header")]
    Missing,
    #[error("missing Authentication Token: sign the request with SigV4{}", or_bearer(*.bearer_too))]
    MissingSignature { bearer_too: bool },
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token has no usable {claim} claim")]
    Claim { claim: String },
    #[error("{0}")]
    Signature(SigV4Error),
    #[error("Credential should be scoped to {0}")]
    Scope(String),
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    #[error("The security token included in the request is expired")]
    Expired,
    /// The key store could not be read; logged with the cause, the client sees only this.
    #[error("the credentials could not be checked; try again")]
    Unavailable,
}

fn or_bearer(bearer_too: bool) -> &'static str {
    if bearer_too {
        " or send Authorization: Bearer"
    } else {
        ""
    }
}

/// How an [`AuthError`] is answered: the status and the AWS error type SDKs raise for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsError {
    pub status: u16,
    pub error_type: &'static str,
}

impl AuthError {
    pub fn aws_error(&self) -> AwsError {
        let (status, error_type) = match self {
            AuthError::Missing | AuthError::Invalid(_) | AuthError::Claim { .. } => {
                (401, "UnrecognizedClientException")
            }
            AuthError::MissingSignature { .. } => (403, "MissingAuthenticationTokenException"),
            AuthError::Signature(SigV4Error::Malformed) => (403, "IncompleteSignatureException"),
            AuthError::Signature(_) | AuthError::Scope(_) => (403, "InvalidSignatureException"),
            AuthError::UnknownKey => (403, "UnrecognizedClientException"),
            AuthError::Expired => (403, "ExpiredTokenException"),
            AuthError::Unavailable => (500, "ServiceException"),
        };
        AwsError { status, error_type }
    }

    /// A label from a fixed set, for the failure metric.
    pub fn reason_label(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::MissingSignature { .. } => "missing",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Claim { .. } => "claim",
            AuthError::Signature(SigV4Error::Malformed) => "malformed_signature",
            AuthError::Signature(SigV4Error::Stale) => "stale",
            AuthError::Signature(SigV4Error::BodyHash) => "body_hash",
            AuthError::Signature(_) => "bad_signature",
            AuthError::Scope(_) => "scope",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Expired => "expired",
            AuthError::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("api.jwt: {0}")]
    Key(String),
    #[error("api.sigv4: {0}")]
    MasterKey(String),
}

/// A request as it arrived (what SigV4 signs): method, path and query as sent, headers, body.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The first value of `name` (SDKs send each signed header once), if it is text.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Authenticator {
    none: bool,
    jwt: Option<Box<JwtVerifier>>,
    sigv4: Option<SigV4Verifier>,
}

struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    claims: ClaimNames,
}

/// Which claims of a token carry the caller (`api.jwt.*_claim`; OIDC tokens use them too).
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub user: String,
    pub role: String,
    pub domain: String,
}

impl ClaimNames {
    pub fn of(cfg: &JwtConfig) -> ClaimNames {
        ClaimNames {
            user: cfg.user_claim.clone(),
            role: cfg.role_claim.clone(),
            domain: cfg.domain_claim.clone(),
        }
    }

    /// The caller these claims name; the error names the claim that is missing or unusable.
    pub fn caller(&self, claims: &Map<String, Value>) -> Result<Caller, AuthError> {
        let text = |name: &str| -> Result<String, AuthError> {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| AuthError::Claim {
                    claim: name.to_owned(),
                })
        };
        let role = Role::parse(&text(&self.role)?).ok_or_else(|| AuthError::Claim {
            claim: self.role.clone(),
        })?;
        Ok(Caller {
            user: text(&self.user)?,
            role,
            domain: text(&self.domain)?,
        })
    }
}

struct SigV4Verifier {
    region: Option<String>,
    keys: StaticKeys,
    /// Opens the session tokens of temporary credentials.
    master: MasterKey,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("none", &self.none)
            .field("jwt", &self.jwt.is_some())
            .field("sigv4", &self.sigv4.is_some())
            .finish()
    }
}

/// The master key from `api.sigv4` (inline or from its file).
pub fn master_key(cfg: &SigV4Config) -> Result<MasterKey, AuthSetupError> {
    let text = match (&cfg.master_key, &cfg.master_key_file) {
        (Some(key), _) => key.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| AuthSetupError::MasterKey(format!("master_key_file {path}: {e}")))?,
        (None, None) => {
            return Err(AuthSetupError::MasterKey(
                "set master_key or master_key_file".to_owned(),
            ))
        }
    };
    MasterKey::from_base64(&text).map_err(|e| AuthSetupError::MasterKey(e.to_string()))
}

impl Authenticator {
    /// `store` holds the static access keys (`sigv4`).
    pub fn from_config(
        api: &ApiConfig,
        store: &RuleStore,
    ) -> Result<Authenticator, AuthSetupError> {
        let jwt = match api.auth.accepts(AuthMode::Jwt) {
            true => Some(Box::new(JwtVerifier::new(&api.jwt)?)),
            false => None,
        };
        let sigv4 = match api.auth.accepts(AuthMode::Sigv4) {
            true => {
                let master = master_key(&api.sigv4)?;
                Some(SigV4Verifier {
                    region: api.sigv4.region.clone(),
                    keys: StaticKeys::new(store.clone(), master.clone()),
                    master,
                })
            }
            false => None,
        };
        Ok(Authenticator {
            none: api.auth.accepts(AuthMode::None),
            jwt,
            sigv4,
        })
    }

    /// The master key, when `sigv4` is accepted (the credential exchange seals with it too).
    pub fn master_key(&self) -> Option<&MasterKey> {
        self.sigv4.as_ref().map(|v| &v.master)
    }

    /// Whether authenticating a request with these headers reads its body (a SigV4 signature
    /// covers it). Callers read the body after authenticating when it does not, so that a
    /// caller without credentials is refused before it can make the server buffer its body.
    pub fn reads_body(&self, headers: &HeaderMap) -> bool {
        self.sigv4.is_some()
            && !self.none
            && headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with(sigv4::ALGORITHM))
    }

    /// Who sent `request`; a SigV4 signature must be scoped to `service`. With auth `none` the
    /// headers are ignored, so requests signed by an AWS SDK go through as root. Failures are
    /// counted and logged (never with a secret).
    pub async fn authenticate(
        &self,
        request: &Request<'_>,
        service: &str,
    ) -> Result<Caller, AuthError> {
        let result = self.identify(request, service).await;
        if let Err(e) = &result {
            metrics::counter!("ccstream_api_auth_failures_total", "reason" => e.reason_label())
                .increment(1);
            tracing::info!(reason = e.reason_label(), error = %e, "request refused");
        }
        result
    }

    async fn identify(&self, request: &Request<'_>, service: &str) -> Result<Caller, AuthError> {
        if self.none {
            return Ok(Caller::root());
        }
        let authorization = request
            .header(header::AUTHORIZATION.as_str())
            .map(str::trim);
        let bearer = authorization.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
        match (&self.jwt, &self.sigv4, bearer) {
            (Some(jwt), _, Some(token)) => match token.trim() {
                "" => Err(AuthError::Missing),
                token => jwt.verify(token),
            },
            (_, Some(sigv4), _) => match authorization {
                Some(value) if !value.is_empty() => sigv4.verify(request, service, value).await,
                _ => Err(AuthError::MissingSignature {
                    bearer_too: self.jwt.is_some(),
                }),
            },
            _ => Err(AuthError::Missing),
        }
    }
}

impl SigV4Verifier {
    async fn verify(
        &self,
        request: &Request<'_>,
        service: &str,
        authorization: &str,
    ) -> Result<Caller, AuthError> {
        let auth = Authorization::parse(authorization).map_err(AuthError::Signature)?;
        if auth.service != service {
            return Err(AuthError::Scope(format!(
                "the service {service}, not {}",
                auth.service
            )));
        }
        if let Some(region) = self.region.as_deref().filter(|r| *r != auth.region) {
            return Err(AuthError::Scope(format!("the region {region}")));
        }
        let now = SystemTime::now();
        // What needs no secret first: a stale or malformed request costs no lookup.
        let signed_at = sigv4::precheck(request, &auth, now).map_err(AuthError::Signature)?;
        if let Some(token) = request.header(sigv4::SESSION_TOKEN) {
            // Temporary credentials: everything is in the token.
            let session = session::open(&self.master, token, now).map_err(|e| match e {
                SessionError::Invalid => AuthError::UnknownKey,
                SessionError::Expired => AuthError::Expired,
            })?;
            if session.access_key_id != auth.access_key_id {
                return Err(AuthError::UnknownKey);
            }
            sigv4::check_signature(request, &auth, signed_at, &session.secret, Some(token))
                .map_err(AuthError::Signature)?;
            return Ok(session.caller);
        }
        let known = match self.keys.resolve(&auth.access_key_id).await {
            Ok(known) => known,
            Err(KeyError::Unknown) => return Err(AuthError::UnknownKey),
            Err(e) => {
                tracing::error!(
                    access_key_id = %auth.access_key_id,
                    error = %e,
                    "access key lookup failed"
                );
                return Err(AuthError::Unavailable);
            }
        };
        sigv4::check_signature(request, &auth, signed_at, &known.secret, None)
            .map_err(AuthError::Signature)?;
        Ok(known.caller.clone())
    }
}

impl JwtVerifier {
    fn new(cfg: &JwtConfig) -> Result<JwtVerifier, AuthSetupError> {
        let (key, alg) = if let Some(secret) = &cfg.hs256_secret {
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
        } else {
            let pem = match (&cfg.rs256_public_key_pem, &cfg.rs256_public_key_file) {
                (Some(pem), _) => pem.clone(),
                (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                    AuthSetupError::Key(format!("rs256_public_key_file {path}: {e}"))
                })?,
                (None, None) => {
                    return Err(AuthSetupError::Key(
                        "no hs256_secret or rs256 public key configured".to_owned(),
                    ))
                }
            };
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| AuthSetupError::Key(format!("RS256 public key: {e}")))?;
            (key, Algorithm::RS256)
        };
        // Pinning the one algorithm rules out alg-confusion attacks (an HS256 token signed
        // with the RSA public key as secret).
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(JwtVerifier {
            key,
            validation,
            claims: ClaimNames::of(cfg),
        })
    }

    fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        self.claims.caller(&data.claims)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

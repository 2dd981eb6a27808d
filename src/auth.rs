//! Who is calling: the caller's user name, role and domain (DESIGN.md, Authorization).
//!
//! `api.auth = "none"` makes every caller root with ReadWrite; config validation only allows it
//! on a loopback address. `api.auth = "jwt"` reads `Authorization: Bearer <token>` and takes the
//! three facts from configurable claims.

pub mod sigv4;

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{ApiConfig, AuthMode, JwtConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Read,
    ReadWrite,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "Read" => Some(Role::Read),
            "ReadWrite" => Some(Role::ReadWrite),
            _ => None,
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
/// what is wrong with the token without echoing it.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token in the Authorization header")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token has no usable {claim} claim")]
    Claim { claim: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("api.jwt: {0}")]
    Key(String),
}

pub struct Authenticator {
    mode: Mode,
}

enum Mode {
    None,
    Jwt(Box<JwtVerifier>),
}

struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    user_claim: String,
    role_claim: String,
    domain_claim: String,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::None => "none",
            Mode::Jwt(_) => "jwt",
        };
        f.debug_struct("Authenticator")
            .field("mode", &mode)
            .finish()
    }
}

impl Authenticator {
    pub fn from_config(api: &ApiConfig) -> Result<Authenticator, AuthSetupError> {
        let mode = match api.auth {
            AuthMode::None => Mode::None,
            AuthMode::Jwt => Mode::Jwt(Box::new(JwtVerifier::new(&api.jwt)?)),
        };
        Ok(Authenticator { mode })
    }

    /// `authorization` is the raw `Authorization` header value, if any. With auth `none` it is
    /// ignored, so requests signed by an AWS SDK (SigV4) go through.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        match &self.mode {
            Mode::None => Ok(Caller::root()),
            Mode::Jwt(verifier) => {
                let token = authorization
                    .and_then(|h| {
                        h.strip_prefix("Bearer ")
                            .or_else(|| h.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or(AuthError::Missing)?;
                verifier.verify(token)
            }
        }
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
            user_claim: cfg.user_claim.clone(),
            role_claim: cfg.role_claim.clone(),
            domain_claim: cfg.domain_claim.clone(),
        })
    }

    fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
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
        let role = Role::parse(&text(&self.role_claim)?).ok_or_else(|| AuthError::Claim {
            claim: self.role_claim.clone(),
        })?;
        Ok(Caller {
            user: text(&self.user_claim)?,
            role,
            domain: text(&self.domain_claim)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn jwt_auth() -> Authenticator {
        let mut api = ApiConfig {
            auth: AuthMode::Jwt,
            ..ApiConfig::default()
        };
        api.jwt.hs256_secret = Some(SECRET.to_owned());
        Authenticator::from_config(&api).unwrap()
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
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600
    }

    #[test]
    fn none_mode_is_root_and_ignores_sigv4() {
        let auth = Authenticator::from_config(&ApiConfig::default()).unwrap();
        let c = auth
            .authenticate(Some(
                "AWS4-HMAC-SHA256 Credential=x/20260101/eu-west-1/lambda",
            ))
            .unwrap();
        assert_eq!(c, Caller::root());
    }

    #[test]
    fn jwt_claims_become_the_caller() {
        let t = token(
            json!({"sub": "ann", "role": "Read", "domain": "sub1", "exp": exp()}),
            SECRET,
        );
        let c = jwt_auth()
            .authenticate(Some(&format!("Bearer {t}")))
            .unwrap();
        assert_eq!(c.user, "ann");
        assert_eq!(c.role, Role::Read);
        assert_eq!(c.domain, "sub1");
    }

    #[test]
    fn jwt_refusals() {
        let auth = jwt_auth();
        assert!(matches!(auth.authenticate(None), Err(AuthError::Missing)));
        let wrong = token(
            json!({"sub": "a", "role": "Read", "domain": "root", "exp": exp()}),
            "another-secret-another-secret-xx",
        );
        assert!(matches!(
            auth.authenticate(Some(&format!("Bearer {wrong}"))),
            Err(AuthError::Invalid(_))
        ));
        let expired = token(
            json!({"sub": "a", "role": "Read", "domain": "root", "exp": 1000}),
            SECRET,
        );
        assert!(matches!(
            auth.authenticate(Some(&format!("Bearer {expired}"))),
            Err(AuthError::Invalid(_))
        ));
        let bad_role = token(
            json!({"sub": "a", "role": "Admin", "domain": "root", "exp": exp()}),
            SECRET,
        );
        assert!(matches!(
            auth.authenticate(Some(&format!("Bearer {bad_role}"))),
            Err(AuthError::Claim { .. })
        ));
    }
}

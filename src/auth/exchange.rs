//! Web identity → temporary credentials: what STS `AssumeRoleWithWebIdentity` and Cognito
//! Identity `GetId` / `GetCredentialsForIdentity` do here, whatever protocol carries them
//! ([`crate::api::sts`], [`crate::api::cognito`]). Nothing is stored: an identity id is derived
//! from the token's issuer and subject, and the credentials are sealed in their session token.

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::oidc::{Identity, OidcError, OidcVerifier};
use super::random;
use super::seal::{MasterKey, SealError};
use super::session::{self, Issued};
use crate::config::ApiConfig;

/// STS's bounds for `DurationSeconds`.
pub const MIN_DURATION: Duration = Duration::from_secs(900);
pub const MAX_DURATION: Duration = Duration::from_secs(43_200);
pub const DEFAULT_DURATION: Duration = Duration::from_secs(3_600);
/// Cognito Identity's credentials last an hour.
pub const COGNITO_DURATION: Duration = Duration::from_secs(3_600);

/// Why no credentials were handed out.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Token(#[from] OidcError),
    /// The server's fault, not the token's.
    #[error("the credentials could not be sealed: {0}")]
    Seal(#[from] SealError),
}

#[derive(Debug)]
pub struct Exchange {
    pub oidc: OidcVerifier,
    master: MasterKey,
    /// The region identity ids carry.
    region: String,
    identity_pool_id: Option<String>,
}

impl Exchange {
    pub fn new(oidc: OidcVerifier, master: MasterKey, api: &ApiConfig) -> Exchange {
        let region = api
            .oidc
            .identity_pool_id
            .as_deref()
            .and_then(|pool| pool.split_once(':'))
            .map(|(region, _)| region.to_owned())
            .or_else(|| api.sigv4.region.clone())
            .unwrap_or_else(|| "us-east-1".to_owned());
        Exchange {
            oidc,
            master,
            region,
            identity_pool_id: api.oidc.identity_pool_id.clone(),
        }
    }

    /// Seals credentials for a checked identity, valid for `lifetime`.
    pub fn issue(&self, identity: &Identity, lifetime: Duration) -> Result<Issued, ExchangeError> {
        Ok(session::issue(
            &self.master,
            &identity.caller,
            lifetime,
            SystemTime::now(),
        )?)
    }

    /// Cognito's identity id for a token's subject: `<region>:<uuid>`, the same every time.
    pub fn identity_id(&self, identity: &Identity) -> String {
        let digest = Sha256::digest(format!("{}\n{}", identity.issuer, identity.subject));
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        format!("{}:{}", self.region, random::uuid_text(&bytes))
    }

    /// Whether a Cognito call may name `pool` (any pool unless one is configured).
    pub fn accepts_pool(&self, pool: &str) -> bool {
        self.identity_pool_id.as_deref().is_none_or(|p| p == pool)
    }
}

//! Web identity → temporary credentials: what STS `AssumeRoleWithWebIdentity` and Cognito
//! Identity `GetId` / `GetCredentialsForIdentity` do here, whatever protocol carries them
//! ([`crate::api::sts`], [`crate::api::cognito`]). Nothing is stored: an identity id is derived
//! from the token's issuer and subject, and the credentials are sealed in their session token.

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::oidc::{Identity, OidcError, OidcVerifier};
use super::seal::MasterKey;
use super::session::{self, Issued};
use crate::config::ApiConfig;

/// STS's bounds for `DurationSeconds`.
pub const MIN_DURATION: Duration = Duration::from_secs(900);
pub const MAX_DURATION: Duration = Duration::from_secs(43_200);
pub const DEFAULT_DURATION: Duration = Duration::from_secs(3_600);
/// Cognito Identity's credentials last an hour.
pub const COGNITO_DURATION: Duration = Duration::from_secs(3_600);

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

    /// Checks `token` and seals credentials for its caller, valid for `lifetime`.
    pub async fn credentials(
        &self,
        token: &str,
        lifetime: Duration,
    ) -> Result<(Identity, Issued), OidcError> {
        let identity = self.oidc.verify(token).await?;
        let issued = session::issue(&self.master, &identity.caller, lifetime, SystemTime::now())
            .map_err(|e| OidcError::Invalid(e.to_string()))?;
        Ok((identity, issued))
    }

    /// Cognito's identity id for a token's subject: `<region>:<uuid>`, the same every time.
    pub fn identity_id(&self, identity: &Identity) -> String {
        let digest = Sha256::digest(format!("{}\n{}", identity.issuer, identity.subject));
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        format!("{}:{}", self.region, uuid_text(&bytes))
    }

    /// Whether a Cognito call may name `pool` (any pool unless one is configured).
    pub fn accepts_pool(&self, pool: &str) -> bool {
        self.identity_pool_id.as_deref().is_none_or(|p| p == pool)
    }
}

/// 16 bytes in the 8-4-4-4-12 form of a UUID.
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A fresh request id for an answer's metadata.
pub fn request_id() -> String {
    use aes_gcm::aead::rand_core::RngCore;
    let mut bytes = [0u8; 16];
    aes_gcm::aead::OsRng.fill_bytes(&mut bytes);
    uuid_text(&bytes)
}

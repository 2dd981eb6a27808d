//! Temporary credentials, as STS `AssumeRoleWithWebIdentity` and Cognito Identity
//! `GetCredentialsForIdentity` hand them out: an access key id (`ASIA...`), a secret, and a
//! session token that carries both plus the caller and the expiry, sealed under the master key.
//! Any replica opens the token of a request and checks its signature with the secret inside, so
//! nothing is stored and nothing needs sharing but the master key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::random;
use super::seal::{MasterKey, SealError};
use super::{Caller, Role};

/// Binds a sealed token to its use: a sealed static secret does not open as a session.
const AAD: &[u8] = b"ccstream session token v1";

/// AWS's shape for a temporary key id: ASIA and 16 characters of base32.
pub const TEMPORARY_PREFIX: &str = "ASIA";

/// What a session token holds.
#[derive(Serialize, Deserialize)]
struct Sealed {
    #[serde(rename = "k")]
    access_key_id: String,
    #[serde(rename = "s")]
    secret: String,
    #[serde(rename = "u")]
    user: String,
    #[serde(rename = "r")]
    role: String,
    #[serde(rename = "d")]
    domain: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "e")]
    expires: u64,
}

/// Credentials to hand to a client. Its `Debug` shows only the key id and the expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// Seconds since the epoch.
    pub expires: u64,
}

/// A session token opened: the secret to check the signature with, and who signed. Its
/// `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub access_key_id: String,
    pub secret: String,
    pub caller: Caller,
    pub expires: u64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_key_id", &self.access_key_id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("access_key_id", &self.access_key_id)
            .field("caller", &self.caller)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("The security token included in the request is invalid.")]
    Invalid,
    #[error("The security token included in the request is expired")]
    Expired,
}

/// Credentials for `caller`, valid for `lifetime` from `now`.
pub fn issue(
    master: &MasterKey,
    caller: &Caller,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Issued, SealError> {
    let access_key_id = random::key_id(TEMPORARY_PREFIX);
    let secret = random::secret();
    let expires = epoch_secs(now).saturating_add(lifetime.as_secs());
    let sealed = Sealed {
        access_key_id: access_key_id.clone(),
        secret: secret.clone(),
        user: caller.user.clone(),
        role: caller.role.as_str().to_owned(),
        domain: caller.domain.clone(),
        expires,
    };
    // A struct of strings and a number always serializes.
    let json = serde_json::to_vec(&sealed).map_err(|_| SealError::TooLong)?;
    Ok(Issued {
        access_key_id,
        secret_access_key: secret,
        session_token: seal_token(master, &json)?,
        expires,
    })
}

/// Seals `plaintext` as a session token's text. [`issue`] seals its JSON; the fuzz target
/// (`fuzz/`) seals any bytes, to reach what [`open`] does after a token authenticates.
#[doc(hidden)]
pub fn seal_token(master: &MasterKey, plaintext: &[u8]) -> Result<String, SealError> {
    Ok(URL_SAFE_NO_PAD.encode(master.seal(plaintext, AAD)?))
}

/// Opens a request's session token, checking that it is ours and not expired at `now`.
pub fn open(master: &MasterKey, token: &str, now: SystemTime) -> Result<Session, SessionError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| SessionError::Invalid)?;
    let json = master
        .open(&bytes, AAD)
        .map_err(|_| SessionError::Invalid)?;
    let sealed: Sealed = serde_json::from_slice(&json).map_err(|_| SessionError::Invalid)?;
    let role = Role::parse(&sealed.role).ok_or(SessionError::Invalid)?;
    if epoch_secs(now) >= sealed.expires {
        return Err(SessionError::Expired);
    }
    Ok(Session {
        access_key_id: sealed.access_key_id,
        secret: sealed.secret,
        caller: Caller {
            user: sealed.user,
            role,
            domain: sealed.domain,
        },
        expires: sealed.expires,
    })
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn master() -> MasterKey {
        MasterKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    fn ann() -> Caller {
        Caller {
            user: "ann".into(),
            role: Role::Read,
            domain: "sub1".into(),
        }
    }

    #[test]
    fn a_token_opens_to_its_caller_and_secret_until_it_expires() {
        let now = SystemTime::now();
        let issued = issue(&master(), &ann(), Duration::from_secs(900), now).unwrap();
        assert!(issued.access_key_id.starts_with("ASIA") && issued.access_key_id.len() == 20);
        assert_eq!(issued.secret_access_key.len(), 40);
        assert!(!issued.session_token.contains(&issued.secret_access_key));
        let session = open(&master(), &issued.session_token, now).unwrap();
        assert_eq!(session.caller, ann());
        assert_eq!(session.secret, issued.secret_access_key);
        assert_eq!(session.access_key_id, issued.access_key_id);
        let later = now + Duration::from_secs(900);
        assert_eq!(
            open(&master(), &issued.session_token, later),
            Err(SessionError::Expired)
        );
    }

    #[test]
    fn tampered_foreign_and_garbage_tokens_are_invalid() {
        let now = SystemTime::now();
        let issued = issue(&master(), &ann(), Duration::from_secs(900), now).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&issued.session_token).unwrap();
        bytes[20] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(bytes);
        let other = MasterKey::from_base64(&STANDARD.encode([3u8; 32])).unwrap();
        for (what, key, token) in [
            ("tampered", master(), tampered.as_str()),
            ("other master key", other, issued.session_token.as_str()),
            ("garbage", master(), "not a token!"),
            ("empty", master(), ""),
        ] {
            assert_eq!(open(&key, token, now), Err(SessionError::Invalid), "{what}");
        }
        // A static key's sealed secret is not a session token.
        let sealed = master().seal(b"secret", b"AKIAX").unwrap();
        assert_eq!(
            open(&master(), &URL_SAFE_NO_PAD.encode(sealed), now),
            Err(SessionError::Invalid)
        );
    }
}

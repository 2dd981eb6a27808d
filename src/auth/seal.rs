//! Sealing under `api.sigv4.master_key`: AES-256-GCM with a random 96-bit nonce, so that what
//! is stored (an access key's secret) or handed out (a session token, later) can be opened by
//! every replica that holds the key and by nobody else, and cannot be altered unnoticed.
//!
//! A sealed value is `nonce || ciphertext || tag`. The associated data binds it to where it
//! belongs (the access key id), so a sealed secret copied to another key's row does not open.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

const NONCE_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the master key must be 32 bytes in base64 ({0})")]
    BadKey(String),
    /// Wrong key, wrong associated data, or altered bytes: AEAD does not tell them apart.
    #[error("the sealed value does not open under this master key")]
    Unopenable,
    /// AES-GCM seals at most 64 GiB.
    #[error("the value is too long to seal")]
    TooLong,
}

/// The key every replica shares. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct MasterKey(Aes256Gcm);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// From its base64 text (standard alphabet, padded), as `openssl rand -base64 32` prints it.
    pub fn from_base64(text: &str) -> Result<MasterKey, SealError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| SealError::BadKey(e.to_string()))?;
        Aes256Gcm::new_from_slice(&bytes)
            .map(MasterKey)
            .map_err(|_| SealError::BadKey(format!("{} bytes", bytes.len())))
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::TooLong)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let (nonce, ciphertext) = sealed
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(SealError::Unopenable)?;
        self.0
            .decrypt(
                &Nonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::Unopenable)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn what_is_sealed_opens_with_the_same_key_and_data_only() {
        let key = MasterKey::from_base64(KEY).unwrap();
        let sealed = key.seal(b"secret", b"AKIA1").unwrap();
        assert_eq!(key.open(&sealed, b"AKIA1").unwrap(), b"secret");
        assert_eq!(key.open(&sealed, b"AKIA2"), Err(SealError::Unopenable));
        let other = MasterKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        assert_eq!(other.open(&sealed, b"AKIA1"), Err(SealError::Unopenable));
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(key.open(&altered, b"AKIA1"), Err(SealError::Unopenable));
        assert_eq!(key.open(&sealed[..5], b"AKIA1"), Err(SealError::Unopenable));
        assert_ne!(
            key.seal(b"secret", b"AKIA1").unwrap(),
            sealed,
            "nonces are fresh"
        );
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(matches!(
            MasterKey::from_base64("not base64!"),
            Err(SealError::BadKey(_))
        ));
        assert_eq!(
            MasterKey::from_base64(&STANDARD.encode([1u8; 16])).unwrap_err(),
            SealError::BadKey("16 bytes".into())
        );
        assert!(format!("{:?}", MasterKey::from_base64(KEY).unwrap()).ends_with("(..)"));
    }
}

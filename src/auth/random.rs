//! Random ids and secrets in the shapes AWS gives them, from the operating system's generator.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// `prefix` and 16 characters of base32, as AWS's key ids look.
pub fn key_id(prefix: &str) -> String {
    const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    prefix
        .chars()
        .chain(
            bytes
                .iter()
                .map(|b| char::from(BASE32[usize::from(b % 32)])),
        )
        .collect()
}

/// 40 characters, as AWS's secrets look (30 random bytes in base64).
pub fn secret() -> String {
    let mut bytes = [0u8; 30];
    OsRng.fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
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
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    uuid_text(&bytes)
}

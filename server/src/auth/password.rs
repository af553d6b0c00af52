//! argon2id password hashes, computed off the async runtime.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::error::ApiError;

pub async fn hash(password: String) -> Result<String, ApiError> {
    let hashed = tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await?;
    hashed.map_err(|e| ApiError::Internal(e.to_string().into()))
}

/// Whether `password` matches `stored`. Callers without a stored hash pass
/// [`Passwords::decoy`] so an unknown email costs the same as a wrong password.
pub async fn verify(password: String, stored: String) -> Result<bool, ApiError> {
    Ok(tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await?)
}

/// A hash of a random password nobody knows, verified against when an email is unknown.
pub async fn decoy() -> Result<String, ApiError> {
    let mut bytes = [0u8; 24];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
    hash(bytes.iter().map(|b| format!("{b:02x}")).collect()).await
}

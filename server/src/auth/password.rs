//! argon2id password hashes, computed off the async runtime.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Each hash or verification holds 19 MiB for a moment: at most this many
/// run at once, so a burst of registrations cannot take the memory with it.
static HASHING: Semaphore = Semaphore::const_new(2);

async fn off_the_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    let _permit = HASHING.acquire().await.map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(tokio::task::spawn_blocking(work).await?)
}

pub async fn hash(password: String) -> Result<String, ApiError> {
    let hashed = off_the_runtime(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await?;
    hashed.map_err(|e| ApiError::Internal(e.to_string().into()))
}

/// Whether `password` matches `stored`. Callers without a stored hash pass
/// [`Passwords::decoy`] so an unknown email costs the same as a wrong password.
pub async fn verify(password: String, stored: String) -> Result<bool, ApiError> {
    off_the_runtime(move || {
        PasswordHash::new(&stored)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
}

/// A hash of a random password nobody knows, verified against when an email is unknown.
pub async fn decoy() -> Result<String, ApiError> {
    let mut bytes = [0u8; 24];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
    hash(bytes.iter().map(|b| format!("{b:02x}")).collect()).await
}

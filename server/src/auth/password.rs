//! argon2id password hashes, computed off the async runtime.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Each hash or verification holds 19 MiB for a moment: at most this many
/// run at once, so a burst of registrations cannot take the memory with it.
static HASHING: Semaphore = Semaphore::const_new(2);
/// New-password hashes (registration) also need one of these first, so they
/// hold at most this many of the [`HASHING`] slots and a login always finds
/// one free, however many registrations wait (issue 10 item 5).
static NEW_PASSWORD_HASHING: Semaphore = Semaphore::const_new(1);

async fn off_the_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    let waiting = std::time::Instant::now();
    let _permit = HASHING.acquire().await.map_err(|e| ApiError::Internal(Box::new(e)))?;
    metrics::histogram!("tether_argon2_wait_seconds").record(waiting.elapsed().as_secs_f64());
    Ok(tokio::task::spawn_blocking(work).await?)
}

/// A new argon2id hash of `password`, waiting its turn among the other new
/// hashes (one at a time) so that verifications keep a slot of their own.
pub async fn hash(password: String) -> Result<String, ApiError> {
    let _turn = NEW_PASSWORD_HASHING.acquire().await.map_err(|e| ApiError::Internal(Box::new(e)))?;
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

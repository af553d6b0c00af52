//! Session JWTs: HS256 only, `exp`, `sub` and `iss` required.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tether_protocol::Role;

pub const ISSUER: &str = "tether";
/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 5;
/// The generated secret's file name in the data directory (SQLite deployments).
pub const SECRET_FILE: &str = "jwt_secret";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub name: String,
    /// Informational: the stored role is the one that counts.
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        // The algorithm is pinned: a token naming any other (`none`, RS256, ...) is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = LEEWAY_SECS;
        Keys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// The claims of a well-signed, unexpired token; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok().map(|data| data.claims)
    }
}

/// The secret kept in the data directory (`jwt_secret`, created
/// with owner-only permissions on first start).
pub fn load_or_create_secret(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(stored) if stored.trim().len() >= 32 => return Ok(stored.trim().as_bytes().to_vec()),
        Ok(_) => return Err(std::io::Error::other(format!("{} holds a secret under 32 bytes", path.display()))),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let secret = generate_secret();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    file.write_all(secret.as_bytes())?;
    Ok(secret.into_bytes())
}

/// A fresh signing secret: 32 random bytes as 64 lowercase hex digits.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::Rng::gen(&mut rand::thread_rng());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

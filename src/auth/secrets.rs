//! Secret access keys: new key pairs, their argon2id hashes (the only form in which Ferry keeps
//! a secret), and verification. Verifying a password costs one argon2 run, so callers cache
//! what verified (see `Authenticator`), never verifying per request.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// A new access key id and secret, and the secret's hash for the config.
pub struct NewKey {
    /// `AKIA` + 16 letters and digits, as AWS prints them.
    pub access_key_id: String,
    /// 40 characters; shown once.
    pub secret: String,
    /// The argon2id hash to put in `secret_access_key_hash`.
    pub hash: String,
}

fn random_chars(n: usize, alphabet: &[u8]) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in uuid::Uuid::new_v4().into_bytes() {
            if out.len() < n {
                let at = usize::from(b).checked_rem(alphabet.len()).unwrap_or(0);
                out.push(char::from(alphabet[at]));
            }
        }
    }
    out
}

/// Makes a new key pair.
pub fn new_key() -> Result<NewKey, argon2::password_hash::Error> {
    let access_key_id = format!("AKIA{}", random_chars(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"));
    let secret = random_chars(40, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
    let hash = hash(&secret)?;
    Ok(NewKey { access_key_id, secret, hash })
}

/// The argon2id hash of `secret`, with a fresh salt.
pub fn hash(secret: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    salt.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default().hash_password(secret.as_bytes(), &salt)?.to_string())
}

/// Parses a stored hash (to check a config without verifying anything).
pub fn parse_hash(hash: &str) -> Result<PasswordHash<'_>, argon2::password_hash::Error> {
    PasswordHash::new(hash)
}

/// Whether `secret` matches `hash` (argon2's comparison is constant-time).
pub fn verify(secret: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_hash_and_verify() {
        let k = new_key().unwrap();
        assert!(k.access_key_id.starts_with("AKIA") && k.access_key_id.len() == 20);
        assert_eq!(k.secret.len(), 40);
        assert!(!k.secret.contains(':'));
        assert!(k.hash.starts_with("$argon2id$"));
        assert!(verify(&k.secret, &k.hash));
        assert!(!verify("wrong", &k.hash));
        assert!(!verify(&k.secret, "not a hash"));
        assert_ne!(hash(&k.secret).unwrap(), k.hash, "salted");
    }
}

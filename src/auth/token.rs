//! Registry passwords (`aws ecr get-login-password`): stateless tokens that any replica sharing
//! the storage can verify. A token carries its principal and expiry and is signed with HMAC-SHA256
//! under a key the first replica creates in storage with a conditional write (every replica then
//! reads the same key). The text is base64url, so it holds no `:` (the aws CLI splits
//! `AWS:<token>` on it). Knows nothing of HTTP.

use crate::storage::{self, Key, PutMode, Storage};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of every token this version issues.
const PREFIX: &str = "ferry1.";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The principal's name.
    #[serde(rename = "p")]
    pub principal: String,
    /// When it stops being accepted (seconds since the Unix epoch).
    #[serde(rename = "e")]
    pub expires_at: u64,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token, or not signed by this registry's key.
    #[error("the authorization token is not valid")]
    Invalid,
    /// Signed, but past its expiry.
    #[error("Your authorization token has expired. Reauthenticate and try again.")]
    Expired,
}

/// The key tokens are signed with.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// The registry's key: read from storage, or created there by the first replica to ask (a
    /// conditional create, so two replicas starting at once agree on one key).
    pub async fn load_or_create(storage: &dyn Storage) -> storage::Result<Self> {
        let key = Key::auth_token_key();
        loop {
            if let Some(bytes) = storage.record_get(&key).await? {
                let raw = URL_SAFE_NO_PAD
                    .decode(bytes.as_ref())
                    .map_err(|e| storage::Error::Corrupt(format!("{key}: not a token key: {e}")))?;
                if raw.len() < 32 {
                    return Err(storage::Error::Corrupt(format!("{key}: a token key needs 32 bytes")));
                }
                return Ok(Self(raw));
            }
            let mut fresh = [0u8; 32];
            fresh[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            fresh[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            let encoded = Bytes::from(URL_SAFE_NO_PAD.encode(fresh));
            match storage.record_put_if(&key, encoded, PutMode::Create).await {
                Ok(_) => return Ok(Self(fresh.to_vec())),
                // Another replica created it first: read theirs.
                Err(storage::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A key from bytes (tests).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| {
            // HMAC takes keys of any length; this branch cannot be reached.
            HmacSha256::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable!())
        });
        mac.update(payload.as_bytes());
        mac
    }

    /// Issues a token for `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{PREFIX}{payload}.{tag}")
    }

    /// Checks a token's signature (in constant time) and expiry against `now` (seconds since
    /// the epoch), and returns what it says.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Invalid)?;
        let (payload, tag) = rest.split_once('.').ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Invalid)?;
        self.mac(payload).verify_slice(&tag).map_err(|_| TokenError::Invalid)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Invalid)?;
        if now >= claims.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_refuse_tampering() {
        let key = TokenKey::from_bytes(&[7u8; 32]);
        let claims = Claims { principal: "ci".into(), expires_at: 1000 };
        let token = key.issue(&claims);
        assert!(!token.contains(':'), "the aws CLI splits AWS:<token> on ':'");
        assert_eq!(key.verify(&token, 999), Ok(claims));
        assert_eq!(key.verify(&token, 1000), Err(TokenError::Expired));
        // Another registry's key, or a changed payload, does not verify.
        assert_eq!(TokenKey::from_bytes(&[8u8; 32]).verify(&token, 1), Err(TokenError::Invalid));
        let forged = key.issue(&Claims { principal: "admin".into(), expires_at: 1000 });
        let (_, forged_payload) = forged.rsplit_once('.').map(|(a, _)| a.split_once('.').unwrap()).unwrap();
        let (_, tag) = token.rsplit_once('.').unwrap();
        let tampered = format!("{PREFIX}{forged_payload}.{tag}");
        assert_eq!(key.verify(&tampered, 1), Err(TokenError::Invalid));
        for junk in ["", "ferry1.", "ferry1.a.b", "AWS:x", "ferry1.e30.AAAA"] {
            assert_eq!(key.verify(junk, 1), Err(TokenError::Invalid), "{junk}");
        }
    }
}

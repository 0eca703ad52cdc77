//! Tokens. An access token is a short-lived JWT (HS256) naming the account
//! and its session; a refresh token is 32 random bytes, given to the client
//! once and stored only as its SHA-256.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use domain::account::{SessionId, TokenHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// Shortest signing secret accepted (HS256 wants at least its hash size).
pub const MIN_SECRET_BYTES: usize = 32;
const ISSUER: &str = "trafficbuster";

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account's username.
    pub sub: String,
    /// The session the token belongs to.
    pub sid: SessionId,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the signing secret must be at least {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
    #[error("the access token expired at {0}; refresh it")]
    Expired(OffsetDateTime),
    #[error("the access token is not valid: {0}")]
    Invalid(String),
}

/// Signs and checks access tokens with one shared secret (every gateway of a
/// deployment must hold the same one).
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    pub fn from_secret(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(TokenError::WeakSecret);
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// An access token for `sub`'s session, valid for `ttl` from `now`.
    pub fn issue(
        &self,
        sub: &str,
        sid: SessionId,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<(String, OffsetDateTime), TokenError> {
        // JWT times are whole seconds: round the expiry up, so a token
        // lives at least `ttl`, never up to a second less.
        let end = now + ttl;
        let exp = end.unix_timestamp() + i64::from(end.nanosecond() > 0);
        let expires_at = OffsetDateTime::from_unix_timestamp(exp)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claims = Claims {
            sub: sub.to_owned(),
            sid,
            iat: now.unix_timestamp(),
            exp,
            iss: ISSUER.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok((token, expires_at))
    }

    /// The claims of a genuine, unexpired token, judged at `now`.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against `now`, so tests and clocks agree.
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp", "sub", "iss"]
            .into_iter()
            .map(String::from)
            .collect();
        validation.set_issuer(&[ISSUER]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let expires_at = OffsetDateTime::from_unix_timestamp(data.claims.exp)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if now >= expires_at {
            return Err(TokenError::Expired(expires_at));
        }
        Ok(data.claims)
    }
}

/// A fresh refresh token (hex, for the client) and its hash (for events).
pub fn new_refresh_token() -> (String, TokenHash) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = hash_refresh_token(&token);
    (token, hash)
}

/// The stored form of a refresh token.
pub fn hash_refresh_token(token: &str) -> TokenHash {
    let digest = Sha256::digest(token.as_bytes());
    TokenHash(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::from_secret(&[7u8; 32]).unwrap()
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn a_token_names_its_session_until_it_expires() {
        let sid = SessionId(Uuid::now_v7());
        let (token, expires_at) = keys()
            .issue("ada", sid, t0(), Duration::minutes(15))
            .unwrap();
        assert_eq!(expires_at, t0() + Duration::minutes(15));
        let claims = keys().verify(&token, t0() + Duration::minutes(14)).unwrap();
        assert_eq!((claims.sub.as_str(), claims.sid), ("ada", sid));
        assert_eq!(
            keys().verify(&token, expires_at).unwrap_err(),
            TokenError::Expired(expires_at)
        );
    }

    #[test]
    fn a_token_lives_at_least_its_ttl_despite_whole_second_claims() {
        let sid = SessionId(Uuid::now_v7());
        let issued = t0() + Duration::milliseconds(900);
        let (token, expires_at) = keys()
            .issue("ada", sid, issued, Duration::seconds(1))
            .unwrap();
        assert_eq!(expires_at, t0() + Duration::seconds(2));
        assert!(
            keys()
                .verify(&token, issued + Duration::milliseconds(999))
                .is_ok()
        );
        assert!(keys().verify(&token, t0() + Duration::seconds(2)).is_err());
    }

    #[test]
    fn forged_tampered_and_garbage_tokens_are_invalid() {
        let sid = SessionId(Uuid::now_v7());
        let (token, _) = keys()
            .issue("ada", sid, t0(), Duration::minutes(15))
            .unwrap();
        let other = TokenKeys::from_secret(&[8u8; 32]).unwrap();
        assert!(matches!(
            other.verify(&token, t0()),
            Err(TokenError::Invalid(_))
        ));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_claims = "eyJzdWIiOiJyb290In0"; // {"sub":"root"}
        parts[1] = forged_claims;
        assert!(matches!(
            keys().verify(&parts.join("."), t0()),
            Err(TokenError::Invalid(_))
        ));
        for garbage in ["", "abc", "a.b.c", "Bearer x"] {
            assert!(
                matches!(keys().verify(garbage, t0()), Err(TokenError::Invalid(_))),
                "{garbage}"
            );
        }
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert_eq!(
            TokenKeys::from_secret(b"too short").unwrap_err(),
            TokenError::WeakSecret
        );
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_only_hashed() {
        let (a, hash_a) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash_refresh_token(&a), hash_a);
        assert!(!hash_a.0.contains(&a));
    }
}

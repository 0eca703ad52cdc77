//! Tokens. An access token is a short-lived JWT (HS256) naming the account
//! and its session; a refresh token is 32 random bytes, given to the client
//! once and stored only as its SHA-256.
//!
//! The JWT is signed here with `hmac` + `sha2` rather than a JWT crate: HS256
//! is all we issue, and `jsonwebtoken`'s only pure-Rust backend builds RSA,
//! P-256, P-384 and Ed25519 too. Verification accepts exactly what `issue`
//! writes: header `{"alg":"HS256","typ":"JWT"}`, unpadded base64url, and a
//! MAC compared in constant time. Any other `alg` (`none` included) is refused.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::account::{SessionId, TokenHash};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// Shortest signing secret accepted (HS256 wants at least its hash size).
pub const MIN_SECRET_BYTES: usize = 32;
const ISSUER: &str = "trafficbuster";
const ALGORITHM: &str = "HS256";
const TYPE: &str = "JWT";

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

/// A JWT's header: the fields we write and check.
#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
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

fn invalid(why: impl Into<String>) -> TokenError {
    TokenError::Invalid(why.into())
}

/// Signs and checks access tokens with one shared secret (every gateway of a
/// deployment must hold the same one).
#[derive(Clone)]
pub struct TokenKeys {
    mac: Hmac<Sha256>,
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
        let mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { mac })
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
        let header = Header {
            alg: ALGORITHM.into(),
            typ: Some(TYPE.into()),
        };
        let mut token = [to_json(&header)?, to_json(&claims)?]
            .map(|json| URL_SAFE_NO_PAD.encode(json))
            .join(".");
        let signature = URL_SAFE_NO_PAD.encode(self.sign(token.as_bytes()));
        token.push('.');
        token.push_str(&signature);
        Ok((token, expires_at))
    }

    /// The claims of a genuine, unexpired token, judged at `now`.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a JWT (three base64url parts joined by dots)"));
        };
        let header_json = decode(header, "header")?;
        let header: Header = serde_json::from_slice(&header_json)
            .map_err(|e| invalid(format!("the header is not JSON: {e}")))?;
        if header.alg != ALGORITHM {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted, only {ALGORITHM}",
                header.alg
            )));
        }
        if header.typ.as_deref() != Some(TYPE) {
            return Err(invalid(format!("type {:?} is not {TYPE}", header.typ)));
        }
        // The MAC covers the header and claims as sent: check it before
        // reading a word of the claims.
        let signed = &token[..token.len() - signature.len() - 1];
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&decode(signature, "signature")?)
            .map_err(|_| invalid("the signature does not match"))?;
        let claims: Claims = serde_json::from_slice(&decode(claims, "claims")?)
            .map_err(|e| invalid(format!("the claims are incomplete: {e}")))?;
        if claims.iss != ISSUER {
            return Err(invalid(format!("issuer {:?} is not {ISSUER}", claims.iss)));
        }
        let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if now >= expires_at {
            return Err(TokenError::Expired(expires_at));
        }
        Ok(claims)
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, TokenError> {
    serde_json::to_vec(value).map_err(|e| invalid(e.to_string()))
}

fn decode(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| invalid(format!("the {what} is not unpadded base64url: {e}")))
}

/// 32 bytes from the operating system's random source, as 64 hex digits:
/// refresh tokens, and signing secrets made on first start.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A fresh refresh token (hex, for the client) and its hash (for events).
pub fn new_refresh_token() -> (String, TokenHash) {
    let token = random_secret();
    let hash = hash_refresh_token(&token);
    (token, hash)
}

/// The stored form of a refresh token.
pub fn hash_refresh_token(token: &str) -> TokenHash {
    TokenHash(hex::encode(Sha256::digest(token.as_bytes())))
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

    /// A token with this header and these claims, signed by `keys()`.
    fn crafted(header: &str, claims: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = URL_SAFE_NO_PAD.encode(keys().sign(input.as_bytes()));
        format!("{input}.{signature}")
    }

    const CLAIMS: &str = r#"{"sub":"root","sid":"0192f0c4-8a4b-7c3e-9d2f-3a1b2c3d4e5f","iat":1800000000,"exp":1800000900,"iss":"trafficbuster"}"#;

    fn refusal(token: &str) -> String {
        match keys().verify(token, t0()) {
            Err(TokenError::Invalid(why)) => why,
            other => panic!("{token} was not refused as invalid: {other:?}"),
        }
    }

    #[test]
    fn a_token_from_another_hs256_implementation_verifies() {
        // Made with Python's hmac, in jsonwebtoken's header order: tokens
        // issued before the switch to our own signing stay valid.
        let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEiLCJzaWQiOiIwMTkyZjBjNC04YTRiLTdjM2UtOWQyZi0zYTFiMmMzZDRlNWYiLCJpYXQiOjE4MDAwMDAwMDAsImV4cCI6MTgwMDAwMDkwMCwiaXNzIjoidHJhZmZpY2J1c3RlciJ9.suN8UlzGkPxs_maL1BD-8NM7sD5a39llU3sv3fGhGkw";
        let claims = keys().verify(token, t0()).unwrap();
        assert_eq!(claims.sub, "ada");
        assert_eq!(
            claims.sid.0.to_string(),
            "0192f0c4-8a4b-7c3e-9d2f-3a1b2c3d4e5f"
        );
    }

    #[test]
    fn the_crafting_helper_makes_tokens_that_verify() {
        let token = crafted(r#"{"alg":"HS256","typ":"JWT"}"#, CLAIMS);
        assert_eq!(keys().verify(&token, t0()).unwrap().sub, "root");
    }

    #[test]
    fn alg_none_is_refused_signed_or_not() {
        let token = crafted(r#"{"alg":"none","typ":"JWT"}"#, CLAIMS);
        assert!(refusal(&token).contains(r#"algorithm "none" is not accepted"#));
        let unsigned = format!("{}.", token.rsplit_once('.').unwrap().0);
        assert!(refusal(&unsigned).contains(r#"algorithm "none""#));
    }

    #[test]
    fn any_other_algorithm_or_type_is_refused() {
        for alg in ["HS512", "RS256", "ES256", "EdDSA", "hs256"] {
            let token = crafted(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#), CLAIMS);
            assert!(refusal(&token).contains("is not accepted"), "{alg}");
        }
        for header in [r#"{"alg":"HS256"}"#, r#"{"alg":"HS256","typ":"JWE"}"#] {
            assert!(
                refusal(&crafted(header, CLAIMS)).contains("is not JWT"),
                "{header}"
            );
        }
    }

    #[test]
    fn bad_base64_is_refused_and_says_which_part() {
        let token = crafted(r#"{"alg":"HS256","typ":"JWT"}"#, CLAIMS);
        let parts: Vec<&str> = token.split('.').collect();
        let padded = format!("{}=.{}.{}", parts[0], parts[1], parts[2]);
        assert!(refusal(&padded).contains("header is not unpadded base64url"));
        let bad_signature = format!("{}.{}.{}*", parts[0], parts[1], parts[2]);
        assert!(refusal(&bad_signature).contains("signature is not unpadded base64url"));
        let four = format!("{token}.{}", parts[2]);
        assert!(refusal(&four).contains("not a JWT"));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let sid = SessionId(Uuid::now_v7());
        let other = TokenKeys::from_secret(&[8u8; 32]).unwrap();
        let (token, _) = other
            .issue("root", sid, t0(), Duration::minutes(15))
            .unwrap();
        assert!(refusal(&token).contains("signature does not match"));
    }

    #[test]
    fn a_genuine_token_from_another_issuer_is_refused() {
        let claims = CLAIMS.replace("trafficbuster", "someone-else");
        let token = crafted(r#"{"alg":"HS256","typ":"JWT"}"#, &claims);
        assert!(refusal(&token).contains("issuer"));
        let no_expiry = crafted(r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"sub":"root"}"#);
        assert!(refusal(&no_expiry).contains("claims are incomplete"));
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

//! Passwords: argon2id hashes (PHC strings), made and checked off the async
//! runtime because they are slow on purpose. The clear password never
//! leaves this module's callers' stack: not in events, not in logs.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHash as Phc};
use domain::account::PasswordHash;

/// Shortest password accepted.
pub const MIN_LENGTH: usize = 12;
/// Longest: argon2 takes any length, but a cap stops abuse of the hasher.
pub const MAX_LENGTH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must be at least {MIN_LENGTH} characters long")]
    TooShort,
    #[error("the password must be at most {MAX_LENGTH} characters long")]
    TooLong,
    #[error("stored password hash is unreadable: {0}")]
    BadHash(String),
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Checks a new password's length.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    let len = password.chars().count();
    if len < MIN_LENGTH {
        return Err(PasswordError::TooShort);
    }
    if len > MAX_LENGTH {
        return Err(PasswordError::TooLong);
    }
    Ok(())
}

/// Hashes a new password (after checking the policy) with a random salt.
pub async fn hash(password: String) -> Result<PasswordHash, PasswordError> {
    check_policy(&password)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| PasswordHash(h.to_string()))
            .map_err(|e| PasswordError::Hashing(e.to_string()))
    })
    .await
    .map_err(|e| PasswordError::Hashing(e.to_string()))?
}

/// Does `password` match `stored`?
pub async fn verify(password: String, stored: PasswordHash) -> Result<bool, PasswordError> {
    tokio::task::spawn_blocking(move || {
        let parsed = Phc::new(&stored.0).map_err(|e| PasswordError::BadHash(e.to_string()))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| PasswordError::Hashing(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_is_argon2id_salted_and_verifies_only_its_password() {
        let a = hash("correct horse battery".into()).await.unwrap();
        let b = hash("correct horse battery".into()).await.unwrap();
        assert!(a.0.starts_with("$argon2id$"), "{}", a.0);
        assert_ne!(a, b, "salted");
        assert!(!a.0.contains("correct horse"));
        assert!(
            verify("correct horse battery".into(), a.clone())
                .await
                .unwrap()
        );
        assert!(!verify("correct horse battery!".into(), a).await.unwrap());
    }

    #[tokio::test]
    async fn short_and_unreadable_inputs_are_clear_errors() {
        assert!(matches!(
            hash("short".into()).await,
            Err(PasswordError::TooShort)
        ));
        assert!(matches!(
            hash("x".repeat(MAX_LENGTH + 1)).await,
            Err(PasswordError::TooLong)
        ));
        let err = verify(
            "whatever-long-enough".into(),
            PasswordHash("not a hash".into()),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, PasswordError::BadHash(_)), "{err}");
    }
}

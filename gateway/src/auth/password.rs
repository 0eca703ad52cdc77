//! Passwords: argon2id hashes (PHC strings), made and checked off the async
//! runtime because they are slow on purpose. The clear password never
//! leaves this module's callers' stack: not in events, not in logs.
//!
//! Each hash holds ~19 MiB while it runs, so at most one per core runs at a
//! time and a few per core wait; past that a caller is told to retry later,
//! rather than a burst of logins taking all memory (400 at once took the
//! gateway from 20 MB to 6.9 GB resident before this gate).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHash as Phc};
use domain::account::PasswordHash;
use tokio::sync::Semaphore;

use crate::auth::rate_limit::RateLimited;

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
    #[error(transparent)]
    Busy(RateLimited),
}

/// Callers waiting per hash running. A hash takes tens of milliseconds, so
/// the last in line waits a fraction of a second; beyond that a client is
/// better told to come back than kept waiting (waiters cost little memory,
/// but the wait grows with the line and clients time out).
const WAITING_PER_RUNNING: usize = 4;

/// Runs argon2 work off the runtime, at most `running` at once, with at
/// most `waiting` more in line.
struct Gate {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

impl Gate {
    fn new(running: usize, waiting: usize) -> Self {
        Self {
            admitted: Arc::new(Semaphore::new(running + waiting)),
            running: Arc::new(Semaphore::new(running)),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let admitted = self.admitted.clone().try_acquire_owned().map_err(|_| {
            PasswordError::Busy(RateLimited {
                scope: "password checks at once",
                retry_after: Duration::from_secs(1),
            })
        })?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PasswordError::Hashing(e.to_string()))?;
        // The permits go with the work: a caller that gives up does not
        // free its place while argon2 still runs.
        tokio::task::spawn_blocking(move || {
            let _permits = (admitted, running);
            work()
        })
        .await
        .map_err(|e| PasswordError::Hashing(e.to_string()))
    }
}

/// One gate for the process: the memory and cores it guards are the process's.
static GATE: LazyLock<Gate> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Gate::new(cores, cores * WAITING_PER_RUNNING)
});

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
    GATE.run(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| PasswordHash(h.to_string()))
            .map_err(|e| PasswordError::Hashing(e.to_string()))
    })
    .await?
}

/// Does `password` match `stored`?
pub async fn verify(password: String, stored: PasswordHash) -> Result<bool, PasswordError> {
    GATE.run(move || {
        let parsed = Phc::new(&stored.0).map_err(|e| PasswordError::BadHash(e.to_string()))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

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

    #[tokio::test]
    async fn a_full_line_is_told_to_retry_rather_than_queued() {
        let gate = Gate::new(1, 1);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let running = gate.run(move || hold.recv().ok());
        let waiting = gate.run(|| Some(()));
        tokio::pin!(running, waiting);
        // Both admitted: one runs (blocked), one waits for it.
        assert!(running.as_mut().now_or_never().is_none());
        assert!(waiting.as_mut().now_or_never().is_none());
        match gate.run(|| Some(())).await {
            Err(PasswordError::Busy(r)) => assert!(r.retry_after >= Duration::from_secs(1)),
            other => panic!("expected Busy, got {other:?}"),
        }
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Some(()));
        assert_eq!(waiting.await.unwrap(), Some(()));
        // The line has room again.
        assert_eq!(gate.run(|| 7).await.unwrap(), 7);
    }
}

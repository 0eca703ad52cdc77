//! Passwords: argon2id hashes (PHC strings), made and checked off the async
//! runtime because they are slow on purpose. The clear password never
//! leaves this module's callers' stack: not in events, not in logs.
//!
//! Each hash holds ~19 MiB while it runs, so at most one per core runs at a
//! time and a few per core wait; past that a caller is told to retry later
//! (RATE_LIMITED), rather than a burst of logins taking all memory (400 at
//! once took the gateway from 20 MB to 6.3-6.9 GB resident before this gate).

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash as Phc, Version};
use domain::account::PasswordHash;

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

type Job = Box<dyn FnOnce() + Send>;

/// Runs argon2 work on its own threads, one per core, with a bounded line.
/// Each worker keeps its argon2 memory ([`MEMORY`]) between hashes. With a
/// semaphore over tokio's blocking pool instead, a burst still peaked at
/// 566 MiB: ever new threads, and freed 19 MiB blocks kept by the malloc
/// arenas (six arenas held three each, even with fixed threads).
struct Gate {
    line: SyncSender<Job>,
}

impl Gate {
    fn new(workers: usize, waiting: usize) -> Self {
        let (line, jobs) = std::sync::mpsc::sync_channel::<Job>(waiting);
        let jobs = Arc::new(Mutex::new(jobs));
        for n in 0..workers {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking the next job.
                        let next = match jobs.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = next else { return };
                        // A panicking job loses its answer, not the worker.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .expect("the OS starts a password worker thread");
        }
        Self { line }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have given up; the work is done regardless.
            let _ = done.send(work());
        });
        self.line.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PasswordError::Busy(RateLimited {
                scope: "password checks at once",
                retry_after: Duration::from_secs(1),
            }),
            TrySendError::Disconnected(_) => {
                PasswordError::Hashing("the password workers have stopped".into())
            }
        })?;
        answer
            .await
            .map_err(|_| PasswordError::Hashing("a password worker failed".into()))
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

thread_local! {
    /// A password worker's argon2 memory, kept from one hash to the next:
    /// allocated once per worker rather than once per hash, so the number
    /// of workers bounds it (the allocator does not, see [`Gate`]).
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn hashing(e: impl std::fmt::Display) -> PasswordError {
    PasswordError::Hashing(e.to_string())
}

/// `argon2` of `password` and `salt` (`len` bytes), in this thread's memory.
fn compute(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: Salt<'_>,
    len: usize,
) -> Result<Output, PasswordError> {
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt = salt.decode_b64(&mut salt_bytes).map_err(hashing)?;
    MEMORY.with_borrow_mut(|memory| {
        if memory.len() < params.block_count() {
            memory.resize(params.block_count(), Block::default());
        }
        Output::init_with(len, |out| {
            argon2
                .hash_password_into_with_memory(password, salt, out, &mut memory[..])
                .map_err(Into::into)
        })
        .map_err(hashing)
    })
}

/// Hashes a new password (after checking the policy) with a random salt.
pub async fn hash(password: String) -> Result<PasswordHash, PasswordError> {
    check_policy(&password)?;
    GATE.run(move || {
        let salt = SaltString::generate(&mut OsRng);
        let params = Params::default();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let output = compute(&argon2, &params, password.as_bytes(), salt.as_salt(), len)?;
        let phc = Phc {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(hashing)?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(PasswordHash(phc.to_string()))
    })
    .await?
}

/// Does `password` match `stored`?
pub async fn verify(password: String, stored: PasswordHash) -> Result<bool, PasswordError> {
    GATE.run(move || {
        let bad = |e: &dyn std::fmt::Display| PasswordError::BadHash(e.to_string());
        let phc = Phc::new(&stored.0).map_err(|e| bad(&e))?;
        let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
            return Err(bad(&"it holds no salt or no hash"));
        };
        let algorithm = Algorithm::try_from(phc.algorithm).map_err(|e| bad(&e))?;
        let version = match phc.version {
            Some(v) => Version::try_from(v).map_err(|e| bad(&e))?,
            None => Version::default(),
        };
        let params = Params::try_from(&phc).map_err(|e| bad(&e))?;
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let computed = compute(&argon2, &params, password.as_bytes(), salt, expected.len())?;
        // Output compares in constant time.
        Ok(computed == expected)
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
    async fn hashes_are_those_of_the_argon2_crate_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = hash("correct horse battery".into()).await.unwrap();
        let parsed = Phc::new(&ours.0).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery", &parsed)
                .is_ok()
        );
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        assert!(
            verify("correct horse battery".into(), PasswordHash(theirs.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify("wrong horse battery".into(), PasswordHash(theirs))
                .await
                .unwrap()
        );
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
        let (started, has_started) = std::sync::mpsc::channel::<()>();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let running = gate.run(move || {
            started.send(()).unwrap();
            hold.recv().ok()
        });
        let waiting = gate.run(|| Some(()));
        tokio::pin!(running, waiting);
        // One runs (held), then one waits in line for it.
        assert!(running.as_mut().now_or_never().is_none());
        has_started.recv().unwrap();
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

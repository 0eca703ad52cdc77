//! Runner keys: the credentials runners authenticate with. One stream,
//! `runner-keys`, holds them all: few, admin-made, and read whole at every
//! runner's connection.
//!
//! A key is shown once when the gateway makes it; only its SHA-256 enters
//! an event. A key is 256 bits of the OS's randomness, so a plain hash is
//! enough (no password stretching): nobody can guess one to match a hash.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::account::TokenHash;
use crate::decider::{Context, Decider};
use crate::envelope::{StreamId, StreamIdError};
use crate::runner::MAX_NAME_CHARS;

/// The stream of every runner key: `runner-keys`.
pub fn stream() -> Result<StreamId, StreamIdError> {
    StreamId::for_aggregate("runner", "keys")
}

/// Names a runner key (not secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunnerKeyId(pub Uuid);

impl fmt::Display for RunnerKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A runner key as a runner presents it. Its Debug never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunnerKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a runner key is 32 to 128 characters of A-Z, a-z, 0-9, '-' or '_'; copy it whole from createRunnerKey"
)]
pub struct RunnerKeyFormatError;

impl RunnerKey {
    pub fn parse(raw: &str) -> Result<Self, RunnerKeyFormatError> {
        if crate::account::is_token_text(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(RunnerKeyFormatError)
        }
    }

    /// What is stored of it.
    pub fn hash(&self) -> TokenHash {
        TokenHash(hex::encode(Sha256::digest(self.0.as_bytes())))
    }

    /// The key itself, to send in a hello; never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RunnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunnerKey(..)")
    }
}

impl TryFrom<String> for RunnerKey {
    type Error = RunnerKeyFormatError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<RunnerKey> for String {
    fn from(k: RunnerKey) -> String {
        k.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerKeyCreated {
    pub key: RunnerKeyId,
    /// What the admin called it, e.g. the fleet it is for.
    pub name: String,
    pub hash: TokenHash,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerKeyRevoked {
    pub key: RunnerKeyId,
    pub by: String,
}

crate::event_set! {
    /// What happens to runner keys.
    pub enum RunnerKeyEvent {
        RunnerKeyCreated(RunnerKeyCreated) = 1,
        RunnerKeyRevoked(RunnerKeyRevoked) = 1,
    }
}

impl crate::registry::Summary for RunnerKeyEvent {
    // Never the hash: a summary says who did what.
    fn summary(&self, _stream: &StreamId) -> String {
        match self {
            Self::RunnerKeyCreated(c) => {
                format!("runner key {} ({}) created by {}", c.key, c.name, c.by)
            }
            Self::RunnerKeyRevoked(r) => format!("runner key {} revoked by {}", r.key, r.by),
        }
    }
}

/// Commands on runner keys.
#[derive(Debug, Clone, PartialEq)]
pub enum RunnerKeyCommand {
    /// Records a key the gateway made; `hash` is [`RunnerKey::hash`].
    Create {
        key: RunnerKeyId,
        name: String,
        hash: TokenHash,
    },
    Revoke {
        key: RunnerKeyId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerKeyError {
    #[error("only an admin or super-admin creates or revokes runner keys")]
    Forbidden,
    #[error("a runner key's name is 1 to {MAX_NAME_CHARS} printable characters")]
    BadName,
    #[error("runner key {0} exists already")]
    Exists(RunnerKeyId),
    #[error("there is no runner key {0}")]
    NotFound(RunnerKeyId),
}

/// One key as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    pub hash: TokenHash,
    pub revoked: bool,
}

/// Every key, revoked ones included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerKeysState {
    pub keys: BTreeMap<RunnerKeyId, KeyRecord>,
}

/// Why a presented key lets no runner in. Deliberately vague towards the
/// runner about which: an unknown key and a revoked one read alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the runner key is unknown or revoked; ask an admin for a new one (createRunnerKey)")]
pub struct KeyRefused;

impl RunnerKeysState {
    /// Which live key is this?
    pub fn authenticate(&self, key: &RunnerKey) -> Result<RunnerKeyId, KeyRefused> {
        let hash = key.hash();
        self.keys
            .iter()
            .find(|(_, record)| record.hash == hash && !record.revoked)
            .map(|(id, _)| *id)
            .ok_or(KeyRefused)
    }
}

pub struct RunnerKeys;

inventory::submit! { crate::replay::Replayer::of::<RunnerKeys>() }

impl Decider for RunnerKeys {
    const SNAPSHOT_KIND: &'static str = "runner_keys/1";
    type State = RunnerKeysState;
    type Command = RunnerKeyCommand;
    type Event = RunnerKeyEvent;
    type Error = RunnerKeyError;

    fn evolve(mut state: RunnerKeysState, event: &RunnerKeyEvent) -> RunnerKeysState {
        match event {
            RunnerKeyEvent::RunnerKeyCreated(e) => {
                state.keys.insert(
                    e.key,
                    KeyRecord {
                        name: e.name.clone(),
                        hash: e.hash.clone(),
                        revoked: false,
                    },
                );
            }
            RunnerKeyEvent::RunnerKeyRevoked(e) => {
                if let Some(record) = state.keys.get_mut(&e.key) {
                    record.revoked = true;
                }
            }
        }
        state
    }

    fn decide(
        state: &RunnerKeysState,
        command: RunnerKeyCommand,
        ctx: &Context,
    ) -> Result<Vec<RunnerKeyEvent>, RunnerKeyError> {
        if !ctx.actor.is_admin() {
            return Err(RunnerKeyError::Forbidden);
        }
        let by = ctx.actor.name();
        match command {
            RunnerKeyCommand::Create { key, name, hash } => {
                let name = name.trim().to_owned();
                if name.is_empty()
                    || name.chars().count() > MAX_NAME_CHARS
                    || name.chars().any(char::is_control)
                {
                    return Err(RunnerKeyError::BadName);
                }
                if state.keys.contains_key(&key) {
                    return Err(RunnerKeyError::Exists(key));
                }
                Ok(vec![RunnerKeyEvent::RunnerKeyCreated(RunnerKeyCreated {
                    key,
                    name,
                    hash,
                    by,
                })])
            }
            RunnerKeyCommand::Revoke { key } => match state.keys.get(&key) {
                None => Err(RunnerKeyError::NotFound(key)),
                Some(record) if record.revoked => Ok(vec![]),
                Some(_) => Ok(vec![RunnerKeyEvent::RunnerKeyRevoked(RunnerKeyRevoked {
                    key,
                    by,
                })]),
            },
        }
    }
}

#[cfg(test)]
mod tests {

    use time::OffsetDateTime;

    use super::*;
    use crate::decider::Role;
    use crate::registry::Summary;
    use crate::spec::{Spec, acting_as};

    fn as_role(role: Role) -> Context {
        acting_as("root", role, OffsetDateTime::UNIX_EPOCH)
    }

    fn secret(c: char) -> RunnerKey {
        RunnerKey::parse(&c.to_string().repeat(43)).unwrap()
    }

    fn id(n: u128) -> RunnerKeyId {
        RunnerKeyId(Uuid::from_u128(n))
    }

    fn created(n: u128, c: char) -> RunnerKeyEvent {
        RunnerKeyEvent::RunnerKeyCreated(RunnerKeyCreated {
            key: id(n),
            name: "eu fleet".into(),
            hash: secret(c).hash(),
            by: "root".into(),
        })
    }

    #[test]
    fn an_admin_creates_a_key_that_then_lets_its_runner_in() {
        let state = Spec::<RunnerKeys>::given([])
            .in_context(as_role(Role::Admin))
            .when(RunnerKeyCommand::Create {
                key: id(1),
                name: " eu fleet ".into(),
                hash: secret('a').hash(),
            })
            .then([created(1, 'a')]);
        assert_eq!(state.authenticate(&secret('a')), Ok(id(1)));
        assert_eq!(state.authenticate(&secret('b')), Err(KeyRefused));
    }

    #[test]
    fn a_revoked_key_lets_nobody_in_and_revoking_again_records_nothing() {
        let revoked = RunnerKeyEvent::RunnerKeyRevoked(RunnerKeyRevoked {
            key: id(1),
            by: "root".into(),
        });
        let state = Spec::<RunnerKeys>::given([created(1, 'a'), created(2, 'b')])
            .in_context(as_role(Role::SuperAdmin))
            .when(RunnerKeyCommand::Revoke { key: id(1) })
            .then([revoked.clone()]);
        assert_eq!(state.authenticate(&secret('a')), Err(KeyRefused));
        assert_eq!(state.authenticate(&secret('b')), Ok(id(2)));
        Spec::<RunnerKeys>::given([created(1, 'a'), revoked])
            .in_context(as_role(Role::Admin))
            .when(RunnerKeyCommand::Revoke { key: id(1) })
            .then([]);
        Spec::<RunnerKeys>::given([])
            .in_context(as_role(Role::Admin))
            .when(RunnerKeyCommand::Revoke { key: id(9) })
            .then_err(|e| *e == RunnerKeyError::NotFound(id(9)));
    }

    #[test]
    fn only_admins_manage_keys_and_ids_are_not_reused() {
        for role in [Role::User, Role::Auditor] {
            Spec::<RunnerKeys>::given([])
                .in_context(as_role(role))
                .when(RunnerKeyCommand::Create {
                    key: id(1),
                    name: "x".into(),
                    hash: secret('a').hash(),
                })
                .then_err(|e| *e == RunnerKeyError::Forbidden);
        }
        Spec::<RunnerKeys>::given([created(1, 'a')])
            .in_context(as_role(Role::Admin))
            .when(RunnerKeyCommand::Create {
                key: id(1),
                name: "x".into(),
                hash: secret('b').hash(),
            })
            .then_err(|e| *e == RunnerKeyError::Exists(id(1)));
        Spec::<RunnerKeys>::given([])
            .in_context(as_role(Role::Admin))
            .when(RunnerKeyCommand::Create {
                key: id(1),
                name: "  ".into(),
                hash: secret('b').hash(),
            })
            .then_err(|e| *e == RunnerKeyError::BadName);
    }

    #[test]
    fn a_key_is_never_shown_by_debug_or_summaries() {
        let key = secret('q');
        assert_eq!(format!("{key:?}"), "RunnerKey(..)");
        let stream = stream().unwrap();
        assert_eq!(stream.as_str(), "runner-keys");
        let line = created(1, 'q').summary(&stream);
        assert_eq!(
            line,
            "runner key 00000000-0000-0000-0000-000000000001 (eu fleet) created by root"
        );
        assert!(!line.contains(&key.hash().0));
        assert!(RunnerKey::parse("short").is_err());
        assert!(RunnerKey::parse(&"a b".repeat(20)).is_err());
    }
}

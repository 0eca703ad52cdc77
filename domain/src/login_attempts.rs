//! Logins that name no account. With no account stream to hold them, they
//! are recorded against the client address they came from, in stream
//! `login-attempts-<address>`, so failed logins are all events.
//!
//! The name as typed is never stored: it may be a password typed into the
//! username field. The event holds a keyed fingerprint of it instead (made
//! by the gateway, which holds the key), so an auditor sees one name tried
//! again and again, or many names tried once, without reading any of them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decider::{Context, Decider};
use crate::envelope::{StreamId, StreamIdError};

/// A keyed fingerprint of a login name (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameFingerprint(pub String);

impl fmt::Display for NameFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every login-attempts stream's name starts so.
pub const STREAM_PREFIX: &str = "login-attempts-";

/// The stream of unknown-account logins from `client_ip`.
pub fn stream(client_ip: Option<&str>) -> Result<StreamId, StreamIdError> {
    StreamId::parse(format!(
        "{STREAM_PREFIX}{}",
        client_ip.unwrap_or("unknown-address")
    ))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownAccountLoginFailed {
    pub client_ip: Option<String>,
    pub name_fingerprint: NameFingerprint,
}

crate::event_set! {
    /// What happens to logins that name no account.
    pub enum LoginAttemptEvent {
        UnknownAccountLoginFailed(UnknownAccountLoginFailed) = 1,
    }
}

impl crate::registry::Summary for LoginAttemptEvent {
    fn summary(&self, _stream: &StreamId) -> String {
        match self {
            Self::UnknownAccountLoginFailed(f) => format!(
                "failed login naming no account from {} (name fingerprint {})",
                f.client_ip.as_deref().unwrap_or("an unknown address"),
                f.name_fingerprint
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LoginAttemptCommand {
    /// A login named no account (or no valid username at all).
    RecordUnknownAccount {
        client_ip: Option<String>,
        name_fingerprint: NameFingerprint,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginAttemptError {
    #[error("a name fingerprint is required")]
    NoFingerprint,
}

/// Attempts recorded from one address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAttemptsState {
    pub unknown_account: u64,
}

pub struct LoginAttempts;

inventory::submit! { crate::replay::Replayer::of::<LoginAttempts>() }

impl Decider for LoginAttempts {
    const SNAPSHOT_KIND: &'static str = "login-attempts/1";
    type State = LoginAttemptsState;
    type Command = LoginAttemptCommand;
    type Event = LoginAttemptEvent;
    type Error = LoginAttemptError;

    fn evolve(state: LoginAttemptsState, event: &LoginAttemptEvent) -> LoginAttemptsState {
        match event {
            LoginAttemptEvent::UnknownAccountLoginFailed(_) => LoginAttemptsState {
                unknown_account: state.unknown_account + 1,
            },
        }
    }

    fn decide(
        _state: &LoginAttemptsState,
        command: LoginAttemptCommand,
        _ctx: &Context,
    ) -> Result<Vec<LoginAttemptEvent>, LoginAttemptError> {
        match command {
            LoginAttemptCommand::RecordUnknownAccount {
                client_ip,
                name_fingerprint,
            } => {
                if name_fingerprint.0.is_empty() {
                    return Err(LoginAttemptError::NoFingerprint);
                }
                Ok(vec![LoginAttemptEvent::UnknownAccountLoginFailed(
                    UnknownAccountLoginFailed {
                        client_ip,
                        name_fingerprint,
                    },
                )])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;

    fn failed(fingerprint: &str) -> LoginAttemptEvent {
        LoginAttemptEvent::UnknownAccountLoginFailed(UnknownAccountLoginFailed {
            client_ip: Some("192.0.2.7".into()),
            name_fingerprint: NameFingerprint(fingerprint.into()),
        })
    }

    fn record(fingerprint: &str) -> LoginAttemptCommand {
        LoginAttemptCommand::RecordUnknownAccount {
            client_ip: Some("192.0.2.7".into()),
            name_fingerprint: NameFingerprint(fingerprint.into()),
        }
    }

    #[test]
    fn every_unknown_account_login_is_recorded_and_counted() {
        let state = Spec::<LoginAttempts>::given([failed("aa"), failed("bb")])
            .when(record("aa"))
            .then([failed("aa")]);
        assert_eq!(state.unknown_account, 3);
    }

    #[test]
    fn a_record_without_a_fingerprint_is_refused() {
        Spec::<LoginAttempts>::given([])
            .when(record(""))
            .then_err(|e| *e == LoginAttemptError::NoFingerprint);
    }

    #[test]
    fn attempts_are_kept_per_client_address() {
        assert_eq!(
            stream(Some("2001:db8::1")).unwrap().as_str(),
            "login-attempts-2001:db8::1"
        );
        assert_eq!(
            stream(None).unwrap().as_str(),
            "login-attempts-unknown-address"
        );
    }
}

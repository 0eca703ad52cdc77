//! System-wide settings that decisions depend on; for now SAFE_MODE, which
//! stops every run. Stream `system-settings`.
//!
//! A fresh install starts in safe mode (the initial state, with no event):
//! nothing runs until a super-admin has looked and turned it off with a
//! reason. Stopping is easier than starting: an admin may turn it back on.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::decider::{Context, Decider, Role};
use crate::envelope::{StreamId, StreamIdError};
use crate::reason::Reason;

/// The one settings stream: `system-settings`.
pub fn stream() -> Result<StreamId, StreamIdError> {
    StreamId::for_aggregate("system", "settings")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafeModeTurnedOff {
    pub by: String,
    pub reason: Reason,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafeModeTurnedOn {
    pub by: String,
    pub reason: Reason,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

crate::event_set! {
    /// What happens to the system settings.
    pub enum SystemSettingsEvent {
        SafeModeTurnedOff(SafeModeTurnedOff) = 1,
        SafeModeTurnedOn(SafeModeTurnedOn) = 1,
    }
}

impl crate::registry::Summary for SystemSettingsEvent {
    fn summary(&self, _stream: &StreamId) -> String {
        match self {
            Self::SafeModeTurnedOff(e) => format!("safe mode turned off by {}: {}", e.by, e.reason),
            Self::SafeModeTurnedOn(e) => format!("safe mode turned on by {}: {}", e.by, e.reason),
        }
    }
}

/// Commands on the system settings.
#[derive(Debug, Clone, PartialEq)]
pub enum SystemSettingsCommand {
    TurnSafeModeOff { reason: Reason },
    TurnSafeModeOn { reason: Reason },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemSettingsError {
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
}

/// Who last switched safe mode, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    pub by: String,
    pub reason: Reason,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The settings as they stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemSettingsState {
    pub safe_mode: bool,
    /// The latest switch of safe mode; `None` in a fresh install.
    pub safe_mode_switch: Option<Switch>,
}

impl Default for SystemSettingsState {
    /// A fresh install: safe mode on.
    fn default() -> Self {
        Self {
            safe_mode: true,
            safe_mode_switch: None,
        }
    }
}

/// Safe mode refuses a run: since when and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "safe mode is on {}({reason}): no job may start until a super-admin turns it off with a reason",
    since.map(|t| format!("since {t} ")).unwrap_or_default()
)]
pub struct SafeModeOn {
    /// `None`: since the install.
    pub since: Option<OffsetDateTime>,
    pub reason: String,
}

/// May a job start now? Every run start asks this first.
pub fn require_runs_allowed(state: &SystemSettingsState) -> Result<(), SafeModeOn> {
    if !state.safe_mode {
        return Ok(());
    }
    Err(match &state.safe_mode_switch {
        Some(switch) => SafeModeOn {
            since: Some(switch.at),
            reason: format!("turned on by {}: {}", switch.by, switch.reason),
        },
        None => SafeModeOn {
            since: None,
            reason: "a fresh install starts in safe mode".into(),
        },
    })
}

pub struct SystemSettings;

inventory::submit! { crate::replay::Replayer::of::<SystemSettings>() }

impl Decider for SystemSettings {
    const SNAPSHOT_KIND: &'static str = "system_settings/1";
    type State = SystemSettingsState;
    type Command = SystemSettingsCommand;
    type Event = SystemSettingsEvent;
    type Error = SystemSettingsError;

    fn evolve(_state: SystemSettingsState, event: &SystemSettingsEvent) -> SystemSettingsState {
        let (safe_mode, by, reason, at) = match event {
            SystemSettingsEvent::SafeModeTurnedOff(e) => (false, &e.by, &e.reason, e.at),
            SystemSettingsEvent::SafeModeTurnedOn(e) => (true, &e.by, &e.reason, e.at),
        };
        SystemSettingsState {
            safe_mode,
            safe_mode_switch: Some(Switch {
                by: by.clone(),
                reason: reason.clone(),
                at,
            }),
        }
    }

    fn decide(
        state: &SystemSettingsState,
        command: SystemSettingsCommand,
        ctx: &Context,
    ) -> Result<Vec<SystemSettingsEvent>, SystemSettingsError> {
        let by = ctx.actor.name();
        let at = ctx.now;
        match command {
            SystemSettingsCommand::TurnSafeModeOff { reason } => {
                if !ctx.actor.has(Role::SuperAdmin) {
                    return Err(SystemSettingsError::Forbidden(
                        "only a super-admin turns safe mode off",
                    ));
                }
                if !state.safe_mode {
                    return Ok(vec![]);
                }
                Ok(vec![SystemSettingsEvent::SafeModeTurnedOff(
                    SafeModeTurnedOff { by, reason, at },
                )])
            }
            SystemSettingsCommand::TurnSafeModeOn { reason } => {
                if !ctx.actor.is_admin() {
                    return Err(SystemSettingsError::Forbidden(
                        "only an admin or a super-admin turns safe mode on",
                    ));
                }
                if state.safe_mode {
                    return Ok(vec![]);
                }
                Ok(vec![SystemSettingsEvent::SafeModeTurnedOn(
                    SafeModeTurnedOn { by, reason, at },
                )])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use time::Duration;
    use uuid::Uuid;

    use super::*;
    use crate::decider::Actor;
    use crate::registry::Summary;
    use crate::spec::Spec;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn as_role(role: Role) -> Context {
        Context::new(
            now(),
            Actor::Account {
                account_id: Uuid::nil(),
                username: "root".into(),
                roles: BTreeSet::from([role]),
            },
        )
    }

    fn reason(s: &str) -> Reason {
        Reason::parse(s).unwrap()
    }

    fn turned_off() -> SystemSettingsEvent {
        SystemSettingsEvent::SafeModeTurnedOff(SafeModeTurnedOff {
            by: "root".into(),
            reason: reason("set up and checked"),
            at: now(),
        })
    }

    fn turned_on() -> SystemSettingsEvent {
        SystemSettingsEvent::SafeModeTurnedOn(SafeModeTurnedOn {
            by: "root".into(),
            reason: reason("complaint from a site owner"),
            at: now(),
        })
    }

    fn off() -> SystemSettingsCommand {
        SystemSettingsCommand::TurnSafeModeOff {
            reason: reason("set up and checked"),
        }
    }

    fn on() -> SystemSettingsCommand {
        SystemSettingsCommand::TurnSafeModeOn {
            reason: reason("complaint from a site owner"),
        }
    }

    #[test]
    fn a_fresh_install_is_in_safe_mode_and_refuses_runs_saying_so() {
        let err = require_runs_allowed(&SystemSettings::fold(&[])).unwrap_err();
        assert_eq!(err.since, None);
        assert_eq!(
            err.to_string(),
            "safe mode is on (a fresh install starts in safe mode): no job may start until a super-admin turns it off with a reason"
        );
        assert_eq!(stream().unwrap().as_str(), "system-settings");
    }

    #[test]
    fn a_super_admin_turns_safe_mode_off_with_a_reason_and_runs_may_start() {
        let state = Spec::<SystemSettings>::given([])
            .in_context(as_role(Role::SuperAdmin))
            .when(off())
            .then([turned_off()]);
        assert_eq!(require_runs_allowed(&state), Ok(()));
    }

    #[test]
    fn nobody_but_a_super_admin_turns_safe_mode_off() {
        for role in [Role::User, Role::Auditor, Role::Admin] {
            Spec::<SystemSettings>::given([])
                .in_context(as_role(role))
                .when(off())
                .then_err(|e| matches!(e, SystemSettingsError::Forbidden(_)));
        }
    }

    #[test]
    fn an_admin_or_a_super_admin_turns_safe_mode_back_on_and_runs_stop() {
        for role in [Role::Admin, Role::SuperAdmin] {
            let state = Spec::<SystemSettings>::given([turned_off()])
                .in_context(as_role(role))
                .when(on())
                .then([turned_on()]);
            let err = require_runs_allowed(&state).unwrap_err();
            assert_eq!(err.since, Some(now()));
            assert!(
                err.to_string()
                    .contains("turned on by root: complaint from a site owner"),
                "{err}"
            );
        }
        for role in [Role::User, Role::Auditor] {
            Spec::<SystemSettings>::given([turned_off()])
                .in_context(as_role(role))
                .when(on())
                .then_err(|e| matches!(e, SystemSettingsError::Forbidden(_)));
        }
    }

    #[test]
    fn switching_safe_mode_to_where_it_already_is_records_nothing() {
        Spec::<SystemSettings>::given([])
            .in_context(as_role(Role::SuperAdmin))
            .when(on())
            .then([]);
        Spec::<SystemSettings>::given([turned_off(), turned_on()])
            .in_context(as_role(Role::Admin))
            .when(on())
            .then([]);
        Spec::<SystemSettings>::given([turned_off()])
            .in_context(as_role(Role::SuperAdmin))
            .when(off())
            .then([]);
    }

    #[test]
    fn summaries_say_who_switched_safe_mode_and_why() {
        let stream = stream().unwrap();
        assert_eq!(
            turned_off().summary(&stream),
            "safe mode turned off by root: set up and checked"
        );
        assert_eq!(
            turned_on().summary(&stream),
            "safe mode turned on by root: complaint from a site owner"
        );
    }
}

//! A runner: a process on some machine that drives browsers for jobs.
//! Stream `runner-<id>`.
//!
//! Every change of a runner's standing is an event (registered, offline,
//! draining, deregistered); heartbeats are not, the runner view folds them.
//! The gateway authenticates a runner's key (see [`crate::runner_key`])
//! before any command here; these commands come from the gateway acting
//! for the runner (the system) or from an admin.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::{Actor, Context, Decider};
use crate::envelope::{StreamId, StreamIdError};
use crate::reason::Reason;
use crate::runner_key::RunnerKeyId;

/// Most browsers one runner may run at once.
pub const MAX_RUNNER_INSTANCES: u32 = 512;
/// Most labels a runner may carry.
pub const MAX_LABELS: usize = 16;
/// Longest label key, runner name or browser version, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE_CHARS: usize = 128;

/// A runner's id, chosen by the runner on its first start and kept, so a
/// reconnecting runner is the same runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunnerId(pub Uuid);

impl fmt::Display for RunnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl RunnerId {
    /// The runner's stream: `runner-<id>`.
    pub fn stream(self) -> Result<StreamId, StreamIdError> {
        StreamId::for_aggregate("runner", self)
    }
}

/// An operating system a runner runs on, or a device profile asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(
    feature = "graphql",
    derive(async_graphql::Enum),
    graphql(name = "PlatformOs")
)]
#[serde(rename_all = "snake_case")]
pub enum Os {
    Linux,
    Windows,
    Macos,
    Android,
    Ios,
}

/// A browser a runner drives, or a device profile asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(
    feature = "graphql",
    derive(async_graphql::Enum),
    graphql(name = "PlatformBrowser")
)]
#[serde(rename_all = "snake_case")]
pub enum Browser {
    Chromium,
    Chrome,
    Edge,
}

/// An OS and browser pair: what a runner serves and a device profile needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(
    feature = "graphql",
    derive(async_graphql::SimpleObject, async_graphql::InputObject),
    graphql(input_name = "PlatformInput")
)]
pub struct Platform {
    pub os: Os,
    pub browser: Browser,
}

impl Platform {
    /// Every OS and browser pair there is.
    pub fn all() -> impl Iterator<Item = Platform> {
        const OSES: [Os; 5] = [Os::Linux, Os::Windows, Os::Macos, Os::Android, Os::Ios];
        const BROWSERS: [Browser; 3] = [Browser::Chromium, Browser::Chrome, Browser::Edge];
        OSES.into_iter().flat_map(|os| {
            BROWSERS
                .into_iter()
                .map(move |browser| Platform { os, browser })
        })
    }

    /// May a runner on this platform run flows for a device profile of
    /// `wanted`? The one place the matching rule lives.
    ///
    /// A desktop profile needs its own OS and browser: what the OS shows a
    /// site (fonts, platform strings, GPU) cannot be emulated well. A phone
    /// or tablet profile (Android, iOS) is what every Chromium-family
    /// browser emulates (viewport, touch, user agent), so any runner
    /// driving Chromium or Chrome serves it, on whatever OS it runs.
    pub fn serves(self, wanted: Platform) -> bool {
        if self == wanted {
            return true;
        }
        let mobile = matches!(wanted.os, Os::Android | Os::Ios);
        let emulates = matches!(self.browser, Browser::Chromium | Browser::Chrome)
            && !matches!(self.os, Os::Android | Os::Ios);
        mobile && emulates && matches!(wanted.browser, Browser::Chromium | Browser::Chrome)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} on {:?}", self.browser, self.os)
    }
}

/// What a runner says it can do when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub platform: Platform,
    pub browser_version: String,
    /// Browsers it runs at once.
    pub max_instances: u32,
    /// Free-form placement labels, e.g. `region = eu-west`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Capabilities a runner may not claim: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct BadCapabilities {
    pub field: String,
    pub why: String,
}

fn bad(field: impl Into<String>, why: impl Into<String>) -> BadCapabilities {
    BadCapabilities {
        field: field.into(),
        why: why.into(),
    }
}

/// A short printable name: 1 to `max` characters, no control characters.
fn check_text(field: &str, value: &str, max: usize) -> Result<(), BadCapabilities> {
    let len = value.chars().count();
    if value.trim().is_empty() {
        Err(bad(field, "is empty"))
    } else if len > max {
        Err(bad(field, format!("is {len} characters; keep it to {max}")))
    } else if value.chars().any(char::is_control) {
        Err(bad(field, "holds a control character"))
    } else {
        Ok(())
    }
}

impl Capabilities {
    /// Are these capabilities something a runner may claim?
    pub fn check(&self) -> Result<(), BadCapabilities> {
        check_text("browser_version", &self.browser_version, MAX_NAME_CHARS)?;
        if !(1..=MAX_RUNNER_INSTANCES).contains(&self.max_instances) {
            return Err(bad(
                "max_instances",
                format!(
                    "is {}; give 1 to {MAX_RUNNER_INSTANCES}",
                    self.max_instances
                ),
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(bad(
                "labels",
                format!("{} given; at most {MAX_LABELS}", self.labels.len()),
            ));
        }
        for (key, value) in &self.labels {
            let key_ok = !key.is_empty()
                && key.len() <= MAX_NAME_CHARS
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !key_ok {
                return Err(bad(
                    format!("labels.{key}"),
                    format!("a label key is 1 to {MAX_NAME_CHARS} of a-z, 0-9, '-', '_', '.'"),
                ));
            }
            check_text(&format!("labels.{key}"), value, MAX_LABEL_VALUE_CHARS)?;
        }
        Ok(())
    }
}

/// Why a runner went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineReason {
    /// Its connection closed.
    Disconnected,
    /// It stopped sending heartbeats.
    Silent,
}

impl fmt::Display for OfflineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OfflineReason::Disconnected => "its connection closed",
            OfflineReason::Silent => "it stopped sending heartbeats",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRegistered {
    /// The key it authenticated with.
    pub key: RunnerKeyId,
    pub name: String,
    pub capabilities: Capabilities,
    /// The protocol version agreed on the connection.
    pub protocol: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerWentOffline {
    pub reason: OfflineReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerDeregistered {
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainRequested {
    pub by: String,
}

crate::event_set! {
    /// What happens to a runner.
    pub enum RunnerEvent {
        RunnerRegistered(RunnerRegistered) = 1,
        RunnerWentOffline(RunnerWentOffline) = 1,
        RunnerDeregistered(RunnerDeregistered) = 1,
        DrainRequested(DrainRequested) = 1,
    }
}

impl crate::registry::Summary for RunnerEvent {
    fn summary(&self, stream: &StreamId) -> String {
        match self {
            Self::RunnerRegistered(r) => format!(
                "{} registered as {stream}: {} {} with {} instances (protocol {})",
                r.name,
                r.capabilities.platform,
                r.capabilities.browser_version,
                r.capabilities.max_instances,
                r.protocol
            ),
            Self::RunnerWentOffline(o) => format!("{stream} went offline: {}", o.reason),
            Self::RunnerDeregistered(d) => match &d.reason {
                Some(reason) => format!("{stream} deregistered by {}: {reason}", d.by),
                None => format!("{stream} deregistered by {}", d.by),
            },
            Self::DrainRequested(d) => format!("drain of {stream} requested by {}", d.by),
        }
    }
}

/// Commands on a runner.
#[derive(Debug, Clone, PartialEq)]
pub enum RunnerCommand {
    /// The runner connected, authenticated with `key` and said what it can do.
    Register {
        key: RunnerKeyId,
        name: String,
        capabilities: Capabilities,
        protocol: u16,
    },
    GoOffline {
        reason: OfflineReason,
    },
    /// Finish what it holds, take nothing new.
    RequestDrain,
    /// Gone for good (until it registers again).
    Deregister {
        reason: Option<Reason>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("the runner's capabilities are refused: {0}")]
    BadCapabilities(#[from] BadCapabilities),
    #[error("this runner is not registered")]
    NotRegistered,
}

/// Why a runner may take no lease now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoLeases {
    #[error("the runner is not registered; register first")]
    NotRegistered,
    #[error("the runner is offline")]
    Offline,
    #[error("the runner is draining: it finishes what it holds and takes nothing new")]
    Draining,
}

/// A runner's standing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerState {
    /// The latest registration; kept after deregistration, for the record.
    pub registration: Option<RunnerRegistered>,
    pub online: bool,
    pub draining: bool,
    pub deregistered: bool,
}

impl RunnerState {
    /// May the runner take new leases now?
    pub fn may_lease(&self) -> Result<&RunnerRegistered, NoLeases> {
        let registration = match &self.registration {
            Some(r) if !self.deregistered => r,
            _ => return Err(NoLeases::NotRegistered),
        };
        if !self.online {
            Err(NoLeases::Offline)
        } else if self.draining {
            Err(NoLeases::Draining)
        } else {
            Ok(registration)
        }
    }
}

pub struct Runner;

inventory::submit! { crate::replay::Replayer::of::<Runner>() }

impl Decider for Runner {
    const SNAPSHOT_KIND: &'static str = "runner/1";
    type State = RunnerState;
    type Command = RunnerCommand;
    type Event = RunnerEvent;
    type Error = RunnerError;

    fn evolve(mut state: RunnerState, event: &RunnerEvent) -> RunnerState {
        match event {
            RunnerEvent::RunnerRegistered(e) => {
                // A registration after the runner was gone is a fresh
                // process: an old drain does not follow it.
                if !state.online || state.deregistered {
                    state.draining = false;
                }
                state.registration = Some(e.clone());
                state.online = true;
                state.deregistered = false;
            }
            RunnerEvent::RunnerWentOffline(_) => state.online = false,
            RunnerEvent::DrainRequested(_) => state.draining = true,
            RunnerEvent::RunnerDeregistered(_) => {
                state.online = false;
                state.deregistered = true;
            }
        }
        state
    }

    fn decide(
        state: &RunnerState,
        command: RunnerCommand,
        ctx: &Context,
    ) -> Result<Vec<RunnerEvent>, RunnerError> {
        match command {
            RunnerCommand::Register {
                key,
                name,
                capabilities,
                protocol,
            } => {
                if ctx.actor != Actor::System {
                    return Err(RunnerError::Forbidden(
                        "a runner registers itself, through its authenticated connection",
                    ));
                }
                check_text("name", &name, MAX_NAME_CHARS)?;
                capabilities.check()?;
                let registered = RunnerRegistered {
                    key,
                    name,
                    capabilities,
                    protocol,
                };
                // A runner reconnecting to a restarted gateway says the
                // same again: nothing changed, nothing to record.
                let same = state.online
                    && !state.deregistered
                    && state.registration.as_ref() == Some(&registered);
                Ok(if same {
                    vec![]
                } else {
                    vec![RunnerEvent::RunnerRegistered(registered)]
                })
            }
            RunnerCommand::GoOffline { reason } => {
                if ctx.actor != Actor::System {
                    return Err(RunnerError::Forbidden(
                        "only the gateway records that a runner went offline",
                    ));
                }
                Ok(if state.online {
                    vec![RunnerEvent::RunnerWentOffline(RunnerWentOffline { reason })]
                } else {
                    vec![]
                })
            }
            RunnerCommand::RequestDrain => {
                if !ctx.actor.is_admin() {
                    return Err(RunnerError::Forbidden(
                        "a runner is drained by itself (through the gateway) or by an admin",
                    ));
                }
                if state.registration.is_none() || state.deregistered {
                    return Err(RunnerError::NotRegistered);
                }
                Ok(if state.draining {
                    vec![]
                } else {
                    vec![RunnerEvent::DrainRequested(DrainRequested {
                        by: ctx.actor.name(),
                    })]
                })
            }
            RunnerCommand::Deregister { reason } => {
                if !ctx.actor.is_admin() {
                    return Err(RunnerError::Forbidden(
                        "a runner is deregistered by itself (through the gateway) or by an admin",
                    ));
                }
                if state.registration.is_none() {
                    return Err(RunnerError::NotRegistered);
                }
                Ok(if state.deregistered {
                    vec![]
                } else {
                    vec![RunnerEvent::RunnerDeregistered(RunnerDeregistered {
                        by: ctx.actor.name(),
                        reason,
                    })]
                })
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {

    use time::OffsetDateTime;

    use super::*;
    use crate::decider::Role;
    use crate::registry::Summary;
    use crate::spec::{Spec, acting_as};

    pub(crate) fn linux_chromium() -> Platform {
        Platform {
            os: Os::Linux,
            browser: Browser::Chromium,
        }
    }

    fn capabilities() -> Capabilities {
        Capabilities {
            platform: linux_chromium(),
            browser_version: "126.0.6478.126".into(),
            max_instances: 8,
            labels: BTreeMap::from([("region".into(), "eu-west".into())]),
        }
    }

    fn key() -> RunnerKeyId {
        RunnerKeyId(Uuid::from_u128(7))
    }

    fn register() -> RunnerCommand {
        RunnerCommand::Register {
            key: key(),
            name: "rack-1".into(),
            capabilities: capabilities(),
            protocol: 1,
        }
    }

    fn registered() -> RunnerEvent {
        RunnerEvent::RunnerRegistered(RunnerRegistered {
            key: key(),
            name: "rack-1".into(),
            capabilities: capabilities(),
            protocol: 1,
        })
    }

    fn offline() -> RunnerEvent {
        RunnerEvent::RunnerWentOffline(RunnerWentOffline {
            reason: OfflineReason::Silent,
        })
    }

    fn drain_by(by: &str) -> RunnerEvent {
        RunnerEvent::DrainRequested(DrainRequested { by: by.into() })
    }

    fn as_role(role: Role) -> Context {
        acting_as("root", role, OffsetDateTime::UNIX_EPOCH)
    }

    #[test]
    fn a_runner_registers_and_may_lease() {
        let state = Spec::<Runner>::given([])
            .when(register())
            .then([registered()]);
        assert_eq!(state.may_lease().unwrap().capabilities.max_instances, 8);
    }

    #[test]
    fn registering_again_unchanged_records_nothing_but_a_change_or_a_return_does() {
        Spec::<Runner>::given([registered()])
            .when(register())
            .then([]);
        Spec::<Runner>::given([registered(), offline()])
            .when(register())
            .then([registered()]);
        let mut bigger = capabilities();
        bigger.max_instances = 16;
        let RunnerEvent::RunnerRegistered(mut e) = registered() else {
            unreachable!()
        };
        e.capabilities = bigger.clone();
        Spec::<Runner>::given([registered()])
            .when(RunnerCommand::Register {
                key: key(),
                name: "rack-1".into(),
                capabilities: bigger,
                protocol: 1,
            })
            .then([RunnerEvent::RunnerRegistered(e)]);
    }

    #[test]
    fn only_the_gateway_registers_a_runner_or_marks_it_offline() {
        Spec::<Runner>::given([])
            .in_context(as_role(Role::Admin))
            .when(register())
            .then_err(|e| matches!(e, RunnerError::Forbidden(_)));
        Spec::<Runner>::given([registered()])
            .in_context(as_role(Role::SuperAdmin))
            .when(RunnerCommand::GoOffline {
                reason: OfflineReason::Disconnected,
            })
            .then_err(|e| matches!(e, RunnerError::Forbidden(_)));
    }

    #[test]
    fn bad_capabilities_are_refused_naming_the_field() {
        let refused = |caps: Capabilities, field: &str| {
            let field = field.to_owned();
            Spec::<Runner>::given([])
                .when(RunnerCommand::Register {
                    key: key(),
                    name: "rack-1".into(),
                    capabilities: caps,
                    protocol: 1,
                })
                .then_err(
                    move |e| matches!(e, RunnerError::BadCapabilities(b) if b.field == field),
                );
        };
        let mut c = capabilities();
        c.max_instances = 0;
        refused(c, "max_instances");
        let mut c = capabilities();
        c.browser_version = "x".repeat(65);
        refused(c, "browser_version");
        let mut c = capabilities();
        c.labels.insert("Bad Key".into(), "v".into());
        refused(c, "labels.Bad Key");
        let mut c = capabilities();
        c.labels.insert("zone".into(), "a\nb".into());
        refused(c, "labels.zone");
        let mut c = capabilities();
        c.labels = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        refused(c, "labels");
    }

    #[test]
    fn going_offline_is_recorded_once_and_stops_leasing() {
        let state = Spec::<Runner>::given([registered()])
            .when(RunnerCommand::GoOffline {
                reason: OfflineReason::Silent,
            })
            .then([offline()]);
        assert_eq!(state.may_lease().unwrap_err(), NoLeases::Offline);
        Spec::<Runner>::given([registered(), offline()])
            .when(RunnerCommand::GoOffline {
                reason: OfflineReason::Disconnected,
            })
            .then([]);
    }

    #[test]
    fn a_drained_runner_takes_no_lease_until_it_comes_back_as_a_fresh_process() {
        let state = Spec::<Runner>::given([registered()])
            .in_context(as_role(Role::Admin))
            .when(RunnerCommand::RequestDrain)
            .then([drain_by("root")]);
        assert_eq!(state.may_lease().unwrap_err(), NoLeases::Draining);
        // The same process reconnecting (a gateway restart) stays drained.
        let state = Runner::fold(&[registered(), drain_by("system"), registered()]);
        assert_eq!(state.may_lease().unwrap_err(), NoLeases::Draining);
        // Back after going offline: a fresh process, not drained.
        let state = Runner::fold(&[registered(), drain_by("system"), offline(), registered()]);
        assert!(state.may_lease().is_ok());
        Spec::<Runner>::given([registered(), drain_by("system")])
            .when(RunnerCommand::RequestDrain)
            .then([]);
        Spec::<Runner>::given([registered()])
            .in_context(as_role(Role::User))
            .when(RunnerCommand::RequestDrain)
            .then_err(|e| matches!(e, RunnerError::Forbidden(_)));
    }

    #[test]
    fn deregistering_ends_leasing_and_is_recorded_once() {
        let dereg = RunnerCommand::Deregister { reason: None };
        Spec::<Runner>::given([])
            .when(dereg.clone())
            .then_err(|e| *e == RunnerError::NotRegistered);
        let state = Spec::<Runner>::given([registered()])
            .when(dereg.clone())
            .then([RunnerEvent::RunnerDeregistered(RunnerDeregistered {
                by: "system".into(),
                reason: None,
            })]);
        assert_eq!(state.may_lease().unwrap_err(), NoLeases::NotRegistered);
        let again = Runner::fold(&[
            registered(),
            RunnerEvent::RunnerDeregistered(RunnerDeregistered {
                by: "root".into(),
                reason: None,
            }),
        ]);
        let outcome = Runner::decide(
            &again,
            dereg,
            &Context::new(OffsetDateTime::UNIX_EPOCH, Actor::System),
        );
        assert_eq!(outcome, Ok(vec![]));
        Spec::<Runner>::given([registered()])
            .when(RunnerCommand::RequestDrain)
            .then([drain_by("system")]);
    }

    #[test]
    fn summaries_say_what_the_runner_is_and_who_acted() {
        let id = RunnerId(Uuid::nil());
        let stream = id.stream().unwrap();
        assert_eq!(
            stream.as_str(),
            "runner-00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            registered().summary(&stream),
            format!(
                "rack-1 registered as {stream}: Chromium on Linux 126.0.6478.126 with 8 instances (protocol 1)"
            )
        );
        assert_eq!(
            offline().summary(&stream),
            format!("{stream} went offline: it stopped sending heartbeats")
        );
        assert_eq!(
            drain_by("root").summary(&stream),
            format!("drain of {stream} requested by root")
        );
    }

    #[test]
    fn platforms_serve_only_their_own_kind() {
        let windows = Platform {
            os: Os::Windows,
            browser: Browser::Chrome,
        };
        assert!(linux_chromium().serves(linux_chromium()));
        assert!(!linux_chromium().serves(windows));
        assert!(!windows.serves(linux_chromium()));
    }

    #[test]
    fn chromium_runners_emulate_phones_but_not_other_desktops() {
        let on = |os, browser| Platform { os, browser };
        let android_chrome = on(Os::Android, Browser::Chrome);
        let iphone = on(Os::Ios, Browser::Chrome);
        assert!(linux_chromium().serves(android_chrome));
        assert!(on(Os::Windows, Browser::Chrome).serves(iphone));
        assert!(!on(Os::Windows, Browser::Edge).serves(android_chrome));
        assert!(!linux_chromium().serves(on(Os::Macos, Browser::Chromium)));
        assert!(!linux_chromium().serves(on(Os::Android, Browser::Edge)));
        let served: Vec<Platform> = Platform::all()
            .filter(|&p| linux_chromium().serves(p))
            .collect();
        assert_eq!(
            served,
            [
                linux_chromium(),
                on(Os::Android, Browser::Chromium),
                on(Os::Android, Browser::Chrome),
                on(Os::Ios, Browser::Chromium),
                on(Os::Ios, Browser::Chrome),
            ]
        );
    }
}

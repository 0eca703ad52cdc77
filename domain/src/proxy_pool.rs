//! A proxy pool's health: the proxies of one proxies dataset version, and
//! which of them the gateway disabled because they kept failing. Stream
//! `proxy-pool-<dataset>-v<version>`.
//!
//! A circuit breaker per proxy, fed by what runners report. Each failover
//! away from a proxy is a failure; [`FAILURES_TO_DISABLE`] failures within
//! [`FAILURE_WINDOW`], from any runners and jobs, disable it. After a
//! cool-down (one minute, doubling with each disable since it last worked,
//! at most half an hour) it is re-enabled *on trial*: runners may pick it
//! again, the first flow that succeeds through it restores it, and a single
//! failure disables it again. Re-testing with real flows, rather than a
//! probe from the gateway, tests the path runners use (a proxy may admit
//! only the runners' addresses, or sit on their network), and keeps the
//! gateway from connecting to addresses users choose.
//!
//! Pure. The gateway reads reports and the clock and issues the commands.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::decider::{Actor, Context, Decider};
use crate::envelope::{StreamId, StreamIdError};
use crate::flow::ProxyIndex;
use crate::job::{DatasetVersionRef, JobId};
use crate::runner::RunnerId;

/// Failures within [`FAILURE_WINDOW`] that disable a proxy.
pub const FAILURES_TO_DISABLE: u32 = 3;
/// The window failures are counted in.
pub const FAILURE_WINDOW: Duration = Duration::minutes(2);
/// How long a proxy stays disabled the first time.
pub const FIRST_COOL_DOWN: Duration = Duration::minutes(1);
/// The longest cool-down, however often it failed.
pub const MAX_COOL_DOWN: Duration = Duration::minutes(30);

const PREFIX: &str = "proxy-pool-";

/// The pool's stream: `proxy-pool-<dataset>-v<version>`.
pub fn stream(pool: DatasetVersionRef) -> Result<StreamId, StreamIdError> {
    StreamId::parse(format!("{PREFIX}{}-v{}", pool.dataset, pool.version))
}

/// The pool a stream name is of, if it is a pool's stream.
pub fn pool_of(stream: &str) -> Option<DatasetVersionRef> {
    let (dataset, version) = stream.strip_prefix(PREFIX)?.rsplit_once("-v")?;
    Some(DatasetVersionRef {
        dataset: Uuid::parse_str(dataset).ok()?,
        version: version.parse().ok()?,
    })
}

/// One failover away from a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyFailure {
    pub proxy: ProxyIndex,
    /// What the runner saw (one line, cut to 300 characters by the job).
    pub error: String,
}

/// Failures counted towards disabling; those of disabled proxies are not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyFailuresRecorded {
    pub job: JobId,
    pub runner: RunnerId,
    pub failures: Vec<ProxyFailure>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A proxy kept failing: runners pick it no more until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyDisabled {
    pub proxy: ProxyIndex,
    /// Failures that tripped it, within `within_s` seconds (one, on trial).
    pub failures: u32,
    pub within_s: u64,
    pub last_error: String,
    /// It was on trial, and failed again.
    #[serde(default)]
    pub on_trial: bool,
    pub cool_down_s: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// A disabled proxy's cool-down is over: runners may pick it again, on trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyReEnabled {
    pub proxy: ProxyIndex,
    pub cooled_down_s: u64,
}

/// A flow succeeded through a proxy on trial: it is healthy again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyRecovered {
    pub proxy: ProxyIndex,
    pub job: JobId,
    pub runner: RunnerId,
}

crate::event_set! {
    /// What happens to a proxy pool's health.
    pub enum ProxyPoolEvent {
        ProxyFailuresRecorded(ProxyFailuresRecorded) = 1,
        ProxyDisabled(ProxyDisabled) = 1,
        ProxyReEnabled(ProxyReEnabled) = 1,
        ProxyRecovered(ProxyRecovered) = 1,
    }
}

impl crate::registry::Summary for ProxyPoolEvent {
    fn summary(&self, stream: &StreamId) -> String {
        match self {
            Self::ProxyFailuresRecorded(e) => {
                let proxies: BTreeSet<String> =
                    e.failures.iter().map(|f| f.proxy.to_string()).collect();
                format!(
                    "runner {} reported {} proxy failure(s) of {stream} on job {}: {}",
                    e.runner,
                    e.failures.len(),
                    e.job,
                    proxies.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
            Self::ProxyDisabled(e) => {
                let why = if e.on_trial {
                    "it failed again on trial".to_owned()
                } else {
                    format!("{} failures within {} s", e.failures, e.within_s)
                };
                format!(
                    "{} of {stream} disabled: {why} (last: {}); re-enabled on trial after {} s",
                    e.proxy, e.last_error, e.cool_down_s
                )
            }
            Self::ProxyReEnabled(e) => format!(
                "{} of {stream} re-enabled on trial after a {} s cool-down",
                e.proxy, e.cooled_down_s
            ),
            Self::ProxyRecovered(e) => format!(
                "{} of {stream} recovered: a flow of job {} succeeded through it on runner {}",
                e.proxy, e.job, e.runner
            ),
        }
    }
}

/// Commands on a pool's health; the gateway (the system) issues them.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyPoolCommand {
    /// What one accepted batch of a runner's reports said of the pool's
    /// proxies: each failover away from a proxy is a failure, each flow
    /// finished successfully through one a success. `proxies`: the pool's size.
    RecordOutcomes {
        job: JobId,
        runner: RunnerId,
        proxies: u32,
        failures: Vec<ProxyFailure>,
        successes: Vec<ProxyIndex>,
    },
    /// Re-enables, on trial, the proxies whose cool-down is over.
    ReEnableDue,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyPoolError {
    #[error("forbidden: a proxy's health is recorded by the gateway from runners' reports")]
    Forbidden,
    #[error("{proxy} is not in the pool, which has {proxies}")]
    UnknownProxy { proxy: ProxyIndex, proxies: u32 },
}

/// Where a proxy stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ProxyStatus {
    #[default]
    Healthy,
    /// Picked by no new flow until `until`.
    Disabled {
        until: OffsetDateTime,
        cool_down_s: u64,
    },
    /// Usable again; the next outcome through it decides.
    Trial,
}

impl ProxyStatus {
    /// The status's name, as views store it.
    pub fn name(self) -> &'static str {
        match self {
            ProxyStatus::Healthy => "healthy",
            ProxyStatus::Disabled { .. } => "disabled",
            ProxyStatus::Trial => "trial",
        }
    }
}

impl fmt::Display for ProxyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One proxy's health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyHealth {
    pub status: ProxyStatus,
    /// The latest failures since it was last disabled or recovered, at
    /// most [`FAILURES_TO_DISABLE`], oldest first.
    pub recent_failures: Vec<OffsetDateTime>,
    /// Times disabled since it last worked: each doubles the cool-down.
    pub strikes: u32,
}

/// The pool's proxies that have any history; the others are healthy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyPoolState {
    pub proxies: BTreeMap<ProxyIndex, ProxyHealth>,
}

impl ProxyPoolState {
    pub fn status(&self, proxy: ProxyIndex) -> ProxyStatus {
        self.proxies
            .get(&proxy)
            .map(|h| h.status)
            .unwrap_or_default()
    }

    /// The proxies runners must not pick now.
    pub fn disabled(&self) -> BTreeSet<ProxyIndex> {
        self.proxies
            .iter()
            .filter(|(_, h)| matches!(h.status, ProxyStatus::Disabled { .. }))
            .map(|(&p, _)| p)
            .collect()
    }
}

/// The cool-down after `strikes` earlier disables without a recovery.
pub fn cool_down(strikes: u32) -> Duration {
    let factor = 1i32.checked_shl(strikes.min(16)).unwrap_or(i32::MAX);
    (FIRST_COOL_DOWN * factor).min(MAX_COOL_DOWN)
}

pub struct ProxyPool;

inventory::submit! { crate::replay::Replayer::of::<ProxyPool>() }

impl Decider for ProxyPool {
    const SNAPSHOT_KIND: &'static str = "proxy_pool/1";
    type State = ProxyPoolState;
    type Command = ProxyPoolCommand;
    type Event = ProxyPoolEvent;
    type Error = ProxyPoolError;

    fn evolve(mut state: ProxyPoolState, event: &ProxyPoolEvent) -> ProxyPoolState {
        match event {
            ProxyPoolEvent::ProxyFailuresRecorded(e) => {
                for f in &e.failures {
                    let h = state.proxies.entry(f.proxy).or_default();
                    h.recent_failures.push(e.at);
                    let keep = FAILURES_TO_DISABLE as usize;
                    if h.recent_failures.len() > keep {
                        h.recent_failures.drain(..h.recent_failures.len() - keep);
                    }
                }
            }
            ProxyPoolEvent::ProxyDisabled(e) => {
                let h = state.proxies.entry(e.proxy).or_default();
                h.status = ProxyStatus::Disabled {
                    until: e.until,
                    cool_down_s: e.cool_down_s,
                };
                h.recent_failures.clear();
                h.strikes += 1;
            }
            ProxyPoolEvent::ProxyReEnabled(e) => {
                state.proxies.entry(e.proxy).or_default().status = ProxyStatus::Trial;
            }
            ProxyPoolEvent::ProxyRecovered(e) => {
                state.proxies.insert(e.proxy, ProxyHealth::default());
            }
        }
        state
    }

    fn decide(
        state: &ProxyPoolState,
        command: ProxyPoolCommand,
        ctx: &Context,
    ) -> Result<Vec<ProxyPoolEvent>, ProxyPoolError> {
        if ctx.actor != Actor::System {
            return Err(ProxyPoolError::Forbidden);
        }
        match command {
            ProxyPoolCommand::RecordOutcomes {
                job,
                runner,
                proxies,
                failures,
                successes,
            } => record_outcomes(state, ctx.now, job, runner, proxies, failures, successes),
            ProxyPoolCommand::ReEnableDue => Ok(state
                .proxies
                .iter()
                .filter_map(|(&proxy, h)| match h.status {
                    ProxyStatus::Disabled { until, cool_down_s } if until <= ctx.now => {
                        Some(ProxyPoolEvent::ProxyReEnabled(ProxyReEnabled {
                            proxy,
                            cooled_down_s: cool_down_s,
                        }))
                    }
                    _ => None,
                })
                .collect()),
        }
    }
}

fn record_outcomes(
    state: &ProxyPoolState,
    now: OffsetDateTime,
    job: JobId,
    runner: RunnerId,
    proxies: u32,
    failures: Vec<ProxyFailure>,
    successes: Vec<ProxyIndex>,
) -> Result<Vec<ProxyPoolEvent>, ProxyPoolError> {
    let known = |proxy: ProxyIndex| {
        if proxy.0 < proxies {
            Ok(())
        } else {
            Err(ProxyPoolError::UnknownProxy { proxy, proxies })
        }
    };
    for f in &failures {
        known(f.proxy)?;
    }
    for &s in &successes {
        known(s)?;
    }
    let since = now - FAILURE_WINDOW;
    // Per proxy: failures counted in the window, and the last error.
    let mut counted: BTreeMap<ProxyIndex, (u32, String)> = BTreeMap::new();
    let mut recorded = Vec::new();
    let mut tripped: BTreeSet<ProxyIndex> = BTreeSet::new();
    for f in failures {
        let h = state.proxies.get(&f.proxy).cloned().unwrap_or_default();
        // Flows that picked it before runners heard it was disabled.
        if matches!(h.status, ProxyStatus::Disabled { .. }) || tripped.contains(&f.proxy) {
            continue;
        }
        let (count, last) = counted.entry(f.proxy).or_insert_with(|| {
            let earlier = h.recent_failures.iter().filter(|&&t| t > since).count();
            (earlier as u32, String::new())
        });
        *count += 1;
        last.clone_from(&f.error);
        if h.status == ProxyStatus::Trial || *count >= FAILURES_TO_DISABLE {
            tripped.insert(f.proxy);
        }
        recorded.push(f);
    }
    let mut events = Vec::new();
    if !recorded.is_empty() {
        events.push(ProxyPoolEvent::ProxyFailuresRecorded(
            ProxyFailuresRecorded {
                job,
                runner,
                failures: recorded,
                at: now,
            },
        ));
    }
    for proxy in &tripped {
        let h = state.proxies.get(proxy).cloned().unwrap_or_default();
        let (failures, last_error) = counted.remove(proxy).unwrap_or_default();
        let wait = cool_down(h.strikes);
        events.push(ProxyPoolEvent::ProxyDisabled(ProxyDisabled {
            proxy: *proxy,
            failures,
            within_s: FAILURE_WINDOW.whole_seconds() as u64,
            last_error,
            on_trial: h.status == ProxyStatus::Trial,
            cool_down_s: wait.whole_seconds() as u64,
            until: now + wait,
        }));
    }
    let recovered: BTreeSet<ProxyIndex> = successes
        .into_iter()
        .filter(|p| state.status(*p) == ProxyStatus::Trial && !counted.contains_key(p))
        .filter(|p| !tripped.contains(p))
        .collect();
    for proxy in recovered {
        events.push(ProxyPoolEvent::ProxyRecovered(ProxyRecovered {
            proxy,
            job,
            runner,
        }));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Summary;
    use crate::spec::Spec;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn at(seconds: i64) -> Context {
        Context::new(now() + Duration::seconds(seconds), Actor::System)
    }

    fn job() -> JobId {
        JobId(Uuid::from_u128(4))
    }

    fn runner(n: u128) -> RunnerId {
        RunnerId(Uuid::from_u128(n))
    }

    fn failure(proxy: u32, error: &str) -> ProxyFailure {
        ProxyFailure {
            proxy: ProxyIndex(proxy),
            error: error.into(),
        }
    }

    fn outcomes(from: u128, failures: &[u32], successes: &[u32]) -> ProxyPoolCommand {
        ProxyPoolCommand::RecordOutcomes {
            job: job(),
            runner: runner(from),
            proxies: 4,
            failures: failures
                .iter()
                .map(|&p| failure(p, "connect timeout"))
                .collect(),
            successes: successes.iter().map(|&p| ProxyIndex(p)).collect(),
        }
    }

    fn recorded(from: u128, proxies: &[u32], seconds: i64) -> ProxyPoolEvent {
        ProxyPoolEvent::ProxyFailuresRecorded(ProxyFailuresRecorded {
            job: job(),
            runner: runner(from),
            failures: proxies
                .iter()
                .map(|&p| failure(p, "connect timeout"))
                .collect(),
            at: now() + Duration::seconds(seconds),
        })
    }

    fn disabled(proxy: u32, failures: u32, seconds: i64, cool: i64) -> ProxyPoolEvent {
        ProxyPoolEvent::ProxyDisabled(ProxyDisabled {
            proxy: ProxyIndex(proxy),
            failures,
            within_s: 120,
            last_error: "connect timeout".into(),
            on_trial: failures == 1,
            cool_down_s: cool as u64,
            until: now() + Duration::seconds(seconds + cool),
        })
    }

    fn re_enabled(proxy: u32, cool: u64) -> ProxyPoolEvent {
        ProxyPoolEvent::ProxyReEnabled(ProxyReEnabled {
            proxy: ProxyIndex(proxy),
            cooled_down_s: cool,
        })
    }

    fn recovered(proxy: u32, from: u128) -> ProxyPoolEvent {
        ProxyPoolEvent::ProxyRecovered(ProxyRecovered {
            proxy: ProxyIndex(proxy),
            job: job(),
            runner: runner(from),
        })
    }

    #[test]
    fn failures_below_the_limit_are_only_counted() {
        let state = Spec::<ProxyPool>::given([recorded(1, &[2], 0)])
            .in_context(at(10))
            .when(outcomes(2, &[2], &[]))
            .then([recorded(2, &[2], 10)]);
        assert_eq!(state.status(ProxyIndex(2)), ProxyStatus::Healthy);
    }

    #[test]
    fn a_proxy_failing_three_times_within_the_window_across_runners_is_disabled() {
        let state = Spec::<ProxyPool>::given([recorded(1, &[2], 0), recorded(2, &[2], 30)])
            .in_context(at(60))
            .when(outcomes(3, &[2, 1], &[]))
            .then([recorded(3, &[2, 1], 60), disabled(2, 3, 60, 60)]);
        assert_eq!(state.disabled(), BTreeSet::from([ProxyIndex(2)]));
        assert_eq!(state.status(ProxyIndex(1)), ProxyStatus::Healthy);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        Spec::<ProxyPool>::given([recorded(1, &[2], 0), recorded(1, &[2], 10)])
            .in_context(at(130))
            .when(outcomes(1, &[2], &[]))
            .then([recorded(1, &[2], 130)]);
    }

    #[test]
    fn three_failures_in_one_batch_disable_at_once() {
        Spec::<ProxyPool>::given([])
            .in_context(at(0))
            .when(outcomes(1, &[0, 0, 0, 0], &[]))
            .then([recorded(1, &[0, 0, 0], 0), disabled(0, 3, 0, 60)]);
    }

    #[test]
    fn failures_of_a_disabled_proxy_are_not_recorded() {
        Spec::<ProxyPool>::given([disabled(2, 3, 0, 60)])
            .in_context(at(5))
            .when(outcomes(1, &[2], &[2]))
            .then([]);
    }

    #[test]
    fn a_proxy_whose_cool_down_is_over_is_re_enabled_on_trial() {
        let given = [disabled(2, 3, 0, 60), disabled(3, 3, 30, 60)];
        Spec::<ProxyPool>::given(given.clone())
            .in_context(at(59))
            .when(ProxyPoolCommand::ReEnableDue)
            .then([]);
        let state = Spec::<ProxyPool>::given(given)
            .in_context(at(60))
            .when(ProxyPoolCommand::ReEnableDue)
            .then([re_enabled(2, 60)]);
        assert_eq!(state.status(ProxyIndex(2)), ProxyStatus::Trial);
        assert!(state.disabled().contains(&ProxyIndex(3)));
    }

    #[test]
    fn a_success_on_trial_restores_the_proxy_and_its_cool_down() {
        let state = Spec::<ProxyPool>::given([disabled(2, 3, 0, 60), re_enabled(2, 60)])
            .in_context(at(70))
            .when(outcomes(5, &[], &[2, 1, 2]))
            .then([recovered(2, 5)]);
        assert_eq!(state.proxies[&ProxyIndex(2)], ProxyHealth::default());
        // Healthy proxies' successes change nothing.
        Spec::<ProxyPool>::given([])
            .in_context(at(0))
            .when(outcomes(5, &[], &[0, 1]))
            .then([]);
    }

    #[test]
    fn one_failure_on_trial_disables_again_for_twice_as_long() {
        let history = [disabled(2, 3, 0, 60), re_enabled(2, 60)];
        let state = Spec::<ProxyPool>::given(history.clone())
            .in_context(at(70))
            .when(outcomes(1, &[2], &[2]))
            .then([recorded(1, &[2], 70), disabled(2, 1, 70, 120)]);
        assert_eq!(state.proxies[&ProxyIndex(2)].strikes, 2);
        assert_eq!(cool_down(5), Duration::minutes(30));
        assert_eq!(cool_down(40), MAX_COOL_DOWN);
    }

    #[test]
    fn only_the_gateway_records_health_and_only_of_the_pools_proxies() {
        Spec::<ProxyPool>::given([])
            .in_context(crate::spec::acting_as("ada", crate::Role::Admin, now()))
            .when(ProxyPoolCommand::ReEnableDue)
            .then_err(|e| *e == ProxyPoolError::Forbidden);
        Spec::<ProxyPool>::given([])
            .in_context(at(0))
            .when(outcomes(1, &[4], &[]))
            .then_err(|e| e.to_string() == "proxy #4 is not in the pool, which has 4");
    }

    #[test]
    fn a_pool_stream_names_its_dataset_version() {
        let pool = DatasetVersionRef {
            dataset: Uuid::from_u128(9),
            version: 12,
        };
        let s = stream(pool).unwrap();
        assert_eq!(
            s.as_str(),
            "proxy-pool-00000000-0000-0000-0000-000000000009-v12"
        );
        assert_eq!(pool_of(s.as_str()), Some(pool));
        assert_eq!(pool_of("job-00000000-0000-0000-0000-000000000009"), None);
        assert_eq!(
            disabled(2, 3, 0, 60).summary(&s),
            format!(
                "proxy #2 of {s} disabled: 3 failures within 120 s (last: connect timeout); re-enabled on trial after 60 s"
            )
        );
        assert_eq!(
            re_enabled(2, 60).summary(&s),
            format!("proxy #2 of {s} re-enabled on trial after a 60 s cool-down")
        );
    }
}

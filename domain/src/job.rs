//! A job: dataset versions it references, the flows they make (see
//! [`crate::job_plan`]), and those flows' leases to runners. Stream
//! `job-<id>`.
//!
//! READY → RUNNING ⇄ PAUSED → DONE | FAILED | STOPPED. A run starts only by
//! an explicit, guarded command; running a running job is a conflict.
//!
//! A run stays within its consent: it records when its domains' consent
//! ends and leases nothing from then on, and the gateway's consent guard
//! halts it (paused, the reason recorded, every lease taken back) when safe
//! mode goes on or a domain loses its consent. Paused rather than failed,
//! as the reason is usually put right; its owner resumes it, checked as a
//! run is.
//!
//! Built for jobs of 100,000+ flows: a lease hands a runner ranges of flows
//! and a report carries a batch of outcomes, each one event; the state keeps
//! sets of flows as ranges (pool, done, held per runner), counters per job
//! and per domain, and never a record per flow. A flow moves pool → held →
//! done, or back to the pool when its lease is handed back or expires; done
//! is final, so a flow counts once however often it was leased.
//!
//! Pure. What a decision needs from other streams (safe mode, the domains'
//! consent, the owner's external-click consent, flows run today) arrives in
//! the command, read by the gateway.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::account::Username;
use crate::artifact::MAX_ARTIFACT_BYTES;
use crate::click_consent::{self, ClickConsentState};
use crate::decider::{Actor, Context, Decider};
use crate::domain_name::DomainName;
use crate::envelope::{StreamId, StreamIdError};
use crate::flow::{
    Click, FlowFailure, FlowFinished, FlowId, FlowOutcome, FlowRange, FlowReport, FlowSet,
    MAX_CLICKS_PER_FLOW, MAX_DETAIL_CHARS, MAX_LOG_CHARS, MAX_PAGES_PER_FLOW, ProxyIndex,
};
use crate::job_plan::{self, JobPlan, PlanError, RUNS_PER_EVENT, TargetPlan, TargetRun};
use crate::licence::{Feature, Limit, NotLicensed};
use crate::reason::{MAX_REASON, Reason, one_line};
use crate::runner::{Platform, RunnerId};
use crate::system_settings::{self, SafeModeOn, SystemSettingsState};
use crate::target_domain::{self, Consent, NoConsent, TargetDomainState};
use crate::thresholds::{PerMille, ThresholdError, Thresholds};

/// Most flows one lease grants at once.
pub const MAX_FLOWS_PER_LEASE: u64 = 1000;
/// Most flows a runner holds per browser slot: work queued beside the
/// running flow, so a runner never waits for a lease between flows, yet
/// no runner hoards a job's flows while others idle.
pub const FLOWS_PER_SLOT: u64 = 64;
/// Most reports one batch carries.
pub const MAX_REPORTS_PER_BATCH: usize = 500;
/// Most bytes one batch's event may take; the store takes 1 MiB.
pub const MAX_REPORT_BYTES: usize = 768 * 1024;
/// Longest job name, in characters.
pub const MAX_JOB_NAME_CHARS: usize = 100;
/// How many flows a refusal names before it counts the rest.
const NAMED_FLOWS: usize = 10;

/// A job's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// The job's stream: `job-<id>`.
    pub fn stream(self) -> Result<StreamId, StreamIdError> {
        StreamId::for_aggregate("job", self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A published dataset version. A job holds references, never rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatasetVersionRef {
    pub dataset: Uuid,
    pub version: u32,
}

/// The proxies version and how many proxies it has, so a report naming a
/// proxy by its row is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxiesRef {
    pub version: DatasetVersionRef,
    pub proxies: u32,
}

/// What the settings profile asks for that a run is checked against, and
/// the job's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSettings {
    /// Browsers the job runs at once, across every runner.
    pub instances: u32,
    pub human_surfing: bool,
    pub external_clicks: bool,
    /// Every request carries the marker header, so the site owner can
    /// filter this traffic out of analytics. Added in JobCreated schema 2;
    /// jobs created before read as on, the default.
    pub marker_header: bool,
}

/// What the job is: owner, name, dataset versions and what was read from
/// them, thresholds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub owner: Username,
    pub name: String,
    pub targets: DatasetVersionRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<ProxiesRef>,
    pub device_profiles: DatasetVersionRef,
    /// The OS/browser pairs of the device profiles; a runner must serve one.
    pub platforms: Vec<Platform>,
    pub settings_profile: DatasetVersionRef,
    pub settings: JobSettings,
    #[serde(default)]
    pub thresholds: Thresholds,
}

impl JobSpec {
    /// The rows of the job's device profiles that a runner on `platform`
    /// serves, in row order: the profiles its flows take in turn
    /// ([`crate::job_brief::profile_for`]).
    pub fn served_profiles(&self, platform: Platform) -> Vec<u32> {
        (0u32..)
            .zip(&self.platforms)
            .filter(|&(_, &wanted)| platform.serves(wanted))
            .map(|(row, _)| row)
            .collect()
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobFailure {
    /// The auto-abort threshold tripped, with the figures that tripped it.
    ErrorRateTripped {
        domain: DomainName,
        errors: u64,
        pages: u64,
        limit: PerMille,
        min_pages: u64,
    },
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobFailure::ErrorRateTripped {
                domain,
                errors,
                pages,
                limit,
                min_pages,
            } => write!(
                f,
                "stopped to protect {domain}: {errors} of {pages} pages answered with a server error or not at all ({}), over the auto-abort limit of {limit} (after at least {min_pages} pages)",
                PerMille::of(*errors, *pages)
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCreated {
    pub job: JobId,
    pub spec: JobSpec,
    /// Targets and flows of the whole plan, for views and the audit line.
    pub targets: u32,
    pub flows: u64,
    /// The plan's first runs; the rest follow in [`JobPlanContinued`]
    /// events of the same append.
    pub plan: Vec<TargetRun>,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPlanContinued {
    pub plan: Vec<TargetRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStarted {
    pub by: String,
    /// When the first of its domains' consents ends (a verification
    /// expires); `None`: not before someone withdraws it (allow-listed, or
    /// a job started before this was recorded).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub consented_until: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPaused {
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResumed {
    pub by: String,
    /// As [`JobStarted::consented_until`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub consented_until: Option<OffsetDateTime>,
}

/// The system paused the job because it may not send traffic now (safe
/// mode, or a domain's consent lapsed or was withdrawn), and took back
/// every lease at once: its runners stop its flows now, and unfinished
/// flows return to the pool. The owner resumes it once the reason is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobHalted {
    pub reason: Reason,
}

/// The job's consent was checked again and now ends at another time (a
/// domain verified again, allow-listed, or a listing removed while a
/// verification still holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentRechecked {
    /// As [`JobStarted::consented_until`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub consented_until: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStopped {
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCompleted {
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailed {
    pub failure: JobFailure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowsLeased {
    pub runner: RunnerId,
    /// Browser slots added to the runner's share of the job's instances.
    pub slots: u32,
    pub flows: Vec<FlowRange>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRenewed {
    pub runner: RunnerId,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// One batch of a runner's reports, duplicates already left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowsReported {
    pub runner: RunnerId,
    pub reports: Vec<FlowReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowsHandedBack {
    pub runner: RunnerId,
    pub flows: Vec<FlowRange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseExpired {
    pub runner: RunnerId,
    /// The unfinished flows that went back to the pool.
    pub flows: Vec<FlowRange>,
}

crate::event_set! {
    /// What happens to a job.
    pub enum JobEvent {
        // Boxed: a spec is large beside the events that follow it.
        JobCreated(Box<JobCreated>) = 2 { 1 => marker_header_on },
        JobPlanContinued(JobPlanContinued) = 1,
        JobStarted(JobStarted) = 1,
        JobPaused(JobPaused) = 1,
        JobResumed(JobResumed) = 1,
        JobStopped(JobStopped) = 1,
        JobCompleted(JobCompleted) = 1,
        JobFailed(JobFailed) = 1,
        FlowsLeased(FlowsLeased) = 1,
        LeaseRenewed(LeaseRenewed) = 1,
        FlowsReported(FlowsReported) = 1,
        FlowsHandedBack(FlowsHandedBack) = 1,
        LeaseExpired(LeaseExpired) = 1,
        JobHalted(JobHalted) = 1,
        ConsentRechecked(ConsentRechecked) = 1,
    }
}

/// Schema 1 had no marker header option; those jobs sent it, as every job
/// does by default, so they read as on.
fn marker_header_on(mut payload: serde_json::Value) -> Result<serde_json::Value, String> {
    let settings = payload
        .get_mut("spec")
        .and_then(|spec| spec.get_mut("settings"))
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("no spec.settings object")?;
    settings
        .entry("marker_header")
        .or_insert(serde_json::Value::Bool(true));
    Ok(payload)
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn ranges_len(ranges: &[FlowRange]) -> u64 {
    ranges.iter().map(|r| r.len()).sum()
}

impl crate::registry::Summary for JobEvent {
    fn summary(&self, stream: &StreamId) -> String {
        match self {
            Self::JobCreated(e) => format!(
                "job {:?} ({stream}) created for {} by {}: {} flows over {} targets",
                e.spec.name, e.spec.owner, e.by, e.flows, e.targets
            ),
            Self::JobPlanContinued(e) => format!(
                "plan of {stream} continued: {} more targets",
                e.plan.iter().map(|r| u64::from(r.targets)).sum::<u64>()
            ),
            Self::JobStarted(e) => format!("{stream} started by {}", e.by),
            Self::JobPaused(e) => format!("{stream} paused by {}", e.by),
            Self::JobResumed(e) => format!("{stream} resumed by {}", e.by),
            Self::JobStopped(e) => match &e.reason {
                Some(reason) => format!("{stream} stopped by {}: {reason}", e.by),
                None => format!("{stream} stopped by {}", e.by),
            },
            Self::JobCompleted(e) => format!(
                "{stream} done: {} flows succeeded, {} failed",
                e.succeeded, e.failed
            ),
            Self::JobFailed(e) => format!("{stream} failed: {}", e.failure),
            Self::FlowsLeased(e) => format!(
                "runner {} leased {} flows of {stream} with {} more slots, until {}",
                e.runner,
                ranges_len(&e.flows),
                e.slots,
                e.expires_at
            ),
            Self::LeaseRenewed(e) => format!(
                "lease of runner {} on {stream} renewed until {}",
                e.runner, e.expires_at
            ),
            Self::FlowsReported(e) => {
                let mut started = 0;
                let (mut succeeded, mut failed, mut failovers, mut logs) = (0, 0, 0, 0);
                for r in &e.reports {
                    match r {
                        FlowReport::Started { .. } => started += 1,
                        FlowReport::Finished(f) => match f.outcome {
                            FlowOutcome::Succeeded => succeeded += 1,
                            FlowOutcome::Failed { .. } => failed += 1,
                        },
                        FlowReport::ProxyFailedOver { .. } => failovers += 1,
                        FlowReport::Log { .. } => logs += 1,
                    }
                }
                format!(
                    "runner {} reported on {stream}: {} ({succeeded} succeeded, {failed} failed), {started} started, {}, {}",
                    e.runner,
                    count(succeeded + failed, "flow finished", "flows finished"),
                    count(failovers, "proxy failover", "proxy failovers"),
                    count(logs, "log line", "log lines"),
                )
            }
            Self::FlowsHandedBack(e) => format!(
                "runner {} handed back {} flows of {stream}",
                e.runner,
                ranges_len(&e.flows)
            ),
            Self::LeaseExpired(e) => format!(
                "lease of runner {} on {stream} expired: {} flows back in the pool",
                e.runner,
                ranges_len(&e.flows)
            ),
            Self::JobHalted(e) => format!(
                "{stream} halted (paused, its leases taken back): {}",
                e.reason
            ),
            Self::ConsentRechecked(e) => match e.consented_until {
                Some(until) => format!("consent of {stream} checked again: it holds until {until}"),
                None => format!("consent of {stream} checked again: it holds until withdrawn"),
            },
        }
    }
}

/// What a run needs from other streams, as the gateway read them.
#[derive(Debug, Clone, PartialEq)]
pub struct RunChecks {
    /// Safe mode.
    pub system: SystemSettingsState,
    /// Each of the job's domains and each of their parents that has any
    /// history (`target-<domain>`); a name missing has none.
    pub domains: BTreeMap<DomainName, TargetDomainState>,
    /// Flows the owner's jobs finished today.
    pub flows_today: u64,
}

/// What keeping a run going needs from other streams, as the gateway read
/// them: safe mode, and the consent of each of the job's domains and their
/// parents (as in [`RunChecks`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentChecks {
    pub system: SystemSettingsState,
    pub domains: BTreeMap<DomainName, TargetDomainState>,
}

/// Which flows a runner hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// Everything it holds (it is leaving, or the job paused).
    All,
    Flows(Vec<FlowRange>),
}

/// Commands on a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobCommand {
    /// Creates the job READY. `targets` are the targets version's rows as
    /// the orchestrator needs them, in row order.
    Create {
        id: JobId,
        spec: JobSpec,
        targets: Vec<TargetPlan>,
    },
    /// Runs a READY or PAUSED job.
    Run(RunChecks),
    /// Runs a PAUSED job again.
    Resume(RunChecks),
    Pause,
    Stop {
        reason: Option<Reason>,
    },
    /// A runner on `platform` asks for up to `flows` flows and up to
    /// `slots` more browser slots of the job's instances.
    LeaseFlows {
        runner: RunnerId,
        platform: Platform,
        slots: u32,
        flows: u64,
        ttl: Duration,
    },
    /// The runner is alive: its lease lasts `ttl` from now (recorded only
    /// when half of it has passed, so heartbeats stay out of the log).
    RenewLease {
        runner: RunnerId,
        ttl: Duration,
    },
    /// A batch of a runner's reports. `click_consent` is the owner's
    /// external-click consent, as the gateway read it.
    ReportFlows {
        runner: RunnerId,
        reports: Vec<FlowReport>,
        click_consent: ClickConsentState,
    },
    HandBack {
        runner: RunnerId,
        flows: Returned,
    },
    /// Returns the flows of every lease whose time is up to the pool.
    ExpireLeases,
    /// The gateway checks a run's consent again (safe mode switched, a
    /// domain's consent changed or its verification is due to expire): a
    /// run that may not go on is halted; one whose consent now ends at
    /// another time records it.
    CheckConsent(ConsentChecks),
}

/// A job's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    #[default]
    Ready,
    Running,
    Paused,
    Done,
    Failed,
    Stopped,
}

impl JobStatus {
    /// Done, failed or stopped: nothing changes it any more.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Stopped
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobStatus::Ready => "ready",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Stopped => "stopped",
        })
    }
}

/// A job that cannot be created as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidJob {
    #[error("name: {0}")]
    Name(&'static str),
    #[error("targets: {0}")]
    Plan(#[from] PlanError),
    #[error("settings.instances must be at least 1")]
    NoInstances,
    #[error("the device profiles name no platform; publish a version with at least one profile")]
    NoPlatforms,
    #[error(transparent)]
    Thresholds(#[from] ThresholdError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("there is no such job")]
    NotFound,
    #[error("the job exists already")]
    Exists,
    #[error("the job is invalid: {0}")]
    Invalid(#[from] InvalidJob),
    /// The gateway answers CONFLICT: nothing changed.
    #[error("the job is running already")]
    AlreadyRunning,
    #[error("a {status} job cannot be {action}")]
    WrongStatus {
        status: JobStatus,
        action: &'static str,
    },
    #[error(transparent)]
    SafeMode(#[from] SafeModeOn),
    #[error(transparent)]
    NotLicensed(#[from] NotLicensed),
    #[error("{}", no_consent(.0))]
    NoConsent(Vec<NoConsent>),
    #[error(
        "the runner serves {runner}, which none of the job's device profiles ({}) asks for",
        list(.wanted)
    )]
    PlatformMismatch {
        runner: Platform,
        wanted: Vec<Platform>,
    },
    #[error("all {instances} instances of the job are in use; ask again when a lease ends")]
    InstancesInUse { instances: u32 },
    #[error(
        "runner {runner} does not hold {}{}: report and hand back only flows a lease gave it",
        list(.flows),
        if *.more > 0 { format!(" and {} more", .more) } else { String::new() }
    )]
    NotHeld {
        runner: RunnerId,
        flows: Vec<FlowId>,
        more: u64,
    },
    #[error("{flow}: {why}")]
    BadReport { flow: FlowId, why: String },
    #[error("the batch holds {count} reports; send at most {MAX_REPORTS_PER_BATCH} in one")]
    TooManyReports { count: usize },
    #[error("the batch takes {bytes} bytes; send at most {MAX_REPORT_BYTES} in one")]
    ReportTooLarge { bytes: usize },
    #[error("a lease must last a positive time")]
    BadTtl,
    /// Checked at every lease; the gateway halts the job at once.
    #[error(
        "the consent of the job's domains lapsed at {at}: no flow of it is leased until it is checked again"
    )]
    ConsentLapsed { at: OffsetDateTime },
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_consent(refusals: &[NoConsent]) -> String {
    let domains: Vec<&str> = refusals.iter().map(|r| r.domain.as_str()).collect();
    let why: Vec<String> = refusals
        .iter()
        .map(|r| format!("{}: {}", r.domain, r.why))
        .collect();
    format!(
        "traffic may not go to {}: {}",
        domains.join(", "),
        why.join("; ")
    )
}

/// Counts over finished flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub finished: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Finished flows that clicked at least once.
    pub clicked: u64,
    pub pages: u64,
    /// Pages answered with a 5xx or not at all.
    pub page_errors: u64,
}

impl Tally {
    fn add(&mut self, f: &FlowFinished) {
        self.finished += 1;
        match f.outcome {
            FlowOutcome::Succeeded => self.succeeded += 1,
            FlowOutcome::Failed { .. } => self.failed += 1,
        }
        self.clicked += u64::from(f.clicked());
        self.pages += f.pages.len() as u64;
        self.page_errors += f.page_errors();
    }
}

/// Pages loaded from one domain, for its error rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageTally {
    pub pages: u64,
    pub errors: u64,
}

/// What one runner holds of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its share of the job's instances.
    pub slots: u32,
    /// Leased and not finished.
    pub held: FlowSet,
    /// Of those, the ones it said it started.
    pub started: FlowSet,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A created job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub status: JobStatus,
    pub failure: Option<JobFailure>,
    pub plan: JobPlan,
    /// Neither leased nor done: what the next lease takes from.
    pub pool: FlowSet,
    pub done: FlowSet,
    pub leases: BTreeMap<RunnerId, Lease>,
    pub tally: Tally,
    /// Per domain, in the order of [`JobPlan::domains`].
    pub domain_pages: Vec<PageTally>,
    /// While running: when its consent ends, as last checked (see
    /// [`JobStarted::consented_until`]); no lease is granted from then on.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub consented_until: Option<OffsetDateTime>,
}

impl Job {
    /// Flows started and not finished, across runners.
    pub fn in_progress(&self) -> u64 {
        self.leases.values().map(|l| l.started.len()).sum()
    }

    /// Slots of the job's instances that leases hold.
    pub fn slots_in_use(&self) -> u32 {
        self.leases.values().map(|l| l.slots).sum()
    }

    /// Running, or paused with leases still held: runners may be sending
    /// its traffic now, so its consent is what a halt guards.
    pub fn sends_traffic(&self) -> bool {
        self.status == JobStatus::Running
            || (self.status == JobStatus::Paused && !self.leases.is_empty())
    }

    fn remaining(&self) -> u64 {
        self.plan.flows() - self.tally.finished
    }
}

/// A job, or nothing yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub job: Option<Job>,
}

pub struct JobAggregate;

inventory::submit! { crate::replay::Replayer::of::<JobAggregate>() }

impl Decider for JobAggregate {
    const SNAPSHOT_KIND: &'static str = "job/1";
    type State = JobState;
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = JobError;

    fn evolve(mut state: JobState, event: &JobEvent) -> JobState {
        match (event, state.job.as_mut()) {
            (JobEvent::JobCreated(e), _) => state.job = Some(created(e)),
            (event, Some(job)) => apply(job, event),
            // Nothing happens to a job before it exists.
            (_, None) => {}
        }
        state
    }

    fn decide(
        state: &JobState,
        command: JobCommand,
        ctx: &Context,
    ) -> Result<Vec<JobEvent>, JobError> {
        use JobCommand as C;
        let existing = || state.job.as_ref().ok_or(JobError::NotFound);
        match command {
            C::Create { id, spec, targets } => match state.job {
                Some(_) => Err(JobError::Exists),
                None => create(id, spec, &targets, ctx),
            },
            C::Run(checks) => run(existing()?, &checks, false, ctx),
            C::Resume(checks) => run(existing()?, &checks, true, ctx),
            C::Pause => pause(existing()?, ctx),
            C::Stop { reason } => stop(existing()?, reason, ctx),
            C::LeaseFlows {
                runner,
                platform,
                slots,
                flows,
                ttl,
            } => lease(existing()?, runner, platform, slots, flows, ttl, ctx),
            C::RenewLease { runner, ttl } => renew(existing()?, runner, ttl, ctx),
            C::ReportFlows {
                runner,
                reports,
                click_consent,
            } => report(existing()?, runner, reports, &click_consent, ctx),
            C::HandBack { runner, flows } => hand_back(existing()?, runner, flows, ctx),
            C::ExpireLeases => expire(existing()?, ctx),
            C::CheckConsent(checks) => check_consent(existing()?, &checks, ctx),
        }
    }
}

fn created(e: &JobCreated) -> Job {
    let mut plan = JobPlan::default();
    plan.extend(&e.plan);
    let pool = FlowRange::new(0, plan.flows())
        .map(|all| FlowSet::from_iter([all]))
        .unwrap_or_default();
    Job {
        id: e.job,
        spec: e.spec.clone(),
        status: JobStatus::Ready,
        failure: None,
        domain_pages: vec![PageTally::default(); plan.domains().len()],
        plan,
        pool,
        done: FlowSet::new(),
        leases: BTreeMap::new(),
        tally: Tally::default(),
        consented_until: None,
    }
}

fn apply(job: &mut Job, event: &JobEvent) {
    use JobEvent as E;
    match event {
        // A second creation cannot be decided; the first one stands.
        E::JobCreated(_) => {}
        E::JobPlanContinued(e) => {
            let before = job.plan.flows();
            job.plan.extend(&e.plan);
            if let Ok(added) = FlowRange::new(before, job.plan.flows()) {
                job.pool.insert(added);
            }
            job.domain_pages
                .resize(job.plan.domains().len(), PageTally::default());
        }
        E::JobStarted(JobStarted {
            consented_until, ..
        })
        | E::JobResumed(JobResumed {
            consented_until, ..
        }) => {
            job.status = JobStatus::Running;
            job.consented_until = *consented_until;
        }
        E::ConsentRechecked(e) => job.consented_until = e.consented_until,
        E::JobPaused(_) => job.status = JobStatus::Paused,
        E::JobHalted(_) => {
            job.status = JobStatus::Paused;
            for lease in std::mem::take(&mut job.leases).into_values() {
                job.pool.extend(lease.held.ranges().iter().copied());
            }
        }
        E::JobStopped(_) => end(job, JobStatus::Stopped),
        E::JobCompleted(_) => end(job, JobStatus::Done),
        E::JobFailed(e) => {
            job.failure = Some(e.failure.clone());
            end(job, JobStatus::Failed);
        }
        E::FlowsLeased(e) => {
            let lease = job.leases.entry(e.runner).or_insert_with(|| Lease {
                slots: 0,
                held: FlowSet::new(),
                started: FlowSet::new(),
                expires_at: e.expires_at,
            });
            lease.slots += e.slots;
            lease.expires_at = e.expires_at;
            for &r in &e.flows {
                job.pool.remove(r);
                lease.held.insert(r);
            }
        }
        E::LeaseRenewed(e) => {
            if let Some(lease) = job.leases.get_mut(&e.runner) {
                lease.expires_at = e.expires_at;
            }
        }
        E::FlowsReported(e) => record_reports(job, e),
        E::FlowsHandedBack(e) => {
            if let Some(lease) = job.leases.get_mut(&e.runner) {
                for &r in &e.flows {
                    lease.held.remove(r);
                    lease.started.remove(r);
                    job.pool.insert(r);
                }
                if lease.held.is_empty() {
                    job.leases.remove(&e.runner);
                }
            }
        }
        E::LeaseExpired(e) => {
            job.leases.remove(&e.runner);
            for &r in &e.flows {
                job.pool.insert(r);
            }
        }
    }
}

/// The job ends: nobody holds anything any more.
fn end(job: &mut Job, status: JobStatus) {
    job.status = status;
    job.leases.clear();
}

fn record_reports(job: &mut Job, e: &FlowsReported) {
    for r in &e.reports {
        match r {
            FlowReport::Started { flow, .. } => {
                if let Some(lease) = job.leases.get_mut(&e.runner) {
                    lease.started.insert(FlowRange::one(*flow));
                }
            }
            FlowReport::Finished(f) => {
                if job.done.contains(f.flow) {
                    continue;
                }
                let one = FlowRange::one(f.flow);
                job.done.insert(one);
                if let Some(lease) = job.leases.get_mut(&e.runner) {
                    lease.held.remove(one);
                    lease.started.remove(one);
                }
                job.tally.add(f);
                if let Some(place) = job.plan.locate(f.flow)
                    && let Some(pages) = job.domain_pages.get_mut(place.domain as usize)
                {
                    pages.pages += f.pages.len() as u64;
                    pages.errors += f.page_errors();
                }
            }
            FlowReport::ProxyFailedOver { .. } | FlowReport::Log { .. } => {}
        }
    }
    if job
        .leases
        .get(&e.runner)
        .is_some_and(|lease| lease.held.is_empty())
    {
        job.leases.remove(&e.runner);
    }
}

/// Commands a runner sends go through the gateway, which acts as the system.
fn require_system(ctx: &Context) -> Result<(), JobError> {
    if ctx.actor == Actor::System {
        Ok(())
    } else {
        Err(JobError::Forbidden(
            "only the gateway, for an authenticated runner, leases and reports flows",
        ))
    }
}

fn require_acts_for(job: &Job, ctx: &Context) -> Result<(), JobError> {
    if ctx.actor.acts_for(job.spec.owner.as_str()) {
        Ok(())
    } else {
        Err(JobError::Forbidden(
            "a job is run, paused and stopped by its owner or an admin",
        ))
    }
}

fn check_name(name: &str) -> Result<String, InvalidJob> {
    let name = name.trim();
    if name.is_empty() {
        Err(InvalidJob::Name("a job needs a name"))
    } else if name.chars().count() > MAX_JOB_NAME_CHARS {
        Err(InvalidJob::Name("keep a job's name to 100 characters"))
    } else if name.chars().any(char::is_control) {
        Err(InvalidJob::Name(
            "a job's name is one line, without control characters",
        ))
    } else {
        Ok(name.to_owned())
    }
}

fn create(
    id: JobId,
    mut spec: JobSpec,
    targets: &[TargetPlan],
    ctx: &Context,
) -> Result<Vec<JobEvent>, JobError> {
    if !ctx.actor.acts_for(spec.owner.as_str()) {
        return Err(JobError::Forbidden(
            "a job is created by its owner or by an admin for them",
        ));
    }
    spec.name = check_name(&spec.name)?;
    if spec.settings.instances == 0 {
        return Err(InvalidJob::NoInstances.into());
    }
    spec.platforms = spec
        .platforms
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if spec.platforms.is_empty() {
        return Err(InvalidJob::NoPlatforms.into());
    }
    spec.thresholds.check().map_err(InvalidJob::from)?;
    let runs = job_plan::runs(targets).map_err(InvalidJob::from)?;
    let flows = targets.iter().map(|t| u64::from(t.flows)).sum();
    let mut chunks = runs.chunks(RUNS_PER_EVENT);
    let first = chunks.next().unwrap_or_default().to_vec();
    let mut events = vec![JobEvent::JobCreated(Box::new(JobCreated {
        job: id,
        spec,
        targets: targets.len() as u32,
        flows,
        plan: first,
        by: ctx.actor.name(),
    }))];
    events.extend(chunks.map(|plan| {
        JobEvent::JobPlanContinued(JobPlanContinued {
            plan: plan.to_vec(),
        })
    }));
    Ok(events)
}

/// Starts (or resumes) a run after every guard: who, status, safe mode,
/// licence, consent, in that order.
fn run(
    job: &Job,
    checks: &RunChecks,
    resume_only: bool,
    ctx: &Context,
) -> Result<Vec<JobEvent>, JobError> {
    require_acts_for(job, ctx)?;
    match job.status {
        JobStatus::Running => return Err(JobError::AlreadyRunning),
        JobStatus::Ready if resume_only => {
            return Err(JobError::WrongStatus {
                status: job.status,
                action: "resumed (run it)",
            });
        }
        JobStatus::Ready | JobStatus::Paused => {}
        ended => {
            return Err(JobError::WrongStatus {
                status: ended,
                action: "run again (create a new job)",
            });
        }
    }
    system_settings::require_runs_allowed(&checks.system)?;
    let settings = job.spec.settings;
    ctx.require_within(Limit::MaxInstances, u64::from(settings.instances))?;
    if settings.human_surfing {
        ctx.require(Feature::HumanSurfing)?;
    }
    if settings.external_clicks {
        ctx.require(Feature::ExternalClicks)?;
    }
    ctx.require_within(
        Limit::MaxFlowsPerDay,
        checks.flows_today.saturating_add(job.remaining()),
    )?;
    let consented_until =
        consent_horizon(job, &checks.domains, ctx.now).map_err(JobError::NoConsent)?;
    let by = ctx.actor.name();
    Ok(vec![if job.status == JobStatus::Paused {
        JobEvent::JobResumed(JobResumed {
            by,
            consented_until,
        })
    } else {
        JobEvent::JobStarted(JobStarted {
            by,
            consented_until,
        })
    }])
}

/// How long traffic may go to every domain of the job for its owner, by
/// `domains` at `now`: until the earliest verification among the consents
/// expires (`None`: until withdrawn, every domain allow-listed), or every
/// domain without consent. The one rule for starting and keeping a run.
fn consent_horizon(
    job: &Job,
    domains: &BTreeMap<DomainName, TargetDomainState>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, Vec<NoConsent>> {
    let mut until: Option<OffsetDateTime> = None;
    let mut refusals = Vec::new();
    for domain in job.plan.domains() {
        match target_domain::consent_covering(domain, &job.spec.owner, now, |name| {
            domains.get(name)
        }) {
            Ok(Consent::Verified { verification, .. }) => {
                let ends = verification.valid_until;
                until = Some(until.map_or(ends, |u| u.min(ends)));
            }
            Ok(Consent::AllowListed { .. }) => {}
            Err(refusal) => refusals.push(refusal),
        }
    }
    if refusals.is_empty() {
        Ok(until)
    } else {
        Err(refusals)
    }
}

/// Halts a run that may not go on (safe mode, a domain without consent),
/// and a paused job's leases with it; records a consent that now ends at
/// another time. Nothing else is touched: a run stopped for good or not
/// started is not the system's to change.
fn check_consent(
    job: &Job,
    checks: &ConsentChecks,
    ctx: &Context,
) -> Result<Vec<JobEvent>, JobError> {
    require_system(ctx)?;
    if !job.sends_traffic() {
        return Ok(vec![]);
    }
    let running = job.status == JobStatus::Running;
    let halt = |why: String| {
        // Made from our own bounded texts: never empty, one line.
        let reason = Reason::parse(&one_line(&why, MAX_REASON - 1))
            .unwrap_or_else(|_| Reason::parse("the run may not go on").expect("a valid reason"));
        Ok(vec![JobEvent::JobHalted(JobHalted { reason })])
    };
    if let Err(safe_mode) = system_settings::require_runs_allowed(&checks.system) {
        return halt(safe_mode.to_string());
    }
    match consent_horizon(job, &checks.domains, ctx.now) {
        Err(refusals) => halt(no_consent(&refusals)),
        Ok(until) if running && until != job.consented_until => {
            Ok(vec![JobEvent::ConsentRechecked(ConsentRechecked {
                consented_until: until,
            })])
        }
        Ok(_) => Ok(vec![]),
    }
}

fn pause(job: &Job, ctx: &Context) -> Result<Vec<JobEvent>, JobError> {
    require_acts_for(job, ctx)?;
    match job.status {
        JobStatus::Running => Ok(vec![JobEvent::JobPaused(JobPaused {
            by: ctx.actor.name(),
        })]),
        JobStatus::Paused => Ok(vec![]),
        status => Err(JobError::WrongStatus {
            status,
            action: "paused",
        }),
    }
}

fn stop(job: &Job, reason: Option<Reason>, ctx: &Context) -> Result<Vec<JobEvent>, JobError> {
    require_acts_for(job, ctx)?;
    match job.status {
        JobStatus::Stopped => Ok(vec![]),
        status if status.is_ended() => Err(JobError::WrongStatus {
            status,
            action: "stopped",
        }),
        _ => Ok(vec![JobEvent::JobStopped(JobStopped {
            by: ctx.actor.name(),
            reason,
        })]),
    }
}

fn lease(
    job: &Job,
    runner: RunnerId,
    platform: Platform,
    slots: u32,
    flows: u64,
    ttl: Duration,
    ctx: &Context,
) -> Result<Vec<JobEvent>, JobError> {
    require_system(ctx)?;
    if job.status != JobStatus::Running {
        return Err(JobError::WrongStatus {
            status: job.status,
            action: "leased",
        });
    }
    if let Some(at) = job.consented_until
        && ctx.now >= at
    {
        return Err(JobError::ConsentLapsed { at });
    }
    if !ttl.is_positive() {
        return Err(JobError::BadTtl);
    }
    if !job.spec.platforms.iter().any(|&p| platform.serves(p)) {
        return Err(JobError::PlatformMismatch {
            runner: platform,
            wanted: job.spec.platforms.clone(),
        });
    }
    let held = job.leases.get(&runner);
    let free = job
        .spec
        .settings
        .instances
        .saturating_sub(job.slots_in_use());
    let added = slots.min(free);
    let total_slots = held.map_or(0, |l| l.slots) + added;
    if total_slots == 0 {
        return Err(JobError::InstancesInUse {
            instances: job.spec.settings.instances,
        });
    }
    let room =
        (u64::from(total_slots) * FLOWS_PER_SLOT).saturating_sub(held.map_or(0, |l| l.held.len()));
    let granted = job.pool.first(flows.min(room).min(MAX_FLOWS_PER_LEASE));
    if granted.is_empty() {
        return Ok(vec![]);
    }
    Ok(vec![JobEvent::FlowsLeased(FlowsLeased {
        runner,
        slots: added,
        flows: granted,
        expires_at: ctx.now + ttl,
    })])
}

fn renew(
    job: &Job,
    runner: RunnerId,
    ttl: Duration,
    ctx: &Context,
) -> Result<Vec<JobEvent>, JobError> {
    require_system(ctx)?;
    if !ttl.is_positive() {
        return Err(JobError::BadTtl);
    }
    match job.leases.get(&runner) {
        Some(lease) if lease.expires_at - ctx.now <= ttl / 2 => {
            Ok(vec![JobEvent::LeaseRenewed(LeaseRenewed {
                runner,
                expires_at: ctx.now + ttl,
            })])
        }
        _ => Ok(vec![]),
    }
}

/// Checks a proxy a report names against the job's proxies version.
fn check_proxy(job: &Job, flow: FlowId, proxy: Option<ProxyIndex>) -> Result<(), JobError> {
    let Some(proxy) = proxy else { return Ok(()) };
    let proxies = job.spec.proxies.map_or(0, |p| p.proxies);
    if proxy.0 < proxies {
        Ok(())
    } else {
        Err(JobError::BadReport {
            flow,
            why: format!("{proxy} is not in the job's proxies version, which has {proxies}"),
        })
    }
}

/// Checks a finished flow's report and keeps its runner-written text to
/// bounded single lines.
fn check_finished(
    job: &Job,
    mut f: FlowFinished,
    click_consent: &ClickConsentState,
) -> Result<FlowFinished, JobError> {
    let bad = |why: String| JobError::BadReport { flow: f.flow, why };
    if f.pages.len() > MAX_PAGES_PER_FLOW {
        return Err(bad(format!(
            "{} pages reported; a flow reports at most {MAX_PAGES_PER_FLOW}",
            f.pages.len()
        )));
    }
    if f.clicks.len() > MAX_CLICKS_PER_FLOW {
        return Err(bad(format!(
            "{} clicks reported; a flow reports at most {MAX_CLICKS_PER_FLOW}",
            f.clicks.len()
        )));
    }
    check_proxy(job, f.flow, f.proxy)?;
    check_artifacts(&f)?;
    for click in &f.clicks {
        if let Click::External { domain } = click {
            if !job.spec.settings.external_clicks {
                return Err(bad(format!(
                    "an external click to {domain}, but the job's settings do not follow external links"
                )));
            }
            if !click_consent::allows(click_consent, domain) {
                return Err(bad(format!(
                    "an external click to {domain}, which the owner has not consented to"
                )));
            }
        }
    }
    if let FlowOutcome::Failed { reason } = &mut f.outcome {
        match reason {
            FlowFailure::Network { detail }
            | FlowFailure::Proxy { detail }
            | FlowFailure::Browser { detail }
            | FlowFailure::Other { detail } => *detail = one_line(detail, MAX_DETAIL_CHARS),
            FlowFailure::Timeout | FlowFailure::HttpStatus { .. } => {}
        }
    }
    Ok(f)
}

/// A finished flow's artifacts: a failed flow's only, one of each kind at
/// most, each within the size limit.
fn check_artifacts(f: &FlowFinished) -> Result<(), JobError> {
    let bad = |why: String| JobError::BadReport { flow: f.flow, why };
    if !f.artifacts.is_empty() && f.outcome == FlowOutcome::Succeeded {
        return Err(bad(
            "artifacts are kept for failed flows only; this one succeeded".into(),
        ));
    }
    let mut kinds = BTreeSet::new();
    for a in &f.artifacts {
        if !kinds.insert(a.kind) {
            return Err(bad(format!(
                "two {} artifacts; send one of each kind",
                a.kind
            )));
        }
        if a.bytes > MAX_ARTIFACT_BYTES as u64 {
            return Err(bad(format!(
                "a {} artifact of {} bytes; the limit is {MAX_ARTIFACT_BYTES}",
                a.kind, a.bytes
            )));
        }
    }
    Ok(())
}

fn report(
    job: &Job,
    runner: RunnerId,
    reports: Vec<FlowReport>,
    click_consent: &ClickConsentState,
    ctx: &Context,
) -> Result<Vec<JobEvent>, JobError> {
    require_system(ctx)?;
    if !matches!(job.status, JobStatus::Running | JobStatus::Paused) {
        return Err(JobError::WrongStatus {
            status: job.status,
            action: "reported on",
        });
    }
    if reports.len() > MAX_REPORTS_PER_BATCH {
        return Err(JobError::TooManyReports {
            count: reports.len(),
        });
    }
    let lease = job.leases.get(&runner);
    let mut not_held = Vec::new();
    let mut finished_now = HashSet::new();
    let mut started_now = HashSet::new();
    let mut kept = Vec::with_capacity(reports.len());
    for r in reports {
        if let Some(flow) = r.flow() {
            // Reports on a finished flow repeat what is known: dropped, so
            // a batch sent twice counts once.
            if job.done.contains(flow) || finished_now.contains(&flow) {
                continue;
            }
            if !lease.is_some_and(|l| l.held.contains(flow)) {
                not_held.push(flow);
                continue;
            }
        }
        let r = match r {
            FlowReport::Started { flow, proxy } => {
                let known = lease.is_some_and(|l| l.started.contains(flow));
                if known || !started_now.insert(flow) {
                    continue;
                }
                check_proxy(job, flow, proxy)?;
                FlowReport::Started { flow, proxy }
            }
            FlowReport::Finished(f) => {
                let f = check_finished(job, f, click_consent)?;
                finished_now.insert(f.flow);
                FlowReport::Finished(f)
            }
            FlowReport::ProxyFailedOver {
                flow,
                from,
                to,
                error,
            } => {
                check_proxy(job, flow, Some(from))?;
                check_proxy(job, flow, to)?;
                FlowReport::ProxyFailedOver {
                    flow,
                    from,
                    to,
                    error: one_line(&error, MAX_DETAIL_CHARS),
                }
            }
            FlowReport::Log {
                flow,
                level,
                message,
            } => FlowReport::Log {
                flow,
                level,
                message: one_line(&message, MAX_LOG_CHARS),
            },
        };
        kept.push(r);
    }
    if !not_held.is_empty() {
        return Err(not_held_error(
            runner,
            not_held.into_iter().map(FlowRange::one),
        ));
    }
    if kept.is_empty() {
        return Ok(vec![]);
    }
    let bytes = serde_json::to_vec(&kept).map_or(usize::MAX, |json| json.len());
    if bytes > MAX_REPORT_BYTES {
        return Err(JobError::ReportTooLarge { bytes });
    }
    let mut events = vec![JobEvent::FlowsReported(FlowsReported {
        runner,
        reports: kept,
    })];
    events.extend(ending(job, &events[0]));
    Ok(events)
}

/// Does this batch end the job: its last flow finished, or a domain's error
/// rate tripping the auto-abort?
fn ending(job: &Job, batch: &JobEvent) -> Option<JobEvent> {
    let JobEvent::FlowsReported(batch) = batch else {
        return None;
    };
    let mut tally = job.tally;
    let mut domains: BTreeMap<u32, PageTally> = BTreeMap::new();
    for r in &batch.reports {
        if let FlowReport::Finished(f) = r {
            tally.add(f);
            if let Some(place) = job.plan.locate(f.flow) {
                let d = domains.entry(place.domain).or_insert_with(|| {
                    job.domain_pages
                        .get(place.domain as usize)
                        .copied()
                        .unwrap_or_default()
                });
                d.pages += f.pages.len() as u64;
                d.errors += f.page_errors();
            }
        }
    }
    if tally.finished == job.plan.flows() {
        return Some(JobEvent::JobCompleted(JobCompleted {
            succeeded: tally.succeeded,
            failed: tally.failed,
        }));
    }
    let abort = job.spec.thresholds.auto_abort?;
    let (domain, pages) = domains
        .into_iter()
        .find(|(_, p)| abort.trips(p.errors, p.pages))?;
    Some(JobEvent::JobFailed(JobFailed {
        failure: JobFailure::ErrorRateTripped {
            domain: job.plan.domains().get(domain as usize)?.clone(),
            errors: pages.errors,
            pages: pages.pages,
            limit: abort.error_rate,
            min_pages: abort.min_pages,
        },
    }))
}

fn hand_back(
    job: &Job,
    runner: RunnerId,
    flows: Returned,
    ctx: &Context,
) -> Result<Vec<JobEvent>, JobError> {
    require_system(ctx)?;
    // An ended job holds nothing: what a runner still returns is moot.
    if job.status.is_ended() {
        return Ok(vec![]);
    }
    let held = job
        .leases
        .get(&runner)
        .map(|l| l.held.clone())
        .unwrap_or_default();
    let returned = match flows {
        Returned::All => held,
        Returned::Flows(ranges) => {
            let mut returned = FlowSet::new();
            let mut not_held = Vec::new();
            for range in ranges {
                // Flows it finished meanwhile are simply not returned.
                for open in job.done.gaps(range) {
                    not_held.extend(held.gaps(open));
                    returned.extend(held.overlap(open));
                }
            }
            if !not_held.is_empty() {
                return Err(not_held_error(runner, not_held));
            }
            returned
        }
    };
    if returned.is_empty() {
        return Ok(vec![]);
    }
    Ok(vec![JobEvent::FlowsHandedBack(FlowsHandedBack {
        runner,
        flows: returned.ranges().to_vec(),
    })])
}

/// Names the first few flows a runner claimed without holding them, and
/// counts the rest.
fn not_held_error(runner: RunnerId, ranges: impl IntoIterator<Item = FlowRange>) -> JobError {
    let all: FlowSet = ranges.into_iter().collect();
    let flows: Vec<FlowId> = all
        .ranges()
        .iter()
        .flat_map(|r| r.flows())
        .take(NAMED_FLOWS)
        .collect();
    JobError::NotHeld {
        runner,
        more: all.len() - flows.len() as u64,
        flows,
    }
}

fn expire(job: &Job, ctx: &Context) -> Result<Vec<JobEvent>, JobError> {
    require_system(ctx)?;
    Ok(job
        .leases
        .iter()
        .filter(|(_, lease)| lease.expires_at <= ctx.now)
        .map(|(&runner, lease)| {
            JobEvent::LeaseExpired(LeaseExpired {
                runner,
                flows: lease.held.ranges().to_vec(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::artifact::{ArtifactKind, ArtifactRef};
    use crate::blob::BlobHash;
    use crate::decider::Role;
    use crate::flow::{FlowFinished, LogLevel, PageLoad, SkipReason};
    use crate::licence::{Allowances, LicenceTerms};
    use crate::registry::{EventSet, Summary};
    use crate::runner::tests::linux_chromium;
    use crate::runner::{Browser, Os};
    use crate::spec::{Spec, acting_as};
    use crate::system_settings::{SafeModeTurnedOff, SystemSettings, SystemSettingsEvent};
    use crate::target_domain::{
        DomainAllowListed, DomainClaimed, DomainVerified, NoConsentWhy, TargetDomain,
        TargetDomainEvent, VerificationMethod, VerificationToken,
    };
    use crate::thresholds::AutoAbort;
    use crate::web_vitals::PageVitals;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn ttl() -> Duration {
        Duration::seconds(30)
    }

    fn user(name: &str) -> Username {
        Username::parse(name).unwrap()
    }

    fn name(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    fn version(n: u128) -> DatasetVersionRef {
        DatasetVersionRef {
            dataset: Uuid::from_u128(n),
            version: 1,
        }
    }

    fn id() -> JobId {
        JobId(Uuid::from_u128(42))
    }

    fn r1() -> RunnerId {
        RunnerId(Uuid::from_u128(1))
    }

    fn r2() -> RunnerId {
        RunnerId(Uuid::from_u128(2))
    }

    fn licence() -> LicenceTerms {
        LicenceTerms {
            allows: Allowances {
                max_instances: 8,
                human_surfing: true,
                external_clicks: true,
                max_flows_per_day: 1000,
                ..Allowances::default()
            },
            expires_at: now() + Duration::days(30),
        }
    }

    fn as_account(username: &str, role: Role) -> Context {
        acting_as(username, role, now()).with_licence(licence())
    }

    fn ada() -> Context {
        as_account("ada", Role::User)
    }

    /// The gateway, for a runner, at `seconds` after now.
    fn gateway(seconds: i64) -> Context {
        Context::new(now() + Duration::seconds(seconds), Actor::System)
    }

    fn settings() -> JobSettings {
        JobSettings {
            instances: 4,
            human_surfing: true,
            external_clicks: true,
            marker_header: true,
        }
    }

    fn spec() -> JobSpec {
        JobSpec {
            owner: user("ada"),
            name: "Launch check".into(),
            targets: version(1),
            proxies: Some(ProxiesRef {
                version: version(2),
                proxies: 3,
            }),
            device_profiles: version(3),
            platforms: vec![linux_chromium()],
            settings_profile: version(4),
            settings: settings(),
            thresholds: Thresholds::default(),
        }
    }

    fn target(domain: &str, flows: u32, clicks: u32) -> TargetPlan {
        TargetPlan {
            domain: name(domain),
            flows,
            clicks,
        }
    }

    /// 16 flows: targets 0 and 1 on shop.example.com (6 each, 2 clicking),
    /// target 2 on blog.example.com (4).
    fn targets() -> Vec<TargetPlan> {
        vec![
            target("shop.example.com", 6, 2),
            target("shop.example.com", 6, 2),
            target("blog.example.com", 4, 0),
        ]
    }

    fn run_of(targets: u32, domain: &str, flows: u32, clicks: u32) -> TargetRun {
        TargetRun {
            targets,
            domain: name(domain),
            flows,
            clicks,
        }
    }

    fn created_with(spec: JobSpec) -> JobEvent {
        JobEvent::JobCreated(Box::new(JobCreated {
            job: id(),
            spec,
            targets: 3,
            flows: 16,
            plan: vec![
                run_of(2, "shop.example.com", 6, 2),
                run_of(1, "blog.example.com", 4, 0),
            ],
            by: "ada".into(),
        }))
    }

    fn created() -> JobEvent {
        created_with(spec())
    }

    fn started() -> JobEvent {
        JobEvent::JobStarted(JobStarted {
            by: "ada".into(),
            consented_until: Some(consent_ends()),
        })
    }

    fn paused() -> JobEvent {
        JobEvent::JobPaused(JobPaused { by: "ada".into() })
    }

    fn range(start: u64, end: u64) -> FlowRange {
        FlowRange::new(start, end).unwrap()
    }

    fn leased(runner: RunnerId, slots: u32, flows: &[(u64, u64)], at: i64) -> JobEvent {
        JobEvent::FlowsLeased(FlowsLeased {
            runner,
            slots,
            flows: flows.iter().map(|&(s, e)| range(s, e)).collect(),
            expires_at: now() + Duration::seconds(at) + ttl(),
        })
    }

    fn lease_cmd(runner: RunnerId, slots: u32, flows: u64) -> JobCommand {
        JobCommand::LeaseFlows {
            runner,
            platform: linux_chromium(),
            slots,
            flows,
            ttl: ttl(),
        }
    }

    fn finished(flow: u64, outcome: FlowOutcome) -> FlowReport {
        FlowReport::Finished(FlowFinished {
            flow: FlowId(flow),
            outcome,
            duration_ms: 1500,
            proxy: Some(ProxyIndex(0)),
            pages: vec![PageLoad {
                ms: 400,
                status: Some(200),
                vitals: PageVitals::default(),
            }],
            clicks: vec![],
            artifacts: vec![],
        })
    }

    fn ok(flow: u64) -> FlowReport {
        finished(flow, FlowOutcome::Succeeded)
    }

    fn report_cmd(runner: RunnerId, reports: Vec<FlowReport>) -> JobCommand {
        JobCommand::ReportFlows {
            runner,
            reports,
            click_consent: ClickConsentState::default(),
        }
    }

    fn reported(runner: RunnerId, reports: Vec<FlowReport>) -> JobEvent {
        JobEvent::FlowsReported(FlowsReported { runner, reports })
    }

    fn safe_mode_off() -> SystemSettingsState {
        SystemSettings::fold(&[SystemSettingsEvent::SafeModeTurnedOff(SafeModeTurnedOff {
            by: "root".into(),
            reason: Reason::parse("checked").unwrap(),
            at: now(),
        })])
    }

    fn verified_for(account: &str) -> TargetDomainState {
        TargetDomain::fold(&[
            TargetDomainEvent::DomainClaimed(DomainClaimed {
                account: user(account),
                token: VerificationToken::parse(&"t".repeat(40)).unwrap(),
                by: account.into(),
            }),
            TargetDomainEvent::DomainVerified(DomainVerified {
                account: user(account),
                method: VerificationMethod::WellKnown,
                valid_until: consent_ends(),
                by: account.into(),
            }),
        ])
    }

    /// When the tests' verifications expire.
    fn consent_ends() -> OffsetDateTime {
        now() + Duration::days(7)
    }

    fn checks() -> RunChecks {
        RunChecks {
            system: safe_mode_off(),
            domains: BTreeMap::from([
                (name("shop.example.com"), verified_for("ada")),
                (name("blog.example.com"), verified_for("ada")),
            ]),
            flows_today: 0,
        }
    }

    fn running() -> Vec<JobEvent> {
        vec![created(), started()]
    }

    fn history(more: impl IntoIterator<Item = JobEvent>) -> Vec<JobEvent> {
        running().into_iter().chain(more).collect()
    }

    fn job(state: &JobState) -> &Job {
        state.job.as_ref().unwrap()
    }

    // ---- creating

    #[test]
    fn an_owner_creates_a_job_ready_with_every_flow_in_the_pool() {
        let state = Spec::<JobAggregate>::given([])
            .in_context(ada())
            .when(JobCommand::Create {
                id: id(),
                spec: JobSpec {
                    name: "  Launch check ".into(),
                    platforms: vec![linux_chromium(), linux_chromium()],
                    ..spec()
                },
                targets: targets(),
            })
            .then([created()]);
        let job = job(&state);
        assert_eq!(job.status, JobStatus::Ready);
        assert_eq!(job.pool.ranges(), [range(0, 16)]);
        assert_eq!(
            job.plan.domains(),
            [name("shop.example.com"), name("blog.example.com")]
        );
        assert_eq!(
            id().stream().unwrap().as_str(),
            "job-00000000-0000-0000-0000-00000000002a"
        );
    }

    #[test]
    fn a_job_is_created_by_its_owner_or_an_admin_only_and_only_once() {
        let create = || JobCommand::Create {
            id: id(),
            spec: spec(),
            targets: targets(),
        };
        Spec::<JobAggregate>::given([])
            .in_context(as_account("bob", Role::User))
            .when(create())
            .then_err(|e| matches!(e, JobError::Forbidden(_)));
        let JobEvent::JobCreated(mut by_root) = created() else {
            unreachable!()
        };
        by_root.by = "root".into();
        Spec::<JobAggregate>::given([])
            .in_context(as_account("root", Role::Admin))
            .when(create())
            .then([JobEvent::JobCreated(by_root)]);
        Spec::<JobAggregate>::given([created()])
            .in_context(ada())
            .when(create())
            .then_err(|e| *e == JobError::Exists);
        Spec::<JobAggregate>::given([])
            .in_context(ada())
            .when(JobCommand::Pause)
            .then_err(|e| *e == JobError::NotFound);
    }

    #[test]
    fn a_job_that_cannot_run_is_refused_at_creation_saying_what_to_fix() {
        let refused = |spec: JobSpec, targets: Vec<TargetPlan>, expected: &str| {
            let expected = expected.to_owned();
            Spec::<JobAggregate>::given([])
                .in_context(ada())
                .when(JobCommand::Create {
                    id: id(),
                    spec,
                    targets,
                })
                .then_err(move |e| e.to_string() == expected);
        };
        refused(
            JobSpec {
                name: " ".into(),
                ..spec()
            },
            targets(),
            "the job is invalid: name: a job needs a name",
        );
        let mut no_instances = spec();
        no_instances.settings.instances = 0;
        refused(
            no_instances,
            targets(),
            "the job is invalid: settings.instances must be at least 1",
        );
        refused(
            JobSpec {
                platforms: vec![],
                ..spec()
            },
            targets(),
            "the job is invalid: the device profiles name no platform; publish a version with at least one profile",
        );
        refused(
            spec(),
            vec![target("shop.example.com", 2, 3)],
            "the job is invalid: targets: target 0 wants 3 clicks of 2 visits; clicks cannot exceed visits",
        );
        refused(
            JobSpec {
                thresholds: Thresholds {
                    auto_abort: Some(AutoAbort {
                        error_rate: PerMille::new(100).unwrap(),
                        min_pages: 0,
                    }),
                    ..Thresholds::default()
                },
                ..spec()
            },
            targets(),
            "the job is invalid: thresholds.auto_abort.min_pages must be at least 1, so that one unlucky page cannot stop a job: give a sample size such as 100",
        );
    }

    #[test]
    fn a_long_target_list_is_carried_in_several_events_that_fold_to_one_plan() {
        // Alternating domains: no two neighbours fold, so every row is a run.
        let rows: Vec<TargetPlan> = (0..5000)
            .map(|i| target(if i % 2 == 0 { "a.example" } else { "b.example" }, 2, 1))
            .collect();
        let events = JobAggregate::decide(
            &JobState::default(),
            JobCommand::Create {
                id: id(),
                spec: spec(),
                targets: rows.clone(),
            },
            &ada(),
        )
        .unwrap();
        assert_eq!(events.len(), 3, "5000 runs in events of {RUNS_PER_EVENT}");
        for event in &events {
            let bytes = event.to_payload().unwrap().as_str().len();
            assert!(bytes < 1024 * 1024, "{bytes} bytes");
        }
        let state = JobAggregate::fold(&events);
        let job = job(&state);
        assert_eq!(job.plan.targets(), 5000);
        assert_eq!(job.pool.ranges(), [range(0, 10_000)]);
        assert_eq!(job.domain_pages.len(), 2);
        let mut whole = JobPlan::default();
        whole.extend(&job_plan::runs(&rows).unwrap());
        assert_eq!(job.plan, whole);
    }

    // ---- running

    #[test]
    fn running_a_ready_job_starts_it() {
        let state = Spec::<JobAggregate>::given([created()])
            .in_context(ada())
            .when(JobCommand::Run(checks()))
            .then([started()]);
        assert_eq!(job(&state).status, JobStatus::Running);
    }

    #[test]
    fn running_a_running_job_is_a_conflict() {
        Spec::<JobAggregate>::given(running())
            .in_context(ada())
            .when(JobCommand::Run(checks()))
            .then_err(|e| *e == JobError::AlreadyRunning);
        // Even in safe mode: the answer is about the job, and nothing changes.
        Spec::<JobAggregate>::given(running())
            .in_context(ada())
            .when(JobCommand::Run(RunChecks {
                system: SystemSettingsState::default(),
                ..checks()
            }))
            .then_err(|e| *e == JobError::AlreadyRunning);
    }

    #[test]
    fn a_paused_job_runs_again_as_resumed_and_a_ready_one_is_not_resumed() {
        let resumed = JobEvent::JobResumed(JobResumed {
            by: "ada".into(),
            consented_until: Some(consent_ends()),
        });
        Spec::<JobAggregate>::given(history([paused()]))
            .in_context(ada())
            .when(JobCommand::Resume(checks()))
            .then([resumed.clone()]);
        Spec::<JobAggregate>::given(history([paused()]))
            .in_context(ada())
            .when(JobCommand::Run(checks()))
            .then([resumed]);
        Spec::<JobAggregate>::given([created()])
            .in_context(ada())
            .when(JobCommand::Resume(checks()))
            .then_err(|e| e.to_string() == "a ready job cannot be resumed (run it)");
    }

    #[test]
    fn an_ended_job_never_runs_again() {
        let stopped = JobEvent::JobStopped(JobStopped {
            by: "ada".into(),
            reason: None,
        });
        Spec::<JobAggregate>::given(history([stopped]))
            .in_context(ada())
            .when(JobCommand::Run(checks()))
            .then_err(|e| {
                *e == JobError::WrongStatus {
                    status: JobStatus::Stopped,
                    action: "run again (create a new job)",
                }
            });
    }

    #[test]
    fn safe_mode_refuses_a_run_with_its_own_error() {
        Spec::<JobAggregate>::given([created()])
            .in_context(ada())
            .when(JobCommand::Run(RunChecks {
                system: SystemSettingsState::default(),
                ..checks()
            }))
            .then_err(|e| matches!(e, JobError::SafeMode(s) if s.since.is_none()));
    }

    #[test]
    fn a_run_the_licence_does_not_allow_is_refused_naming_the_feature_or_limit() {
        let refused = |spec: JobSpec, checks: RunChecks, ctx: Context, feature: &'static str| {
            Spec::<JobAggregate>::given([created_with(spec)])
                .in_context(ctx)
                .when(JobCommand::Run(checks))
                .then_err(move |e| matches!(e, JobError::NotLicensed(n) if n.feature == feature));
        };
        let mut many = spec();
        many.settings.instances = 9;
        refused(many, checks(), ada(), "maxInstances");
        let mut no_surfing = ada();
        no_surfing.licence.as_mut().unwrap().allows.human_surfing = false;
        refused(spec(), checks(), no_surfing, "humanSurfing");
        let mut no_external = ada();
        no_external.licence.as_mut().unwrap().allows.external_clicks = false;
        refused(spec(), checks(), no_external.clone(), "externalClicks");
        // Without external clicks in its settings, the job needs no such feature.
        let mut internal_only = spec();
        internal_only.settings.external_clicks = false;
        Spec::<JobAggregate>::given([created_with(internal_only)])
            .in_context(no_external)
            .when(JobCommand::Run(checks()))
            .then([started()]);
        // 990 flows today and 16 to run: over the 1000 a day.
        refused(
            spec(),
            RunChecks {
                flows_today: 990,
                ..checks()
            },
            ada(),
            "maxFlowsPerDay",
        );
        Spec::<JobAggregate>::given([created()])
            .in_context(ada())
            .when(JobCommand::Run(RunChecks {
                flows_today: 984,
                ..checks()
            }))
            .then([started()]);
        let mut none = ada();
        none.licence = None;
        refused(spec(), checks(), none, "maxInstances");
    }

    #[test]
    fn a_run_lists_every_domain_without_consent() {
        let allow_listed =
            TargetDomain::fold(&[TargetDomainEvent::DomainAllowListed(DomainAllowListed {
                by: "root".into(),
                reason: Reason::parse("staging").unwrap(),
            })]);
        // Bob's verification is not Ada's consent; nothing is known of blog.example.
        Spec::<JobAggregate>::given([created()])
            .in_context(ada())
            .when(JobCommand::Run(RunChecks {
                domains: BTreeMap::from([(name("shop.example.com"), verified_for("bob"))]),
                ..checks()
            }))
            .then_err(|e| {
                let JobError::NoConsent(refusals) = e else {
                    return false;
                };
                let domains: Vec<&str> = refusals.iter().map(|r| r.domain.as_str()).collect();
                domains == ["shop.example.com", "blog.example.com"]
                    && refusals.iter().all(|r| r.why == NoConsentWhy::NotClaimed)
                    && e.to_string()
                        .starts_with("traffic may not go to shop.example.com, blog.example.com: ")
            });
        // A parent's allow-listing covers its subdomains: blog.example.com
        // through it, shop.example.com through it or Ada's own proof.
        Spec::<JobAggregate>::given([created()])
            .in_context(ada())
            .when(JobCommand::Run(RunChecks {
                domains: BTreeMap::from([(name("example.com"), allow_listed)]),
                ..checks()
            }))
            // Allow-listed: consented until someone withdraws it.
            .then([JobEvent::JobStarted(JobStarted {
                by: "ada".into(),
                consented_until: None,
            })]);
        // An expired verification does not consent.
        let mut later = ada();
        later.now = now() + Duration::days(8);
        later.licence.as_mut().unwrap().expires_at = now() + Duration::days(30);
        Spec::<JobAggregate>::given([created()])
            .in_context(later)
            .when(JobCommand::Run(checks()))
            .then_err(|e| {
                matches!(e, JobError::NoConsent(r) if r.len() == 2
                    && matches!(r[0].why, NoConsentWhy::Expired { .. }))
            });
    }

    #[test]
    fn only_the_owner_or_an_admin_runs_pauses_and_stops_a_job() {
        for command in [
            JobCommand::Run(checks()),
            JobCommand::Pause,
            JobCommand::Stop { reason: None },
        ] {
            for role in [Role::User, Role::Auditor] {
                Spec::<JobAggregate>::given([created()])
                    .in_context(as_account("bob", role))
                    .when(command.clone())
                    .then_err(|e| matches!(e, JobError::Forbidden(_)));
            }
        }
        Spec::<JobAggregate>::given([created()])
            .in_context(as_account("root", Role::SuperAdmin))
            .when(JobCommand::Run(checks()))
            .then([JobEvent::JobStarted(JobStarted {
                by: "root".into(),
                consented_until: Some(consent_ends()),
            })]);
    }

    #[test]
    fn pausing_and_stopping_follow_the_lifecycle() {
        let state = Spec::<JobAggregate>::given(running())
            .in_context(ada())
            .when(JobCommand::Pause)
            .then([paused()]);
        assert_eq!(job(&state).status, JobStatus::Paused);
        Spec::<JobAggregate>::given(history([paused()]))
            .in_context(ada())
            .when(JobCommand::Pause)
            .then([]);
        Spec::<JobAggregate>::given([created()])
            .in_context(ada())
            .when(JobCommand::Pause)
            .then_err(|e| e.to_string() == "a ready job cannot be paused");
        let reason = Reason::parse("wrong target list").ok();
        let stopped = JobEvent::JobStopped(JobStopped {
            by: "ada".into(),
            reason: reason.clone(),
        });
        let state = Spec::<JobAggregate>::given(history([paused(), leased(r1(), 1, &[(0, 4)], 0)]))
            .in_context(ada())
            .when(JobCommand::Stop {
                reason: reason.clone(),
            })
            .then([stopped.clone()]);
        assert_eq!(job(&state).status, JobStatus::Stopped);
        assert!(job(&state).leases.is_empty(), "a stopped job holds nothing");
        Spec::<JobAggregate>::given(history([stopped]))
            .in_context(ada())
            .when(JobCommand::Stop { reason: None })
            .then([]);
        let done = JobEvent::JobCompleted(JobCompleted {
            succeeded: 16,
            failed: 0,
        });
        Spec::<JobAggregate>::given(history([done]))
            .in_context(ada())
            .when(JobCommand::Stop { reason })
            .then_err(|e| e.to_string() == "a done job cannot be stopped");
    }

    // ---- consent during a run

    fn consent(domains: &[(&str, TargetDomainState)]) -> ConsentChecks {
        ConsentChecks {
            system: safe_mode_off(),
            domains: domains
                .iter()
                .map(|(domain, state)| (name(domain), state.clone()))
                .collect(),
        }
    }

    fn allow_listed() -> TargetDomainState {
        TargetDomain::fold(&[TargetDomainEvent::DomainAllowListed(DomainAllowListed {
            by: "root".into(),
            reason: Reason::parse("staging").unwrap(),
        })])
    }

    fn halted(reason: &str) -> JobEvent {
        JobEvent::JobHalted(JobHalted {
            reason: Reason::parse(reason).unwrap(),
        })
    }

    #[test]
    fn a_run_leases_nothing_once_its_consent_has_lapsed() {
        Spec::<JobAggregate>::given(running())
            .in_context(gateway(3600))
            .when(lease_cmd(r1(), 1, 4))
            .then([leased(r1(), 1, &[(0, 4)], 3600)]);
        let lapsed = (consent_ends() - now()).whole_seconds();
        Spec::<JobAggregate>::given(running())
            .in_context(gateway(lapsed))
            .when(lease_cmd(r1(), 1, 4))
            .then_err(|e| *e == JobError::ConsentLapsed { at: consent_ends() });
        // Reports on flows already leased are still taken.
        Spec::<JobAggregate>::given(history([leased(r1(), 1, &[(0, 4)], 0)]))
            .in_context(gateway(lapsed + 1))
            .when(report_cmd(r1(), vec![ok(0)]))
            .then([reported(r1(), vec![ok(0)])]);
    }

    #[test]
    fn safe_mode_halts_a_run_and_takes_back_every_lease() {
        let given = history([
            leased(r1(), 1, &[(0, 4)], 0),
            leased(r2(), 1, &[(4, 8)], 0),
            reported(r1(), vec![ok(0)]),
        ]);
        let on = ConsentChecks {
            system: SystemSettingsState::default(),
            ..consent(&[
                ("shop.example.com", verified_for("ada")),
                ("blog.example.com", verified_for("ada")),
            ])
        };
        let state = Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(1))
            .when(JobCommand::CheckConsent(on.clone()))
            .then([halted(
                "safe mode is on (a fresh install starts in safe mode): no job may start until a super-admin turns it off with a reason",
            )]);
        let halted_job = job(&state);
        assert_eq!(halted_job.status, JobStatus::Paused);
        assert!(halted_job.leases.is_empty(), "every lease taken back");
        assert_eq!(
            halted_job.pool.ranges(),
            [range(1, 16)],
            "unfinished flows back in the pool, the finished one counted"
        );
        assert_eq!(halted_job.tally.finished, 1);
        let mut after = given.clone();
        after.push(halted("safe mode is on"));
        // Its runners' reports on those flows are refused, nothing more is
        // leased, and it stays halted however often it is checked.
        Spec::<JobAggregate>::given(after.clone())
            .in_context(gateway(2))
            .when(report_cmd(r1(), vec![ok(1)]))
            .then_err(|e| matches!(e, JobError::NotHeld { .. }));
        Spec::<JobAggregate>::given(after.clone())
            .in_context(gateway(2))
            .when(lease_cmd(r1(), 1, 4))
            .then_err(|e| matches!(e, JobError::WrongStatus { .. }));
        Spec::<JobAggregate>::given(after.clone())
            .in_context(gateway(2))
            .when(JobCommand::CheckConsent(on.clone()))
            .then([]);
        // Resumed by its owner only once safe mode is off again.
        Spec::<JobAggregate>::given(after.clone())
            .in_context(ada())
            .when(JobCommand::Resume(RunChecks {
                system: on.system,
                ..checks()
            }))
            .then_err(|e| matches!(e, JobError::SafeMode(_)));
        let state = Spec::<JobAggregate>::given(after)
            .in_context(ada())
            .when(JobCommand::Resume(checks()))
            .then([JobEvent::JobResumed(JobResumed {
                by: "ada".into(),
                consented_until: Some(consent_ends()),
            })]);
        assert_eq!(job(&state).status, JobStatus::Running);
    }

    #[test]
    fn a_domain_that_lost_its_consent_halts_the_run_naming_it() {
        // blog.example.com's listing was removed; nothing else consents.
        Spec::<JobAggregate>::given(history([leased(r1(), 1, &[(0, 4)], 0)]))
            .in_context(gateway(1))
            .when(JobCommand::CheckConsent(consent(&[(
                "shop.example.com",
                verified_for("ada"),
            )])))
            .then([halted(
                "traffic may not go to blog.example.com: blog.example.com: the account has not claimed it; claim it and publish the verification token",
            )]);
        // Its verification expired: the same, from when leasing stops.
        let lapsed = (consent_ends() - now()).whole_seconds();
        let state = JobAggregate::fold(&running());
        let events = JobAggregate::decide(
            &state,
            JobCommand::CheckConsent(consent(&[
                ("shop.example.com", verified_for("ada")),
                ("blog.example.com", verified_for("ada")),
            ])),
            &gateway(lapsed),
        )
        .unwrap();
        let [JobEvent::JobHalted(JobHalted { reason })] = &events[..] else {
            panic!("{events:?}")
        };
        assert!(
            reason.as_str().starts_with(
                "traffic may not go to shop.example.com, blog.example.com: shop.example.com: its verification expired at "
            ),
            "{reason}"
        );
    }

    #[test]
    fn a_consent_that_now_ends_at_another_time_is_recorded_once() {
        let checks = consent(&[
            ("shop.example.com", allow_listed()),
            ("blog.example.com", allow_listed()),
        ]);
        let rechecked = JobEvent::ConsentRechecked(ConsentRechecked {
            consented_until: None,
        });
        let state = Spec::<JobAggregate>::given(running())
            .in_context(gateway(1))
            .when(JobCommand::CheckConsent(checks.clone()))
            .then([rechecked.clone()]);
        assert_eq!(job(&state).consented_until, None);
        // Allow-listed now: leases go on past the old verification's end.
        let lapsed = (consent_ends() - now()).whole_seconds();
        Spec::<JobAggregate>::given(history([rechecked.clone()]))
            .in_context(gateway(lapsed + 1))
            .when(lease_cmd(r1(), 1, 2))
            .then([leased(r1(), 1, &[(0, 2)], lapsed + 1)]);
        Spec::<JobAggregate>::given(history([rechecked]))
            .in_context(gateway(2))
            .when(JobCommand::CheckConsent(checks))
            .then([]);
        Spec::<JobAggregate>::given(running())
            .in_context(gateway(2))
            .when(JobCommand::CheckConsent(consent(&[
                ("shop.example.com", verified_for("ada")),
                ("blog.example.com", verified_for("ada")),
            ])))
            .then([]);
    }

    #[test]
    fn only_the_gateway_checks_and_only_runs_and_paused_jobs_holding_leases_are_halted() {
        let safe_mode = ConsentChecks {
            system: SystemSettingsState::default(),
            ..consent(&[])
        };
        Spec::<JobAggregate>::given(running())
            .in_context(ada())
            .when(JobCommand::CheckConsent(safe_mode.clone()))
            .then_err(|e| matches!(e, JobError::Forbidden(_)));
        let stopped = JobEvent::JobStopped(JobStopped {
            by: "ada".into(),
            reason: None,
        });
        for given in [vec![created()], history([paused()]), history([stopped])] {
            Spec::<JobAggregate>::given(given)
                .in_context(gateway(1))
                .when(JobCommand::CheckConsent(safe_mode.clone()))
                .then([]);
        }
        // Paused by its owner while runners still finish flows: those stop.
        let state = Spec::<JobAggregate>::given(history([leased(r1(), 1, &[(0, 4)], 0), paused()]))
            .in_context(gateway(1))
            .when(JobCommand::CheckConsent(safe_mode))
            .then([halted(
                "safe mode is on (a fresh install starts in safe mode): no job may start until a super-admin turns it off with a reason",
            )]);
        assert!(job(&state).leases.is_empty());
        assert_eq!(job(&state).pool.len(), 16);
    }

    #[test]
    fn a_start_recorded_before_consent_ends_were_kept_reads_as_unbounded() {
        for ty in ["JobStarted", "JobResumed"] {
            let recorded = crate::RecordedEvent {
                position: crate::Position::new(1, 0),
                id: crate::EventId::new(),
                stream_id: id().stream().unwrap(),
                stream_version: 1,
                event_type: ty.into(),
                schema_version: 1,
                recorded_at: now(),
                data: r#"{"by":"ada"}"#.into(),
                metadata: crate::Metadata::default(),
            };
            let decoded: JobEvent = crate::event_registry().decode(&recorded).unwrap();
            let until = match decoded {
                JobEvent::JobStarted(e) => e.consented_until,
                JobEvent::JobResumed(e) => e.consented_until,
                other => panic!("{other:?}"),
            };
            assert_eq!(until, None);
        }
    }

    // ---- leasing

    #[test]
    fn a_runner_leases_a_batch_of_flows_as_ranges() {
        let state = Spec::<JobAggregate>::given(running())
            .in_context(gateway(0))
            .when(lease_cmd(r1(), 2, 10))
            .then([leased(r1(), 2, &[(0, 10)], 0)]);
        let job = job(&state);
        assert_eq!(job.pool.ranges(), [range(10, 16)]);
        assert_eq!(job.leases[&r1()].held.ranges(), [range(0, 10)]);
        assert_eq!(job.slots_in_use(), 2);
        // A second request tops the lease up with the next flows.
        Spec::<JobAggregate>::given(history([leased(r1(), 2, &[(0, 10)], 0)]))
            .in_context(gateway(5))
            .when(lease_cmd(r1(), 0, 100))
            .then([leased(r1(), 0, &[(10, 16)], 5)]);
    }

    #[test]
    fn leasing_stays_within_the_jobs_instances() {
        // r1 takes 3 of the 4 instances; r2 asks for 2 and gets the one left.
        Spec::<JobAggregate>::given(history([leased(r1(), 3, &[(0, 6)], 0)]))
            .in_context(gateway(0))
            .when(lease_cmd(r2(), 2, 4))
            .then([leased(r2(), 1, &[(6, 10)], 0)]);
        Spec::<JobAggregate>::given(history([
            leased(r1(), 3, &[(0, 6)], 0),
            leased(r2(), 1, &[(6, 10)], 0),
        ]))
        .in_context(gateway(0))
        .when(lease_cmd(RunnerId(Uuid::from_u128(3)), 4, 4))
        .then_err(|e| *e == JobError::InstancesInUse { instances: 4 });
    }

    #[test]
    fn a_runner_holds_at_most_its_slots_worth_of_flows() {
        let big = JobEvent::JobCreated(Box::new(JobCreated {
            job: id(),
            spec: spec(),
            targets: 1,
            flows: 1000,
            plan: vec![run_of(1, "shop.example.com", 1000, 0)],
            by: "ada".into(),
        }));
        Spec::<JobAggregate>::given([big.clone(), started()])
            .in_context(gateway(0))
            .when(lease_cmd(r1(), 1, 1000))
            .then([leased(r1(), 1, &[(0, FLOWS_PER_SLOT)], 0)]);
        Spec::<JobAggregate>::given([big, started(), leased(r1(), 1, &[(0, FLOWS_PER_SLOT)], 0)])
            .in_context(gateway(0))
            .when(lease_cmd(r1(), 0, 1000))
            .then([]);
    }

    #[test]
    fn a_runner_whose_platform_no_device_profile_asks_for_gets_nothing() {
        let windows = Platform {
            os: Os::Windows,
            browser: Browser::Chrome,
        };
        Spec::<JobAggregate>::given(running())
            .in_context(gateway(0))
            .when(JobCommand::LeaseFlows {
                runner: r1(),
                platform: windows,
                slots: 1,
                flows: 10,
                ttl: ttl(),
            })
            .then_err(|e| {
                e.to_string()
                    == "the runner serves Chrome on Windows, which none of the job's device profiles (Chromium on Linux) asks for"
            });
    }

    #[test]
    fn only_a_running_job_is_leased_and_only_through_the_gateway() {
        Spec::<JobAggregate>::given(history([paused()]))
            .in_context(gateway(0))
            .when(lease_cmd(r1(), 1, 10))
            .then_err(|e| e.to_string() == "a paused job cannot be leased");
        Spec::<JobAggregate>::given([created()])
            .in_context(gateway(0))
            .when(lease_cmd(r1(), 1, 10))
            .then_err(|e| e.to_string() == "a ready job cannot be leased");
        for command in [
            lease_cmd(r1(), 1, 10),
            report_cmd(r1(), vec![ok(0)]),
            JobCommand::ExpireLeases,
            JobCommand::HandBack {
                runner: r1(),
                flows: Returned::All,
            },
        ] {
            Spec::<JobAggregate>::given(running())
                .in_context(as_account("root", Role::SuperAdmin))
                .when(command)
                .then_err(|e| matches!(e, JobError::Forbidden(_)));
        }
        Spec::<JobAggregate>::given(running())
            .in_context(gateway(0))
            .when(JobCommand::LeaseFlows {
                runner: r1(),
                platform: linux_chromium(),
                slots: 1,
                flows: 1,
                ttl: Duration::ZERO,
            })
            .then_err(|e| *e == JobError::BadTtl);
    }

    // ---- reporting

    #[test]
    fn a_runner_reports_a_batch_of_its_flows_in_one_event() {
        let reports = vec![
            FlowReport::Started {
                flow: FlowId(2),
                proxy: Some(ProxyIndex(1)),
            },
            ok(0),
            finished(
                1,
                FlowOutcome::Failed {
                    reason: FlowFailure::Timeout,
                },
            ),
            FlowReport::ProxyFailedOver {
                flow: FlowId(2),
                from: ProxyIndex(1),
                to: Some(ProxyIndex(2)),
                error: "connection refused".into(),
            },
            FlowReport::Log {
                flow: None,
                level: LogLevel::Info,
                message: "warming up".into(),
            },
        ];
        let state = Spec::<JobAggregate>::given(history([leased(r1(), 1, &[(0, 4)], 0)]))
            .in_context(gateway(1))
            .when(report_cmd(r1(), reports.clone()))
            .then([reported(r1(), reports)]);
        let job = job(&state);
        assert_eq!(
            job.tally,
            Tally {
                finished: 2,
                succeeded: 1,
                failed: 1,
                clicked: 0,
                pages: 2,
                page_errors: 0,
            }
        );
        assert_eq!(job.done.ranges(), [range(0, 2)]);
        assert_eq!(job.leases[&r1()].held.ranges(), [range(2, 4)]);
        assert_eq!(job.in_progress(), 1);
    }

    #[test]
    fn a_runner_may_report_only_flows_it_holds() {
        // r1 holds 0..4, r2 holds 4..8; r1 reports 3 (its own), 5 (r2's) and 99 (none).
        Spec::<JobAggregate>::given(history([
            leased(r1(), 1, &[(0, 4)], 0),
            leased(r2(), 1, &[(4, 8)], 0),
        ]))
        .in_context(gateway(1))
        .when(report_cmd(r1(), vec![ok(3), ok(5), ok(99)]))
        .then_err(|e| {
            e.to_string()
                == format!(
                    "runner {} does not hold flow 5, flow 99: report and hand back only flows a lease gave it",
                    r1()
                )
        });
        Spec::<JobAggregate>::given(running())
            .in_context(gateway(1))
            .when(report_cmd(r1(), (0..12).map(ok).collect()))
            .then_err(
                |e| matches!(e, JobError::NotHeld { flows, more: 2, .. } if flows.len() == 10),
            );
    }

    #[test]
    fn a_batch_sent_twice_counts_once() {
        let batch = vec![ok(0), ok(1)];
        let given = history([leased(r1(), 1, &[(0, 4)], 0), reported(r1(), batch.clone())]);
        let state = Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(2))
            .when(report_cmd(r1(), batch))
            .then([]);
        assert_eq!(job(&state).tally.finished, 2);
        // Mixed with news, only the news is recorded.
        Spec::<JobAggregate>::given(given)
            .in_context(gateway(2))
            .when(report_cmd(r1(), vec![ok(1), ok(2), ok(2)]))
            .then([reported(r1(), vec![ok(2)])]);
    }

    #[test]
    fn a_flow_leased_twice_counts_once() {
        // r1 went silent with 0..4; they expired and r2 leased and finished them.
        let given = history([
            leased(r1(), 1, &[(0, 4)], 0),
            JobEvent::LeaseExpired(LeaseExpired {
                runner: r1(),
                flows: vec![range(0, 4)],
            }),
            leased(r2(), 1, &[(0, 4)], 40),
            reported(r2(), vec![ok(0), ok(1)]),
        ]);
        // r1 comes back and reports: 0 and 1 are known, 2 is r2's now.
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(50))
            .when(report_cmd(r1(), vec![ok(0), ok(1), ok(2)]))
            .then_err(|e| matches!(e, JobError::NotHeld { flows, .. } if *flows == [FlowId(2)]));
        let state = Spec::<JobAggregate>::given(given)
            .in_context(gateway(50))
            .when(report_cmd(r1(), vec![ok(0), ok(1)]))
            .then([]);
        assert_eq!(job(&state).tally.finished, 2);
    }

    #[test]
    fn the_job_is_done_when_its_last_flow_finishes() {
        let all: Vec<FlowReport> = (0..16)
            .map(|f| {
                if f == 15 {
                    finished(
                        f,
                        FlowOutcome::Failed {
                            reason: FlowFailure::HttpStatus { status: 404 },
                        },
                    )
                } else {
                    ok(f)
                }
            })
            .collect();
        let state = Spec::<JobAggregate>::given(history([leased(r1(), 1, &[(0, 16)], 0)]))
            .in_context(gateway(1))
            .when(report_cmd(r1(), all.clone()))
            .then([
                reported(r1(), all),
                JobEvent::JobCompleted(JobCompleted {
                    succeeded: 15,
                    failed: 1,
                }),
            ]);
        let job = job(&state);
        assert_eq!(job.status, JobStatus::Done);
        assert!(job.leases.is_empty() && job.pool.is_empty());
        assert_eq!(job.done.ranges(), [range(0, 16)]);
    }

    #[test]
    fn a_paused_job_takes_the_reports_of_flows_in_flight_and_may_end_done() {
        let given = history([
            leased(r1(), 1, &[(0, 16)], 0),
            reported(r1(), (0..15).map(ok).collect()),
            paused(),
        ]);
        Spec::<JobAggregate>::given(given)
            .in_context(gateway(2))
            .when(report_cmd(r1(), vec![ok(15)]))
            .then([
                reported(r1(), vec![ok(15)]),
                JobEvent::JobCompleted(JobCompleted {
                    succeeded: 16,
                    failed: 0,
                }),
            ]);
        let stopped = JobEvent::JobStopped(JobStopped {
            by: "ada".into(),
            reason: None,
        });
        Spec::<JobAggregate>::given(history([leased(r1(), 1, &[(0, 4)], 0), stopped]))
            .in_context(gateway(2))
            .when(report_cmd(r1(), vec![ok(0)]))
            .then_err(|e| e.to_string() == "a stopped job cannot be reported on");
    }

    #[test]
    fn the_auto_abort_stops_a_job_hurting_its_site_with_the_figures() {
        let mut guarded = spec();
        guarded.thresholds.auto_abort = Some(AutoAbort {
            error_rate: PerMille::new(250).unwrap(),
            min_pages: 4,
        });
        let bad = |flow: u64, status: Option<u16>| {
            FlowReport::Finished(FlowFinished {
                pages: vec![PageLoad {
                    ms: 9000,
                    status,
                    vitals: PageVitals::default(),
                }],
                ..match finished(flow, FlowOutcome::Succeeded) {
                    FlowReport::Finished(f) => f,
                    _ => unreachable!(),
                }
            })
        };
        let given = vec![
            created_with(guarded),
            started(),
            leased(r1(), 1, &[(0, 16)], 0),
        ];
        // 3 pages, 2 errors: under the sample, nothing trips.
        let few = vec![bad(0, Some(503)), bad(1, None), ok(2)];
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(1))
            .when(report_cmd(r1(), few.clone()))
            .then([reported(r1(), few.clone())]);
        // A fourth page makes the sample: 2 of 4 is over 25%.
        let state = Spec::<JobAggregate>::given(given.iter().cloned().chain([reported(r1(), few)]))
            .in_context(gateway(2))
            .when(report_cmd(r1(), vec![ok(3)]))
            .then([
                reported(r1(), vec![ok(3)]),
                JobEvent::JobFailed(JobFailed {
                    failure: JobFailure::ErrorRateTripped {
                        domain: name("shop.example.com"),
                        errors: 2,
                        pages: 4,
                        limit: PerMille::new(250).unwrap(),
                        min_pages: 4,
                    },
                }),
            ]);
        let job = job(&state);
        assert_eq!(job.status, JobStatus::Failed);
        assert!(job.leases.is_empty());
        assert_eq!(
            job.failure.as_ref().unwrap().to_string(),
            "stopped to protect shop.example.com: 2 of 4 pages answered with a server error or not at all (50%), over the auto-abort limit of 25% (after at least 4 pages)"
        );
    }

    #[test]
    fn external_clicks_need_the_setting_and_the_owners_consent() {
        let external = |flow: u64| {
            FlowReport::Finished(FlowFinished {
                clicks: vec![
                    Click::Internal,
                    Click::External {
                        domain: name("partner.example"),
                    },
                ],
                ..match ok(flow) {
                    FlowReport::Finished(f) => f,
                    _ => unreachable!(),
                }
            })
        };
        let given = history([leased(r1(), 1, &[(0, 4)], 0)]);
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(1))
            .when(report_cmd(r1(), vec![external(0)]))
            .then_err(|e| {
                e.to_string()
                    == "flow 0: an external click to partner.example, which the owner has not consented to"
            });
        let consent = crate::click_consent::ClickConsent::fold(&[
            crate::click_consent::ClickConsentEvent::ExternalClicksGranted(
                crate::click_consent::ExternalClicksGranted {
                    domain: name("partner.example"),
                    reason: Reason::parse("partner").unwrap(),
                    by: "ada".into(),
                },
            ),
        ]);
        let state = Spec::<JobAggregate>::given(given)
            .in_context(gateway(1))
            .when(JobCommand::ReportFlows {
                runner: r1(),
                reports: vec![external(0)],
                click_consent: consent.clone(),
            })
            .then([reported(r1(), vec![external(0)])]);
        assert_eq!(job(&state).tally.clicked, 1);
        let mut no_external = spec();
        no_external.settings.external_clicks = false;
        Spec::<JobAggregate>::given([
            created_with(no_external),
            started(),
            leased(r1(), 1, &[(0, 4)], 0),
        ])
        .in_context(gateway(1))
        .when(JobCommand::ReportFlows {
            runner: r1(),
            reports: vec![external(0)],
            click_consent: consent,
        })
        .then_err(|e| e.to_string().contains("do not follow external links"));
        // A skipped click is recorded, needs nothing, and is not a click done.
        let skipped = FlowReport::Finished(FlowFinished {
            clicks: vec![Click::Skipped {
                domain: Some(name("elsewhere.example")),
                reason: SkipReason::NotConsented,
            }],
            ..match ok(1) {
                FlowReport::Finished(f) => f,
                _ => unreachable!(),
            }
        });
        let state = Spec::<JobAggregate>::given(history([leased(r1(), 1, &[(0, 4)], 0)]))
            .in_context(gateway(1))
            .when(report_cmd(r1(), vec![skipped.clone()]))
            .then([reported(r1(), vec![skipped])]);
        assert_eq!(job(&state).tally.clicked, 0);
    }

    fn finished_with(
        flow: u64,
        outcome: FlowOutcome,
        edit: impl FnOnce(&mut FlowFinished),
    ) -> FlowReport {
        let FlowReport::Finished(mut f) = finished(flow, outcome) else {
            unreachable!()
        };
        edit(&mut f);
        FlowReport::Finished(f)
    }

    fn artifact(kind: ArtifactKind, bytes: u64) -> ArtifactRef {
        ArtifactRef {
            kind,
            blob: BlobHash::of(kind.name().as_bytes()),
            bytes,
        }
    }

    fn timed_out() -> FlowOutcome {
        FlowOutcome::Failed {
            reason: FlowFailure::Timeout,
        }
    }

    #[test]
    fn a_failed_flow_reports_its_artifacts_and_its_pages_their_vitals() {
        let failed = finished_with(1, timed_out(), |f| {
            f.pages[0].vitals = PageVitals {
                ttfb_ms: Some(35),
                fcp_ms: Some(120),
                lcp_ms: Some(480),
                cls_milli: Some(12),
                inp_ms: None,
            };
            f.artifacts = ArtifactKind::ALL
                .into_iter()
                .map(|k| artifact(k, 2048))
                .collect();
        });
        Spec::<JobAggregate>::given(history([leased(r1(), 1, &[(0, 4)], 0)]))
            .in_context(gateway(1))
            .when(report_cmd(r1(), vec![failed.clone()]))
            .then([reported(r1(), vec![failed])]);
    }

    #[test]
    fn artifacts_are_refused_on_a_succeeded_flow_twice_of_a_kind_or_over_the_limit() {
        let given = history([leased(r1(), 1, &[(0, 4)], 0)]);
        let refused = |report: FlowReport, why: &'static str| {
            Spec::<JobAggregate>::given(given.clone())
                .in_context(gateway(1))
                .when(report_cmd(r1(), vec![report]))
                .then_err(|e| matches!(e, JobError::BadReport { why: w, .. } if w.contains(why)));
        };
        refused(
            finished_with(0, FlowOutcome::Succeeded, |f| {
                f.artifacts = vec![artifact(ArtifactKind::Screenshot, 10)]
            }),
            "failed flows only",
        );
        refused(
            finished_with(0, timed_out(), |f| {
                f.artifacts = vec![
                    artifact(ArtifactKind::RequestLog, 10),
                    artifact(ArtifactKind::RequestLog, 20),
                ]
            }),
            "two request_log artifacts",
        );
        refused(
            finished_with(0, timed_out(), |f| {
                f.artifacts = vec![artifact(
                    ArtifactKind::Screenshot,
                    MAX_ARTIFACT_BYTES as u64 + 1,
                )]
            }),
            "the limit is 4194304",
        );
    }

    #[test]
    fn a_report_written_before_vitals_and_artifacts_reads_as_having_none() {
        let old = r#"{"kind":"finished","flow":3,"outcome":{"status":"succeeded"},"duration_ms":10,"pages":[{"ms":80,"status":200}]}"#;
        let FlowReport::Finished(f) = serde_json::from_str::<FlowReport>(old).unwrap() else {
            panic!("not a finished report")
        };
        assert!(f.pages[0].vitals.is_empty());
        assert!(f.artifacts.is_empty());
        let again = serde_json::to_string(&FlowReport::Finished(f)).unwrap();
        assert_eq!(again, old, "nothing added to what it wrote");
    }

    #[test]
    fn bad_reports_are_refused_saying_why_and_runner_text_is_kept_to_one_bounded_line() {
        let given = history([leased(r1(), 1, &[(0, 4)], 0)]);
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(1))
            .when(report_cmd(
                r1(),
                vec![FlowReport::Started {
                    flow: FlowId(0),
                    proxy: Some(ProxyIndex(3)),
                }],
            ))
            .then_err(|e| {
                e.to_string() == "flow 0: proxy #3 is not in the job's proxies version, which has 3"
            });
        let many_pages = FlowReport::Finished(FlowFinished {
            pages: vec![
                PageLoad {
                    ms: 1,
                    status: Some(200),
                    vitals: PageVitals::default(),
                };
                MAX_PAGES_PER_FLOW + 1
            ],
            ..match ok(0) {
                FlowReport::Finished(f) => f,
                _ => unreachable!(),
            }
        });
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(1))
            .when(report_cmd(r1(), vec![many_pages]))
            .then_err(|e| e.to_string().contains("at most 50"));
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(1))
            .when(report_cmd(r1(), vec![ok(0); MAX_REPORTS_PER_BATCH + 1]))
            .then_err(|e| *e == JobError::TooManyReports { count: 501 });
        let noisy = format!("line one\nline two {}", "x".repeat(600));
        let state = Spec::<JobAggregate>::given(given)
            .in_context(gateway(1))
            .when(report_cmd(
                r1(),
                vec![
                    FlowReport::Log {
                        flow: Some(FlowId(1)),
                        level: LogLevel::Warn,
                        message: noisy.clone(),
                    },
                    finished(
                        2,
                        FlowOutcome::Failed {
                            reason: FlowFailure::Browser {
                                detail: noisy.clone(),
                            },
                        },
                    ),
                ],
            ))
            .then([reported(
                r1(),
                vec![
                    FlowReport::Log {
                        flow: Some(FlowId(1)),
                        level: LogLevel::Warn,
                        message: one_line(&noisy, MAX_LOG_CHARS),
                    },
                    finished(
                        2,
                        FlowOutcome::Failed {
                            reason: FlowFailure::Browser {
                                detail: one_line(&noisy, MAX_DETAIL_CHARS),
                            },
                        },
                    ),
                ],
            )]);
        assert_eq!(job(&state).tally.failed, 1);
        assert!(!one_line(&noisy, MAX_LOG_CHARS).contains('\n'));
    }

    // ---- giving flows back

    #[test]
    fn a_silent_runners_lease_expires_and_its_flows_are_leased_again() {
        let given = history([
            leased(r1(), 1, &[(0, 6)], 0),
            reported(
                r1(),
                vec![
                    ok(0),
                    FlowReport::Started {
                        flow: FlowId(1),
                        proxy: None,
                    },
                ],
            ),
        ]);
        // Not yet: the lease runs 30 s.
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(29))
            .when(JobCommand::ExpireLeases)
            .then([]);
        let expired = JobEvent::LeaseExpired(LeaseExpired {
            runner: r1(),
            flows: vec![range(1, 6)],
        });
        let state = Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(30))
            .when(JobCommand::ExpireLeases)
            .then([expired.clone()]);
        let job = job(&state);
        assert_eq!(job.pool.ranges(), [range(1, 16)]);
        assert_eq!((job.slots_in_use(), job.in_progress()), (0, 0));
        Spec::<JobAggregate>::given(given.into_iter().chain([expired]))
            .in_context(gateway(31))
            .when(lease_cmd(r2(), 1, 3))
            .then([leased(r2(), 1, &[(1, 4)], 31)]);
    }

    #[test]
    fn a_heartbeat_renews_a_lease_only_once_half_its_time_has_passed() {
        let given = history([leased(r1(), 1, &[(0, 4)], 0)]);
        let renew = JobCommand::RenewLease {
            runner: r1(),
            ttl: ttl(),
        };
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(10))
            .when(renew.clone())
            .then([]);
        let renewed = JobEvent::LeaseRenewed(LeaseRenewed {
            runner: r1(),
            expires_at: now() + Duration::seconds(15) + ttl(),
        });
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(15))
            .when(renew.clone())
            .then([renewed.clone()]);
        Spec::<JobAggregate>::given(given.iter().cloned().chain([renewed]))
            .in_context(gateway(40))
            .when(JobCommand::ExpireLeases)
            .then([]);
        // Nothing held, nothing to renew.
        Spec::<JobAggregate>::given(given)
            .in_context(gateway(15))
            .when(JobCommand::RenewLease {
                runner: r2(),
                ttl: ttl(),
            })
            .then([]);
    }

    #[test]
    fn a_draining_runner_hands_back_what_it_will_not_run_at_once() {
        let given = history([
            leased(r1(), 2, &[(0, 8)], 0),
            reported(r1(), vec![ok(0), ok(5)]),
        ]);
        // It returns 0..8 but finished 0 and 5 meanwhile: those stay done.
        let state = Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(1))
            .when(JobCommand::HandBack {
                runner: r1(),
                flows: Returned::Flows(vec![range(0, 8)]),
            })
            .then([JobEvent::FlowsHandedBack(FlowsHandedBack {
                runner: r1(),
                flows: vec![range(1, 5), range(6, 8)],
            })]);
        let job = job(&state);
        assert!(job.leases.is_empty(), "nothing held: its slots are free");
        assert_eq!(job.pool.ranges(), [range(1, 5), range(6, 16)]);
        Spec::<JobAggregate>::given(given.clone())
            .in_context(gateway(1))
            .when(JobCommand::HandBack {
                runner: r1(),
                flows: Returned::All,
            })
            .then([JobEvent::FlowsHandedBack(FlowsHandedBack {
                runner: r1(),
                flows: vec![range(1, 5), range(6, 8)],
            })]);
        Spec::<JobAggregate>::given(given)
            .in_context(gateway(1))
            .when(JobCommand::HandBack {
                runner: r1(),
                flows: Returned::Flows(vec![range(6, 12)]),
            })
            .then_err(|e| matches!(e, JobError::NotHeld { flows, more: 0, .. } if flows.iter().map(|f| f.0).eq(8..12)));
    }

    // ---- schema and audit

    #[test]
    fn a_job_created_before_the_marker_header_option_reads_with_it_on() {
        let JobEvent::JobCreated(current) = created() else {
            unreachable!()
        };
        let mut v1 = serde_json::to_value(&current).unwrap();
        v1["spec"]["settings"]
            .as_object_mut()
            .unwrap()
            .remove("marker_header");
        let recorded = crate::RecordedEvent {
            position: crate::Position::new(1, 0),
            id: crate::EventId::new(),
            stream_id: id().stream().unwrap(),
            stream_version: 0,
            event_type: "JobCreated".into(),
            schema_version: 1,
            recorded_at: now(),
            data: v1.to_string(),
            metadata: crate::Metadata::default(),
        };
        let decoded: JobEvent = crate::event_registry().decode(&recorded).unwrap();
        let JobEvent::JobCreated(decoded) = decoded else {
            panic!("not JobCreated")
        };
        assert!(decoded.spec.settings.marker_header);
        assert_eq!(decoded, current);
        // Read as today's schema, a payload without the field is refused
        // rather than silently read as off.
        let err = crate::event_registry()
            .decode::<JobEvent>(&crate::RecordedEvent {
                schema_version: 2,
                ..recorded
            })
            .unwrap_err();
        assert!(err.to_string().contains("marker_header"), "{err}");
    }

    #[test]
    fn summaries_say_what_happened_to_the_job_and_its_flows() {
        let stream = id().stream().unwrap();
        let line = |e: JobEvent| e.summary(&stream);
        assert_eq!(
            line(created()),
            format!(
                "job \"Launch check\" ({stream}) created for ada by ada: 16 flows over 3 targets"
            )
        );
        assert_eq!(
            line(leased(r1(), 2, &[(0, 4), (8, 10)], 0)),
            format!(
                "runner {} leased 6 flows of {stream} with 2 more slots, until {}",
                r1(),
                now() + ttl()
            )
        );
        assert_eq!(
            line(reported(
                r1(),
                vec![
                    ok(0),
                    finished(
                        1,
                        FlowOutcome::Failed {
                            reason: FlowFailure::Timeout
                        }
                    ),
                    FlowReport::Started {
                        flow: FlowId(2),
                        proxy: None
                    },
                ]
            )),
            format!(
                "runner {} reported on {stream}: 2 flows finished (1 succeeded, 1 failed), 1 started, 0 proxy failovers, 0 log lines",
                r1()
            )
        );
        assert_eq!(
            line(JobEvent::LeaseExpired(LeaseExpired {
                runner: r1(),
                flows: vec![range(3, 9)],
            })),
            format!(
                "lease of runner {} on {stream} expired: 6 flows back in the pool",
                r1()
            )
        );
        assert_eq!(
            line(halted("safe mode is on")),
            format!("{stream} halted (paused, its leases taken back): safe mode is on")
        );
        assert_eq!(
            line(JobEvent::ConsentRechecked(ConsentRechecked {
                consented_until: None
            })),
            format!("consent of {stream} checked again: it holds until withdrawn")
        );
    }

    // ---- the rules under any interleaving

    /// Three runners lease, report, hand back and go silent in a random
    /// order: every flow is always in exactly one of pool, a lease, done;
    /// the counters match the done set; and the job ends done with every
    /// flow counted once.
    #[test]
    fn any_interleaving_ends_done_with_every_flow_counted_once() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut big = spec();
        big.settings.instances = 5;
        let rows: Vec<TargetPlan> = (0..40)
            .map(|i| {
                target(
                    if i % 3 == 0 { "a.example" } else { "b.example" },
                    1 + i % 13,
                    0,
                )
            })
            .collect();
        let mut events = JobAggregate::decide(
            &JobState::default(),
            JobCommand::Create {
                id: id(),
                spec: big,
                targets: rows,
            },
            &ada(),
        )
        .unwrap();
        events.push(started());
        let mut state = JobAggregate::fold(&events);
        let total = job(&state).plan.flows();
        let runners = [r1(), r2(), RunnerId(Uuid::from_u128(3))];
        let mut clock = 0;
        for _ in 0..20_000 {
            if job(&state).status == JobStatus::Done {
                break;
            }
            clock += next(4) as i64;
            let runner = runners[next(3) as usize];
            let held: Vec<FlowId> = job(&state)
                .leases
                .get(&runner)
                .map(|l| l.held.ranges().iter().flat_map(|r| r.flows()).collect())
                .unwrap_or_default();
            let command = match next(10) {
                0..=2 => lease_cmd(runner, 1 + next(2) as u32, 1 + next(30)),
                3..=6 if !held.is_empty() => {
                    // Some of its own flows, plus now and then one already done.
                    let mut reports: Vec<FlowReport> = held
                        .iter()
                        .filter(|_| next(3) == 0)
                        .map(|f| ok(f.0))
                        .collect();
                    if let Some(done) = job(&state).done.ranges().first() {
                        reports.push(ok(done.start()));
                    }
                    report_cmd(runner, reports)
                }
                7 if !held.is_empty() => JobCommand::HandBack {
                    runner,
                    flows: Returned::Flows(vec![FlowRange::one(
                        held[next(held.len() as u64) as usize],
                    )]),
                },
                8 => JobCommand::RenewLease { runner, ttl: ttl() },
                _ => JobCommand::ExpireLeases,
            };
            let produced = match JobAggregate::decide(&state, command, &gateway(clock)) {
                Ok(events) => events,
                Err(JobError::InstancesInUse { .. }) => vec![],
                Err(e) => panic!("unexpected refusal: {e}"),
            };
            for event in &produced {
                state = JobAggregate::evolve(state, event);
            }
            events.extend(produced);
            let job = job(&state);
            let mut seen = job.pool.clone();
            let mut count = job.pool.len() + job.done.len();
            for lease in job.leases.values() {
                count += lease.held.len();
                seen.extend(lease.held.ranges().iter().copied());
                assert!(
                    lease
                        .held
                        .ranges()
                        .iter()
                        .all(|r| job.done.overlap(*r).next().is_none())
                );
            }
            seen.extend(job.done.ranges().iter().copied());
            assert_eq!(count, total, "a flow is in two places or none");
            assert_eq!(seen.ranges(), [range(0, total)]);
            assert_eq!(job.tally.finished, job.done.len());
            assert!(job.slots_in_use() <= 5);
        }
        assert_eq!(
            job(&state).status,
            JobStatus::Done,
            "the job never finished"
        );
        assert_eq!(job(&state).tally.succeeded, total);
        // The log folds to the same state, and the state survives a snapshot.
        assert_eq!(JobAggregate::fold(&events), state);
        let snapshot = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<JobState>(&snapshot).unwrap(), state);
    }
}

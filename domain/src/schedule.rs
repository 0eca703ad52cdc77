//! A schedule: a job template that fires on its occurrences. Stream
//! `schedule-<id>`.
//!
//! SCHEDULED ⇄ PAUSED; → DELETING (a grace period that a restore cancels)
//! → DELETED; → ENDED after its last occurrence, its end date or its
//! maximum runs. Every event that moves the schedule along records its
//! next run, so the gateway's scheduler and the view read it as a fact.
//!
//! Firing is exactly once because it is a decision on this stream: the
//! `Fire` command claims every due occurrence with the stream's expected
//! version, so of several gateways deciding on one version one appends and
//! the others decide again on a state where nothing is due. An occurrence
//! older than [`ON_TIME_WITHIN`], or one whose next occurrence is due too,
//! was missed (no gateway fired it in its slot): it is recorded, and the
//! schedule's [`Missed`] policy fires one catch-up for them or skips them. A fire is refused (recorded, the schedule carries
//! on) when its owner's licence lacks the scheduler, or when the gateway
//! cannot start its job.
//!
//! Pure: the time comes in the [`Context`].

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::account::Username;
use crate::decider::{Actor, Context, Decider};
use crate::envelope::{StreamId, StreamIdError};
use crate::job::{DatasetVersionRef, JobId, MAX_JOB_NAME_CHARS};
use crate::licence::{Feature, NotLicensed};
use crate::occurrence::{Occurrence, Zone};
use crate::reason::one_line;
use crate::thresholds::{ThresholdError, Thresholds};

/// An occurrence this late or less fires; an older one was missed.
pub const ON_TIME_WITHIN: Duration = Duration::seconds(60);
/// Missed occurrences counted one by one; beyond this the count says "at least".
pub const MAX_COUNTED: u64 = 10_000;
/// Longest refusal reason kept, in characters.
pub const MAX_REFUSAL_CHARS: usize = 500;

/// A schedule's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScheduleId(pub Uuid);

impl ScheduleId {
    /// The schedule's stream: `schedule-<id>`.
    pub fn stream(self) -> Result<StreamId, StreamIdError> {
        StreamId::for_aggregate("schedule", self.0)
    }

    /// The schedule `stream` belongs to.
    pub fn of_stream(stream: &str) -> Option<Self> {
        stream
            .strip_prefix("schedule-")
            .and_then(|id| Uuid::parse_str(id).ok())
            .map(Self)
    }

    /// The job an occurrence makes: derived from both, so that whoever
    /// fires it names the same job.
    pub fn job_for(self, occurrence: OffsetDateTime) -> JobId {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.0.as_bytes());
        h.update(occurrence.unix_timestamp_nanos().to_be_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&h.finalize()[..16]);
        JobId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }
}

impl fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What each fire creates a job from: what `createJob` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTemplate {
    pub targets: DatasetVersionRef,
    pub device_profiles: DatasetVersionRef,
    pub settings_profile: DatasetVersionRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<DatasetVersionRef>,
    #[serde(default)]
    pub thresholds: Thresholds,
}

/// What becomes of occurrences missed while no gateway ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// One catch-up fire for all of them, on recovery.
    #[default]
    FireOnce,
    /// None: the schedule waits for its next occurrence.
    Skip,
}

/// What a schedule is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub owner: Username,
    pub name: String,
    pub template: JobTemplate,
    pub occurrence: Occurrence,
    pub zone: Zone,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub starts_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ends_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub max_runs: Option<u32>,
    #[serde(default)]
    pub missed: Missed,
}

impl ScheduleSpec {
    /// The first occurrence at or after `from` (or strictly after), within
    /// the end date, for a schedule created at `created_at`.
    fn next(
        &self,
        created_at: OffsetDateTime,
        from: OffsetDateTime,
        inclusive: bool,
    ) -> Option<OffsetDateTime> {
        let anchor = self.starts_at.unwrap_or(created_at);
        self.occurrence
            .next(&self.zone, anchor, from, inclusive)
            .filter(|at| self.ends_at.is_none_or(|end| *at <= end))
    }
}

/// Why a schedule ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ending {
    /// It fired its maximum number of runs.
    MaxRuns { runs: u32 },
    /// No occurrence is left before its end date, or at all.
    NoMoreOccurrences,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::MaxRuns { runs } => write!(f, "it fired its {runs} runs"),
            Ending::NoMoreOccurrences => f.write_str("no occurrence is left"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleCreated {
    pub schedule: ScheduleId,
    pub spec: ScheduleSpec,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleUpdated {
    pub spec: ScheduleSpec,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulePaused {
    pub by: String,
}

/// Occurrences while it was paused are not fired: it resumes at the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleResumed {
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleFired {
    #[serde(with = "time::serde::rfc3339")]
    pub occurrence: OffsetDateTime,
    /// The job it makes ([`ScheduleId::job_for`]).
    pub job: JobId,
    /// A catch-up for missed occurrences.
    pub catch_up: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
}

/// Occurrences no gateway fired in time, and what the policy did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OccurrencesMissed {
    #[serde(with = "time::serde::rfc3339")]
    pub first: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last: OffsetDateTime,
    /// How many; at most [`MAX_COUNTED`], meaning at least that many.
    pub count: u64,
    pub policy: Missed,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
}

/// An occurrence that did not start its job, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleFireRefused {
    #[serde(with = "time::serde::rfc3339")]
    pub occurrence: OffsetDateTime,
    /// The job it would have made, when it was fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleEnded {
    pub ending: Ending,
}

/// Deletion asked for: it takes effect at `effective_at` unless restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDeletionRequested {
    #[serde(with = "time::serde::rfc3339")]
    pub effective_at: OffsetDateTime,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRestored {
    pub by: String,
}

/// The grace period passed: the schedule is gone (its jobs stay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDeleted {}

crate::event_set! {
    /// What happens to a schedule.
    pub enum ScheduleEvent {
        ScheduleCreated(Box<ScheduleCreated>) = 1,
        ScheduleUpdated(Box<ScheduleUpdated>) = 1,
        SchedulePaused(SchedulePaused) = 1,
        ScheduleResumed(ScheduleResumed) = 1,
        ScheduleFired(ScheduleFired) = 1,
        OccurrencesMissed(OccurrencesMissed) = 1,
        ScheduleFireRefused(ScheduleFireRefused) = 1,
        ScheduleEnded(ScheduleEnded) = 1,
        ScheduleDeletionRequested(ScheduleDeletionRequested) = 1,
        ScheduleRestored(ScheduleRestored) = 1,
        ScheduleDeleted(ScheduleDeleted) = 1,
    }
}

impl ScheduleEvent {
    /// The next run this event records, if it moves the schedule along.
    pub fn next_run(&self) -> Option<Option<OffsetDateTime>> {
        match self {
            Self::ScheduleCreated(e) => Some(e.next_run),
            Self::ScheduleUpdated(e) => Some(e.next_run),
            Self::ScheduleResumed(e) => Some(e.next_run),
            Self::ScheduleFired(e) => Some(e.next_run),
            Self::OccurrencesMissed(e) => Some(e.next_run),
            Self::ScheduleFireRefused(e) => Some(e.next_run),
            Self::ScheduleEnded(_) => Some(None),
            _ => None,
        }
    }
}

impl crate::registry::Summary for ScheduleEvent {
    fn summary(&self, stream: &StreamId) -> String {
        match self {
            Self::ScheduleCreated(e) => format!(
                "schedule {:?} ({stream}) created for {} by {}: {}",
                e.spec.name,
                e.spec.owner,
                e.by,
                e.spec.occurrence.words(&e.spec.zone)
            ),
            Self::ScheduleUpdated(e) => format!(
                "{stream} updated by {}: {}",
                e.by,
                e.spec.occurrence.words(&e.spec.zone)
            ),
            Self::SchedulePaused(e) => format!("{stream} paused by {}", e.by),
            Self::ScheduleResumed(e) => format!("{stream} resumed by {}", e.by),
            Self::ScheduleFired(e) => format!(
                "{stream} fired{} for {}: job {}",
                if e.catch_up { " (catch-up)" } else { "" },
                e.occurrence,
                e.job
            ),
            Self::OccurrencesMissed(e) => format!(
                "{stream} missed {}{} occurrences from {} to {}: {}",
                e.count,
                if e.count >= MAX_COUNTED {
                    " or more"
                } else {
                    ""
                },
                e.first,
                e.last,
                match e.policy {
                    Missed::FireOnce => "one catch-up fire",
                    Missed::Skip => "skipped",
                }
            ),
            Self::ScheduleFireRefused(e) => {
                format!(
                    "{stream} did not start its {} run: {}",
                    e.occurrence, e.reason
                )
            }
            Self::ScheduleEnded(e) => format!("{stream} ended: {}", e.ending),
            Self::ScheduleDeletionRequested(e) => format!(
                "{stream} to be deleted at {} by {}, unless restored",
                e.effective_at, e.by
            ),
            Self::ScheduleRestored(e) => format!("{stream} restored by {}", e.by),
            Self::ScheduleDeleted(_) => format!("{stream} deleted"),
        }
    }
}

/// Commands on a schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleCommand {
    Create {
        id: ScheduleId,
        spec: ScheduleSpec,
    },
    /// Replaces what the schedule is; its runs so far still count.
    Update {
        spec: ScheduleSpec,
    },
    Pause,
    Resume,
    /// Deletes it once `grace` has passed, unless restored before.
    Delete {
        grace: Duration,
    },
    Restore,
    /// The scheduler: deletes it if its grace period has passed.
    CompleteDeletion,
    /// The scheduler: fires what is due now.
    Fire,
    /// The scheduler: the fired occurrence's job could not start.
    RecordRefusal {
        occurrence: OffsetDateTime,
        job: JobId,
        reason: String,
    },
}

/// Where a schedule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Scheduled,
    Paused,
    Deleting,
    Ended,
    Deleted,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Scheduled => "scheduled",
            Status::Paused => "paused",
            Status::Deleting => "deleting",
            Status::Ended => "ended",
            Status::Deleted => "deleted",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSchedule {
    #[error("name: {0}")]
    Name(&'static str),
    #[error("endsAt {ends_at} is before startsAt {starts_at}: end after the start")]
    EndBeforeStart {
        starts_at: OffsetDateTime,
        ends_at: OffsetDateTime,
    },
    #[error("maxRuns must be at least 1")]
    NoRuns,
    #[error("occurrence: {0}")]
    Occurrence(String),
    #[error("occurrence: {0} never comes after now (or before endsAt)")]
    NeverDue(String),
    #[error("thresholds: {0}")]
    Thresholds(#[from] ThresholdError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("there is no such schedule")]
    NotFound,
    #[error("the schedule exists already")]
    Exists,
    #[error("the schedule is invalid: {0}")]
    Invalid(#[from] InvalidSchedule),
    #[error("a {status} schedule cannot be {action}")]
    WrongStatus {
        status: Status,
        action: &'static str,
    },
    #[error(transparent)]
    NotLicensed(#[from] NotLicensed),
}

/// A created schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: ScheduleId,
    pub spec: ScheduleSpec,
    pub status: Status,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
    /// Occurrences fired so far (refused ones are not runs).
    pub runs: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub deleting_at: Option<OffsetDateTime>,
    /// Where it stood before deletion was asked for, to restore it.
    pub before_deleting: Status,
}

/// A schedule, or nothing yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub schedule: Option<Schedule>,
}

pub struct ScheduleAggregate;

inventory::submit! { crate::replay::Replayer::of::<ScheduleAggregate>() }

impl Decider for ScheduleAggregate {
    const SNAPSHOT_KIND: &'static str = "schedule/1";
    type State = ScheduleState;
    type Command = ScheduleCommand;
    type Event = ScheduleEvent;
    type Error = ScheduleError;

    fn evolve(mut state: ScheduleState, event: &ScheduleEvent) -> ScheduleState {
        use ScheduleEvent as E;
        let next = event.next_run();
        match (event, state.schedule.as_mut()) {
            (E::ScheduleCreated(e), None) => {
                state.schedule = Some(Schedule {
                    id: e.schedule,
                    spec: e.spec.clone(),
                    status: Status::Scheduled,
                    created_at: e.at,
                    next_run: e.next_run,
                    runs: 0,
                    deleting_at: None,
                    before_deleting: Status::Scheduled,
                });
            }
            (_, None) | (E::ScheduleCreated(_), Some(_)) => {}
            (event, Some(s)) => {
                if let Some(next) = next {
                    s.next_run = next;
                }
                match event {
                    E::ScheduleUpdated(e) => s.spec = e.spec.clone(),
                    E::SchedulePaused(_) => s.status = Status::Paused,
                    E::ScheduleResumed(_) => s.status = Status::Scheduled,
                    E::ScheduleFired(_) => s.runs += 1,
                    E::ScheduleEnded(_) => s.status = Status::Ended,
                    E::ScheduleDeletionRequested(e) => {
                        s.before_deleting = s.status;
                        s.status = Status::Deleting;
                        s.deleting_at = Some(e.effective_at);
                    }
                    E::ScheduleRestored(_) => {
                        s.status = s.before_deleting;
                        s.deleting_at = None;
                    }
                    E::ScheduleDeleted(_) => s.status = Status::Deleted,
                    E::ScheduleCreated(_) | E::ScheduleFireRefused(_) | E::OccurrencesMissed(_) => {
                    }
                }
            }
        }
        state
    }

    fn decide(
        state: &ScheduleState,
        command: ScheduleCommand,
        ctx: &Context,
    ) -> Result<Vec<ScheduleEvent>, ScheduleError> {
        use ScheduleCommand as C;
        let existing = || match &state.schedule {
            Some(s) if s.status != Status::Deleted => Ok(s),
            _ => Err(ScheduleError::NotFound),
        };
        match command {
            C::Create { id, spec } => match state.schedule {
                Some(_) => Err(ScheduleError::Exists),
                None => create(id, spec, ctx),
            },
            C::Update { spec } => update(existing()?, spec, ctx),
            C::Pause => pause(existing()?, ctx),
            C::Resume => resume(existing()?, ctx),
            C::Delete { grace } => delete(existing()?, grace, ctx),
            C::Restore => restore(existing()?, ctx),
            C::CompleteDeletion => complete_deletion(existing()?, ctx),
            C::Fire => fire(existing()?, ctx),
            C::RecordRefusal {
                occurrence,
                job,
                reason,
            } => {
                let s = existing()?;
                require_system(ctx)?;
                Ok(vec![ScheduleEvent::ScheduleFireRefused(
                    ScheduleFireRefused {
                        occurrence,
                        job: Some(job),
                        reason: one_line(&reason, MAX_REFUSAL_CHARS),
                        next_run: s.next_run,
                    },
                )])
            }
        }
    }
}

fn require_system(ctx: &Context) -> Result<(), ScheduleError> {
    if ctx.actor == Actor::System {
        Ok(())
    } else {
        Err(ScheduleError::Forbidden(
            "only the gateway's scheduler fires schedules",
        ))
    }
}

/// The owner or an admin, with the scheduler licensed.
fn require_owner(owner: &Username, ctx: &Context) -> Result<(), ScheduleError> {
    if !ctx.actor.acts_for(owner.as_str()) {
        return Err(ScheduleError::Forbidden(
            "a schedule is managed by its owner or an admin",
        ));
    }
    ctx.require(Feature::Scheduler)?;
    Ok(())
}

fn check(spec: &mut ScheduleSpec) -> Result<(), InvalidSchedule> {
    let name = spec.name.trim();
    if name.is_empty() {
        return Err(InvalidSchedule::Name("a schedule needs a name"));
    }
    if name.chars().count() > MAX_JOB_NAME_CHARS {
        return Err(InvalidSchedule::Name(
            "keep a schedule's name to 100 characters",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidSchedule::Name(
            "a schedule's name is one line, without control characters",
        ));
    }
    spec.name = name.to_owned();
    if let (Some(starts_at), Some(ends_at)) = (spec.starts_at, spec.ends_at)
        && ends_at < starts_at
    {
        return Err(InvalidSchedule::EndBeforeStart { starts_at, ends_at });
    }
    if spec.max_runs == Some(0) {
        return Err(InvalidSchedule::NoRuns);
    }
    if let Occurrence::Every { seconds } = spec.occurrence {
        Occurrence::every(seconds).map_err(InvalidSchedule::Occurrence)?;
    }
    spec.template.thresholds.check()?;
    Ok(())
}

/// The first run from now on, or refused as never due.
fn first_run(
    spec: &ScheduleSpec,
    created_at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, InvalidSchedule> {
    spec.next(created_at, now, true)
        .ok_or_else(|| InvalidSchedule::NeverDue(spec.occurrence.words(&spec.zone)))
}

fn create(
    id: ScheduleId,
    mut spec: ScheduleSpec,
    ctx: &Context,
) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    require_owner(&spec.owner, ctx)?;
    check(&mut spec)?;
    let next = first_run(&spec, ctx.now, ctx.now)?;
    Ok(vec![ScheduleEvent::ScheduleCreated(Box::new(
        ScheduleCreated {
            schedule: id,
            spec,
            at: ctx.now,
            next_run: Some(next),
            by: ctx.actor.name(),
        },
    ))])
}

fn update(
    s: &Schedule,
    mut spec: ScheduleSpec,
    ctx: &Context,
) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    require_owner(&s.spec.owner, ctx)?;
    if matches!(s.status, Status::Ended | Status::Deleting) {
        return Err(ScheduleError::WrongStatus {
            status: s.status,
            action: "updated",
        });
    }
    if spec.owner != s.spec.owner {
        return Err(ScheduleError::Forbidden("a schedule keeps its owner"));
    }
    check(&mut spec)?;
    let next = first_run(&spec, s.created_at, ctx.now)?;
    Ok(vec![ScheduleEvent::ScheduleUpdated(Box::new(
        ScheduleUpdated {
            spec,
            next_run: Some(next),
            by: ctx.actor.name(),
        },
    ))])
}

fn pause(s: &Schedule, ctx: &Context) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    require_owner(&s.spec.owner, ctx)?;
    match s.status {
        Status::Paused => Ok(vec![]),
        Status::Scheduled => Ok(vec![ScheduleEvent::SchedulePaused(SchedulePaused {
            by: ctx.actor.name(),
        })]),
        status => Err(ScheduleError::WrongStatus {
            status,
            action: "paused",
        }),
    }
}

fn resume(s: &Schedule, ctx: &Context) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    require_owner(&s.spec.owner, ctx)?;
    match s.status {
        Status::Scheduled => Ok(vec![]),
        Status::Paused => {
            let next = s.spec.next(s.created_at, ctx.now, true);
            let mut events = vec![ScheduleEvent::ScheduleResumed(ScheduleResumed {
                next_run: next,
                by: ctx.actor.name(),
            })];
            if next.is_none() {
                events.push(ScheduleEvent::ScheduleEnded(ScheduleEnded {
                    ending: Ending::NoMoreOccurrences,
                }));
            }
            Ok(events)
        }
        status => Err(ScheduleError::WrongStatus {
            status,
            action: "resumed",
        }),
    }
}

fn delete(
    s: &Schedule,
    grace: Duration,
    ctx: &Context,
) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    require_owner(&s.spec.owner, ctx)?;
    if s.status == Status::Deleting {
        return Ok(vec![]);
    }
    Ok(vec![ScheduleEvent::ScheduleDeletionRequested(
        ScheduleDeletionRequested {
            effective_at: ctx.now + grace,
            by: ctx.actor.name(),
        },
    )])
}

fn restore(s: &Schedule, ctx: &Context) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    require_owner(&s.spec.owner, ctx)?;
    if s.status != Status::Deleting {
        return Err(ScheduleError::WrongStatus {
            status: s.status,
            action: "restored (only one being deleted is)",
        });
    }
    Ok(vec![ScheduleEvent::ScheduleRestored(ScheduleRestored {
        by: ctx.actor.name(),
    })])
}

fn complete_deletion(s: &Schedule, ctx: &Context) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    require_system(ctx)?;
    match s.deleting_at {
        Some(at) if s.status == Status::Deleting && at <= ctx.now => {
            Ok(vec![ScheduleEvent::ScheduleDeleted(ScheduleDeleted {})])
        }
        _ => Ok(vec![]),
    }
}

/// Claims every occurrence due by now: the latest fires if it is on time,
/// the others are recorded as missed (with one catch-up fire under [`Missed::FireOnce`]
/// when none fired on time), and the schedule ends when nothing is left.
fn fire(s: &Schedule, ctx: &Context) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    require_system(ctx)?;
    let now = ctx.now;
    let Some(first) = s.next_run.filter(|at| *at <= now) else {
        return Ok(vec![]);
    };
    if s.status != Status::Scheduled {
        return Ok(vec![]);
    }
    let next = s.spec.next(s.created_at, now, false);
    let mut missed: Vec<OffsetDateTime> = vec![];
    let mut missed_count = 0u64;
    let mut on_time = vec![];
    let mut at = Some(first);
    while let Some(due) = at.filter(|due| *due <= now) {
        at = s.spec.next(s.created_at, due, false);
        // Only the latest due occurrence can be on time: one whose next is
        // due too had its slot pass while no gateway fired it.
        let superseded = at.is_some_and(|next| next <= now);
        if superseded || now - due > ON_TIME_WITHIN {
            missed_count += 1;
            missed.truncate(1);
            missed.push(due);
        } else {
            on_time.push(due);
        }
        if missed_count >= MAX_COUNTED {
            break;
        }
    }
    let mut to_fire: Vec<(OffsetDateTime, bool)> = on_time.iter().map(|&at| (at, false)).collect();
    if to_fire.is_empty()
        && s.spec.missed == Missed::FireOnce
        && let Some(&last) = missed.last()
    {
        to_fire.push((last, true));
    }
    let room = s
        .spec
        .max_runs
        .map_or(u32::MAX, |max| max.saturating_sub(s.runs));
    to_fire.truncate(room as usize);
    let licensed = ctx.require(Feature::Scheduler);
    // A refused fire is not a run.
    let fired = if licensed.is_ok() { to_fire.len() } else { 0 };
    let runs = s.runs + u32::try_from(fired).unwrap_or(u32::MAX);
    let ending = if s.spec.max_runs.is_some_and(|max| runs >= max) {
        Some(Ending::MaxRuns { runs })
    } else if next.is_none() {
        Some(Ending::NoMoreOccurrences)
    } else {
        None
    };
    let next_run = if ending.is_some() { None } else { next };
    let mut events = vec![];
    if let (Some(&first), Some(&last)) = (missed.first(), missed.last()) {
        events.push(ScheduleEvent::OccurrencesMissed(OccurrencesMissed {
            first,
            last,
            count: missed_count,
            policy: s.spec.missed,
            next_run,
        }));
    }
    for (occurrence, catch_up) in to_fire {
        events.push(match &licensed {
            Ok(()) => ScheduleEvent::ScheduleFired(ScheduleFired {
                occurrence,
                job: s.id.job_for(occurrence),
                catch_up,
                next_run,
            }),
            Err(refused) => ScheduleEvent::ScheduleFireRefused(ScheduleFireRefused {
                occurrence,
                job: None,
                reason: refused.to_string(),
                next_run,
            }),
        });
    }
    if let Some(ending) = ending {
        events.push(ScheduleEvent::ScheduleEnded(ScheduleEnded { ending }));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::decider::Role;
    use crate::licence::{Allowances, LicenceTerms};
    use crate::occurrence::Cron;
    use crate::spec::{Spec, acting_as};

    type S = Spec<ScheduleAggregate>;

    const T0: OffsetDateTime = datetime!(2026-03-27 12:00 UTC);

    fn id() -> ScheduleId {
        ScheduleId(Uuid::from_u128(7))
    }

    fn version(n: u128) -> DatasetVersionRef {
        DatasetVersionRef {
            dataset: Uuid::from_u128(n),
            version: 1,
        }
    }

    fn spec(occurrence: Occurrence) -> ScheduleSpec {
        ScheduleSpec {
            owner: Username::parse("ada").unwrap(),
            name: "nightly".into(),
            template: JobTemplate {
                targets: version(1),
                device_profiles: version(2),
                settings_profile: version(3),
                proxies: None,
                thresholds: Thresholds::default(),
            },
            occurrence,
            zone: Zone::parse("Europe/Berlin").unwrap(),
            starts_at: None,
            ends_at: None,
            max_runs: None,
            missed: Missed::FireOnce,
        }
    }

    fn cron(expr: &str) -> Occurrence {
        Occurrence::Cron {
            expression: Cron::parse(expr).unwrap(),
        }
    }

    fn licence(scheduler: bool) -> LicenceTerms {
        LicenceTerms {
            allows: Allowances {
                scheduler,
                ..Allowances::default()
            },
            expires_at: datetime!(2030-01-01 00:00 UTC),
        }
    }

    fn ada(now: OffsetDateTime) -> Context {
        acting_as("ada", Role::User, now).with_licence(licence(true))
    }

    fn system(now: OffsetDateTime) -> Context {
        Context::new(now, Actor::System).with_licence(licence(true))
    }

    fn created(spec: ScheduleSpec, next_run: OffsetDateTime) -> ScheduleEvent {
        ScheduleEvent::ScheduleCreated(Box::new(ScheduleCreated {
            schedule: id(),
            spec,
            at: T0,
            next_run: Some(next_run),
            by: "ada".into(),
        }))
    }

    fn fired(
        occurrence: OffsetDateTime,
        catch_up: bool,
        next_run: Option<OffsetDateTime>,
    ) -> ScheduleEvent {
        ScheduleEvent::ScheduleFired(ScheduleFired {
            occurrence,
            job: id().job_for(occurrence),
            catch_up,
            next_run,
        })
    }

    fn every_minute() -> ScheduleSpec {
        spec(Occurrence::every(60).unwrap())
    }

    #[test]
    fn creating_a_schedule_records_its_first_run_in_its_zone() {
        let s = spec(cron("0 9 * * 1-5"));
        S::given([])
            .in_context(ada(T0))
            .when(ScheduleCommand::Create {
                id: id(),
                spec: s.clone(),
            })
            .then([created(s, datetime!(2026-03-30 07:00 UTC))]);
    }

    #[test]
    fn a_schedule_without_the_scheduler_licensed_is_refused_naming_the_feature() {
        S::given([])
            .in_context(acting_as("ada", Role::User, T0).with_licence(licence(false)))
            .when(ScheduleCommand::Create {
                id: id(),
                spec: every_minute(),
            })
            .then_err(|e| matches!(e, ScheduleError::NotLicensed(n) if n.feature == "scheduler"));
    }

    #[test]
    fn another_accounts_schedule_is_forbidden() {
        S::given([])
            .in_context(acting_as("bob", Role::User, T0).with_licence(licence(true)))
            .when(ScheduleCommand::Create {
                id: id(),
                spec: every_minute(),
            })
            .then_err(|e| matches!(e, ScheduleError::Forbidden(_)));
    }

    #[test]
    fn an_end_before_the_start_is_refused_saying_so() {
        let mut s = every_minute();
        s.starts_at = Some(datetime!(2026-04-02 00:00 UTC));
        s.ends_at = Some(datetime!(2026-04-01 00:00 UTC));
        S::given([])
            .in_context(ada(T0))
            .when(ScheduleCommand::Create { id: id(), spec: s })
            .then_err(|e| {
                e.to_string()
                    .contains("endsAt 2026-04-01 0:00:00.0 +00:00:00 is before startsAt")
            });
    }

    #[test]
    fn a_once_in_the_past_is_never_due_and_refused() {
        let s = spec(Occurrence::Once {
            at: datetime!(2026-01-01 00:00 UTC),
        });
        S::given([])
            .in_context(ada(T0))
            .when(ScheduleCommand::Create { id: id(), spec: s })
            .then_err(|e| matches!(e, ScheduleError::Invalid(InvalidSchedule::NeverDue(_))));
    }

    #[test]
    fn a_cron_that_never_matches_is_refused() {
        S::given([])
            .in_context(ada(T0))
            .when(ScheduleCommand::Create {
                id: id(),
                spec: spec(cron("0 0 30 2 *")),
            })
            .then_err(|e| matches!(e, ScheduleError::Invalid(InvalidSchedule::NeverDue(_))));
    }

    #[test]
    fn nothing_fires_before_its_time() {
        S::given([created(every_minute(), T0)])
            .in_context(system(T0 - Duration::seconds(1)))
            .when(ScheduleCommand::Fire)
            .then([]);
    }

    #[test]
    fn a_due_occurrence_fires_once_and_records_the_next_run() {
        let now = T0 + Duration::seconds(2);
        let state = S::given([created(every_minute(), T0)])
            .in_context(system(now))
            .when(ScheduleCommand::Fire)
            .then([fired(T0, false, Some(T0 + Duration::minutes(1)))]);
        // Deciding again on the new state (a second gateway) fires nothing.
        let again = ScheduleAggregate::decide(&state, ScheduleCommand::Fire, &system(now)).unwrap();
        assert_eq!(again, vec![]);
        assert_eq!(state.schedule.unwrap().runs, 1);
    }

    #[test]
    fn only_the_scheduler_fires() {
        S::given([created(every_minute(), T0)])
            .in_context(ada(T0))
            .when(ScheduleCommand::Fire)
            .then_err(|e| matches!(e, ScheduleError::Forbidden(_)));
    }

    #[test]
    fn missed_occurrences_are_recorded_and_fire_once_on_recovery() {
        // Down from T0 to T0 + 10 min: eleven occurrences, ten of them late.
        let now = T0 + Duration::minutes(10) + Duration::seconds(5);
        S::given([created(every_minute(), T0)])
            .in_context(system(now))
            .when(ScheduleCommand::Fire)
            .then([
                ScheduleEvent::OccurrencesMissed(OccurrencesMissed {
                    first: T0,
                    last: T0 + Duration::minutes(9),
                    count: 10,
                    policy: Missed::FireOnce,
                    next_run: Some(T0 + Duration::minutes(11)),
                }),
                fired(
                    T0 + Duration::minutes(10),
                    false,
                    Some(T0 + Duration::minutes(11)),
                ),
            ]);
    }

    #[test]
    fn a_short_outage_fires_only_the_latest_occurrence_not_every_one_it_passed() {
        // Every 2 s, down for 50 s: each occurrence is under a minute late,
        // but all but the latest had their slot pass; one job, not 26.
        let every_2s = spec(Occurrence::every(2).unwrap());
        let now = T0 + Duration::seconds(50) + Duration::milliseconds(300);
        S::given([created(every_2s, T0)])
            .in_context(system(now))
            .when(ScheduleCommand::Fire)
            .then([
                ScheduleEvent::OccurrencesMissed(OccurrencesMissed {
                    first: T0,
                    last: T0 + Duration::seconds(48),
                    count: 25,
                    policy: Missed::FireOnce,
                    next_run: Some(T0 + Duration::seconds(52)),
                }),
                fired(
                    T0 + Duration::seconds(50),
                    false,
                    Some(T0 + Duration::seconds(52)),
                ),
            ]);
    }

    #[test]
    fn with_fire_once_and_none_on_time_the_last_missed_fires_as_a_catch_up() {
        let mut s = spec(cron("0 9 * * *"));
        s.missed = Missed::FireOnce;
        let nine = datetime!(2026-03-28 08:00 UTC);
        let later = datetime!(2026-03-28 15:00 UTC);
        S::given([created(s, nine)])
            .in_context(system(later))
            .when(ScheduleCommand::Fire)
            .then([
                ScheduleEvent::OccurrencesMissed(OccurrencesMissed {
                    first: nine,
                    last: nine,
                    count: 1,
                    policy: Missed::FireOnce,
                    next_run: Some(datetime!(2026-03-29 07:00 UTC)),
                }),
                fired(nine, true, Some(datetime!(2026-03-29 07:00 UTC))),
            ]);
    }

    #[test]
    fn with_skip_missed_occurrences_are_recorded_and_not_fired() {
        let mut s = spec(cron("0 9 * * *"));
        s.missed = Missed::Skip;
        let nine = datetime!(2026-03-28 08:00 UTC);
        S::given([created(s, nine)])
            .in_context(system(datetime!(2026-03-28 15:00 UTC)))
            .when(ScheduleCommand::Fire)
            .then([ScheduleEvent::OccurrencesMissed(OccurrencesMissed {
                first: nine,
                last: nine,
                count: 1,
                policy: Missed::Skip,
                next_run: Some(datetime!(2026-03-29 07:00 UTC)),
            })]);
    }

    #[test]
    fn a_two_thirty_schedule_fires_once_on_the_spring_forward_day() {
        let s = spec(cron("30 2 * * *"));
        let from = datetime!(2026-03-28 12:00 UTC);
        // 02:30 does not exist on 29 March in Berlin: it runs at 03:00 CEST.
        let at = datetime!(2026-03-29 01:00 UTC);
        let next = datetime!(2026-03-30 00:30 UTC);
        let created_at_noon = ScheduleEvent::ScheduleCreated(Box::new(ScheduleCreated {
            schedule: id(),
            spec: s,
            at: from,
            next_run: Some(at),
            by: "ada".into(),
        }));
        let state = S::given([created_at_noon.clone()])
            .in_context(system(at + Duration::seconds(1)))
            .when(ScheduleCommand::Fire)
            .then([fired(at, false, Some(next))]);
        assert_eq!(state.schedule.unwrap().next_run, Some(next));
    }

    #[test]
    fn max_runs_ends_the_schedule_with_its_last_run() {
        let mut s = every_minute();
        s.max_runs = Some(2);
        let one = T0 + Duration::minutes(1);
        S::given([created(s, T0), fired(T0, false, Some(one))])
            .in_context(system(one))
            .when(ScheduleCommand::Fire)
            .then([
                fired(one, false, None),
                ScheduleEvent::ScheduleEnded(ScheduleEnded {
                    ending: Ending::MaxRuns { runs: 2 },
                }),
            ]);
    }

    #[test]
    fn the_end_date_ends_the_schedule_after_its_last_occurrence() {
        let mut s = every_minute();
        s.ends_at = Some(T0 + Duration::seconds(90));
        let one = T0 + Duration::minutes(1);
        S::given([created(s, T0), fired(T0, false, Some(one))])
            .in_context(system(one))
            .when(ScheduleCommand::Fire)
            .then([
                fired(one, false, None),
                ScheduleEvent::ScheduleEnded(ScheduleEnded {
                    ending: Ending::NoMoreOccurrences,
                }),
            ]);
    }

    #[test]
    fn an_owner_without_the_licence_any_more_gets_a_refused_fire_saying_why() {
        let one = T0 + Duration::minutes(1);
        S::given([created(every_minute(), T0)])
            .in_context(Context::new(T0, Actor::System).with_licence(licence(false)))
            .when(ScheduleCommand::Fire)
            .then([ScheduleEvent::ScheduleFireRefused(ScheduleFireRefused {
                occurrence: T0,
                job: None,
                reason: "scheduler is not licensed: the licence does not include it".into(),
                next_run: Some(one),
            })]);
    }

    #[test]
    fn a_job_that_could_not_start_is_recorded_and_the_schedule_carries_on() {
        let one = T0 + Duration::minutes(1);
        let state = S::given([created(every_minute(), T0), fired(T0, false, Some(one))])
            .in_context(system(T0))
            .when(ScheduleCommand::RecordRefusal {
                occurrence: T0,
                job: id().job_for(T0),
                reason: "safe mode is on".into(),
            })
            .then([ScheduleEvent::ScheduleFireRefused(ScheduleFireRefused {
                occurrence: T0,
                job: Some(id().job_for(T0)),
                reason: "safe mode is on".into(),
                next_run: Some(one),
            })]);
        let s = state.schedule.unwrap();
        assert_eq!((s.status, s.next_run), (Status::Scheduled, Some(one)));
    }

    #[test]
    fn a_paused_schedule_does_not_fire_and_resumes_at_its_next_occurrence() {
        let paused = ScheduleEvent::SchedulePaused(SchedulePaused { by: "ada".into() });
        S::given([created(every_minute(), T0), paused.clone()])
            .in_context(system(T0 + Duration::minutes(5)))
            .when(ScheduleCommand::Fire)
            .then([]);
        let now = T0 + Duration::minutes(5) + Duration::seconds(10);
        S::given([created(every_minute(), T0), paused])
            .in_context(ada(now))
            .when(ScheduleCommand::Resume)
            .then([ScheduleEvent::ScheduleResumed(ScheduleResumed {
                next_run: Some(T0 + Duration::minutes(6)),
                by: "ada".into(),
            })]);
    }

    #[test]
    fn deletion_waits_its_grace_period_and_a_restore_cancels_it() {
        let requested = ScheduleEvent::ScheduleDeletionRequested(ScheduleDeletionRequested {
            effective_at: T0 + Duration::hours(24),
            by: "ada".into(),
        });
        S::given([created(every_minute(), T0)])
            .in_context(ada(T0))
            .when(ScheduleCommand::Delete {
                grace: Duration::hours(24),
            })
            .then([requested.clone()]);
        S::given([created(every_minute(), T0), requested.clone()])
            .in_context(system(T0 + Duration::hours(23)))
            .when(ScheduleCommand::CompleteDeletion)
            .then([]);
        S::given([created(every_minute(), T0), requested.clone()])
            .in_context(system(T0 + Duration::hours(2)))
            .when(ScheduleCommand::Fire)
            .then([]);
        let restored = S::given([created(every_minute(), T0), requested.clone()])
            .in_context(ada(T0 + Duration::hours(1)))
            .when(ScheduleCommand::Restore)
            .then([ScheduleEvent::ScheduleRestored(ScheduleRestored {
                by: "ada".into(),
            })]);
        assert_eq!(restored.schedule.unwrap().status, Status::Scheduled);
        let gone = S::given([created(every_minute(), T0), requested])
            .in_context(system(T0 + Duration::hours(24)))
            .when(ScheduleCommand::CompleteDeletion)
            .then([ScheduleEvent::ScheduleDeleted(ScheduleDeleted {})]);
        assert_eq!(
            ScheduleAggregate::decide(
                &gone,
                ScheduleCommand::Restore,
                &ada(T0 + Duration::hours(25))
            ),
            Err(ScheduleError::NotFound)
        );
    }

    #[test]
    fn an_update_keeps_the_owner_and_recomputes_the_next_run() {
        let now = T0 + Duration::seconds(30);
        let new = spec(cron("0 9 * * 1-5"));
        S::given([created(every_minute(), T0)])
            .in_context(ada(now))
            .when(ScheduleCommand::Update { spec: new.clone() })
            .then([ScheduleEvent::ScheduleUpdated(Box::new(ScheduleUpdated {
                spec: new,
                next_run: Some(datetime!(2026-03-30 07:00 UTC)),
                by: "ada".into(),
            }))]);
        let mut other = every_minute();
        other.owner = Username::parse("bob").unwrap();
        S::given([created(every_minute(), T0)])
            .in_context(ada(now))
            .when(ScheduleCommand::Update { spec: other })
            .then_err(|e| matches!(e, ScheduleError::Forbidden(_)));
    }

    #[test]
    fn a_fired_occurrence_names_the_same_job_whoever_fires_it() {
        assert_eq!(id().job_for(T0), id().job_for(T0));
        assert_ne!(id().job_for(T0), id().job_for(T0 + Duration::minutes(1)));
    }
}

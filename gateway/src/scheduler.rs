//! The scheduler: finds schedules that are due in the schedules view, fires
//! each through its decider, and creates and runs each fired occurrence's
//! job through the path `createJob` and `runJob` take, its events caused by
//! the firing. A job that cannot start is recorded on the schedule as a
//! refused fire. Schedules whose deletion grace period passed are deleted.
//!
//! Exactly once on many gateways and across restarts, with no lock: a fire
//! is an append at the schedule stream's expected version, so of gateways
//! racing for one occurrence one appends, and the others decide again on
//! the stream as it now is and find nothing due. The clock is
//! injected, so tests move time instead of sleeping.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use domain::job::{JobAggregate, JobId, JobStatus};
use domain::schedule::{
    Schedule, ScheduleAggregate, ScheduleCommand, ScheduleEvent, ScheduleFired, ScheduleId,
};
use domain::{Actor, Context, EventId, StreamId};
use projections::{SqlValue, schedules_view};
use store::{Direction, StreamFrom};
use time::OffsetDateTime;

use crate::command_handler::CommandMeta;
use crate::graphql::{job, licence};
use crate::state::AppState;

/// How often to look for due schedules.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long a deleted schedule can still be restored.
pub const DELETION_GRACE: time::Duration = time::Duration::hours(24);
/// How long a fired job may take to start before another look starts it.
pub const STRANDED_AFTER: time::Duration = time::Duration::seconds(30);
/// Schedules fired per look; the rest wait for the next.
const BATCH: i64 = 1000;

/// What time it is, for the scheduler.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The real time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

static DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT schedule FROM {} WHERE state = 'scheduled' AND next_run <= $1 \
         ORDER BY next_run LIMIT $2",
        schedules_view::TABLE
    )
});

/// Fires whose job is missing or not started (see [`restart_stranded`]).
static STRANDED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT schedule FROM {} WHERE last_job IS NOT NULL AND refusal IS NULL \
         AND (last_job_status IS NULL OR last_job_status = 'ready') AND last_fired_at <= $1 \
         LIMIT $2",
        schedules_view::TABLE
    )
});

static GRACE_OVER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT schedule FROM {} WHERE state = 'deleting' AND deleting_at <= $1 LIMIT $2",
        schedules_view::TABLE
    )
});

/// What one look did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Occurrences this gateway fired (their jobs started or refused).
    pub fired: usize,
    /// Schedules whose deletion took effect.
    pub deleted: usize,
    /// Fired jobs started again after their gateway stopped halfway.
    pub restarted: usize,
}

fn system_meta() -> CommandMeta {
    CommandMeta {
        source: Some("gateway".into()),
        ..CommandMeta::default()
    }
}

async fn schedules(app: &AppState, sql: &str, now: OffsetDateTime) -> Vec<ScheduleId> {
    match app
        .views
        .query(sql, vec![SqlValue::micros(now), SqlValue::from(BATCH)])
        .await
    {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| r.get::<String>("schedule").ok())
            .filter_map(|id| id.parse().ok().map(ScheduleId))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "the scheduler cannot read the schedules view");
            vec![]
        }
    }
}

/// Fires everything due at `now` and deletes what outlived its grace.
pub async fn tick(app: &AppState, now: OffsetDateTime) -> Tick {
    let mut done = Tick::default();
    for id in schedules(app, &DUE, now).await {
        match fire(app, id, now).await {
            Ok(n) => done.fired += n,
            Err(e) => tracing::warn!(schedule = %id, error = %e, "cannot fire a schedule"),
        }
    }
    done.restarted = restart_stranded(app, now).await;
    for id in schedules(app, &GRACE_OVER, now).await {
        let Ok(stream) = id.stream() else { continue };
        let ctx = Context::new(now, Actor::System);
        match app
            .handler
            .handle::<ScheduleAggregate>(
                &stream,
                ScheduleCommand::CompleteDeletion,
                &ctx,
                &system_meta(),
            )
            .await
        {
            Ok(h) if !h.events.is_empty() => done.deleted += 1,
            Ok(_) => {}
            Err(e) => tracing::warn!(schedule = %id, error = %e, "cannot delete a schedule"),
        }
    }
    done
}

/// Fires schedule `id` if it is due, and starts the jobs of what this
/// gateway fired; returns how many occurrences that was.
async fn fire(app: &AppState, id: ScheduleId, now: OffsetDateTime) -> Result<usize, String> {
    let stream = id.stream().map_err(|e| e.to_string())?;
    let (_, state) = app
        .handler
        .load::<ScheduleAggregate>(&stream)
        .await
        .map_err(|e| e.to_string())?;
    let Some(schedule) = state.schedule else {
        return Ok(0);
    };
    let terms = licence::terms_of(app, &schedule.spec.owner)
        .await
        .map_err(|e| e.message)?;
    let mut ctx = Context::new(now, Actor::System);
    ctx.licence = terms;
    let handled = app
        .handler
        .handle::<ScheduleAggregate>(&stream, ScheduleCommand::Fire, &ctx, &system_meta())
        .await
        .map_err(|e| e.to_string())?;
    let Some(last) = handled.version.filter(|_| !handled.events.is_empty()) else {
        return Ok(0);
    };
    // The appended events, for their ids: each job is caused by its firing.
    let n = handled.events.len();
    let recorded = app
        .store
        .read_stream(
            &stream,
            StreamFrom::Version(last + 1 - n as u64),
            Direction::Forward,
            n,
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut fired = 0;
    for (event, recorded) in handled.events.iter().zip(&recorded) {
        if let ScheduleEvent::ScheduleFired(f) = event {
            start(app, &stream, &schedule, f, recorded.id, &ctx).await;
            fired += 1;
        }
    }
    Ok(fired)
}

/// Creates and runs the fired occurrence's job; a refusal is recorded on
/// the schedule, which carries on. False when there was nothing left to do.
async fn start(
    app: &AppState,
    stream: &StreamId,
    schedule: &Schedule,
    fired: &ScheduleFired,
    cause: EventId,
    ctx: &Context,
) -> bool {
    let meta = CommandMeta {
        idempotency_key: None,
        correlation_id: Some(cause.0),
        causation_id: Some(cause.0),
        source: Some("gateway".into()),
    };
    let spec = &schedule.spec;
    // Safe to repeat, and to race another gateway doing the same: each
    // step is taken only if the job has not taken it yet.
    let started = async {
        let mut acted = false;
        if job_status(app, fired.job).await?.is_none() {
            let created = job::create(
                app,
                fired.job,
                spec.owner.clone(),
                spec.name.clone(),
                &spec.template,
                ctx,
                &meta,
            )
            .await;
            match created {
                Ok(()) => acted = true,
                Err(e) if job_status(app, fired.job).await?.is_none() => return Err(e),
                Err(_) => {}
            }
        }
        if job_status(app, fired.job).await? == Some(JobStatus::Ready) {
            match job::run(app, fired.job, ctx, &meta).await {
                Ok(()) => acted = true,
                Err(e) if job_status(app, fired.job).await? == Some(JobStatus::Ready) => {
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        Ok(acted)
    }
    .await;
    let refused = match started {
        Ok(acted) => return acted,
        Err(refused) => refused,
    };
    tracing::info!(schedule = %schedule.id, job = %fired.job, reason = %refused.message,
        "a scheduled job did not start");
    let command = ScheduleCommand::RecordRefusal {
        occurrence: fired.occurrence,
        job: fired.job,
        reason: refused.message,
    };
    let meta = CommandMeta {
        causation_id: Some(cause.0),
        correlation_id: Some(cause.0),
        ..system_meta()
    };
    if let Err(e) = app
        .handler
        .handle::<ScheduleAggregate>(stream, command, ctx, &meta)
        .await
    {
        tracing::warn!(schedule = %schedule.id, error = %e, "cannot record a refused fire");
    }
    true
}

/// The status of job `id`, if it exists.
async fn job_status(app: &AppState, id: JobId) -> async_graphql::Result<Option<JobStatus>> {
    let stream = id
        .stream()
        .map_err(|e| async_graphql::Error::new(e.to_string()))?;
    let (_, state) = app
        .handler
        .load::<JobAggregate>(&stream)
        .await
        .map_err(|e| async_graphql::Error::new(format!("cannot read job {id}: {e}")))?;
    Ok(state.job.map(|j| j.status))
}

/// Starts the jobs of fires whose gateway stopped between the firing and
/// its job's start: fired, no refusal, and the job missing or still READY
/// after [`STRANDED_AFTER`].
async fn restart_stranded(app: &AppState, now: OffsetDateTime) -> usize {
    let mut restarted = 0;
    for id in schedules(app, &STRANDED, now - STRANDED_AFTER).await {
        let Ok(stream) = id.stream() else { continue };
        let Ok((_, state)) = app.handler.load::<ScheduleAggregate>(&stream).await else {
            continue;
        };
        let Some(schedule) = state.schedule else {
            continue;
        };
        // The last firing, for its job and its id.
        let Ok(recent) = app
            .store
            .read_stream(&stream, StreamFrom::End, Direction::Backward, 100)
            .await
        else {
            continue;
        };
        let registry = app.handler.registry();
        let Some((recorded, fired)) =
            recent
                .iter()
                .find_map(|r| match registry.decode::<ScheduleEvent>(r) {
                    Ok(ScheduleEvent::ScheduleFired(f)) => Some((r, f)),
                    _ => None,
                })
        else {
            continue;
        };
        let terms = licence::terms_of(app, &schedule.spec.owner)
            .await
            .ok()
            .flatten();
        let mut ctx = Context::new(now, Actor::System);
        ctx.licence = terms;
        if start(app, &stream, &schedule, &fired, recorded.id, &ctx).await {
            tracing::info!(schedule = %id, job = %fired.job, "started a fired job its gateway left");
            restarted += 1;
        }
    }
    restarted
}

/// Looks every [`EVERY`] on `clock`, forever.
pub async fn run(app: AppState, clock: Arc<dyn Clock>) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let done = tick(&app, clock.now()).await;
        if done != Tick::default() {
            tracing::info!(
                fired = done.fired,
                deleted = done.deleted,
                restarted = done.restarted,
                "scheduler"
            );
        }
    }
}

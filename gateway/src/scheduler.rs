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

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use domain::account::Username;
use domain::job::{JobAggregate, JobId, JobStatus};
use domain::licence::LicenceTerms;
use domain::schedule::{
    Schedule, ScheduleAggregate, ScheduleCommand, ScheduleEvent, ScheduleFired, ScheduleId,
};
use domain::{Actor, Context, EventId, StreamId};
use futures_util::{StreamExt, stream};
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
/// Due schedules read at a time.
const BATCH: i64 = 1000;
/// Schedules fired, and jobs started, at once by one gateway.
const AT_ONCE: usize = 32;

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

/// Due schedules in an order of this look's own: gateways looking at once
/// mostly take different ones rather than collide on the same.
static DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT schedule FROM {} WHERE state = 'scheduled' AND next_run <= $1 \
         ORDER BY random() LIMIT $2",
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
///
/// Due schedules are fired [`AT_ONCE`] at a time, [`BATCH`] per read of
/// the schedule table (which by the next read shows what other gateways
/// fired meanwhile); then the fired occurrences' jobs are started, as many
/// at once: no fire waits for another's job.
pub async fn tick(app: &AppState, now: OffsetDateTime) -> Tick {
    let mut done = Tick::default();
    let licences = Licences::default();
    let mut fired: Vec<Fire> = vec![];
    loop {
        let due = schedules(app, &DUE, now).await;
        let full = due.len() as i64 >= BATCH;
        let before = fired.len();
        fired.extend(
            stream::iter(due)
                .map(|id| {
                    let licences = &licences;
                    async move {
                        fire(app, id, now, licences).await.unwrap_or_else(|e| {
                            tracing::warn!(schedule = %id, error = %e, "cannot fire a schedule");
                            vec![]
                        })
                    }
                })
                .buffer_unordered(AT_ONCE)
                .flat_map(stream::iter)
                .collect::<Vec<_>>()
                .await,
        );
        // A full read that fired something: more may be due.
        if !full || fired.len() == before {
            break;
        }
    }
    done.fired = fired.len();
    stream::iter(fired)
        .for_each_concurrent(AT_ONCE, |f| async move {
            start(app, &f.stream, &f.schedule, &f.fired, f.cause, &f.ctx).await;
        })
        .await;
    done.restarted = restart_stranded(app, now, &licences).await;
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

/// One occurrence fired by this gateway, its job still to start.
struct Fire {
    stream: StreamId,
    schedule: Arc<Schedule>,
    fired: ScheduleFired,
    /// The `ScheduleFired` event's id: the job's events are caused by it.
    cause: EventId,
    ctx: Context,
}

/// Owners' licence terms, read once per look: many schedules share an owner.
#[derive(Default)]
struct Licences(Mutex<HashMap<Username, Option<LicenceTerms>>>);

impl Licences {
    async fn terms_of(
        &self,
        app: &AppState,
        owner: &Username,
    ) -> Result<Option<LicenceTerms>, String> {
        if let Some(terms) = self.lock().get(owner) {
            return Ok(terms.clone());
        }
        let terms = licence::terms_of(app, owner).await.map_err(|e| e.message)?;
        self.lock().insert(owner.clone(), terms.clone());
        Ok(terms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Username, Option<LicenceTerms>>> {
        // A panic elsewhere cannot leave the map half-written: each insert is whole.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Fires schedule `id` if it is due; returns the occurrences this gateway
/// fired (none when another gateway was first, or nothing was due).
async fn fire(
    app: &AppState,
    id: ScheduleId,
    now: OffsetDateTime,
    licences: &Licences,
) -> Result<Vec<Fire>, String> {
    let stream = id.stream().map_err(|e| e.to_string())?;
    let (_, state) = app
        .handler
        .load::<ScheduleAggregate>(&stream)
        .await
        .map_err(|e| e.to_string())?;
    let Some(schedule) = state.schedule else {
        return Ok(vec![]);
    };
    let mut ctx = Context::new(now, Actor::System);
    ctx.licence = licences.terms_of(app, &schedule.spec.owner).await?;
    let handled = app
        .handler
        .handle::<ScheduleAggregate>(&stream, ScheduleCommand::Fire, &ctx, &system_meta())
        .await
        .map_err(|e| e.to_string())?;
    let schedule = Arc::new(schedule);
    Ok(handled
        .events
        .into_iter()
        // Each job is caused by its firing.
        .zip(handled.ids)
        .filter_map(|(event, id)| match event {
            ScheduleEvent::ScheduleFired(fired) => Some(Fire {
                stream: stream.clone(),
                schedule: schedule.clone(),
                fired,
                cause: id,
                ctx: ctx.clone(),
            }),
            _ => None,
        })
        .collect())
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
                Ok(_) => acted = true,
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
async fn restart_stranded(app: &AppState, now: OffsetDateTime, licences: &Licences) -> usize {
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
        let mut ctx = Context::new(now, Actor::System);
        ctx.licence = licences
            .terms_of(app, &schedule.spec.owner)
            .await
            .ok()
            .flatten();
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
    if !crate::live::view_created(&app, schedules_view::NAME).await {
        return;
    }
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

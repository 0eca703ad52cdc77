//! Schedules over GraphQL: the schedule table (`schedules`, and
//! `scheduleChanged` as it changes) and `createSchedule`, `updateSchedule`,
//! `pauseSchedule`, `resumeSchedule`, `deleteSchedule` and
//! `restoreSchedule` for the owner and admins, each gated by the licence's
//! `scheduler` feature. A schedule is read by its owner, admins and auditors.

use std::sync::LazyLock;
use std::time::Duration;

use async_graphql::{
    Context, Enum, ErrorExtensionValues, ID, InputObject, Object, SimpleObject, Subscription,
};
use domain::account::Username;
use domain::occurrence::{Cron, Occurrence, Zone};
use domain::schedule::{
    JobTemplate, Missed, ScheduleAggregate, ScheduleCommand, ScheduleError, ScheduleId,
    ScheduleSpec,
};
use futures_util::Stream;
use projections::{Row, SqlValue, schedules_view};
use store::Filter;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::sessions::Principal;
use crate::graphql::error::{self, Code, Coded};
use crate::graphql::job::{DatasetVersionInput, ThresholdsInput, thresholds_from, version_input};
use crate::graphql::licence::licensed_decision;
use crate::graphql::view_watch::view_changes;
use crate::graphql::{AUDITORS, app, check_first, from_micros, principal, row_err};
use crate::scheduler::DELETION_GRACE;
use crate::state::AppState;

/// `scheduleChanged` answers at most this often.
const CHANGES_EVERY: Duration = Duration::from_millis(250);

/// Where a schedule stands in the table.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ScheduleState {
    Scheduled,
    /// Its last job is running now.
    Running,
    Paused,
    /// Deletion asked for: `restoreSchedule` cancels it until `deletingAt`.
    Deleting,
    Ended,
}

/// A row of the schedule table.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct ScheduleInfo {
    pub id: ID,
    pub name: String,
    pub owner: String,
    /// In words, e.g. `every weekday at 09:00 Europe/Berlin`.
    pub occurrence: String,
    pub state: ScheduleState,
    pub next_run: Option<OffsetDateTime>,
    /// The last occurrence fired or refused.
    pub last_run: Option<OffsetDateTime>,
    pub last_job: Option<ID>,
    /// `ready`, `running`, `paused`, `done`, `failed` or `stopped`.
    pub last_job_status: Option<String>,
    /// Why the last occurrence did not start its job (e.g. the scheduler
    /// is not licensed any more, safe mode, an unverified domain).
    pub refusal: Option<String>,
    /// Why it ended, once it did.
    pub ending: Option<String>,
    pub runs: u64,
    pub deleting_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

static ONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM {} WHERE schedule = $1",
        schedules_view::TABLE
    )
});

fn info_from(row: &Row) -> async_graphql::Result<ScheduleInfo> {
    let at = |column: &str| -> async_graphql::Result<Option<OffsetDateTime>> {
        Ok(row
            .get::<Option<i64>>(column)
            .map_err(row_err)?
            .map(from_micros))
    };
    let last_job_status: Option<String> = row.get("last_job_status").map_err(row_err)?;
    let state = match row.get::<String>("state").map_err(row_err)?.as_str() {
        "scheduled" if last_job_status.as_deref() == Some("running") => ScheduleState::Running,
        "scheduled" => ScheduleState::Scheduled,
        "paused" => ScheduleState::Paused,
        "deleting" => ScheduleState::Deleting,
        "ended" => ScheduleState::Ended,
        other => return Err(row_err(format!("unknown schedule state {other:?}"))),
    };
    Ok(ScheduleInfo {
        id: ID(row.get("schedule").map_err(row_err)?),
        name: row.get("name").map_err(row_err)?,
        owner: row.get("owner").map_err(row_err)?,
        occurrence: row.get("occurrence").map_err(row_err)?,
        state,
        next_run: at("next_run")?,
        last_run: at("last_run")?,
        last_job: row
            .get::<Option<String>>("last_job")
            .map_err(row_err)?
            .map(ID),
        last_job_status,
        refusal: row.get("refusal").map_err(row_err)?,
        ending: row.get("ending").map_err(row_err)?,
        runs: u64::try_from(row.get::<i64>("runs").map_err(row_err)?).map_err(row_err)?,
        deleting_at: at("deleting_at")?,
        created_at: from_micros(row.get("created_at").map_err(row_err)?),
    })
}

fn sees_all(p: &Principal) -> bool {
    AUDITORS.iter().any(|r| p.roles.contains(r))
}

fn parse_id(raw: &str) -> async_graphql::Result<ScheduleId> {
    Uuid::parse_str(raw.trim())
        .map(ScheduleId)
        .map_err(|e| error::invalid("id", format!("not a schedule id: {e}")))
}

fn not_found(id: ScheduleId) -> async_graphql::Error {
    error::error(Code::NotFound, format!("there is no schedule {id}"))
}

/// The schedule `id` as the table has it, if `p` may read it.
async fn readable(
    app: &AppState,
    p: &Principal,
    id: ScheduleId,
) -> async_graphql::Result<ScheduleInfo> {
    let rows = app
        .views
        .query(&ONE, vec![SqlValue::from(id.to_string())])
        .await
        .map_err(|e| error::internal("cannot read the schedule", &e))?;
    let info = rows
        .first()
        .map(info_from)
        .transpose()?
        .ok_or_else(|| not_found(id))?;
    if info.owner == p.username.as_str() || sees_all(p) {
        Ok(info)
    } else {
        Err(not_found(id))
    }
}

#[derive(Default)]
pub struct ScheduleQuery;

#[Object]
impl ScheduleQuery {
    /// The schedule table, by next run: one's own, or (admins and
    /// auditors) everyone's or `owner`'s.
    async fn schedules(
        &self,
        ctx: &Context<'_>,
        owner: Option<String>,
        #[graphql(default = 100)] first: i32,
    ) -> async_graphql::Result<Vec<ScheduleInfo>> {
        let p = principal(ctx)?;
        check_first(first)?;
        let owner = match owner {
            Some(o) if sees_all(p) || o == p.username.as_str() => Some(o),
            Some(_) => {
                return Err(error::error(
                    Code::Forbidden,
                    "only admins and auditors list other accounts' schedules",
                ));
            }
            None if sees_all(p) => None,
            None => Some(p.username.as_str().to_owned()),
        };
        let mut sql = format!("SELECT * FROM {} WHERE 1 = 1", schedules_view::TABLE);
        let mut params = vec![];
        if let Some(o) = owner {
            params.push(SqlValue::from(o));
            sql.push_str(&format!(" AND owner = ${}", params.len()));
        }
        params.push(SqlValue::from(first));
        sql.push_str(&format!(
            " ORDER BY next_run IS NULL, next_run, created_at, schedule LIMIT ${}",
            params.len()
        ));
        let rows = app(ctx)
            .views
            .query(&sql, params)
            .await
            .map_err(|e| error::internal("cannot read the schedules", &e))?;
        rows.iter().map(info_from).collect()
    }

    /// One schedule.
    async fn schedule(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ScheduleInfo> {
        readable(app(ctx), principal(ctx)?, parse_id(&id)?).await
    }
}

/// When a schedule fires: exactly one of `at`, `everySeconds`, `cron`.
#[derive(InputObject, Clone)]
pub struct OccurrenceInput {
    /// Once, at this time.
    pub at: Option<OffsetDateTime>,
    /// Every so many seconds from `startsAt` (or from its creation).
    pub every_seconds: Option<u64>,
    /// A cron expression of five fields, or six with seconds first, in the
    /// schedule's time zone.
    pub cron: Option<String>,
}

/// A schedule's definition.
#[derive(InputObject, Clone)]
pub struct ScheduleInput {
    pub name: String,
    /// The job each fire creates, as `createJob` takes it.
    pub targets: DatasetVersionInput,
    pub device_profiles: DatasetVersionInput,
    pub settings_profile: DatasetVersionInput,
    pub proxies: Option<DatasetVersionInput>,
    pub thresholds: Option<ThresholdsInput>,
    pub occurrence: OccurrenceInput,
    /// An IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
    pub starts_at: Option<OffsetDateTime>,
    pub ends_at: Option<OffsetDateTime>,
    pub max_runs: Option<u32>,
    /// What becomes of occurrences missed while no gateway ran.
    #[graphql(default)]
    pub missed: Missed,
}

fn occurrence_from(o: OccurrenceInput) -> async_graphql::Result<Occurrence> {
    match (o.at, o.every_seconds, o.cron) {
        (Some(at), None, None) => Ok(Occurrence::Once { at }),
        (None, Some(seconds), None) => {
            Occurrence::every(seconds).map_err(|e| error::invalid("occurrence.everySeconds", e))
        }
        (None, None, Some(cron)) => Ok(Occurrence::Cron {
            expression: Cron::parse(&cron).map_err(|e| error::invalid("occurrence.cron", e))?,
        }),
        _ => Err(error::invalid(
            "occurrence",
            "give exactly one of at, everySeconds and cron",
        )),
    }
}

/// The spec `input` describes for `owner`, its template's dataset
/// versions checked as `createJob` checks them.
async fn spec_from(
    app: &AppState,
    owner: Username,
    input: ScheduleInput,
) -> async_graphql::Result<ScheduleSpec> {
    let template = JobTemplate {
        targets: version_input("targets", input.targets)?,
        device_profiles: version_input("deviceProfiles", input.device_profiles)?,
        settings_profile: version_input("settingsProfile", input.settings_profile)?,
        proxies: input
            .proxies
            .map(|v| version_input("proxies", v))
            .transpose()?,
        thresholds: thresholds_from(input.thresholds.unwrap_or_default())?,
    };
    let spec = ScheduleSpec {
        occurrence: occurrence_from(input.occurrence)?,
        zone: Zone::parse(&input.timezone).map_err(|e| error::invalid("timezone", e))?,
        owner,
        name: input.name,
        template,
        starts_at: input.starts_at,
        ends_at: input.ends_at,
        max_runs: input.max_runs,
        missed: input.missed,
    };
    crate::graphql::job::check_template(app, &spec.owner, &spec.template).await?;
    Ok(spec)
}

/// Runs `command` on schedule `id` for its `owner`, with the owner's
/// licence in force, and answers the table's row once the view has it.
async fn command(
    ctx: &Context<'_>,
    id: ScheduleId,
    owner: &Username,
    command: ScheduleCommand,
) -> async_graphql::Result<ScheduleInfo> {
    let stream = id.stream().map_err(|e| error::invalid("id", e))?;
    let decision = licensed_decision(ctx, owner).await?;
    let handled =
        crate::graphql::handle::<ScheduleAggregate>(ctx, &stream, command, &decision, None).await?;
    let app = app(ctx);
    if let Some(position) = handled.position {
        let _ = crate::live::view_reached(app, "schedules", position).await;
    }
    readable(app, principal(ctx)?, id).await
}

/// The owner of schedule `id`, if the principal may act on it.
async fn owner_of(ctx: &Context<'_>, id: ScheduleId) -> async_graphql::Result<Username> {
    let p = principal(ctx)?;
    let stream = id.stream().map_err(|e| error::invalid("id", e))?;
    let (_, state) = app(ctx)
        .handler
        .load::<ScheduleAggregate>(&stream)
        .await
        .map_err(|e| error::internal("cannot read the schedule", &e))?;
    match state.schedule {
        Some(s)
            if s.status != domain::schedule::Status::Deleted
                && (s.spec.owner == p.username || sees_all(p)) =>
        {
            Ok(s.spec.owner)
        }
        _ => Err(not_found(id)),
    }
}

#[derive(Default)]
pub struct ScheduleMutation;

#[Object]
impl ScheduleMutation {
    /// Schedules a job template for the logged-in account, or (admins) for
    /// `owner`. Needs the `scheduler` feature.
    async fn create_schedule(
        &self,
        ctx: &Context<'_>,
        schedule: ScheduleInput,
        owner: Option<String>,
    ) -> async_graphql::Result<ScheduleInfo> {
        let p = principal(ctx)?;
        let owner = match owner {
            Some(o) => Username::parse(&o).map_err(|e| error::invalid("owner", e))?,
            None => p.username.clone(),
        };
        // The licence first: an unlicensed account learns that, not its input's faults.
        licensed_decision(ctx, &owner)
            .await?
            .require(domain::licence::Feature::Scheduler)
            .map_err(|e| error::refused(&e))?;
        let spec = spec_from(app(ctx), owner.clone(), schedule).await?;
        let id = ScheduleId(Uuid::now_v7());
        command(ctx, id, &owner, ScheduleCommand::Create { id, spec }).await
    }

    /// Replaces a schedule's definition; its runs so far still count.
    async fn update_schedule(
        &self,
        ctx: &Context<'_>,
        id: ID,
        schedule: ScheduleInput,
    ) -> async_graphql::Result<ScheduleInfo> {
        let id = parse_id(&id)?;
        let owner = owner_of(ctx, id).await?;
        let spec = spec_from(app(ctx), owner.clone(), schedule).await?;
        command(ctx, id, &owner, ScheduleCommand::Update { spec }).await
    }

    /// Stops firing until resumed; occurrences meanwhile are not fired.
    async fn pause_schedule(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ScheduleInfo> {
        let id = parse_id(&id)?;
        let owner = owner_of(ctx, id).await?;
        command(ctx, id, &owner, ScheduleCommand::Pause).await
    }

    /// Fires again from the next occurrence on.
    async fn resume_schedule(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ScheduleInfo> {
        let id = parse_id(&id)?;
        let owner = owner_of(ctx, id).await?;
        command(ctx, id, &owner, ScheduleCommand::Resume).await
    }

    /// Deletes a schedule after a grace period of a day, during which
    /// `restoreSchedule` cancels it. Its past jobs stay.
    async fn delete_schedule(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ScheduleInfo> {
        let id = parse_id(&id)?;
        let owner = owner_of(ctx, id).await?;
        let grace = DELETION_GRACE;
        command(ctx, id, &owner, ScheduleCommand::Delete { grace }).await
    }

    /// Cancels a deletion still in its grace period.
    async fn restore_schedule(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ScheduleInfo> {
        let id = parse_id(&id)?;
        let owner = owner_of(ctx, id).await?;
        command(ctx, id, &owner, ScheduleCommand::Restore).await
    }
}

#[derive(Default)]
pub struct ScheduleSubscription;

#[Subscription]
impl ScheduleSubscription {
    /// The schedule now, then whenever its row changes (fired, refused,
    /// its job's status, paused, deleting, ended).
    async fn schedule_changed(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ScheduleInfo>>> {
        let p = principal(ctx)?.clone();
        let id = parse_id(&id)?;
        readable(app(ctx), &p, id).await?;
        let reader = p.clone();
        Ok(view_changes(
            app(ctx).clone(),
            p,
            Filter {
                stream_prefixes: vec!["schedule-".into(), "job-".into()],
                ..Filter::all()
            },
            "schedules",
            CHANGES_EVERY,
            move |app| {
                let reader = reader.clone();
                async move { readable(&app, &reader, id).await }
            },
        ))
    }
}

impl Coded for ScheduleError {
    fn code(&self) -> Code {
        match self {
            ScheduleError::Forbidden(_) => Code::Forbidden,
            ScheduleError::NotFound => Code::NotFound,
            ScheduleError::Invalid(_) => Code::Validation,
            ScheduleError::Exists | ScheduleError::WrongStatus { .. } => Code::Conflict,
            ScheduleError::NotLicensed(n) => n.code(),
        }
    }

    fn extend(&self, x: &mut ErrorExtensionValues) {
        if let ScheduleError::NotLicensed(n) = self {
            n.extend(x);
        }
    }
}

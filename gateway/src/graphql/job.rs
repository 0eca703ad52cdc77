//! Jobs over GraphQL: `jobs` and `job(id)` from the jobs view (progress and
//! Web Vitals per target, rate and ETA, runners at work, log with failed
//! flows' artifacts, threshold verdict),
//! `jobProgress(id)` as it changes (a few times a second at most, never
//! missing the final state), `createJob` from dataset versions, and
//! `runJob`, `pauseJob`, `resumeJob`, `stopJob` for the job's owner and
//! admins. A job is read by its owner, admins and auditors.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_graphql::{
    ComplexObject, Context, ErrorExtensionValues, ID, InputObject, Object, SimpleObject,
    Subscription,
};
use datasets::Rows;
use domain::account::Username;
use domain::artifact::{ArtifactKind, ArtifactRef};
use domain::job::{
    ConsentChecks, DatasetVersionRef, Job, JobAggregate, JobCommand, JobError, JobId, JobSettings,
    JobSpec, JobStatus, ProxiesRef, RunChecks,
};
use domain::job_plan::TargetPlan;
use domain::runner::{Browser, Os, Platform};
use domain::schedule::JobTemplate;
use domain::thresholds::{AutoAbort, Check, Figures, PerMille, Thresholds};
use domain::{Context as DecisionContext, DatasetKind, DomainName, Position, Reason};
use futures_util::Stream;
use projections::{Row, SqlValue, jobs_view};
use store::Filter;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::sessions::Principal;
use crate::command_handler::CommandMeta;
use crate::graphql::error::{self, Code, Coded};
use crate::graphql::job_vitals::{TargetVitals, vitals_of};
use crate::graphql::licence::licensed_decision;
use crate::graphql::system_settings::parse_reason;
use crate::graphql::view_watch::view_changes;
use crate::graphql::{AUDITORS, app, check_first, decision, from_micros, meta, principal, row_err};
use crate::job_datasets::{self, VersionError};
use crate::state::AppState;

/// `jobProgress` answers at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A job's settings, as its settings profile gave them.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct JobSettingsInfo {
    pub instances: u32,
    pub human_surfing: bool,
    pub external_clicks: bool,
    pub marker_header: bool,
}

/// A dataset version a job references.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct VersionRef {
    pub dataset: ID,
    pub version: u32,
}

/// One runner's share of a job.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct JobRunner {
    pub runner: ID,
    /// Browser slots of the job's instances it holds.
    pub slots: u32,
    /// Flows leased to it and not finished.
    pub held: u64,
    /// Of those, the ones it started.
    pub running: u64,
    pub lease_expires_at: OffsetDateTime,
}

/// One threshold against the job's figure.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct ThresholdCheck {
    /// `p95PageLoad`, `errorRate` or `failedFlows`.
    pub threshold: String,
    /// The limit, e.g. `2000 ms` or `2.5%`.
    pub limit: String,
    /// The job's figure, e.g. `1350 ms` or `12 of 1000`; none yet: null.
    pub actual: Option<String>,
    pub passed: bool,
}

/// How the job stands against its thresholds; passes without any.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<ThresholdCheck>,
    /// Final: the job ended.
    pub r#final: bool,
}

/// A target's progress: `flowDone/flowTarget`, `clickDone/clickTarget`,
/// and its pages' Web Vitals.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct TargetProgress {
    /// The target's row in the targets version, from 0.
    pub target: u32,
    pub flow_done: u64,
    /// Of the flows done, those that failed.
    pub flow_failed: u64,
    pub flow_target: u64,
    pub click_done: u64,
    pub click_target: u64,
    pub vitals: TargetVitals,
}

/// An artifact a failed flow kept, downloaded from `url` with the same
/// `Authorization: Bearer <accessToken>` as the API.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct JobArtifact {
    pub kind: ArtifactKind,
    /// The blob's SHA-256, in hex.
    pub blob: String,
    pub bytes: u64,
    /// The gateway's path to it: `/jobs/<id>/artifacts/<blob>`.
    pub url: String,
}

/// A line of a job's log.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct JobLogLine {
    /// Where it stands in the log: give it as `after` for the next page.
    pub cursor: String,
    pub at: OffsetDateTime,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub flow: Option<u64>,
    pub runner: Option<ID>,
    pub message: String,
    /// What the line's failed flow kept for debugging: a screenshot, its
    /// console errors, its request log.
    pub artifacts: Vec<JobArtifact>,
}

/// What only the job's stream knows now: who holds its flows.
#[derive(Clone, PartialEq)]
struct Holders {
    in_progress: u64,
    runners: Vec<JobRunner>,
}

/// A job, as the jobs view has it.
#[derive(SimpleObject, Clone, PartialEq)]
#[graphql(complex)]
pub struct JobInfo {
    pub id: ID,
    pub name: String,
    pub owner: String,
    pub status: JobStatus,
    /// Why it failed, with the figures, when it did.
    pub failure: Option<String>,
    pub platforms: Vec<Platform>,
    pub settings: JobSettingsInfo,
    pub targets_version: VersionRef,
    pub device_profiles_version: VersionRef,
    pub settings_profile_version: VersionRef,
    pub proxies_version: Option<VersionRef>,
    pub targets: u32,
    /// Flows in all: the sum of the targets' flow targets.
    pub flows: u64,
    /// Flows finished, succeeded or failed.
    pub finished: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Finished flows that clicked.
    pub clicked: u64,
    pub pages: u64,
    /// Pages answered with a 5xx or not at all.
    pub page_errors: u64,
    /// Flows finished per second since it last started running; 0 when not running.
    pub rate: f64,
    /// When it should be done at the current rate; null when not running
    /// or before the first flow finished.
    pub eta: Option<OffsetDateTime>,
    pub verdict: Verdict,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub ended_at: Option<OffsetDateTime>,
    #[graphql(skip)]
    holders: Option<Holders>,
}

#[ComplexObject]
impl JobInfo {
    /// Flows started and not finished, across runners.
    async fn in_progress(&self, ctx: &Context<'_>) -> async_graphql::Result<u64> {
        Ok(self.holders(ctx).await?.in_progress)
    }

    /// The runners holding flows of the job.
    async fn runners(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<JobRunner>> {
        Ok(self.holders(ctx).await?.runners)
    }

    /// Per target progress, in target order, `first` after target `after`.
    async fn target_progress(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: i32,
        after: Option<u32>,
    ) -> async_graphql::Result<Vec<TargetProgress>> {
        check_first(first)?;
        let rows = app(ctx)
            .views
            .query(
                &TARGETS_PAGE,
                vec![
                    SqlValue::from(self.id.as_str()),
                    SqlValue::from(after.map_or(-1, i64::from)),
                    SqlValue::from(first),
                ],
            )
            .await
            .map_err(|e| error::internal("cannot read the job's targets", &e))?;
        let mut targets: Vec<TargetProgress> = rows
            .iter()
            .map(target_from)
            .collect::<async_graphql::Result<_>>()?;
        if let Some(last) = targets.last() {
            let after = after.map_or(-1, i64::from);
            let mut vitals =
                vitals_of(app(ctx), self.id.as_str(), after, i64::from(last.target)).await?;
            for t in &mut targets {
                t.vitals = vitals.remove(&t.target).unwrap_or_default();
            }
        }
        Ok(targets)
    }

    /// The job's log, oldest first, `first` lines after the cursor `after`.
    async fn log(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<Vec<JobLogLine>> {
        check_first(first)?;
        let after = match after {
            Some(c) => LogCursor::parse(&c)?,
            None => LogCursor::START,
        };
        log_page(app(ctx), self.id.as_str(), after, i64::from(first)).await
    }
}

impl JobInfo {
    async fn holders(&self, ctx: &Context<'_>) -> async_graphql::Result<Holders> {
        match &self.holders {
            Some(h) => Ok(h.clone()),
            None => holders(app(ctx), parse_job_id("id", &self.id)?).await,
        }
    }
}

static ONE: LazyLock<String> =
    LazyLock::new(|| format!("SELECT * FROM {} WHERE job = $1", jobs_view::JOBS));

static TARGETS_PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT target, flow_target, flows_done, flows_failed, click_target, clicks_done FROM {} \
         WHERE job = $1 AND target > $2 ORDER BY target LIMIT $3",
        jobs_view::TARGETS
    )
});

static PAGE_TIMES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT upto_ms, pages FROM {} WHERE job = $1",
        jobs_view::PAGE_TIMES
    )
});

pub(crate) static LOG_PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT job, commit_pos, prepare_pos, line, at, level, flow, runner, message, artifacts FROM {} \
         WHERE job = $1 AND (commit_pos > $2 OR (commit_pos = $2 AND prepare_pos > $3) \
         OR (commit_pos = $2 AND prepare_pos = $3 AND line > $4)) \
         ORDER BY commit_pos, prepare_pos, line LIMIT $5",
        jobs_view::LOG
    )
});

static FLOWS_TODAY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT flows FROM {} WHERE owner = $1 AND day = $2",
        jobs_view::DAYS
    )
});

/// A place in a job's log: after (commit, prepare, line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogCursor(pub i64, pub i64, pub i64);

impl LogCursor {
    pub const START: LogCursor = LogCursor(-1, -1, -1);

    fn parse(raw: &str) -> async_graphql::Result<Self> {
        let parts: Vec<Option<i64>> = raw.split('.').map(|p| p.parse().ok()).collect();
        match parts.as_slice() {
            [Some(c), Some(p), Some(l)] => Ok(LogCursor(*c, *p, *l)),
            _ => Err(error::invalid(
                "after",
                "not a log cursor: give a line's `cursor` as it was returned",
            )),
        }
    }
}

/// One page of a job's log rows after `after`.
pub(crate) async fn log_rows(
    app: &AppState,
    job: &str,
    after: LogCursor,
    limit: i64,
) -> Result<Vec<Row>, projections::ViewError> {
    app.views
        .query(
            &LOG_PAGE,
            vec![
                SqlValue::from(job),
                SqlValue::from(after.0),
                SqlValue::from(after.1),
                SqlValue::from(after.2),
                SqlValue::from(limit),
            ],
        )
        .await
}

/// A log row as a line, and the cursor after it.
pub(crate) fn line_from(row: &Row) -> async_graphql::Result<(LogCursor, JobLogLine)> {
    let cursor = LogCursor(
        row.get("commit_pos").map_err(row_err)?,
        row.get("prepare_pos").map_err(row_err)?,
        row.get("line").map_err(row_err)?,
    );
    let flow: Option<i64> = row.get("flow").map_err(row_err)?;
    let runner: Option<String> = row.get("runner").map_err(row_err)?;
    let job: String = row.get("job").map_err(row_err)?;
    let artifacts: Vec<ArtifactRef> =
        match row.get::<Option<String>>("artifacts").map_err(row_err)? {
            Some(json) => serde_json::from_str(&json).map_err(row_err)?,
            None => Vec::new(),
        };
    Ok((
        cursor,
        JobLogLine {
            cursor: format!("{}.{}.{}", cursor.0, cursor.1, cursor.2),
            at: from_micros(row.get("at").map_err(row_err)?),
            level: row.get("level").map_err(row_err)?,
            flow: flow.and_then(|f| u64::try_from(f).ok()),
            runner: runner.map(ID),
            message: row.get("message").map_err(row_err)?,
            artifacts: artifacts
                .into_iter()
                .map(|a| JobArtifact {
                    kind: a.kind,
                    blob: a.blob.to_string(),
                    bytes: a.bytes,
                    url: format!("/jobs/{job}/artifacts/{}", a.blob),
                })
                .collect(),
        },
    ))
}

async fn log_page(
    app: &AppState,
    job: &str,
    after: LogCursor,
    limit: i64,
) -> async_graphql::Result<Vec<JobLogLine>> {
    let rows = log_rows(app, job, after, limit)
        .await
        .map_err(|e| error::internal("cannot read the job's log", &e))?;
    rows.iter()
        .map(|row| line_from(row).map(|(_, line)| line))
        .collect()
}

fn target_from(row: &Row) -> async_graphql::Result<TargetProgress> {
    let n = |column: &str| -> async_graphql::Result<u64> {
        let v: i64 = row.get(column).map_err(row_err)?;
        u64::try_from(v).map_err(row_err)
    };
    Ok(TargetProgress {
        target: u32::try_from(n("target")?).map_err(row_err)?,
        flow_done: n("flows_done")?,
        flow_failed: n("flows_failed")?,
        flow_target: n("flow_target")?,
        click_done: n("clicks_done")?,
        click_target: n("click_target")?,
        vitals: TargetVitals::default(),
    })
}

pub(crate) fn parse_job_id(field: &str, raw: &str) -> async_graphql::Result<JobId> {
    Uuid::parse_str(raw.trim())
        .map(JobId)
        .map_err(|e| error::invalid(field, format!("not a job id: {e}")))
}

fn version_ref(v: domain::job::DatasetVersionRef) -> VersionRef {
    VersionRef {
        dataset: ID(v.dataset.to_string()),
        version: v.version,
    }
}

fn verdict_from(spec: &JobSpec, figures: &Figures, ended: bool) -> Verdict {
    let verdict = spec.thresholds.verdict(figures);
    let checks = verdict
        .checks
        .iter()
        .map(|c| match *c {
            Check::P95PageLoad {
                limit_ms,
                actual_ms,
                passed,
            } => ThresholdCheck {
                threshold: "p95PageLoad".into(),
                limit: format!("{limit_ms} ms"),
                actual: actual_ms.map(|ms| format!("{ms} ms")),
                passed,
            },
            Check::ErrorRate {
                limit,
                errors,
                pages,
                passed,
            } => ThresholdCheck {
                threshold: "errorRate".into(),
                limit: limit.to_string(),
                actual: Some(format!("{errors} of {pages} pages")),
                passed,
            },
            Check::FailedFlows {
                limit,
                failed,
                finished,
                passed,
            } => ThresholdCheck {
                threshold: "failedFlows".into(),
                limit: limit.to_string(),
                actual: Some(format!("{failed} of {finished} flows")),
                passed,
            },
        })
        .collect();
    Verdict {
        passed: verdict.passed(),
        checks,
        r#final: ended,
    }
}

/// A job row as the API shows it, judged at `now`.
async fn job_from(
    app: &AppState,
    row: &Row,
    now: OffsetDateTime,
) -> async_graphql::Result<JobInfo> {
    let n = |column: &str| -> async_graphql::Result<u64> {
        let v: i64 = row.get(column).map_err(row_err)?;
        u64::try_from(v).map_err(row_err)
    };
    let at = |column: &str| -> async_graphql::Result<Option<OffsetDateTime>> {
        Ok(row
            .get::<Option<i64>>(column)
            .map_err(row_err)?
            .map(from_micros))
    };
    let id: String = row.get("job").map_err(row_err)?;
    let spec: JobSpec =
        serde_json::from_str(&row.get::<String>("spec").map_err(row_err)?).map_err(row_err)?;
    let status: JobStatus = serde_json::from_value(serde_json::Value::String(
        row.get("status").map_err(row_err)?,
    ))
    .map_err(row_err)?;
    let (finished, flows) = (n("finished")?, n("flows")?);
    let rate = match (status, at("running_since")?) {
        (JobStatus::Running, Some(since)) => {
            let seconds = (now - since).as_seconds_f64();
            let done = finished.saturating_sub(n("finished_since")?);
            if seconds > 0.0 {
                done as f64 / seconds
            } else {
                0.0
            }
        }
        _ => 0.0,
    };
    let eta = (rate > 0.0).then(|| {
        let left = flows.saturating_sub(finished) as f64 / rate;
        now + time::Duration::seconds_f64(left.min(1e9))
    });
    let buckets: Vec<(u32, u64)> = app
        .views
        .query(&PAGE_TIMES, vec![SqlValue::from(id.as_str())])
        .await
        .map_err(|e| error::internal("cannot read the job's page times", &e))?
        .iter()
        .filter_map(|r| {
            let upto: i64 = r.get("upto_ms").ok()?;
            let pages: i64 = r.get("pages").ok()?;
            Some((u32::try_from(upto).ok()?, u64::try_from(pages).ok()?))
        })
        .collect();
    let figures = Figures {
        p95_page_load_ms: jobs_view::percentile(&buckets, 95),
        pages: n("pages")?,
        page_errors: n("page_errors")?,
        finished,
        failed: n("failed")?,
    };
    let s = spec.settings;
    Ok(JobInfo {
        id: ID(id),
        name: row.get("name").map_err(row_err)?,
        owner: row.get("owner").map_err(row_err)?,
        status,
        failure: row.get("failure").map_err(row_err)?,
        platforms: spec.platforms.clone(),
        settings: JobSettingsInfo {
            instances: s.instances,
            human_surfing: s.human_surfing,
            external_clicks: s.external_clicks,
            marker_header: s.marker_header,
        },
        targets_version: version_ref(spec.targets),
        device_profiles_version: version_ref(spec.device_profiles),
        settings_profile_version: version_ref(spec.settings_profile),
        proxies_version: spec.proxies.map(|p| version_ref(p.version)),
        targets: u32::try_from(n("targets")?).map_err(row_err)?,
        flows,
        finished,
        succeeded: n("succeeded")?,
        failed: figures.failed,
        clicked: n("clicked")?,
        pages: figures.pages,
        page_errors: figures.page_errors,
        rate,
        eta,
        verdict: verdict_from(&spec, &figures, status.is_ended()),
        created_by: row.get("created_by").map_err(row_err)?,
        created_at: from_micros(row.get("created_at").map_err(row_err)?),
        started_at: at("started_at")?,
        ended_at: at("ended_at")?,
        holders: None,
    })
}

/// Who holds the job's flows now, from its stream.
async fn holders(app: &AppState, job: JobId) -> async_graphql::Result<Holders> {
    let stream = job.stream().map_err(|e| error::invalid("id", e))?;
    let (_, state) = app
        .handler
        .load::<JobAggregate>(&stream)
        .await
        .map_err(|e| error::internal("cannot read the job", &e))?;
    Ok(state.job.as_ref().map_or(
        Holders {
            in_progress: 0,
            runners: vec![],
        },
        |j: &Job| Holders {
            in_progress: j.in_progress(),
            runners: j
                .leases
                .iter()
                .map(|(runner, lease)| JobRunner {
                    runner: ID(runner.to_string()),
                    slots: lease.slots,
                    held: lease.held.len(),
                    running: lease.started.len(),
                    lease_expires_at: lease.expires_at,
                })
                .collect(),
        },
    ))
}

/// May `p` read jobs of `owner`?
fn may_read(p: &Principal, owner: &str) -> bool {
    p.username.as_str() == owner || AUDITORS.iter().any(|r| p.roles.contains(r))
}

/// The job `id` if `p` may read it; NOT_FOUND otherwise, so ids of others'
/// jobs reveal nothing.
pub(crate) async fn readable_job(
    app: &AppState,
    p: &Principal,
    id: JobId,
) -> async_graphql::Result<JobInfo> {
    let rows = app
        .views
        .query(&ONE, vec![SqlValue::from(id.to_string())])
        .await
        .map_err(|e| error::internal("cannot read the job", &e))?;
    let row = rows
        .first()
        .ok_or_else(|| error::error(Code::NotFound, format!("there is no job {id}")))?;
    let owner: String = row.get("owner").map_err(row_err)?;
    if !may_read(p, &owner) {
        return Err(error::error(
            Code::NotFound,
            format!("there is no job {id}"),
        ));
    }
    job_from(app, row, OffsetDateTime::now_utc()).await
}

/// The job with who holds its flows, for `job(id)` and `jobProgress`.
async fn job_now(app: AppState, p: Principal, id: JobId) -> async_graphql::Result<JobInfo> {
    let mut job = readable_job(&app, &p, id).await?;
    job.holders = Some(holders(&app, id).await?);
    Ok(job)
}

#[derive(Default)]
pub struct JobQuery;

#[Object]
impl JobQuery {
    /// Jobs, newest first: one's own, or (admins and auditors) anyone's or
    /// `owner`'s; `status` narrows them.
    async fn jobs(
        &self,
        ctx: &Context<'_>,
        status: Option<JobStatus>,
        owner: Option<String>,
        #[graphql(default = 100)] first: i32,
    ) -> async_graphql::Result<Vec<JobInfo>> {
        let p = principal(ctx)?;
        check_first(first)?;
        let sees_all = AUDITORS.iter().any(|r| p.roles.contains(r));
        let owner = match owner {
            Some(o) if sees_all || o == p.username.as_str() => Some(o),
            Some(_) => {
                return Err(error::error(
                    Code::Forbidden,
                    "only admins and auditors list other accounts' jobs",
                ));
            }
            None if sees_all => None,
            None => Some(p.username.as_str().to_owned()),
        };
        let mut sql = format!("SELECT * FROM {} WHERE 1 = 1", jobs_view::JOBS);
        let mut params = Vec::new();
        if let Some(o) = owner {
            params.push(SqlValue::from(o));
            sql.push_str(&format!(" AND owner = ${}", params.len()));
        }
        if let Some(s) = status {
            params.push(SqlValue::from(jobs_view::status_name(s)));
            sql.push_str(&format!(" AND status = ${}", params.len()));
        }
        params.push(SqlValue::from(first));
        sql.push_str(&format!(
            " ORDER BY created_at DESC, job LIMIT ${}",
            params.len()
        ));
        let app = app(ctx);
        let rows = app
            .views
            .query(&sql, params)
            .await
            .map_err(|e| error::internal("cannot read the jobs", &e))?;
        let now = OffsetDateTime::now_utc();
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            jobs.push(job_from(app, row, now).await?);
        }
        Ok(jobs)
    }

    /// One job, with its progress, runners and verdict.
    async fn job(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<JobInfo> {
        let p = principal(ctx)?.clone();
        job_now(app(ctx).clone(), p, parse_job_id("id", &id)?).await
    }
}

/// What a run is checked against beside the job: safe mode, the consent
/// of each domain and its parents, and the owner's flows today.
async fn run_checks(app: &AppState, job: &Job) -> async_graphql::Result<RunChecks> {
    let internal = |e: &dyn std::fmt::Display| error::internal("cannot check the run", e);
    let ConsentChecks { system, domains } = crate::consent_guard::consent_checks(app, job)
        .await
        .map_err(|e| internal(&e))?;
    let today = OffsetDateTime::now_utc().date().to_string();
    let rows = app
        .views
        .query(
            &FLOWS_TODAY,
            vec![
                SqlValue::from(job.spec.owner.as_str()),
                SqlValue::from(today),
            ],
        )
        .await
        .map_err(|e| internal(&e))?;
    let flows_today = rows
        .first()
        .and_then(|r| r.get::<i64>("flows").ok())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    Ok(RunChecks {
        system,
        domains,
        flows_today,
    })
}

/// Loads a job the principal may act on, or NOT_FOUND.
async fn job_state(ctx: &Context<'_>, id: JobId) -> async_graphql::Result<Job> {
    let p = principal(ctx)?;
    let stream = id.stream().map_err(|e| error::invalid("id", e))?;
    let (_, state) = app(ctx)
        .handler
        .load::<JobAggregate>(&stream)
        .await
        .map_err(|e| error::internal("cannot read the job", &e))?;
    match state.job {
        Some(job) if may_read(p, job.spec.owner.as_str()) => Ok(job),
        _ => Err(error::error(
            Code::NotFound,
            format!("there is no job {id}"),
        )),
    }
}

async fn job_command(
    ctx: &Context<'_>,
    id: ID,
    command: impl FnOnce(&Job) -> async_graphql::Result<JobCommand>,
    licensed: bool,
) -> async_graphql::Result<JobInfo> {
    let id = parse_job_id("id", &id)?;
    let job = job_state(ctx, id).await?;
    let command = command(&job)?;
    let decision = if licensed {
        licensed_decision(ctx, &job.spec.owner).await?
    } else {
        decision(ctx)?
    };
    let stream = id.stream().map_err(|e| error::invalid("id", e))?;
    let handled =
        crate::graphql::handle::<JobAggregate>(ctx, &stream, command, &decision, None).await?;
    if let Some(position) = handled.position {
        let _ = crate::live::view_reached(app(ctx), "jobs", position).await;
    }
    let p = principal(ctx)?.clone();
    job_now(app(ctx).clone(), p, id).await
}

/// A dataset version to reference.
#[derive(InputObject, Clone)]
pub struct DatasetVersionInput {
    pub dataset: ID,
    pub version: u32,
}

/// Pass/fail thresholds, each optional; shares in thousandths (25 = 2.5%).
#[derive(InputObject, Clone, Copy, Default)]
pub struct ThresholdsInput {
    pub p95_page_load_ms: Option<u32>,
    /// Pages answered with a 5xx or not at all, of all pages.
    pub max_error_rate_per_mille: Option<u16>,
    /// Failed flows, of finished flows.
    pub max_failed_flows_per_mille: Option<u16>,
    /// Stop the job to protect a site whose error rate passes this...
    pub auto_abort_error_rate_per_mille: Option<u16>,
    /// ...once at least this many of its pages loaded.
    pub auto_abort_min_pages: Option<u64>,
}

pub(crate) fn version_input(
    field: &str,
    v: DatasetVersionInput,
) -> async_graphql::Result<DatasetVersionRef> {
    Ok(DatasetVersionRef {
        dataset: Uuid::parse_str(v.dataset.trim()).map_err(|e| {
            error::invalid(
                &format!("{field}.dataset"),
                format!("not a dataset id: {e}"),
            )
        })?,
        version: v.version,
    })
}

fn per_mille(field: &str, v: Option<u16>) -> async_graphql::Result<Option<PerMille>> {
    v.map(|n| PerMille::new(n).map_err(|e| error::invalid(field, e)))
        .transpose()
}

pub(crate) fn thresholds_from(t: ThresholdsInput) -> async_graphql::Result<Thresholds> {
    let auto_abort = match (t.auto_abort_error_rate_per_mille, t.auto_abort_min_pages) {
        (None, None) => None,
        (Some(rate), Some(min_pages)) => Some(AutoAbort {
            error_rate: PerMille::new(rate)
                .map_err(|e| error::invalid("thresholds.autoAbortErrorRatePerMille", e))?,
            min_pages,
        }),
        _ => {
            return Err(error::invalid(
                "thresholds.autoAbortErrorRatePerMille",
                "give autoAbortErrorRatePerMille and autoAbortMinPages together",
            ));
        }
    };
    Ok(Thresholds {
        p95_page_load_ms: t.p95_page_load_ms,
        max_error_rate: per_mille(
            "thresholds.maxErrorRatePerMille",
            t.max_error_rate_per_mille,
        )?,
        max_failed_flows: per_mille(
            "thresholds.maxFailedFlowsPerMille",
            t.max_failed_flows_per_mille,
        )?,
        auto_abort,
    })
}

/// The rows of a version the job's owner owns, of `kind`; `field` names the
/// input in refusals.
async fn owned_rows(
    app: &AppState,
    field: &str,
    owner: &Username,
    version: DatasetVersionRef,
    kind: DatasetKind,
) -> async_graphql::Result<Arc<Rows>> {
    let (state, rows) = job_datasets::rows(app, version, kind)
        .await
        .map_err(|e| match e {
            VersionError::Internal(why) => error::internal("cannot read a dataset version", &why),
            refused => error::error(Code::NotFound, format!("{field}: {refused}")),
        })?;
    match &state.dataset {
        Some(d) if d.deleted => Err(error::error(
            Code::NotFound,
            format!("{field}: dataset {} was deleted", version.dataset),
        )),
        Some(d) if &d.owner != owner => Err(error::error(
            Code::Forbidden,
            format!("{field}: dataset {} is not {owner}'s", version.dataset),
        )),
        _ => Ok(rows),
    }
}

/// The platform a runner needs for a device profile, or why none serves it.
fn platform_of(profile: &datasets::DeviceProfile) -> Result<Platform, String> {
    use datasets::{Browser as B, Os as O};
    let os = match profile.os {
        O::Windows => Os::Windows,
        O::Macos => Os::Macos,
        O::Linux => Os::Linux,
        O::Android => Os::Android,
        O::Ios => Os::Ios,
        O::Chromeos => return Err("no runner runs ChromeOS".into()),
    };
    let browser = match profile.browser {
        B::Chrome => Browser::Chrome,
        B::Chromium => Browser::Chromium,
        B::Edge => Browser::Edge,
        B::Firefox | B::Safari => {
            return Err("runners drive Chromium, Chrome or Edge only".into());
        }
    };
    Ok(Platform { os, browser })
}

/// What the job's datasets say, read and checked: the targets' plan, the
/// platforms, the settings and the proxies' count.
struct Read {
    targets: Vec<TargetPlan>,
    platforms: Vec<Platform>,
    settings: JobSettings,
    proxies: Option<ProxiesRef>,
}

async fn read_datasets(
    app: &AppState,
    owner: &Username,
    targets: DatasetVersionRef,
    device_profiles: DatasetVersionRef,
    settings_profile: DatasetVersionRef,
    proxies: Option<DatasetVersionRef>,
) -> async_graphql::Result<Read> {
    let rows = owned_rows(app, "targets", owner, targets, DatasetKind::Targets).await?;
    let Rows::Targets(rows) = &*rows else {
        return Err(error::invalid(
            "targets",
            "the version does not hold targets",
        ));
    };
    let mut plan = Vec::with_capacity(rows.len());
    for (i, t) in rows.iter().enumerate() {
        let host = t.url.host_str().unwrap_or_default();
        let domain = DomainName::parse(host).map_err(|e| {
            error::invalid(&format!("targets row {}", i + 1), format!("{}: {e}", t.url))
        })?;
        plan.push(TargetPlan {
            domain,
            flows: t.flow_target,
            clicks: t.click_target,
        });
    }
    let rows = owned_rows(
        app,
        "deviceProfiles",
        owner,
        device_profiles,
        DatasetKind::DeviceProfiles,
    )
    .await?;
    let Rows::DeviceProfiles(profiles) = &*rows else {
        return Err(error::invalid(
            "deviceProfiles",
            "the version does not hold device profiles",
        ));
    };
    let mut platforms = Vec::new();
    for (i, p) in profiles.iter().enumerate() {
        let platform = platform_of(p).map_err(|why| {
            error::invalid(&format!("deviceProfiles row {} ({})", i + 1, p.name), why)
        })?;
        platforms.push(platform);
    }
    let rows = owned_rows(
        app,
        "settingsProfile",
        owner,
        settings_profile,
        DatasetKind::SettingsProfiles,
    )
    .await?;
    // A job runs with the version's first profile: publish the one wanted first.
    let Some(profile) = (match &*rows {
        Rows::SettingsProfiles(p) => p.first(),
        _ => None,
    }) else {
        return Err(error::invalid(
            "settingsProfile",
            "the version holds no settings profile",
        ));
    };
    let settings = JobSettings {
        instances: profile.instances,
        human_surfing: profile.human_surfing(),
        external_clicks: profile.external_clicks(),
        marker_header: profile.marker_header,
    };
    let proxies = match proxies {
        None => None,
        Some(version) => {
            let rows = owned_rows(app, "proxies", owner, version, DatasetKind::Proxies).await?;
            Some(ProxiesRef {
                version,
                proxies: u32::try_from(rows.len()).unwrap_or(u32::MAX),
            })
        }
    };
    Ok(Read {
        targets: plan,
        platforms,
        settings,
        proxies,
    })
}

/// Creates a READY job `id` from `template`'s dataset versions for
/// `owner`: the one path `createJob` and the scheduler's fires take.
/// Returns where its creation was appended (nothing new: none).
pub(crate) async fn create(
    app: &AppState,
    id: JobId,
    owner: Username,
    name: String,
    template: &JobTemplate,
    decision: &DecisionContext,
    meta: &CommandMeta,
) -> async_graphql::Result<Option<Position>> {
    let read = read_datasets(
        app,
        &owner,
        template.targets,
        template.device_profiles,
        template.settings_profile,
        template.proxies,
    )
    .await?;
    let spec = JobSpec {
        owner,
        name,
        targets: template.targets,
        proxies: read.proxies,
        device_profiles: template.device_profiles,
        platforms: read.platforms,
        settings_profile: template.settings_profile,
        settings: read.settings,
        thresholds: template.thresholds,
    };
    let stream = id
        .stream()
        .map_err(|e| error::internal("a job's stream", &e))?;
    let command = JobCommand::Create {
        id,
        spec,
        targets: read.targets,
    };
    let handled = app
        .handler
        .handle::<JobAggregate>(&stream, command, decision, meta)
        .await
        .map_err(error::command)?;
    Ok(handled.position)
}

/// Refuses a template whose dataset versions `owner` cannot use (missing,
/// deleted, another's, of the wrong kind or unusable), as `createJob` would.
pub(crate) async fn check_template(
    app: &AppState,
    owner: &Username,
    template: &JobTemplate,
) -> async_graphql::Result<()> {
    read_datasets(
        app,
        owner,
        template.targets,
        template.device_profiles,
        template.settings_profile,
        template.proxies,
    )
    .await
    .map(drop)
}

/// Runs the READY job `id` as `runJob` does, checked against safe mode,
/// its domains' consent and its owner's licence (in `decision`).
pub(crate) async fn run(
    app: &AppState,
    id: JobId,
    decision: &DecisionContext,
    meta: &CommandMeta,
) -> async_graphql::Result<()> {
    let stream = id.stream().map_err(|e| error::invalid("id", e))?;
    let (_, state) = app
        .handler
        .load::<JobAggregate>(&stream)
        .await
        .map_err(|e| error::internal("cannot read the job", &e))?;
    let job = state
        .job
        .ok_or_else(|| error::error(Code::NotFound, format!("there is no job {id}")))?;
    let checks = run_checks(app, &job).await?;
    app.handler
        .handle::<JobAggregate>(&stream, JobCommand::Run(checks), decision, meta)
        .await
        .map_err(error::command)?;
    Ok(())
}

#[derive(Default)]
pub struct JobMutation;

#[Object]
impl JobMutation {
    /// Creates a READY job from dataset versions (references, never rows)
    /// for the logged-in account, or (admins) for `owner`. The targets make
    /// its flows; the device profiles the platforms its runners need; the
    /// version's first settings profile its instances and options.
    #[allow(clippy::too_many_arguments)]
    async fn create_job(
        &self,
        ctx: &Context<'_>,
        name: String,
        targets: DatasetVersionInput,
        device_profiles: DatasetVersionInput,
        settings_profile: DatasetVersionInput,
        proxies: Option<DatasetVersionInput>,
        thresholds: Option<ThresholdsInput>,
        owner: Option<String>,
    ) -> async_graphql::Result<JobInfo> {
        let p = principal(ctx)?.clone();
        let owner = match owner {
            Some(o) => Username::parse(&o).map_err(|e| error::invalid("owner", e))?,
            None => p.username.clone(),
        };
        let targets = version_input("targets", targets)?;
        let device_profiles = version_input("deviceProfiles", device_profiles)?;
        let settings_profile = version_input("settingsProfile", settings_profile)?;
        let proxies = proxies.map(|v| version_input("proxies", v)).transpose()?;
        let thresholds = thresholds_from(thresholds.unwrap_or_default())?;
        let app = app(ctx).clone();
        let id = JobId(Uuid::now_v7());
        let template = JobTemplate {
            targets,
            device_profiles,
            settings_profile,
            proxies,
            thresholds,
        };
        let created = create(
            &app,
            id,
            owner,
            name,
            &template,
            &decision(ctx)?,
            &meta(None),
        )
        .await?;
        // Read your write: the job is in the view when the answer says so.
        if let Some(position) = created {
            let _ = crate::live::view_reached(&app, "jobs", position).await;
        }
        job_now(app, p, id).await
    }

    /// Runs a READY or PAUSED job (its owner or an admin). A running job
    /// answers CONFLICT and nothing changes; safe mode, the licence and
    /// the domains' consent are checked first.
    async fn run_job(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<JobInfo> {
        let app = app(ctx).clone();
        let id_value = parse_job_id("id", &id)?;
        let job = job_state(ctx, id_value).await?;
        let checks = run_checks(&app, &job).await?;
        job_command(ctx, id, |_| Ok(JobCommand::Run(checks)), true).await
    }

    /// Runs a PAUSED job again, checked as `runJob` is.
    async fn resume_job(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<JobInfo> {
        let app = app(ctx).clone();
        let job = job_state(ctx, parse_job_id("id", &id)?).await?;
        let checks = run_checks(&app, &job).await?;
        job_command(ctx, id, |_| Ok(JobCommand::Resume(checks)), true).await
    }

    /// Pauses a running job: its runners start no new flow of it.
    async fn pause_job(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<JobInfo> {
        job_command(ctx, id, |_| Ok(JobCommand::Pause), false).await
    }

    /// Stops a job for good, saying why if you like: its runners stop its
    /// flows now.
    async fn stop_job(
        &self,
        ctx: &Context<'_>,
        id: ID,
        reason: Option<String>,
    ) -> async_graphql::Result<JobInfo> {
        let reason: Option<Reason> = reason.map(|r| parse_reason("reason", &r)).transpose()?;
        job_command(ctx, id, |_| Ok(JobCommand::Stop { reason }), false).await
    }
}

#[derive(Default)]
pub struct JobSubscription;

#[Subscription]
impl JobSubscription {
    /// The job now, then as it progresses: a few times a second at most,
    /// and always its final state.
    async fn job_progress(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<JobInfo>>> {
        let p = principal(ctx)?.clone();
        let id = parse_job_id("id", &id)?;
        // Refused at once, not as the first item, when it is not theirs.
        readable_job(app(ctx), &p, id).await?;
        let stream = id.stream().map_err(|e| error::invalid("id", e))?;
        Ok(view_changes(
            app(ctx).clone(),
            p.clone(),
            Filter::stream_prefix(stream.as_str()),
            "jobs",
            PROGRESS_EVERY,
            move |app| job_now(app, p.clone(), id),
        ))
    }
}

impl Coded for JobError {
    fn code(&self) -> Code {
        match self {
            JobError::Forbidden(_) => Code::Forbidden,
            JobError::NotFound => Code::NotFound,
            JobError::Invalid(_) => Code::Validation,
            JobError::Exists | JobError::AlreadyRunning | JobError::WrongStatus { .. } => {
                Code::Conflict
            }
            JobError::SafeMode(_) => Code::SafeMode,
            JobError::NotLicensed(n) => n.code(),
            JobError::NoConsent(_) => Code::Forbidden,
            // What only a runner's requests meet.
            JobError::PlatformMismatch { .. }
            | JobError::InstancesInUse { .. }
            | JobError::NotHeld { .. }
            | JobError::BadReport { .. }
            | JobError::TooManyReports { .. }
            | JobError::ReportTooLarge { .. }
            | JobError::ConsentLapsed { .. }
            | JobError::BadTtl => Code::Conflict,
        }
    }

    fn extend(&self, x: &mut ErrorExtensionValues) {
        match self {
            JobError::NotLicensed(n) => n.extend(x),
            JobError::NoConsent(refusals) => {
                let domains: Vec<String> = refusals.iter().map(|r| r.domain.to_string()).collect();
                x.set("domains", domains);
            }
            _ => {}
        }
    }
}

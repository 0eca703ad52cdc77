//! The `jobs` view: each job's standing and counters, its targets' flow and
//! click progress, a histogram of its page load times (for the p95) and
//! one of each target's Web Vitals (for their p50 and p95), its log (a
//! failed flow's line naming its artifacts), each owner's flows per day
//! (for the licence's daily limit), and the dataset versions each job
//! references (which may not be deleted under it).
//!
//! Reports arrive in batches already rid of duplicates by the job's decider,
//! so every count here is exact; a batch becomes a handful of statements
//! (one per contiguous range of flows, per histogram bucket, per
//! [`VITAL_ROWS`] vitals' buckets), never one per flow. Histograms keep
//! counts per bucket, never the samples, so a view holds the same few rows
//! per target however long a job runs.

use std::collections::BTreeMap;

use std::sync::LazyLock;

use domain::RecordedEvent;
use domain::artifact::ArtifactRef;
use domain::flow::{FlowFinished, FlowOutcome, FlowReport, LogLevel};
use domain::job::{JobEvent, JobSpec, JobStatus};
use domain::job_plan::TargetRun;
use domain::web_vitals::Vital;
use store::Filter;

use crate::audit_view::summarize;
use crate::decode::registry;
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::{SqlValue, Statement};

pub struct JobsView;

pub const JOBS: &str = "view_jobs";
pub const TARGETS: &str = "view_job_targets";
pub const PAGE_TIMES: &str = "view_job_page_times";
pub const LOG: &str = "view_job_log";
pub const VITALS: &str = "view_job_vitals";
pub const DAYS: &str = "view_job_days";
pub const DATASETS: &str = "view_job_datasets";

const PREFIX: &str = "job-";

const SCHEMA: &[&str] = &[
    "CREATE TABLE view_jobs (
    job                 TEXT NOT NULL PRIMARY KEY,
    owner               TEXT NOT NULL,
    name                TEXT NOT NULL,
    status              TEXT NOT NULL,
    spec                TEXT NOT NULL,
    targets             BIGINT NOT NULL,
    flows               BIGINT NOT NULL,
    finished            BIGINT NOT NULL,
    succeeded           BIGINT NOT NULL,
    failed              BIGINT NOT NULL,
    clicked             BIGINT NOT NULL,
    pages               BIGINT NOT NULL,
    page_errors         BIGINT NOT NULL,
    failure             TEXT,
    created_by          TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    started_at          BIGINT,
    running_since       BIGINT,
    finished_since      BIGINT NOT NULL,
    ended_at            BIGINT,
    changed_at          BIGINT NOT NULL
)",
    "CREATE INDEX view_jobs_owner ON view_jobs (owner, created_at)",
    "CREATE INDEX view_jobs_status ON view_jobs (status, created_at)",
    "CREATE TABLE view_job_targets (
    job           TEXT NOT NULL,
    target        BIGINT NOT NULL,
    first_flow    BIGINT NOT NULL,
    end_flow      BIGINT NOT NULL,
    flow_target   BIGINT NOT NULL,
    click_target  BIGINT NOT NULL,
    flows_done    BIGINT NOT NULL,
    flows_failed  BIGINT NOT NULL,
    clicks_done   BIGINT NOT NULL,
    PRIMARY KEY (job, target)
)",
    "CREATE INDEX view_job_targets_flows ON view_job_targets (job, first_flow)",
    "CREATE TABLE view_job_page_times (
    job       TEXT NOT NULL,
    upto_ms   BIGINT NOT NULL,
    pages     BIGINT NOT NULL,
    PRIMARY KEY (job, upto_ms)
)",
    "CREATE TABLE view_job_log (
    job          TEXT NOT NULL,
    commit_pos   BIGINT NOT NULL,
    prepare_pos  BIGINT NOT NULL,
    line         BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    level        TEXT NOT NULL,
    flow         BIGINT,
    runner       TEXT,
    message      TEXT NOT NULL,
    artifacts    TEXT,
    PRIMARY KEY (job, commit_pos, prepare_pos, line)
)",
    "CREATE TABLE view_job_vitals (
    job      TEXT NOT NULL,
    target   BIGINT NOT NULL,
    vital    TEXT NOT NULL,
    upto     BIGINT NOT NULL,
    pages    BIGINT NOT NULL,
    PRIMARY KEY (job, target, vital, upto)
)",
    "CREATE TABLE view_job_datasets (
    job      TEXT NOT NULL,
    dataset  TEXT NOT NULL,
    version  BIGINT NOT NULL,
    role     TEXT NOT NULL,
    PRIMARY KEY (job, role)
)",
    "CREATE INDEX view_job_datasets_dataset ON view_job_datasets (dataset)",
    "CREATE TABLE view_job_days (
    owner  TEXT NOT NULL,
    day    TEXT NOT NULL,
    flows  BIGINT NOT NULL,
    PRIMARY KEY (owner, day)
)",
];

/// Upper bounds of the page-load histogram's buckets, in ms; a load above
/// the last falls in a bucket of its own (`u32::MAX`).
pub const PAGE_BUCKETS_MS: &[u32] = &[
    50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 7500, 10_000,
    15_000, 20_000, 30_000, 60_000,
];

/// Upper bounds of the Web Vitals' buckets: times in ms (the published
/// good / poor limits among them, so a share under one is exact), CLS in
/// thousandths (0: no shift at all, the common case).
const VITAL_BUCKETS_MS: &[u32] = &[
    10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 1800, 2000, 2500,
    3000, 4000, 5000, 7500, 10_000, 15_000, 20_000, 30_000, 60_000,
];
const CLS_BUCKETS_MILLI: &[u32] = &[0, 10, 25, 50, 75, 100, 150, 200, 250, 500, 1000, 2000];

/// The bucket bounds of `vital`.
pub fn vital_buckets(vital: Vital) -> &'static [u32] {
    match vital {
        Vital::Cls => CLS_BUCKETS_MILLI,
        Vital::Ttfb | Vital::Fcp | Vital::Lcp | Vital::Inp => VITAL_BUCKETS_MS,
    }
}

/// The page-load bucket a load of `ms` falls in.
pub fn bucket(ms: u32) -> u32 {
    bucket_in(PAGE_BUCKETS_MS, ms)
}

/// The bucket of `bounds` that `value` falls in: the first bound at or
/// above it, or `u32::MAX` above the last.
pub fn bucket_in(bounds: &[u32], value: u32) -> u32 {
    bounds
        .iter()
        .copied()
        .find(|&upper| value <= upper)
        .unwrap_or(u32::MAX)
}

/// Vitals' bucket counts one statement adds, as `(flow, vital, upto, pages)`
/// rows placed in their targets by the database (the view alone knows
/// which flows a target has); a statement always binds this many rows, so
/// it is prepared once.
pub const VITAL_ROWS: usize = 64;

static ADD_VITALS: LazyLock<String> = LazyLock::new(|| {
    let rows: Vec<String> = (0..VITAL_ROWS)
        .map(|i| {
            let p = 2 + 4 * i;
            format!(
                "(CAST(${} AS BIGINT), CAST(${} AS TEXT), CAST(${} AS BIGINT), CAST(${} AS BIGINT))",
                p,
                p + 1,
                p + 2,
                p + 3
            )
        })
        .collect();
    format!(
        "INSERT INTO view_job_vitals (job, target, vital, upto, pages) \
         SELECT t.job, t.target, s.column2, s.column3, SUM(s.column4) \
         FROM view_job_targets t JOIN (VALUES {}) AS s \
         ON s.column1 >= t.first_flow AND s.column1 < t.end_flow \
         WHERE t.job = $1 \
         GROUP BY t.job, t.target, s.column2, s.column3 \
         ON CONFLICT (job, target, vital, upto) DO UPDATE SET pages = view_job_vitals.pages + excluded.pages",
        rows.join(", ")
    )
});

/// The statements adding the vitals of `finished` flows' pages to their
/// targets' histograms.
fn add_vitals(job: &str, finished: &[&FlowFinished]) -> Result<Vec<Statement>, ProjectionError> {
    let mut counts: BTreeMap<(u64, Vital, u32), u64> = BTreeMap::new();
    for f in finished {
        for page in &f.pages {
            for (vital, value) in page.vitals.measured() {
                let upto = bucket_in(vital_buckets(vital), value);
                *counts.entry((f.flow.0, vital, upto)).or_default() += 1;
            }
        }
    }
    let rows: Vec<_> = counts.into_iter().collect();
    let mut out = Vec::new();
    for chunk in rows.chunks(VITAL_ROWS) {
        let mut statement = Statement::new(ADD_VITALS.as_str()).bind(job);
        for i in 0..VITAL_ROWS {
            // Rows past the chunk's end name no flow (ids start at 0): they add nothing.
            statement = match chunk.get(i) {
                Some(&((flow, vital, upto), pages)) => statement
                    .bind(int(flow)?)
                    .bind(vital.name())
                    .bind(i64::from(upto))
                    .bind(int(pages)?),
                None => statement.bind(-1i64).bind("").bind(0i64).bind(0i64),
            };
        }
        out.push(statement);
    }
    Ok(out)
}

/// A status as stored, e.g. `running`.
pub fn status_name(status: JobStatus) -> String {
    status.to_string()
}

/// Contiguous ranges `[start, end)` of sorted, distinct flows.
fn ranges(mut flows: Vec<u64>) -> Vec<(u64, u64)> {
    flows.sort_unstable();
    flows.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for f in flows {
        match out.last_mut() {
            Some((_, end)) if *end == f => *end += 1,
            _ => out.push((f, f + 1)),
        }
    }
    out
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

/// Builds one event's log lines, numbered within the event.
struct Log<'a> {
    job: &'a str,
    event: &'a RecordedEvent,
    line: i64,
}

impl Log<'_> {
    fn line(
        &mut self,
        level: &str,
        flow: Option<u64>,
        runner: Option<String>,
        message: String,
    ) -> Result<Statement, ProjectionError> {
        self.line_with(level, flow, runner, message, &[])
    }

    /// A line that names artifacts (stored as a JSON array; none: NULL).
    fn line_with(
        &mut self,
        level: &str,
        flow: Option<u64>,
        runner: Option<String>,
        message: String,
        artifacts: &[ArtifactRef],
    ) -> Result<Statement, ProjectionError> {
        self.line += 1;
        let artifacts = if artifacts.is_empty() {
            SqlValue::Null
        } else {
            SqlValue::from(serde_json::to_string(artifacts).unwrap_or_default())
        };
        Ok(Statement::new(
            "INSERT INTO view_job_log (job, commit_pos, prepare_pos, line, at, level, flow, runner, message, artifacts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(self.job)
        .bind(SqlValue::try_from(self.event.position.commit)?)
        .bind(SqlValue::try_from(self.event.position.prepare)?)
        .bind(self.line)
        .bind(self.event.recorded_at)
        .bind(level)
        .bind(match flow {
            Some(f) => SqlValue::try_from(f)?,
            None => SqlValue::Null,
        })
        .bind(runner.map_or(SqlValue::Null, SqlValue::from))
        .bind(message)
        .bind(artifacts))
    }
}

fn int(n: u64) -> Result<SqlValue, ProjectionError> {
    Ok(SqlValue::try_from(n)?)
}

/// One row per target of the runs, each placed after the job's last.
fn place_targets(job: &str, runs: &[TargetRun], out: &mut Vec<Statement>) {
    for run in runs {
        for _ in 0..run.targets {
            out.push(
                Statement::new(
                    "INSERT INTO view_job_targets (job, target, first_flow, end_flow, flow_target, click_target, flows_done, flows_failed, clicks_done) \
                     SELECT $1, COALESCE(MAX(target) + 1, 0), COALESCE(MAX(end_flow), 0), COALESCE(MAX(end_flow), 0) + $2, $2, $3, 0, 0, 0 \
                     FROM view_job_targets WHERE job = $1",
                )
                .bind(job)
                .bind(i64::from(run.flows))
                .bind(i64::from(run.clicks)),
            );
        }
    }
}

/// Adds the flows of `[start, end)` to the targets they belong to.
fn count_range(
    job: &str,
    column: &str,
    (start, end): (u64, u64),
) -> Result<Statement, ProjectionError> {
    Ok(Statement::new(format!(
        "UPDATE view_job_targets SET {column} = {column} \
         + (CASE WHEN end_flow < $3 THEN end_flow ELSE $3 END) \
         - (CASE WHEN first_flow > $2 THEN first_flow ELSE $2 END) \
         WHERE job = $1 AND first_flow < $3 AND end_flow > $2"
    ))
    .bind(job)
    .bind(int(start)?)
    .bind(int(end)?))
}

fn status(job: &str, status: JobStatus, at: time::OffsetDateTime) -> Statement {
    Statement::new("UPDATE view_jobs SET status = $2, changed_at = $3 WHERE job = $1")
        .bind(job)
        .bind(status_name(status))
        .bind(at)
}

/// The view's name, in the projections' status and checkpoints.
pub const NAME: &str = "jobs";

impl Projection for JobsView {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn version(&self) -> u32 {
        // 2: the vitals' histograms and the log's artifacts;
        // 3: per target, the flows that failed.
        3
    }

    fn tables(&self) -> &'static [&'static str] {
        &[JOBS, TARGETS, PAGE_TIMES, LOG, VITALS, DAYS, DATASETS]
    }

    fn filter(&self) -> Filter {
        Filter::stream_prefix(PREFIX)
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let Some(job) = event.stream_id.as_str().strip_prefix(PREFIX) else {
            return Ok(());
        };
        let at = event.recorded_at;
        let mut log = Log {
            job,
            event,
            line: 0,
        };
        let decoded = registry().decode::<JobEvent>(event)?;
        let lifecycle = |log: &mut Log, out: &mut Vec<Statement>| -> Result<(), ProjectionError> {
            out.push(log.line("info", None, None, summarize(event))?);
            Ok(())
        };
        match decoded {
            JobEvent::JobCreated(c) => {
                let spec: &JobSpec = &c.spec;
                out.push(
                    Statement::new(
                        "INSERT INTO view_jobs (job, owner, name, status, spec, targets, flows, finished, succeeded, failed, \
                         clicked, pages, page_errors, failure, created_by, created_at, started_at, running_since, \
                         finished_since, ended_at, changed_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, 0, 0, 0, 0, NULL, $8, $9, NULL, NULL, 0, NULL, $9)",
                    )
                    .bind(job)
                    .bind(spec.owner.as_str())
                    .bind(spec.name.as_str())
                    .bind(status_name(JobStatus::Ready))
                    .bind(serde_json::to_string(spec).unwrap_or_default())
                    .bind(i64::from(c.targets))
                    .bind(int(c.flows)?)
                    .bind(c.by.as_str())
                    .bind(at),
                );
                let versions = [
                    ("targets", Some(spec.targets)),
                    ("device_profiles", Some(spec.device_profiles)),
                    ("settings_profile", Some(spec.settings_profile)),
                    ("proxies", spec.proxies.map(|p| p.version)),
                ];
                for (role, version) in versions {
                    let Some(v) = version else { continue };
                    out.push(
                        Statement::new(
                            "INSERT INTO view_job_datasets (job, dataset, version, role) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(job)
                        .bind(v.dataset.to_string())
                        .bind(i64::from(v.version))
                        .bind(role),
                    );
                }
                place_targets(job, &c.plan, out);
                lifecycle(&mut log, out)?;
            }
            JobEvent::JobPlanContinued(c) => place_targets(job, &c.plan, out),
            JobEvent::JobStarted(_) | JobEvent::JobResumed(_) => {
                // The rate counts from here: flows finished since the job
                // last began running, over the time since.
                out.push(
                    Statement::new(
                        "UPDATE view_jobs SET status = $2, started_at = COALESCE(started_at, $3), \
                         running_since = $3, finished_since = finished, changed_at = $3 WHERE job = $1",
                    )
                    .bind(job)
                    .bind(status_name(JobStatus::Running))
                    .bind(at),
                );
                lifecycle(&mut log, out)?;
            }
            // Halted by the system (safe mode, consent lost): paused, its
            // log line saying why.
            JobEvent::JobPaused(_) | JobEvent::JobHalted(_) => {
                out.push(status(job, JobStatus::Paused, at));
                lifecycle(&mut log, out)?;
            }
            JobEvent::JobStopped(_) | JobEvent::JobCompleted(_) | JobEvent::JobFailed(_) => {
                let (ended, failure) = match &decoded {
                    JobEvent::JobStopped(_) => (JobStatus::Stopped, None),
                    JobEvent::JobFailed(f) => (JobStatus::Failed, Some(f.failure.to_string())),
                    _ => (JobStatus::Done, None),
                };
                out.push(
                    Statement::new(
                        "UPDATE view_jobs SET status = $2, failure = $3, ended_at = $4, changed_at = $4 WHERE job = $1",
                    )
                    .bind(job)
                    .bind(status_name(ended))
                    .bind(failure.map_or(SqlValue::Null, SqlValue::from))
                    .bind(at),
                );
                lifecycle(&mut log, out)?;
            }
            JobEvent::FlowsReported(batch) => {
                let runner = batch.runner.to_string();
                let mut finished = Vec::new();
                let mut finished_flows: Vec<&FlowFinished> = Vec::new();
                let mut failed_flows = Vec::new();
                let mut clicked = Vec::new();
                let (mut succeeded, mut failed, mut pages, mut page_errors) =
                    (0u64, 0u64, 0u64, 0u64);
                let mut buckets: BTreeMap<u32, u64> = BTreeMap::new();
                for r in &batch.reports {
                    match r {
                        FlowReport::Started { .. } => {}
                        FlowReport::Finished(f) => {
                            finished.push(f.flow.0);
                            finished_flows.push(f);
                            if f.clicked() {
                                clicked.push(f.flow.0);
                            }
                            match &f.outcome {
                                FlowOutcome::Succeeded => succeeded += 1,
                                FlowOutcome::Failed { reason } => {
                                    failed += 1;
                                    failed_flows.push(f.flow.0);
                                    out.push(log.line_with(
                                        "warn",
                                        Some(f.flow.0),
                                        Some(runner.clone()),
                                        format!("flow {} failed: {reason}", f.flow.0),
                                        &f.artifacts,
                                    )?);
                                }
                            }
                            pages += f.pages.len() as u64;
                            page_errors += f.page_errors();
                            for p in &f.pages {
                                *buckets.entry(bucket(p.ms)).or_default() += 1;
                            }
                            for click in &f.clicks {
                                if let domain::flow::Click::Skipped { domain, reason } = click {
                                    let to = domain
                                        .as_ref()
                                        .map(|d| format!(" to {d}"))
                                        .unwrap_or_default();
                                    out.push(log.line(
                                        "info",
                                        Some(f.flow.0),
                                        Some(runner.clone()),
                                        format!("flow {}: a click{to} skipped: {reason}", f.flow.0),
                                    )?);
                                }
                            }
                        }
                        FlowReport::ProxyFailedOver {
                            flow,
                            from,
                            to,
                            error,
                        } => {
                            let to = to.map_or("no proxy left".to_owned(), |t| t.to_string());
                            out.push(log.line(
                                "warn",
                                Some(flow.0),
                                Some(runner.clone()),
                                format!("flow {}: {from} failed over to {to}: {error}", flow.0),
                            )?);
                        }
                        FlowReport::Log {
                            flow,
                            level,
                            message,
                        } => out.push(log.line(
                            level_name(*level),
                            flow.map(|f| f.0),
                            Some(runner.clone()),
                            message.clone(),
                        )?),
                    }
                }
                if finished.is_empty() {
                    return Ok(());
                }
                let done = finished.len() as u64;
                out.push(
                    Statement::new(
                        "UPDATE view_jobs SET finished = finished + $2, succeeded = succeeded + $3, failed = failed + $4, \
                         clicked = clicked + $5, pages = pages + $6, page_errors = page_errors + $7, changed_at = $8 \
                         WHERE job = $1",
                    )
                    .bind(job)
                    .bind(int(done)?)
                    .bind(int(succeeded)?)
                    .bind(int(failed)?)
                    .bind(int(clicked.len() as u64)?)
                    .bind(int(pages)?)
                    .bind(int(page_errors)?)
                    .bind(at),
                );
                for range in ranges(finished) {
                    out.push(count_range(job, "flows_done", range)?);
                }
                for range in ranges(failed_flows) {
                    out.push(count_range(job, "flows_failed", range)?);
                }
                for range in ranges(clicked) {
                    out.push(count_range(job, "clicks_done", range)?);
                }
                out.extend(add_vitals(job, &finished_flows)?);
                for (upto, n) in buckets {
                    out.push(
                        Statement::new(
                            "INSERT INTO view_job_page_times (job, upto_ms, pages) VALUES ($1, $2, $3) \
                             ON CONFLICT (job, upto_ms) DO UPDATE SET pages = view_job_page_times.pages + excluded.pages",
                        )
                        .bind(job)
                        .bind(i64::from(upto))
                        .bind(int(n)?),
                    );
                }
                let day = at.date().to_string();
                out.push(
                    Statement::new(
                        "INSERT INTO view_job_days (owner, day, flows) SELECT owner, $2, $3 FROM view_jobs WHERE job = $1 \
                         ON CONFLICT (owner, day) DO UPDATE SET flows = view_job_days.flows + excluded.flows",
                    )
                    .bind(job)
                    .bind(day)
                    .bind(int(done)?),
                );
            }
            JobEvent::FlowsLeased(_) | JobEvent::LeaseRenewed(_) => {}
            JobEvent::FlowsHandedBack(_)
            | JobEvent::LeaseExpired(_)
            | JobEvent::ConsentRechecked(_) => {
                lifecycle(&mut log, out)?;
            }
        }
        Ok(())
    }
}

/// The `pct`th percentile from `(upto, count)` buckets: the upper bound of
/// the bucket holding it; `None` without samples.
pub fn percentile(buckets: &[(u32, u64)], pct: u8) -> Option<u32> {
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    // The smallest value at or below which at least `pct`% of the samples lie.
    let rank = total.saturating_mul(u64::from(pct)).div_ceil(100).max(1);
    let mut seen = 0;
    let mut sorted = buckets.to_vec();
    sorted.sort_unstable();
    for (upto, n) in sorted {
        seen += n;
        if seen >= rank {
            return Some(upto);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_group_into_contiguous_ranges() {
        assert_eq!(ranges(vec![5, 3, 4, 9, 10, 3]), vec![(3, 6), (9, 11)]);
        assert_eq!(ranges(vec![]), vec![]);
    }

    #[test]
    fn a_percentile_is_the_bucket_holding_it() {
        let p95 = |b: &[(u32, u64)]| percentile(b, 95);
        assert_eq!(p95(&[]), None);
        assert_eq!(p95(&[(100, 95), (5000, 5)]), Some(100));
        assert_eq!(p95(&[(100, 94), (5000, 6)]), Some(5000));
        assert_eq!(percentile(&[(0, 50), (100, 50)], 50), Some(0));
        assert_eq!(percentile(&[(0, 49), (100, 51)], 50), Some(100));
        assert_eq!(percentile(&[(5000, 1)], 0), Some(5000));
        assert_eq!(bucket_in(vital_buckets(Vital::Cls), 0), 0);
        assert_eq!(bucket_in(vital_buckets(Vital::Lcp), 2400), 2500);
        assert_eq!(bucket(0), 50);
        assert_eq!(bucket(51), 100);
        assert_eq!(bucket(70_000), u32::MAX);
    }
}

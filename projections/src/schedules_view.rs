//! The `schedules` view: the schedule table (name, occurrence in words,
//! next run, last run with its job's status, state, owner, why its last
//! fire was refused), and where the gateway's scheduler finds what is due.
//! A schedule's row goes when its deletion takes effect; its jobs stay.

use domain::RecordedEvent;
use domain::job::{JobId, JobStatus};
use domain::schedule::{ScheduleEvent, ScheduleId};
use store::Filter;

use crate::decode::registry;
use crate::error::ProjectionError;
use crate::jobs_view::status_name;
use crate::projection::Projection;
use crate::sql::Statement;

pub struct SchedulesView;

pub const TABLE: &str = "view_schedules";
/// The view's name, in the projections' status and checkpoints.
pub const NAME: &str = "schedules";

const SCHEMA: &[&str] = &[
    "CREATE TABLE view_schedules (
    schedule         TEXT NOT NULL PRIMARY KEY,
    owner            TEXT NOT NULL,
    name             TEXT NOT NULL,
    spec             TEXT NOT NULL,
    occurrence       TEXT NOT NULL,
    state            TEXT NOT NULL,
    next_run         BIGINT,
    runs             BIGINT NOT NULL,
    last_run         BIGINT,
    last_fired_at    BIGINT,
    last_job         TEXT,
    last_job_status  TEXT,
    refusal          TEXT,
    ending           TEXT,
    deleting_at      BIGINT,
    created_at       BIGINT NOT NULL,
    changed_at       BIGINT NOT NULL
)",
    "CREATE INDEX view_schedules_due ON view_schedules (state, next_run)",
    "CREATE INDEX view_schedules_owner ON view_schedules (owner, created_at)",
    "CREATE INDEX view_schedules_job ON view_schedules (last_job)",
    "CREATE INDEX view_schedules_stranded ON view_schedules (last_job_status, last_fired_at)",
];

impl Projection for SchedulesView {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec!["schedule-".into(), "job-".into()],
            ..Filter::all()
        }
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let stream = event.stream_id.as_str();
        if let Some(job) = stream.strip_prefix("job-") {
            return job_changed(event, job, out);
        }
        let Some(id) = ScheduleId::of_stream(stream) else {
            return Ok(());
        };
        let id = id.to_string();
        let at = event.recorded_at;
        let set = |assignments: &str| {
            Statement::new(format!(
                "UPDATE view_schedules SET {assignments}, changed_at = $2 WHERE schedule = $1"
            ))
            .bind(id.clone())
            .bind(at)
        };
        let decoded = registry().decode::<ScheduleEvent>(event)?;
        if let Some(next) = decoded.next_run() {
            out.push(set("next_run = $3").bind(next));
        }
        use ScheduleEvent as E;
        match decoded {
            E::ScheduleCreated(e) => out.push(
                Statement::new(
                    "INSERT INTO view_schedules (schedule, owner, name, spec, occurrence, state, \
                     next_run, runs, created_at, changed_at) \
                     VALUES ($1, $2, $3, $4, $5, 'scheduled', $6, 0, $7, $7)",
                )
                .bind(id)
                .bind(e.spec.owner.as_str())
                .bind(e.spec.name.as_str())
                .bind(spec_json(&e.spec)?)
                .bind(e.spec.occurrence.words(&e.spec.zone))
                .bind(e.next_run)
                .bind(e.at),
            ),
            E::ScheduleUpdated(e) => out.push(
                set("name = $3, spec = $4, occurrence = $5")
                    .bind(e.spec.name.as_str())
                    .bind(spec_json(&e.spec)?)
                    .bind(e.spec.occurrence.words(&e.spec.zone)),
            ),
            E::SchedulePaused(_) => out.push(set("state = 'paused'")),
            E::ScheduleResumed(_) => out.push(set("state = 'scheduled'")),
            E::ScheduleFired(e) => out.push(
                set("runs = runs + 1, last_run = $3, last_job = $4, last_fired_at = $2, \
                     last_job_status = NULL, refusal = NULL")
                    .bind(e.occurrence)
                    .bind(e.job.to_string()),
            ),
            E::ScheduleFireRefused(e) => {
                out.push(set("last_run = $3, refusal = $4").bind(e.occurrence).bind(e.reason));
            }
            E::OccurrencesMissed(_) => {}
            E::ScheduleEnded(e) => {
                out.push(set("state = 'ended', ending = $3").bind(e.ending.to_string()));
            }
            E::ScheduleDeletionRequested(e) => out.push(
                set("state = 'deleting', deleting_at = $3").bind(e.effective_at),
            ),
            E::ScheduleRestored(_) => out.push(set(
                "state = CASE WHEN ending IS NULL THEN 'scheduled' ELSE 'ended' END, deleting_at = NULL",
            )),
            E::ScheduleDeleted(_) => out.push(
                Statement::new("DELETE FROM view_schedules WHERE schedule = $1").bind(id),
            ),
        }
        Ok(())
    }
}

fn spec_json(spec: &domain::schedule::ScheduleSpec) -> Result<String, ProjectionError> {
    Ok(serde_json::to_string(spec)?)
}

/// A schedule's last job changed status.
fn job_changed(
    event: &RecordedEvent,
    job: &str,
    out: &mut Vec<Statement>,
) -> Result<(), ProjectionError> {
    // By type alone: a job's report batches are large, and none matters here.
    let status = match event.event_type.as_str() {
        "JobCreated" => JobStatus::Ready,
        "JobStarted" | "JobResumed" => JobStatus::Running,
        "JobPaused" | "JobHalted" => JobStatus::Paused,
        "JobCompleted" => JobStatus::Done,
        "JobFailed" => JobStatus::Failed,
        "JobStopped" => JobStatus::Stopped,
        _ => return Ok(()),
    };
    let Ok(job) = job.parse::<uuid::Uuid>().map(JobId) else {
        return Ok(());
    };
    out.push(
        Statement::new("UPDATE view_schedules SET last_job_status = $2 WHERE last_job = $1")
            .bind(job.to_string())
            .bind(status_name(status)),
    );
    Ok(())
}

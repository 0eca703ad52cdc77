//! Keeps runs within their consent. A running job whose domains lose their
//! consent (a verification expires, a new claim replaces a verified one, an
//! allow-listing is removed), or that safe mode stops, is halted through
//! its decider (`JobCommand::CheckConsent`): paused with the reason
//! recorded, every lease taken back at once, and its runners told to stop
//! its flows (`job_stopped`) as the halt is relayed. Its owner resumes it
//! once the reason is gone; the resume checks everything a run does.
//!
//! Every gateway runs this guard; the job's stream decides once, whoever
//! appends first. What sets a check off: safe mode turned on and consent
//! events as the log grows, a job starting or resuming (its checks may
//! have raced a withdrawal), a timer at the time a running job's consent
//! ends (the decider itself leases nothing from then on), and a sweep of
//! every active job now and then, for what this gateway did not see (jobs
//! started before it, a feed that fell behind).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use domain::RecordedEvent;
use domain::job::{ConsentChecks, Job, JobAggregate, JobCommand, JobEvent, JobId, JobStatus};
use domain::system_settings::{self, SystemSettings};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::command_handler::CommandMeta;
use crate::domain_consents;
use crate::runner_link::work;
use crate::state::AppState;

/// How often due consents are looked at: a run is halted within this of
/// its consent's end.
const TICK: Duration = Duration::from_millis(250);
/// How often every active job is checked, whatever the log said.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// When a check could not be made (the store busy), it is tried again after this.
const RETRY: time::Duration = time::Duration::seconds(1);

/// What the consent of a job's run depends on, read now: safe mode, and
/// each of its domains and their parents that has any history.
pub async fn consent_checks(app: &AppState, job: &Job) -> Result<ConsentChecks, String> {
    let settings = system_settings::stream().map_err(|e| e.to_string())?;
    let (_, system) = app
        .handler
        .load::<SystemSettings>(&settings)
        .await
        .map_err(|e| format!("the system settings: {e}"))?;
    let domains = domain_consents::states(app, job.plan.domains()).await?;
    Ok(ConsentChecks { system, domains })
}

/// Checks one job's consent now, halting its run if it may not go on.
/// The time its consent ends if it is still running with one, to check it
/// again then.
pub async fn check(app: &AppState, job: JobId) -> Option<OffsetDateTime> {
    let stream = job.stream().ok()?;
    let state = match app.handler.load::<JobAggregate>(&stream).await {
        Ok((_, state)) => state.job?,
        Err(e) => {
            tracing::warn!(%job, error = %e, "cannot read a job to check its consent");
            return Some(OffsetDateTime::now_utc() + RETRY);
        }
    };
    if !state.sends_traffic() {
        return None;
    }
    let running = state.status == JobStatus::Running;
    let checks = match consent_checks(app, &state).await {
        Ok(checks) => checks,
        Err(why) => {
            tracing::warn!(%job, %why, "cannot read what a job's consent depends on");
            return Some(OffsetDateTime::now_utc() + RETRY);
        }
    };
    let meta = CommandMeta {
        source: Some("gateway".into()),
        ..CommandMeta::default()
    };
    match work::on_job(app, &stream, JobCommand::CheckConsent(checks), &meta).await {
        Ok(handled) => {
            let mut until = running.then_some(state.consented_until).flatten();
            for event in &handled.events {
                match event {
                    JobEvent::JobHalted(h) => {
                        tracing::warn!(%job, reason = %h.reason, "run halted");
                        until = None;
                    }
                    JobEvent::ConsentRechecked(r) => until = r.consented_until,
                    _ => {}
                }
            }
            until
        }
        Err(e) => {
            tracing::warn!(%job, error = %e, "a job's consent not checked");
            Some(OffsetDateTime::now_utc() + RETRY)
        }
    }
}

/// What an event asks of the guard.
enum Trigger {
    /// Check every active job.
    All,
    /// Check this job.
    Job(JobId),
    /// This job's consent now ends then (or not at all).
    Until(JobId, Option<OffsetDateTime>),
    /// This job no longer runs.
    Forget(JobId),
}

fn trigger(registry: &domain::EventRegistry, event: &RecordedEvent) -> Option<Trigger> {
    let stream = event.stream_id.as_str();
    match event.event_type.as_str() {
        "SafeModeTurnedOn" => Some(Trigger::All),
        // Whatever changes a domain's consent: a claim (it replaces a
        // verified one), a verification, a listing or its removal.
        "DomainClaimed" | "DomainVerified" | "DomainAllowListed" | "DomainRemovedFromAllowList"
            if stream.starts_with("target-") =>
        {
            Some(Trigger::All)
        }
        "JobStarted" | "JobResumed" | "ConsentRechecked" | "JobPaused" | "JobHalted"
        | "JobStopped" | "JobFailed" | "JobCompleted" => {
            let job = JobId(Uuid::parse_str(stream.strip_prefix("job-")?).ok()?);
            Some(match registry.decode::<JobEvent>(event).ok()? {
                JobEvent::JobStarted(_) | JobEvent::JobResumed(_) => Trigger::Job(job),
                JobEvent::ConsentRechecked(r) => Trigger::Until(job, r.consented_until),
                _ => Trigger::Forget(job),
            })
        }
        _ => None,
    }
}

struct Guard {
    app: AppState,
    /// Running jobs whose consent ends, and when.
    due: HashMap<JobId, OffsetDateTime>,
}

impl Guard {
    async fn check(&mut self, job: JobId) {
        match check(&self.app, job).await {
            Some(until) => self.due.insert(job, until),
            None => self.due.remove(&job),
        };
    }

    async fn check_all(&mut self) {
        let mut jobs: BTreeSet<JobId> = work::active_jobs(&self.app).await.into_iter().collect();
        jobs.extend(self.due.keys().copied());
        for job in jobs {
            self.check(job).await;
        }
    }

    async fn check_due(&mut self) {
        let now = OffsetDateTime::now_utc();
        let due: Vec<JobId> = self
            .due
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(job, _)| *job)
            .collect();
        for job in due {
            self.check(job).await;
        }
    }
}

/// Guards runs' consent as the log grows, until the feed ends.
pub async fn run(app: AppState) {
    let mut events: broadcast::Receiver<Arc<RecordedEvent>> = app.live.subscribe();
    let registry = domain::event_registry();
    let mut guard = Guard {
        app,
        due: HashMap::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first sweep waits a moment: the views are still being created.
    let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + TICK * 4, SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => guard.check_due().await,
            _ = sweep.tick() => guard.check_all().await,
            event = events.recv() => match event {
                Ok(event) => match trigger(&registry, &event) {
                    Some(Trigger::All) => guard.check_all().await,
                    Some(Trigger::Job(job)) => guard.check(job).await,
                    Some(Trigger::Until(job, Some(until))) => {
                        guard.due.insert(job, until);
                    }
                    Some(Trigger::Until(job, None) | Trigger::Forget(job)) => {
                        guard.due.remove(&job);
                    }
                    None => {}
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the consent guard fell behind the log; checking every run");
                    guard.check_all().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

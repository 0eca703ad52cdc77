//! A registered runner's work on jobs: leases asked for and renewed,
//! reports, hand-backs. Each goes through the job's decider on the job's
//! stream, with optimistic concurrency and retries in the command handler
//! (never a lock), so any number of gateways serve one job; a report batch's
//! events take ids derived from (runner, batch), so a batch sent again
//! appends nothing.

use std::collections::BTreeSet;

use domain::click_consent::{self, ClickConsent, ClickConsentState};
use domain::flow::{Click, FlowRange, FlowReport};
use domain::job::{JobAggregate, JobCommand, JobError, JobEvent, JobId, Returned};
use domain::runner::RunnerId;
use domain::runner_protocol::{ErrorCode, ErrorMessage, GatewayMessage};
use domain::{Actor, Context};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::command_handler::CommandError;
use crate::runner_link::connection::{Link, Peer, refusal, runner_meta};

/// What one connection knows of its runner's work.
pub(crate) struct Session {
    peer: Peer,
    /// It asked to drain, or was told to: no new leases.
    pub draining: bool,
    /// Jobs whose flows it may hold, to renew and hand back.
    pub jobs: BTreeSet<JobId>,
}

impl Session {
    pub fn new(peer: Peer) -> Self {
        Self {
            peer,
            draining: false,
            jobs: BTreeSet::new(),
        }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    pub fn runner(&self) -> RunnerId {
        self.peer.runner
    }

    /// Keeps track of what a notice passed on changes.
    pub fn noticed(&mut self, notice: &GatewayMessage) {
        match notice {
            GatewayMessage::Drain { .. } => self.draining = true,
            GatewayMessage::JobStopped { job } => {
                self.jobs.remove(job);
            }
            _ => {}
        }
    }
}

fn system() -> Context {
    Context::new(OffsetDateTime::now_utc(), Actor::System)
}

/// A job refusal as the runner reads it.
fn job_refusal(e: &CommandError<JobError>) -> ErrorMessage {
    match e {
        CommandError::Rejected(inner) => {
            let mut m = refusal(ErrorCode::for_job(inner), inner.to_string());
            if let JobError::NotHeld { flows, .. } = inner {
                m.flows = flows.clone();
            }
            m
        }
        CommandError::Conflict { .. } => refusal(
            ErrorCode::Retry,
            "the job kept changing under this request; send it again unchanged",
        ),
        other => {
            tracing::error!(error = %other, "a runner's request failed");
            refusal(
                ErrorCode::Retry,
                "the gateway could not record this now; send it again unchanged",
            )
        }
    }
}

/// Renews the runner's leases on every job it holds flows of, and forgets
/// jobs it holds nothing of any more.
pub(crate) async fn heartbeat(link: &Link, session: &mut Session) {
    let runner = session.runner();
    let ttl = link.terms.lease_ttl();
    let mut gone = Vec::new();
    for &job in &session.jobs {
        let Ok(stream) = job.stream() else { continue };
        let holds = match link.app.handler.load::<JobAggregate>(&stream).await {
            Ok((_, state)) => state
                .job
                .is_some_and(|j| !j.status.is_ended() && j.leases.contains_key(&runner)),
            Err(e) => {
                tracing::warn!(%job, error = %e, "cannot read a job to renew its lease");
                continue;
            }
        };
        if !holds {
            gone.push(job);
            continue;
        }
        let renewed = link
            .app
            .handler
            .handle::<JobAggregate>(
                &stream,
                JobCommand::RenewLease { runner, ttl },
                &system(),
                &runner_meta(runner, None),
            )
            .await;
        if let Err(e) = renewed {
            tracing::warn!(%job, %runner, error = %e, "lease not renewed");
        }
    }
    for job in gone {
        session.jobs.remove(&job);
    }
}

/// The owner's external-click consent, read only when a report names an
/// external click (the decider checks those against it).
async fn click_consent_for(
    link: &Link,
    job: JobId,
    reports: &[FlowReport],
) -> Result<ClickConsentState, ErrorMessage> {
    let external = reports.iter().any(|r| {
        matches!(r, FlowReport::Finished(f) if f.clicks.iter().any(|c| matches!(c, Click::External { .. })))
    });
    if !external {
        return Ok(ClickConsentState::default());
    }
    let stream = job
        .stream()
        .map_err(|e| refusal(ErrorCode::Internal, e.to_string()))?;
    let owner = match link.app.handler.load::<JobAggregate>(&stream).await {
        Ok((_, state)) => match state.job {
            Some(j) => j.spec.owner,
            None => return Ok(ClickConsentState::default()),
        },
        Err(e) => return Err(job_refusal(&e)),
    };
    let consents =
        click_consent::stream(&owner).map_err(|e| refusal(ErrorCode::Internal, e.to_string()))?;
    link.app
        .handler
        .load::<ClickConsent>(&consents)
        .await
        .map(|(_, state)| state)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read an owner's click consent");
            refusal(
                ErrorCode::Retry,
                "the gateway could not read the owner's consent now; send the batch again",
            )
        })
}

/// Records a batch of reports, or refuses it whole.
pub(crate) async fn report(
    link: &Link,
    session: &mut Session,
    batch: Uuid,
    job: JobId,
    reports: Vec<FlowReport>,
) -> GatewayMessage {
    let runner = session.runner();
    let sent = reports.len() as u32;
    let refused = |mut m: ErrorMessage| {
        m.batch = Some(batch);
        tracing::info!(%runner, %job, %batch, code = %m.code, message = %m.message, "report refused");
        GatewayMessage::Error(m)
    };
    let stream = match job.stream() {
        Ok(s) => s,
        Err(e) => return refused(refusal(ErrorCode::BadMessage, e.to_string())),
    };
    let click_consent = match click_consent_for(link, job, &reports).await {
        Ok(c) => c,
        Err(m) => return refused(m),
    };
    let outcome = link
        .app
        .handler
        .handle::<JobAggregate>(
            &stream,
            JobCommand::ReportFlows {
                runner,
                reports,
                click_consent,
            },
            &system(),
            &runner_meta(runner, Some(format!("report:{runner}:{batch}"))),
        )
        .await;
    match outcome {
        Ok(handled) => {
            let recorded = handled
                .events
                .iter()
                .map(|e| match e {
                    JobEvent::FlowsReported(r) => r.reports.len() as u32,
                    _ => 0,
                })
                .sum::<u32>();
            // A batch sent again: everything in it was known.
            let recorded = if handled.replayed { 0 } else { recorded };
            GatewayMessage::ReportAccepted {
                batch,
                recorded,
                duplicates: sent - recorded.min(sent),
            }
        }
        Err(e) => refused(job_refusal(&e)),
    }
}

/// Takes flows back into the job's pool at once.
pub(crate) async fn hand_back(
    link: &Link,
    session: &mut Session,
    request: u64,
    job: JobId,
    flows: Option<Vec<FlowRange>>,
) -> GatewayMessage {
    let runner = session.runner();
    let returned = match flows {
        None => Returned::All,
        Some(ranges) => Returned::Flows(ranges),
    };
    match give_back(link, runner, job, returned).await {
        Ok(()) => GatewayMessage::HandedBack { request, job },
        Err(mut m) => {
            m.request = Some(request);
            tracing::info!(%runner, %job, code = %m.code, message = %m.message, "hand-back refused");
            GatewayMessage::Error(m)
        }
    }
}

async fn give_back(
    link: &Link,
    runner: RunnerId,
    job: JobId,
    flows: Returned,
) -> Result<(), ErrorMessage> {
    let stream = job
        .stream()
        .map_err(|e| refusal(ErrorCode::BadMessage, e.to_string()))?;
    link.app
        .handler
        .handle::<JobAggregate>(
            &stream,
            JobCommand::HandBack { runner, flows },
            &system(),
            &runner_meta(runner, None),
        )
        .await
        .map(|_| ())
        .map_err(|e| job_refusal(&e))
}

/// A runner leaving hands back everything it holds.
pub(crate) async fn hand_back_everything(link: &Link, session: &mut Session) {
    let runner = session.runner();
    for job in std::mem::take(&mut session.jobs) {
        if let Err(m) = give_back(link, runner, job, Returned::All).await {
            tracing::warn!(%runner, %job, message = %m.message, "flows not handed back; they return when the lease expires");
        }
    }
}

/// Answers a lease request.
pub(crate) async fn lease(
    _link: &Link,
    session: &mut Session,
    request: u64,
    _slots: u32,
    _flows: u64,
) -> GatewayMessage {
    let mut m = if session.draining {
        refusal(
            ErrorCode::Draining,
            "the runner is draining: it finishes what it holds and takes nothing new",
        )
    } else {
        refusal(
            ErrorCode::Internal,
            "this gateway build does not lease flows yet",
        )
    };
    m.request = Some(request);
    GatewayMessage::Error(m)
}

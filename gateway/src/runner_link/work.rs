//! A registered runner's work on jobs: leases asked for and renewed,
//! reports, hand-backs. Each goes through the job's decider on the job's
//! stream, with optimistic concurrency and retries in the command handler
//! (never a lock), so any number of gateways serve one job; a report batch's
//! events take ids derived from (runner, batch), so a batch sent again
//! appends nothing.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use domain::click_consent::{self, ClickConsent, ClickConsentState};
use domain::flow::{Click, FlowRange, FlowReport};
use domain::job::{FlowsLeased, JobAggregate, JobCommand, JobError, JobEvent, JobId, Returned};
use domain::runner::{Capabilities, NoLeases, Runner, RunnerCommand, RunnerId};
use domain::runner_protocol::{ErrorCode, ErrorMessage, FlowWork, GatewayMessage, LeaseGrant};
use domain::{Actor, Context};
use projections::jobs_view;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::command_handler::CommandError;
use crate::runner_link::connection::{Link, Peer, refusal, runner_meta};
use crate::state::AppState;

/// What one connection knows of its runner's work.
pub(crate) struct Session {
    peer: Peer,
    pub capabilities: Capabilities,
    /// It asked to drain, or was told to: no new leases.
    pub draining: bool,
    /// Jobs it showed it works on over this connection (a grant, a report,
    /// a hand-back): only their leases are renewed. A lease whose grant
    /// never reached it (its gateway died in between) is not, so it expires
    /// and its flows are leased again, instead of being held for ever.
    working: BTreeSet<JobId>,
}

impl Session {
    pub fn new(peer: Peer, capabilities: Capabilities) -> Self {
        Self {
            peer,
            capabilities,
            draining: false,
            working: BTreeSet::new(),
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
        if let GatewayMessage::Drain { .. } = notice {
            self.draining = true;
        }
    }
}

fn system() -> Context {
    Context::new(OffsetDateTime::now_utc(), Actor::System)
}

/// Runs a command on a job's stream as the gateway (for a runner, or of
/// its own accord), taking its turn with this gateway's other commands on
/// the job.
pub(crate) async fn on_job(
    app: &AppState,
    stream: &domain::StreamId,
    command: JobCommand,
    meta: &crate::command_handler::CommandMeta,
) -> Result<crate::command_handler::Handled<JobEvent>, CommandError<JobError>> {
    let job = stream
        .as_str()
        .strip_prefix("job-")
        .and_then(|id| Uuid::parse_str(id).ok())
        .map(JobId);
    let turn = job.map(|job| app.fleet.job_turn(job));
    let _turn = match &turn {
        Some(lock) => Some(lock.lock().await),
        None => None,
    };
    app.handler
        .handle::<JobAggregate>(stream, command, &system(), meta)
        .await
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

/// Renews the runner's leases on the jobs it works on, whichever gateway
/// leased them, and re-registers it if another gateway took it for gone.
pub(crate) async fn heartbeat(link: &Link, session: &mut Session) {
    let runner = session.runner();
    // Another gateway may have taken it for gone (its old connection fell
    // silent there); it is here, so it is online.
    if let Ok(stream) = runner.stream()
        && let Ok((_, state)) = link.app.handler.load::<Runner>(&stream).await
        && !state.online
        && !state.deregistered
    {
        reregister(link, session).await;
    }
    let ttl = link.terms.lease_ttl();
    let mut done = Vec::new();
    for &job in &session.working {
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
            done.push(job);
            continue;
        }
        let renewed = on_job(
            &link.app,
            &stream,
            JobCommand::RenewLease { runner, ttl },
            &runner_meta(runner, None),
        )
        .await;
        if let Err(e) = renewed {
            tracing::warn!(%job, %runner, error = %e, "lease not renewed");
        }
    }
    for job in done {
        session.working.remove(&job);
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
    session.working.insert(job);
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
    let outcome = on_job(
        &link.app,
        &stream,
        JobCommand::ReportFlows {
            runner,
            reports,
            click_consent,
        },
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
    session.working.insert(job);
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
    on_job(
        &link.app,
        &stream,
        JobCommand::HandBack { runner, flows },
        &runner_meta(runner, None),
    )
    .await
    .map(|_| ())
    .map_err(|e| job_refusal(&e))
}

/// A runner leaving hands back everything it holds.
pub(crate) async fn hand_back_everything(link: &Link, session: &Session) {
    let runner = session.runner();
    for job in held_jobs(&link.app, runner).await {
        if let Err(m) = give_back(link, runner, job, Returned::All).await {
            tracing::warn!(%runner, %job, message = %m.message, "flows not handed back; they return when the lease expires");
        }
    }
}

/// Running jobs, oldest run first, with their specs: what a lease request
/// picks from.
static RUNNING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT job, spec FROM {} WHERE status = 'running' ORDER BY started_at, job",
        jobs_view::JOBS
    )
});

/// How long a runner with nothing to do waits before asking again.
const NO_WORK_RETRY_MS: u64 = 1000;

/// Answers a lease request: flows of the first running job the runner's
/// platform serves that has flows and instances to spare, or `no_work`.
pub(crate) async fn lease(
    link: &Link,
    session: &mut Session,
    request: u64,
    slots: u32,
    flows: u64,
) -> GatewayMessage {
    let runner = session.runner();
    let refuse = |code, message: String| {
        let mut m = refusal(code, message);
        m.request = Some(request);
        GatewayMessage::Error(m)
    };
    if let Err(why) = may_lease(link, session).await {
        let code = match why {
            NoLeases::Draining => ErrorCode::Draining,
            NoLeases::NotRegistered | NoLeases::Offline => ErrorCode::Retry,
        };
        return refuse(code, why.to_string());
    }
    let platform = session.capabilities.platform;
    let rows = match link.app.views.query(&RUNNING, vec![]).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the running jobs");
            return refuse(
                ErrorCode::Retry,
                "the gateway cannot read its jobs now; ask again shortly".into(),
            );
        }
    };
    let mut candidates = Vec::new();
    for row in rows {
        let (Ok(id), Ok(spec)) = (row.get::<String>("job"), row.get::<String>("spec")) else {
            continue;
        };
        let (Ok(id), Ok(spec)) = (
            Uuid::parse_str(&id),
            serde_json::from_str::<domain::job::JobSpec>(&spec),
        ) else {
            continue;
        };
        if spec.platforms.iter().any(|&p| platform.serves(p)) {
            candidates.push((JobId(id), spec));
        }
    }
    // The request's events take ids derived from (runner, request): one
    // sent again, its answer lost with a connection, finds its grant.
    let key = format!("lease:{runner}:{request}");
    for (job, spec) in &candidates {
        if let Some(leased) = earlier_lease(link, *job, &key).await {
            session.working.insert(*job);
            return answer_lease(link, runner, request, *job, spec, leased).await;
        }
    }
    let ttl = link.terms.lease_ttl();
    for (job, spec) in &candidates {
        let Ok(stream) = job.stream() else { continue };
        let command = JobCommand::LeaseFlows {
            runner,
            platform,
            slots,
            flows,
            ttl,
        };
        let handled = on_job(
            &link.app,
            &stream,
            command,
            &runner_meta(runner, Some(key.clone())),
        )
        .await;
        let leased = match handled {
            Ok(handled) => handled.events.into_iter().find_map(|e| match e {
                JobEvent::FlowsLeased(l) => Some(l),
                _ => None,
            }),
            // Full, ended or paused meanwhile, or not for this platform:
            // the next job may fit.
            Err(CommandError::Rejected(_)) => None,
            Err(e) => return GatewayMessage::Error(with_request(job_refusal(&e), request)),
        };
        let Some(leased) = leased else { continue };
        session.working.insert(*job);
        return answer_lease(link, runner, request, *job, spec, leased).await;
    }
    GatewayMessage::NoWork {
        request,
        retry_after_ms: NO_WORK_RETRY_MS,
    }
}

/// The lease `key`'s request got on `job` before, if it did, cut to the
/// flows its runner still holds.
async fn earlier_lease(link: &Link, job: JobId, key: &str) -> Option<FlowsLeased> {
    let stream = job.stream().ok()?;
    let id = domain::EventId::derived(stream.as_str(), key, 0);
    let recorded = link.app.store.read_event(id).await.ok()??;
    let JobEvent::FlowsLeased(mut leased) = link
        .app
        .handler
        .registry()
        .decode::<JobEvent>(&recorded)
        .ok()?
    else {
        return None;
    };
    let (_, state) = link.app.handler.load::<JobAggregate>(&stream).await.ok()?;
    let held = state.job?.leases.get(&leased.runner)?.held.clone();
    leased.flows = leased
        .flows
        .iter()
        .flat_map(|&r| held.overlap(r).collect::<Vec<_>>())
        .collect();
    Some(leased)
}

/// The answer to a lease: the grant, or (when it cannot be described) the
/// flows handed straight back and the refusal.
async fn answer_lease(
    link: &Link,
    runner: RunnerId,
    request: u64,
    job: JobId,
    spec: &domain::job::JobSpec,
    leased: FlowsLeased,
) -> GatewayMessage {
    match grant(link, job, spec, leased).await {
        Ok(grant) => GatewayMessage::LeaseGranted { request, grant },
        Err(m) => {
            let _ = give_back(link, runner, job, Returned::All).await;
            GatewayMessage::Error(with_request(m, request))
        }
    }
}

fn with_request(mut m: ErrorMessage, request: u64) -> ErrorMessage {
    m.request = Some(request);
    m
}

/// May the runner take leases, as its stream says? A runner marked offline
/// by another gateway while it is connected here is registered again.
async fn may_lease(link: &Link, session: &mut Session) -> Result<(), NoLeases> {
    if session.draining {
        return Err(NoLeases::Draining);
    }
    let stream = session
        .runner()
        .stream()
        .map_err(|_| NoLeases::NotRegistered)?;
    let state = match link.app.handler.load::<Runner>(&stream).await {
        Ok((_, state)) => state,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a runner's standing");
            return Err(NoLeases::Offline);
        }
    };
    match state.may_lease() {
        Ok(_) => Ok(()),
        Err(NoLeases::Draining) => {
            session.draining = true;
            Err(NoLeases::Draining)
        }
        Err(NoLeases::Offline) => {
            reregister(link, session).await;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Records the runner's registration again (it is connected here, whatever
/// another gateway concluded from its old connection's silence, or a sweep
/// from a moment when no gateway had heard from it). A registration after
/// going offline reads as a fresh process, so a drain this connection is
/// under is recorded again: the same process is still draining.
pub(crate) async fn reregister(link: &Link, session: &Session) {
    let peer = session.peer();
    let registered = link
        .record(
            peer,
            RunnerCommand::Register {
                key: peer.key,
                name: peer.name.clone(),
                capabilities: session.capabilities.clone(),
                protocol: peer.protocol,
            },
        )
        .await;
    if registered && session.draining {
        link.record(peer, RunnerCommand::RequestDrain).await;
    }
}

/// What the runner is told to do with flows just leased to it.
async fn grant(
    link: &Link,
    job: JobId,
    spec: &domain::job::JobSpec,
    leased: FlowsLeased,
) -> Result<LeaseGrant, ErrorMessage> {
    let stream = job
        .stream()
        .map_err(|e| refusal(ErrorCode::Internal, e.to_string()))?;
    let (_, state) = link
        .app
        .handler
        .load::<JobAggregate>(&stream)
        .await
        .map_err(|e| job_refusal(&e))?;
    let plan = state
        .job
        .map(|j| j.plan)
        .ok_or_else(|| refusal(ErrorCode::Internal, "the job vanished"))?;
    let urls = link
        .app
        .fleet
        .targets
        .urls(&link.app, job, spec.targets)
        .await
        .map_err(|why| {
            tracing::error!(%job, %why, "cannot read a job's target URLs");
            refusal(
                ErrorCode::Internal,
                format!("the job's targets cannot be read: {why}"),
            )
        })?;
    let mut work = Vec::new();
    for range in &leased.flows {
        for piece in plan.pieces(*range) {
            let url = urls.get(piece.target as usize).cloned().ok_or_else(|| {
                refusal(
                    ErrorCode::Internal,
                    format!("the targets version has no row {}", piece.target),
                )
            })?;
            work.push(FlowWork {
                flows: piece.flows,
                target: piece.target,
                url,
                click: piece.clicks,
            });
        }
    }
    let external_click_domains = if spec.settings.external_clicks {
        let consents = click_consent::stream(&spec.owner)
            .map_err(|e| refusal(ErrorCode::Internal, e.to_string()))?;
        let (_, state) = link
            .app
            .handler
            .load::<ClickConsent>(&consents)
            .await
            .map_err(|e| refusal(ErrorCode::Retry, e.to_string()))?;
        state.grants.into_keys().collect()
    } else {
        Vec::new()
    };
    Ok(LeaseGrant {
        job,
        slots: leased.slots,
        expires_in_ms: link.terms.lease_ttl.as_millis() as u64,
        work,
        marker_header: spec.settings.marker_header,
        external_click_domains,
    })
}

/// Jobs that may have leases: running or paused, oldest run first.
static ACTIVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT job FROM {} WHERE status IN ('running', 'paused') ORDER BY started_at, job",
        jobs_view::JOBS
    )
});

/// The ids of the jobs that may hold leases.
pub(crate) async fn active_jobs(app: &AppState) -> Vec<JobId> {
    match app.views.query(&ACTIVE, vec![]).await {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| r.get::<String>("job").ok())
            .filter_map(|id| Uuid::parse_str(&id).ok().map(JobId))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the active jobs");
            Vec::new()
        }
    }
}

/// The jobs `runner` holds flows of, as their streams say: a runner that
/// reconnects carries on with them.
pub(crate) async fn held_jobs(app: &AppState, runner: RunnerId) -> BTreeSet<JobId> {
    let mut held = BTreeSet::new();
    for job in active_jobs(app).await {
        let Ok(stream) = job.stream() else { continue };
        if let Ok((_, state)) = app.handler.load::<JobAggregate>(&stream).await
            && state.job.is_some_and(|j| j.leases.contains_key(&runner))
        {
            held.insert(job);
        }
    }
    held
}

/// Returns the flows of every lease whose time is up to its job's pool, on
/// every active job. Safe on many gateways at once: a lease expires once,
/// whoever appends first.
pub async fn expire_leases(app: &AppState) -> usize {
    let now = OffsetDateTime::now_utc();
    let mut expired = 0;
    for job in active_jobs(app).await {
        let Ok(stream) = job.stream() else { continue };
        let due = match app.handler.load::<JobAggregate>(&stream).await {
            Ok((_, state)) => state
                .job
                .is_some_and(|j| j.leases.values().any(|l| l.expires_at <= now)),
            Err(e) => {
                tracing::warn!(%job, error = %e, "cannot read a job to expire its leases");
                false
            }
        };
        if !due {
            continue;
        }
        let meta = crate::command_handler::CommandMeta {
            source: Some("gateway".into()),
            ..Default::default()
        };
        match on_job(app, &stream, JobCommand::ExpireLeases, &meta).await {
            Ok(handled) => expired += handled.events.len(),
            Err(e) => tracing::warn!(%job, error = %e, "leases not expired"),
        }
    }
    expired
}

/// Sweeps expired leases every quarter of the lease time, forever.
pub async fn sweep(app: AppState) {
    let every = (app.runner_terms.lease_ttl / 4).max(std::time::Duration::from_millis(100));
    // The first sweep waits a period: the views are still being created.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = expire_leases(&app).await;
        if n > 0 {
            tracing::info!(leases = n, "expired silent runners' leases");
        }
    }
}

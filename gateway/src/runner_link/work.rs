//! A registered runner's work on jobs: leases asked for and renewed,
//! reports, hand-backs. Each goes through the job's decider on the job's
//! stream, with optimistic concurrency and retries in the command handler
//! (never a lock), so any number of gateways serve one job; a report batch's
//! events take ids derived from (runner, batch), so a batch sent again
//! appends nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use domain::click_consent::{self, ClickConsent, ClickConsentState};
use domain::flow::{Click, FlowRange, FlowReport};
use domain::job::{
    FlowsLeased, Job, JobAggregate, JobCommand, JobError, JobEvent, JobId, ProxiesRef, Returned,
};
use domain::job_brief::profile_for;
use domain::runner::{Capabilities, NoLeases, Runner, RunnerCommand, RunnerId};
use domain::runner_protocol::{
    BRIEFS_SINCE, ErrorCode, ErrorMessage, FlowWork, GatewayMessage, LeaseGrant,
};
use domain::{Actor, Context};
use projections::jobs_view;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::command_handler::CommandError;
use crate::runner_link::connection::{Link, Peer, refusal, runner_meta};
use crate::runner_link::{artifacts, brief, proxy_health};
use crate::state::AppState;

/// What one connection knows of its runner's work.
pub(crate) struct Session {
    peer: Peer,
    /// The connection's number in the fleet.
    connection: u64,
    pub capabilities: Capabilities,
    /// It asked to drain, or was told to: no new leases.
    pub draining: bool,
    /// Jobs it showed it works on over this connection (a grant, a report,
    /// a hand-back): only their leases are renewed. A lease whose grant
    /// never reached it (its gateway died in between) is not, so it expires
    /// and its flows are leased again, instead of being held for ever.
    working: BTreeSet<JobId>,
    /// The proxies of the jobs it reported on, read once (a job's spec
    /// never changes).
    proxies: HashMap<JobId, Option<ProxiesRef>>,
    /// The artifact whose parts are coming, if one is.
    pub(crate) upload: Option<artifacts::Upload>,
}

impl Session {
    pub fn new(peer: Peer, connection: u64, capabilities: Capabilities) -> Self {
        Self {
            peer,
            connection,
            capabilities,
            draining: false,
            working: BTreeSet::new(),
            proxies: HashMap::new(),
            upload: None,
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
    in_turn::<JobAggregate>(app, stream, command, meta).await
}

/// Runs a command on `stream` as the gateway (the system), taking its turn
/// with this gateway's other commands on the stream.
pub(crate) async fn in_turn<D: domain::Decider>(
    app: &AppState,
    stream: &domain::StreamId,
    command: D::Command,
    meta: &crate::command_handler::CommandMeta,
) -> Result<crate::command_handler::Handled<D::Event>, CommandError<D::Error>>
where
    D::Command: Clone,
{
    let turn = app.fleet.turn(stream);
    let _turn = turn.lock().await;
    app.handler
        .handle::<D>(stream, command, &system(), meta)
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
            let reported = handled.events.iter().flat_map(|e| match e {
                JobEvent::FlowsReported(r) => r.reports.as_slice(),
                _ => &[],
            });
            let reported: Vec<FlowReport> = reported.cloned().collect();
            if names_proxies(&reported)
                && let Some(pool) = proxies_of(link, session, job).await
            {
                proxy_health::record(&link.app, job, pool, runner, batch, &reported).await;
            }
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

/// Do any of these reports say anything of a proxy?
fn names_proxies(reports: &[FlowReport]) -> bool {
    reports.iter().any(|r| match r {
        FlowReport::ProxyFailedOver { .. } => true,
        FlowReport::Finished(f) => f.proxy.is_some(),
        _ => false,
    })
}

/// The proxies of `job`, read once per connection.
async fn proxies_of(link: &Link, session: &mut Session, job: JobId) -> Option<ProxiesRef> {
    if let Some(&known) = session.proxies.get(&job) {
        return known;
    }
    let stream = job.stream().ok()?;
    let (_, state) = link.app.handler.load::<JobAggregate>(&stream).await.ok()?;
    let proxies = state.job?.spec.proxies;
    session.proxies.insert(job, proxies);
    proxies
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
/// picks from (those whose device profiles the runner's platform serves).
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
/// A grant of a job this connection has no brief of follows the brief.
pub(crate) async fn lease(
    link: &Link,
    session: &mut Session,
    request: u64,
    slots: u32,
    flows: u64,
) -> Vec<GatewayMessage> {
    let runner = session.runner();
    let refuse = |code, message: String| {
        let mut m = refusal(code, message);
        m.request = Some(request);
        vec![GatewayMessage::Error(m)]
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
            candidates.push(JobId(id));
        }
    }
    // The request's events take ids derived from (runner, request): one
    // sent again, its answer lost with a connection, finds its grant.
    let key = format!("lease:{runner}:{request}");
    for job in &candidates {
        if let Some(leased) = earlier_lease(link, *job, &key).await {
            session.working.insert(*job);
            return answer_lease(link, session, request, *job, leased).await;
        }
    }
    let ttl = link.terms.lease_ttl();
    for job in &candidates {
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
            Err(e) => {
                return vec![GatewayMessage::Error(with_request(
                    job_refusal(&e),
                    request,
                ))];
            }
        };
        let Some(leased) = leased else { continue };
        session.working.insert(*job);
        return answer_lease(link, session, request, *job, leased).await;
    }
    vec![GatewayMessage::NoWork {
        request,
        retry_after_ms: NO_WORK_RETRY_MS,
    }]
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

/// The answer to a lease: the job's brief when this connection has none
/// yet, and the grant; or (when either cannot be made) the flows handed
/// straight back and the refusal.
async fn answer_lease(
    link: &Link,
    session: &Session,
    request: u64,
    job: JobId,
    leased: FlowsLeased,
) -> Vec<GatewayMessage> {
    let runner = session.runner();
    let answer = async {
        let job = load_job(link, job).await?;
        let grant = grant(link, &job, session.capabilities.platform, leased).await?;
        let mut messages = brief_for(link, session, &job).await?;
        messages.push(GatewayMessage::LeaseGranted { request, grant });
        Ok::<_, ErrorMessage>(messages)
    };
    match answer.await {
        Ok(messages) => messages,
        Err(m) => {
            let _ = give_back(link, runner, job, Returned::All).await;
            vec![GatewayMessage::Error(with_request(m, request))]
        }
    }
}

/// The job as its stream has it now.
async fn load_job(link: &Link, job: JobId) -> Result<Job, ErrorMessage> {
    let stream = job
        .stream()
        .map_err(|e| refusal(ErrorCode::Internal, e.to_string()))?;
    let (_, state) = link
        .app
        .handler
        .load::<JobAggregate>(&stream)
        .await
        .map_err(|e| job_refusal(&e))?;
    state
        .job
        .ok_or_else(|| refusal(ErrorCode::Internal, "the job vanished"))
}

/// The `job_brief` messages of `job` for this connection, unless it has
/// the brief already or speaks a version without briefs.
pub(crate) async fn brief_for(
    link: &Link,
    session: &Session,
    job: &Job,
) -> Result<Vec<GatewayMessage>, ErrorMessage> {
    let (runner, connection) = (session.runner(), session.connection);
    let fleet = &link.app.fleet;
    if session.peer().protocol < BRIEFS_SINCE || fleet.has_brief(runner, connection, job.id) {
        return Ok(Vec::new());
    }
    // Before the read: a proxy disabled after it is relayed to this runner.
    fleet.briefed(
        runner,
        connection,
        job.id,
        job.spec.proxies.map(|p| p.version),
    );
    let parts = match brief::build(&link.app, job, session.capabilities.platform).await {
        Ok(brief) => GatewayMessage::brief_parts(brief).map_err(|e| e.to_string()),
        Err(why) => Err(why),
    };
    parts.map_err(|why| {
        fleet.unbriefed(runner, connection, job.id);
        tracing::error!(job = %job.id, %runner, %why, "no brief for a runner");
        refusal(
            ErrorCode::Internal,
            format!("the job's brief cannot be made: {why}"),
        )
    })
}

/// The briefs of the jobs the runner holds flows of, for a connection
/// just registered: a runner that reconnects hears again of their
/// proxies' health, whether or not it leases them again.
pub(crate) async fn briefs_of_held_jobs(link: &Link, session: &Session) -> Vec<GatewayMessage> {
    if session.peer().protocol < BRIEFS_SINCE {
        return Vec::new();
    }
    let mut messages = Vec::new();
    for job in held_jobs(&link.app, session.runner()).await {
        let Ok(job) = load_job(link, job).await else {
            continue;
        };
        if let Ok(parts) = brief_for(link, session, &job).await {
            messages.extend(parts);
        }
    }
    messages
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

/// What a runner on `platform` is told to do with flows just leased to it.
async fn grant(
    link: &Link,
    job: &Job,
    platform: domain::runner::Platform,
    leased: FlowsLeased,
) -> Result<LeaseGrant, ErrorMessage> {
    let spec = &job.spec;
    let targets = link
        .app
        .fleet
        .targets
        .of(&link.app, job.id, spec.targets)
        .await
        .map_err(|why| {
            tracing::error!(job = %job.id, %why, "cannot read a job's targets");
            refusal(
                ErrorCode::Internal,
                format!("the job's targets cannot be read: {why}"),
            )
        })?;
    let served = spec.served_profiles(platform);
    let mut work = Vec::new();
    for range in &leased.flows {
        for piece in job.plan.pieces(*range) {
            let target = targets.get(piece.target as usize).ok_or_else(|| {
                refusal(
                    ErrorCode::Internal,
                    format!("the targets version has no row {}", piece.target),
                )
            })?;
            work.push(FlowWork {
                flows: piece.flows,
                target: piece.target,
                url: target.url.clone(),
                click: piece.clicks,
                traffic: target.traffic.clone(),
                profiles: piece
                    .flows
                    .flows()
                    .filter_map(|flow| profile_for(flow, &served))
                    .collect(),
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
        job: job.id,
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
    if !crate::live::view_created(&app, jobs_view::NAME).await {
        return;
    }
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

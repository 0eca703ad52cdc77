//! The runner's work loop: one connection at a time to a gateway; it leases
//! as many flows as its executor has room for, runs each as its own task,
//! batches what they report, and carries on through reconnects.
//!
//! What it guarantees, whatever the executor does:
//! - a flow runs only while the runner holds it: pause, stop and expired
//!   leases cancel the flow's task (dropping it, which closes its browser
//!   context), within the time a notice takes to arrive;
//! - a report is sent until the gateway answers it, under the same batch id
//!   across reconnects and restarts, so it counts once; while the gateway
//!   is away, flows in hand finish and their reports wait in the outbox
//!   (bounded in memory, then in the state directory's spill file);
//! - while it is cut off it starts no new flow: leases it cannot renew will
//!   expire, and their flows belong to someone else by then;
//! - told to stop, it drains over the connection it holds (running flows
//!   finish, queued ones go back, reports are delivered), reconnecting only
//!   if that connection breaks; what is still undelivered when its grace is
//!   up is kept on disk for the next start;
//! - flows a gateway says it holds but it does not know of (leased by an
//!   earlier run of the same runner) go back at once;
//! - a failed flow's artifacts are uploaded before its report, which then
//!   names them; artifacts waiting are bounded in bytes, and beyond that a
//!   flow is reported without its own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use domain::artifact::ArtifactKind;
use domain::domain_name::DomainName;
use domain::flow::{FlowFinished, FlowId, FlowRange, FlowReport, LogLevel, ProxyIndex};
use domain::job::JobId;
use domain::job_brief::JobBrief;
use domain::runner_protocol::{ErrorCode, ErrorMessage, LeaseGrant, Traffic};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::client::{
    Answer, ClientConfig, ClientError, Connection, Leased, Notice, fresh_request_id,
};
use crate::outbox::{Outbox, Pushed, within};
use crate::state_dir::StateDir;

/// What a job's grants and brief say about all of its flows.
#[derive(Debug)]
pub struct JobTerms {
    pub marker_header: bool,
    /// Domains its flows may follow external links to.
    pub external_click_domains: Vec<DomainName>,
    /// The job's brief (protocol 2), with the proxy notices since applied:
    /// replaced as they come, so running flows see proxies disabled.
    brief: RwLock<Option<Arc<JobBrief>>>,
}

impl JobTerms {
    /// Terms as a grant and the job's brief give them.
    pub fn new(
        marker_header: bool,
        external_click_domains: Vec<DomainName>,
        brief: Option<Arc<JobBrief>>,
    ) -> Self {
        Self {
            marker_header,
            external_click_domains,
            brief: RwLock::new(brief),
        }
    }

    /// The job's brief as last heard; `None` from a protocol 1 gateway.
    pub fn brief(&self) -> Option<Arc<JobBrief>> {
        self.brief.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_brief(&self, brief: Option<Arc<JobBrief>>) {
        if brief.is_some() {
            *self.brief.write().unwrap_or_else(|p| p.into_inner()) = brief;
        }
    }
}

/// One flow to run.
#[derive(Debug, Clone)]
pub struct Order {
    pub job: JobId,
    pub flow: FlowId,
    /// The row of the job's targets version.
    pub target: u32,
    pub url: String,
    /// The flow should click a link.
    pub click: bool,
    /// How the visit arrives (its referrer).
    pub traffic: Traffic,
    /// Its device profile's row, in the brief's profiles.
    pub profile: Option<u32>,
    pub terms: Arc<JobTerms>,
}

/// A flow's end: its report, how long its slot rests before the next
/// flow (the settings' delay between flows), and what a failed flow kept
/// for debugging.
#[derive(Debug, Clone)]
pub struct Finished {
    pub report: FlowFinished,
    pub rest: Duration,
    pub artifacts: Vec<Artifact>,
}

/// A failed flow's artifact, uploaded before its report.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub kind: ArtifactKind,
    pub bytes: Vec<u8>,
}

/// Most artifact bytes waiting to be uploaded at once.
const UPLOADS_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// A finished flow whose artifacts are being uploaded, before its report goes.
struct Upload {
    job: JobId,
    report: FlowFinished,
    /// Still to upload, the next last.
    artifacts: Vec<Artifact>,
}

impl Upload {
    fn bytes(&self) -> usize {
        self.artifacts.iter().map(|a| a.bytes.len()).sum()
    }
}

/// What runs flows: a browser, or nothing at all in the orchestrator's
/// tests. The worker owns scheduling, reporting and cancellation; an
/// executor only runs one flow to its end.
pub trait Executor: Send + Sync + 'static {
    /// Flows it can run at once now (its capacity may change as it runs).
    fn capacity(&self) -> u32;

    /// Runs one flow to its end. It may be dropped at any await point when
    /// the flow is cancelled, and must clean up on drop.
    fn run(
        &self,
        order: Order,
        progress: Progress,
    ) -> impl Future<Output = Finished> + Send + 'static;
}

/// How a running flow reports on its way (started, failover, log lines).
#[derive(Clone)]
pub struct Progress {
    job: JobId,
    flow: FlowId,
    out: mpsc::UnboundedSender<Event>,
}

/// What a flow run outside a worker reported on its way.
pub struct Reports(mpsc::UnboundedReceiver<Event>);

impl Reports {
    /// The reports so far, oldest first, taken.
    pub fn taken(&mut self) -> Vec<FlowReport> {
        let mut reports = Vec::new();
        while let Ok(event) = self.0.try_recv() {
            if let Event::Report(_, report) = event {
                reports.push(report);
            }
        }
        reports
    }
}

impl Progress {
    /// A flow's progress outside a worker (an executor's tests): what it
    /// reports waits in [`Reports`].
    pub fn detached(job: JobId, flow: FlowId) -> (Progress, Reports) {
        let (out, reports) = mpsc::unbounded_channel();
        (Progress { job, flow, out }, Reports(reports))
    }

    pub fn started(&self, proxy: Option<ProxyIndex>) {
        self.send(FlowReport::Started {
            flow: self.flow,
            proxy,
        });
    }

    pub fn failed_over(&self, from: ProxyIndex, to: Option<ProxyIndex>, error: impl Into<String>) {
        self.send(FlowReport::ProxyFailedOver {
            flow: self.flow,
            from,
            to,
            error: one_line(&error.into()),
        });
    }

    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.send(FlowReport::Log {
            flow: Some(self.flow),
            level,
            message: one_line(&message.into()),
        });
    }

    fn send(&self, report: FlowReport) {
        // The worker outlives every flow task; a closed channel means it
        // is shutting down and the report has nowhere to go.
        let _ = self.out.send(Event::Report(self.job, report));
    }
}

/// Runner text as the protocol takes it: one line, at most
/// `MAX_LOG_CHARS` characters (the cut's `…` included).
fn one_line(text: &str) -> String {
    domain::reason::one_line(text, domain::flow::MAX_LOG_CHARS - 1)
}

/// How the worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Gateways to connect to, tried in turn when one goes away; empty:
    /// the config's URL only. Shared, so a caller can change the list.
    pub gateways: Arc<Mutex<Vec<String>>>,
    /// Flows queued beyond those running, per slot.
    pub queued_per_slot: u64,
    /// Longest a report waits before its batch is sent.
    pub flush_every: Duration,
    /// Most reports kept in memory while the gateway is away; past it they
    /// spill to the state directory (bounded too: past that, log lines are
    /// dropped; flow outcomes never are).
    pub outbox_memory: usize,
    /// Stop after finding no work this long (`None`: run until told).
    pub idle_exit: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            gateways: Arc::default(),
            queued_per_slot: 1,
            flush_every: Duration::from_millis(250),
            outbox_memory: 10_000,
            idle_exit: None,
        }
    }
}

/// What a worker did, for its caller and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub flows_run: u64,
    /// Finished flows the gateway recorded.
    pub recorded: u64,
    pub duplicates: u64,
    /// Flows cancelled (pause, stop, expired lease, drain).
    pub cancelled: u64,
    /// Reports the gateway refused for good, and log lines dropped.
    pub dropped: u64,
    /// Reports moved to the spill file (memory full, or left at a stop).
    pub spilled: u64,
    pub leases: u64,
    /// Time from a lease request to its grant, for the first
    /// [`ROUND_TRIPS_KEPT`] grants.
    pub lease_round_trips: Vec<Duration>,
    pub reconnects: u64,
}

/// Lease round trips kept in [`Totals`]: enough for a benchmark's
/// percentiles, bounded for a runner that runs for months.
pub const ROUND_TRIPS_KEPT: usize = 100_000;

enum Event {
    Report(JobId, FlowReport),
    Done(JobId, FlowId, Finished),
}

/// A flow in hand: queued, or running as a task.
struct Held {
    order: Order,
    running: Option<AbortHandle>,
}

/// The flows the runner holds and the slots its leases gave it, per job.
#[derive(Default)]
struct Hand {
    flows: BTreeMap<(JobId, FlowId), Held>,
    /// Queued flows in the order granted.
    queue: VecDeque<(JobId, FlowId)>,
    slots: HashMap<JobId, u32>,
    terms: HashMap<JobId, Arc<JobTerms>>,
    /// Flows running, per job: counted as they start and end, not by a
    /// walk over every flow held at each start.
    running: HashMap<JobId, u32>,
}

impl Hand {
    fn running(&self) -> usize {
        self.running.values().map(|&n| n as usize).sum()
    }

    fn running_of(&self, job: JobId) -> u32 {
        self.running.get(&job).copied().unwrap_or(0)
    }

    /// The flow `key` runs as `task`.
    fn started(&mut self, key: (JobId, FlowId), task: AbortHandle) {
        if let Some(held) = self.flows.get_mut(&key) {
            held.running = Some(task);
            *self.running.entry(key.0).or_default() += 1;
        }
    }

    /// Forgets the flow `key`; was it running?
    fn remove(&mut self, key: (JobId, FlowId)) -> Option<Held> {
        let held = self.flows.remove(&key)?;
        if held.running.is_some()
            && let Some(n) = self.running.get_mut(&key.0)
        {
            *n -= 1;
            if *n == 0 {
                self.running.remove(&key.0);
            }
        }
        Some(held)
    }

    fn holds(&self, job: JobId) -> bool {
        self.flows
            .range((job, FlowId(0))..=(job, FlowId(u64::MAX)))
            .next()
            .is_some()
    }

    fn total_slots(&self) -> u32 {
        self.slots.values().sum()
    }

    fn granted(&mut self, grant: LeaseGrant, brief: Option<Arc<JobBrief>>) {
        let terms = Arc::new(JobTerms::new(
            grant.marker_header,
            grant.external_click_domains,
            brief,
        ));
        self.terms.insert(grant.job, terms.clone());
        *self.slots.entry(grant.job).or_default() += grant.slots;
        for work in grant.work {
            for flow in work.flows.start()..work.flows.end() {
                let key = (grant.job, FlowId(flow));
                if self.flows.contains_key(&key) {
                    continue;
                }
                self.flows.insert(
                    key,
                    Held {
                        order: Order {
                            job: grant.job,
                            flow: FlowId(flow),
                            target: work.target,
                            url: work.url.clone(),
                            click: work.click,
                            traffic: work.traffic.clone(),
                            profile: work.profile_of(FlowId(flow)),
                            terms: terms.clone(),
                        },
                        running: None,
                    },
                );
                self.queue.push_back(key);
            }
        }
    }

    /// The next queued flow whose job has a free slot.
    fn next_to_start(&mut self) -> Option<Order> {
        let i = self.queue.iter().position(|&(job, _)| {
            self.running_of(job) < self.slots.get(&job).copied().unwrap_or(0)
        })?;
        let key = self.queue.remove(i)?;
        self.flows.get(&key).map(|h| h.order.clone())
    }

    /// Lets go of flows of `job` (those in `flows`, or all): running ones
    /// are cancelled. How many were running.
    fn release(&mut self, job: JobId, flows: Option<&[FlowRange]>) -> u64 {
        let keys: Vec<_> = self
            .flows
            .range((job, FlowId(0))..=(job, FlowId(u64::MAX)))
            .map(|(k, _)| *k)
            .filter(|(_, f)| flows.is_none_or(|ranges| within(ranges, *f)))
            .collect();
        let mut cancelled = 0;
        for key in keys {
            if let Some(held) = self.remove(key)
                && let Some(task) = held.running
            {
                task.abort();
                cancelled += 1;
            }
        }
        self.queue.retain(|k| self.flows.contains_key(k));
        if !self.holds(job) {
            self.slots.remove(&job);
            self.terms.remove(&job);
        }
        cancelled
    }

    /// The flow ended: forget it; a job with nothing held has no share left.
    fn finished(&mut self, job: JobId, flow: FlowId) -> bool {
        let known = self.remove((job, flow)).is_some();
        if !self.holds(job) {
            self.slots.remove(&job);
            self.terms.remove(&job);
        }
        known
    }

    fn jobs(&self) -> Vec<JobId> {
        let mut jobs: Vec<JobId> = self.flows.keys().map(|(j, _)| *j).collect();
        jobs.dedup();
        jobs
    }

    fn queued_of(&self, job: JobId) -> Vec<FlowRange> {
        let mut flows: Vec<u64> = self
            .queue
            .iter()
            .filter(|(j, _)| *j == job)
            .map(|(_, f)| f.0)
            .collect();
        flows.sort_unstable();
        ranges(&flows)
    }
}

/// Sorted flow ids as half-open ranges.
fn ranges(flows: &[u64]) -> Vec<FlowRange> {
    let mut out: Vec<FlowRange> = Vec::new();
    let mut i = 0;
    while i < flows.len() {
        let start = flows[i];
        let mut end = start + 1;
        i += 1;
        while i < flows.len() && flows[i] == end {
            end += 1;
            i += 1;
        }
        out.extend(FlowRange::new(start, end).ok());
    }
    out
}

/// Runs flows on `executor` as the runner `state` names (its id replaces
/// `config.runner`; its outbox spills there) until `stop` resolves, then
/// drains: running flows finish within `grace`, the rest is handed back.
/// With `idle_exit`, it also ends after no work that long.
pub async fn run<E: Executor>(
    state: StateDir,
    mut config: ClientConfig,
    options: WorkerOptions,
    executor: Arc<E>,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> Totals {
    config.runner = state.id();
    let (spill, lock) = state.into_parts();
    let (out, events) = mpsc::unbounded_channel();
    let outbox = Outbox::new(spill, options.outbox_memory);
    let mut worker = Worker {
        config,
        options,
        executor,
        out,
        events,
        hand: Hand::default(),
        outbox,
        totals: Totals::default(),
        lease_request: None,
        lease_after: Instant::now(),
        hand_back: Vec::new(),
        draining: false,
        gateway: 0,
        idle_since: None,
        resting: Vec::new(),
        _state: lock,
        uploads: VecDeque::new(),
    };
    let mut stop = Stop {
        signal: Box::pin(stop),
        grace,
        by: None,
    };
    worker.work(&mut stop).await;
    worker.finish()
}

/// The caller's stop signal, and once it came, when the drain must end.
struct Stop<F> {
    signal: Pin<Box<F>>,
    grace: Duration,
    by: Option<Instant>,
}

/// What the stop signal says now.
enum Stopping {
    /// Told to stop: drain.
    Heard,
    /// The grace is up: end, drained or not.
    Over,
}

impl<F: Future<Output = ()>> Stop<F> {
    /// The signal (once), then the end of the grace.
    async fn next(&mut self) -> Stopping {
        if let Some(by) = self.by {
            tokio::time::sleep_until(by).await;
            return Stopping::Over;
        }
        self.signal.as_mut().await;
        self.by = Some(Instant::now() + self.grace);
        Stopping::Heard
    }
}

struct Worker<E> {
    config: ClientConfig,
    options: WorkerOptions,
    executor: Arc<E>,
    out: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    hand: Hand,
    outbox: Outbox,
    totals: Totals,
    /// A lease request sent and not answered: sent again under its id.
    lease_request: Option<u64>,
    /// No lease request before this (the gateway's retry-after).
    lease_after: Instant,
    /// Flows it gives back, per job, before it asks for more; each once
    /// the reports on that job are delivered.
    hand_back: Vec<(JobId, Option<Vec<FlowRange>>)>,
    draining: bool,
    gateway: usize,
    idle_since: Option<Instant>,
    /// Slots resting after a flow, until these times.
    resting: Vec<Instant>,
    /// The state directory's lock, held while it runs.
    _state: std::fs::File,
    /// Failed flows whose artifacts go up before their reports, oldest first.
    uploads: VecDeque<Upload>,
}

impl<E: Executor> Worker<E> {
    /// Slots in use: flows running and slots resting after one.
    fn busy(&mut self) -> u32 {
        let now = Instant::now();
        self.resting.retain(|until| *until > now);
        (self.hand.running() + self.resting.len()) as u32
    }

    fn stopping(&mut self) {
        if !self.draining {
            tracing::info!("stopping: finishing running flows, handing back the rest");
        }
        self.draining = true;
    }

    /// Connects and works, reconnecting with backoff, until done.
    async fn work<F: Future<Output = ()>>(&mut self, stop: &mut Stop<F>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut config = self.config.clone();
            {
                let gateways = self
                    .options
                    .gateways
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if !gateways.is_empty() {
                    config.url = gateways[self.gateway % gateways.len()].clone();
                }
            }
            // Flows in hand finish while it connects.
            let open = Connection::open(&config);
            tokio::pin!(open);
            let opened = loop {
                tokio::select! {
                    opened = &mut open => break opened,
                    Some(event) = self.events.recv() => self.absorb(event),
                    stopping = stop.next() => match stopping {
                        Stopping::Heard => self.stopping(),
                        Stopping::Over => return,
                    },
                }
            };
            match opened {
                Ok(mut connection) => {
                    backoff = Duration::from_millis(100);
                    match self.session(&mut connection, stop).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "runner lost its gateway; reconnecting")
                        }
                    }
                }
                Err(ClientError::Refused(e)) if e.code != ErrorCode::Internal => {
                    tracing::error!(code = %e.code, message = %e.message, "the gateway refused this runner");
                    return;
                }
                Err(e) => tracing::info!(error = %e, "runner cannot reach its gateway"),
            }
            self.totals.reconnects += 1;
            self.gateway += 1;
            if !self.absorb_while_away(backoff, stop).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Takes in what flows report for `wait`, starting nothing new;
    /// `false` once the stop's grace is up.
    async fn absorb_while_away<F: Future<Output = ()>>(
        &mut self,
        wait: Duration,
        stop: &mut Stop<F>,
    ) -> bool {
        let until = Instant::now() + wait;
        loop {
            tokio::select! {
                event = tokio::time::timeout_at(until, self.events.recv()) => match event {
                    Ok(Some(event)) => self.absorb(event),
                    _ => return true,
                },
                stopping = stop.next() => match stopping {
                    Stopping::Heard => self.stopping(),
                    Stopping::Over => return false,
                },
            }
        }
    }

    fn absorb(&mut self, event: Event) {
        let pushed = match event {
            Event::Report(job, report) => {
                // A flow let go of (stopped, expired) reports nothing more.
                if report
                    .flow()
                    .is_none_or(|f| self.hand.flows.contains_key(&(job, f)))
                {
                    self.outbox.push(job, report)
                } else {
                    Pushed::default()
                }
            }
            Event::Done(job, flow, finished) => {
                if !finished.rest.is_zero() {
                    self.resting.push(Instant::now() + finished.rest);
                }
                if self.hand.finished(job, flow) {
                    self.totals.flows_run += 1;
                    let upload = Upload {
                        job,
                        report: finished.report,
                        artifacts: finished.artifacts,
                    };
                    let waiting: usize = self.uploads.iter().map(Upload::bytes).sum();
                    if upload.artifacts.is_empty() {
                        self.report_finished(upload);
                    } else if waiting + upload.bytes() > UPLOADS_LIMIT_BYTES {
                        tracing::warn!(%job, %flow, waiting, "artifacts not kept: too many wait to be uploaded");
                        self.report_finished(upload);
                    } else {
                        self.uploads.push_back(upload);
                    }
                }
                Pushed::default()
            }
        };
        self.count(pushed);
    }

    fn count(&mut self, pushed: Pushed) {
        self.totals.spilled += pushed.spilled;
        self.totals.dropped += pushed.dropped;
    }

    /// Queues a finished flow's report, naming the artifacts it uploaded.
    fn report_finished(&mut self, upload: Upload) {
        let pushed = self
            .outbox
            .push(upload.job, FlowReport::Finished(upload.report));
        self.count(pushed);
    }

    /// Uploads the oldest waiting flow's next artifact, or, all of them
    /// up, queues its report. Nothing is lost if the connection breaks:
    /// the artifact is sent again on the next one.
    async fn upload_next(&mut self, connection: &mut Connection) -> Result<(), ClientError> {
        let Some(upload) = self.uploads.front_mut() else {
            return Ok(());
        };
        let Some(artifact) = upload.artifacts.last() else {
            if let Some(upload) = self.uploads.pop_front() {
                self.report_finished(upload);
            }
            return Ok(());
        };
        let (job, flow, kind) = (upload.job, upload.report.flow, artifact.kind);
        let answer = connection
            .upload_artifact(job, flow, kind, &artifact.bytes)
            .await?;
        upload.artifacts.pop();
        match answer {
            Ok(stored) => upload.report.artifacts.push(stored),
            Err(e) => {
                tracing::warn!(%job, %flow, %kind, code = %e.code, message = %e.message, "artifact not kept")
            }
        }
        Ok(())
    }

    /// Forgets the uploads of `job`'s flows (those in `flows`, or all).
    fn forget_uploads(&mut self, job: JobId, flows: Option<&[FlowRange]>) -> u64 {
        let before = self.uploads.len();
        self.uploads
            .retain(|u| u.job != job || flows.is_some_and(|ranges| !within(ranges, u.report.flow)));
        (before - self.uploads.len()) as u64
    }

    /// The end: flows still running are cancelled, and what the gateway
    /// did not take is kept on disk for the next start.
    fn finish(mut self) -> Totals {
        while let Ok(event) = self.events.try_recv() {
            self.absorb(event);
        }
        for job in self.hand.jobs() {
            self.totals.cancelled += self.hand.release(job, None);
        }
        // Outcomes whose artifacts are still waiting go without them.
        while let Some(upload) = self.uploads.pop_front() {
            self.report_finished(upload);
        }
        self.totals.dropped += self.outbox.keep_for_next_start();
        self.totals
    }

    /// Works over one connection; `Ok` when done (idle, drained, or the
    /// stop's grace is up).
    async fn session<F: Future<Output = ()>>(
        &mut self,
        connection: &mut Connection,
        stop: &mut Stop<F>,
    ) -> Result<(), ClientError> {
        let max_batch = connection.terms().limits.max_reports_per_batch.max(1);
        loop {
            while let Ok(event) = self.events.try_recv() {
                self.absorb(event);
            }
            for notice in connection.notices() {
                self.noticed(notice, connection);
            }
            if connection.draining() {
                self.draining = true;
            }
            connection.set_busy(self.hand.running() as u32);

            // A hand-back waits for the reports on its job, so flows that
            // finished are counted, not handed back; a lease request waits
            // for the reports too, as flows reported finished free their
            // room in the runner's lease: both send what waits now.
            let force = (self.draining && self.hand.running() == 0)
                || self.hand_back.iter().any(|(j, _)| self.outbox.holds(*j))
                || self.lease_due();
            if let Some(batch) = self.outbox.due(max_batch, self.options.flush_every, force) {
                let answer = connection
                    .report(batch.id, batch.job, batch.reports.clone())
                    .await?;
                self.answered(answer);
                continue;
            }
            if let Some(i) = self
                .hand_back
                .iter()
                .position(|(j, _)| !self.outbox.holds(*j))
            {
                let (job, flows) = self.hand_back[i].clone();
                connection.hand_back(job, flows).await?;
                self.hand_back.remove(i);
                continue;
            }
            if !self.uploads.is_empty() {
                self.upload_next(connection).await?;
                continue;
            }
            if self.draining {
                // Queued flows go back at once; running ones finish.
                let queued: Vec<(JobId, Vec<FlowRange>)> = self
                    .hand
                    .jobs()
                    .into_iter()
                    .map(|j| (j, self.hand.queued_of(j)))
                    .filter(|(_, r)| !r.is_empty())
                    .collect();
                for (job, flows) in queued {
                    self.hand.release(job, Some(&flows));
                    self.hand_back.push((job, Some(flows)));
                }
                if !self.hand_back.is_empty() {
                    continue;
                }
                if self.hand.flows.is_empty() && self.outbox.is_empty() {
                    return Ok(());
                }
            } else {
                self.start_flows();
                if self.lease_due() {
                    self.lease(connection).await?;
                    continue;
                }
                if self.hand.flows.is_empty()
                    && self.outbox.is_empty()
                    && let Some(limit) = self.options.idle_exit
                    && self.idle_since.get_or_insert_with(Instant::now).elapsed() >= limit
                {
                    return Ok(());
                }
            }
            // Nothing to do now: wait for a flow, a notice, or a deadline.
            let mut wake = Instant::now() + Duration::from_millis(500);
            if let Some(due) = self.outbox.deadline(self.options.flush_every) {
                wake = wake.min(due);
            }
            if !self.draining && self.wants_lease() {
                wake = wake.min(self.lease_after);
            }
            if let Some(rested) = self.resting.iter().min() {
                wake = wake.min(*rested);
            }
            let wait = wake.saturating_duration_since(Instant::now());
            tokio::select! {
                event = self.events.recv() => {
                    if let Some(event) = event {
                        self.absorb(event);
                    }
                }
                notice = connection.next_notice(wait) => {
                    if let Some(notice) = notice? {
                        self.noticed(notice, connection);
                    }
                }
                stopping = stop.next() => match stopping {
                    Stopping::Heard => self.stopping(),
                    Stopping::Over => return Ok(()),
                },
            }
        }
    }

    /// Starts queued flows while the executor has room.
    fn start_flows(&mut self) {
        while self.busy() < self.executor.capacity() {
            let Some(order) = self.hand.next_to_start() else {
                return;
            };
            let key = (order.job, order.flow);
            let progress = Progress {
                job: order.job,
                flow: order.flow,
                out: self.out.clone(),
            };
            let run = self.executor.run(order, progress);
            let out = self.out.clone();
            let task = tokio::spawn(async move {
                let finished = run.await;
                let _ = out.send(Event::Done(key.0, key.1, finished));
            });
            self.hand.started(key, task.abort_handle());
        }
    }

    /// Time to ask for flows: room for them, nothing to hand back first,
    /// and past the gateway's retry-after.
    fn lease_due(&self) -> bool {
        !self.draining
            && self.hand_back.is_empty()
            && self.wants_lease()
            && Instant::now() >= self.lease_after
    }

    /// Room for more flows than it holds? It asks once what it holds is
    /// down to two rounds of its capacity (one running, one queued), so a
    /// runner that queues many flows leases them in bulk, and no slot
    /// waits for a lease.
    fn wants_lease(&self) -> bool {
        let capacity = u64::from(self.executor.capacity());
        let held = self.hand.flows.len() as u64;
        held < capacity * (1 + self.options.queued_per_slot) && held <= 2 * capacity
    }

    async fn lease(&mut self, connection: &mut Connection) -> Result<(), ClientError> {
        let capacity = self.executor.capacity();
        let slots = capacity.saturating_sub(self.hand.total_slots());
        let flows = (u64::from(capacity) * (1 + self.options.queued_per_slot))
            .saturating_sub(self.hand.flows.len() as u64)
            .max(1);
        let request = *self.lease_request.get_or_insert_with(fresh_request_id);
        let asked = Instant::now();
        let answer = connection.lease_as(request, slots, flows).await?;
        self.lease_request = None;
        match answer {
            Leased::Granted(grant) => {
                self.totals.leases += 1;
                if self.totals.lease_round_trips.len() < ROUND_TRIPS_KEPT {
                    self.totals.lease_round_trips.push(asked.elapsed());
                }
                self.idle_since = None;
                let brief = connection.brief(grant.job);
                self.hand.granted(grant, brief);
            }
            Leased::NoWork { retry_after } => {
                self.lease_after = Instant::now() + retry_after.min(Duration::from_secs(2));
            }
            Leased::Refused(e) if e.code == ErrorCode::Draining => self.draining = true,
            Leased::Refused(e) => {
                tracing::warn!(code = %e.code, message = %e.message, "lease refused");
                self.lease_after = Instant::now() + Duration::from_secs(1);
            }
        }
        Ok(())
    }

    /// What the gateway said to the batch in flight.
    fn answered(&mut self, answer: Answer) {
        match answer {
            Answer::Accepted {
                recorded,
                duplicates,
            } => {
                self.outbox.answered();
                self.totals.recorded += u64::from(recorded);
                self.totals.duplicates += u64::from(duplicates);
            }
            Answer::Refused(e) => self.refused(e),
            Answer::HandedBack => {
                self.outbox.answered();
            }
        }
    }

    /// A refused batch: drop what the gateway will never take, keep the
    /// rest for a new batch; `RETRY` sends the same batch again.
    fn refused(&mut self, e: ErrorMessage) {
        match e.code {
            ErrorCode::Retry => {}
            ErrorCode::FlowsNotHeld if !e.flows.is_empty() => {
                self.totals.dropped += self.outbox.refused_flows(&e.flows);
            }
            _ => {
                tracing::warn!(code = %e.code, message = %e.message, "reports refused");
                self.totals.dropped += self.outbox.answered();
            }
        }
    }

    fn noticed(&mut self, notice: Notice, connection: &Connection) {
        match notice {
            Notice::Briefed(job) => match self.hand.terms.get(&job) {
                Some(terms) => terms.set_brief(connection.brief(job)),
                // The gateway holds flows of the job for this runner, and
                // it holds none: leased by an earlier run of this runner
                // (the same id, restarted). They go back to the pool now,
                // rather than waiting for their lease to run out.
                None => {
                    if !self.hand_back.iter().any(|(j, _)| *j == job) {
                        tracing::info!(%job, "handing back flows leased before this runner started");
                        self.hand_back.push((job, None));
                    }
                }
            },
            Notice::ProxyDisabled { job, .. } | Notice::ProxyEnabled { job, .. } => {
                if let Some(terms) = self.hand.terms.get(&job) {
                    terms.set_brief(connection.brief(job));
                }
            }
            Notice::JobStopped(job) => {
                self.totals.cancelled += self.hand.release(job, None);
                self.totals.dropped += self.outbox.forget(job, None);
                self.totals.dropped += self.forget_uploads(job, None);
            }
            // Start nothing new of it and stop what runs (within a second,
            // as a user pausing expects): all of it goes back to the pool.
            Notice::JobPaused(job) => {
                if self.hand.holds(job) {
                    self.totals.cancelled += self.hand.release(job, None);
                    self.hand_back.push((job, None));
                }
            }
            Notice::LeaseExpired { job, flows } => {
                self.totals.cancelled += self.hand.release(job, Some(&flows));
                self.totals.dropped += self.outbox.forget(job, Some(&flows));
                self.totals.dropped += self.forget_uploads(job, Some(&flows));
            }
            Notice::Drain { by } => {
                tracing::info!(%by, "draining: finishing running flows, handing back the rest");
                self.draining = true;
            }
            Notice::Error(e) => {
                tracing::warn!(code = %e.code, message = %e.message, "gateway error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_ids_become_the_fewest_ranges() {
        let got: Vec<(u64, u64)> = ranges(&[1, 2, 3, 7, 9, 10])
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect();
        assert_eq!(got, vec![(1, 4), (7, 8), (9, 11)]);
        assert!(ranges(&[]).is_empty());
    }
}

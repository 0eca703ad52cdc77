//! The runner's work loop: one connection at a time to a gateway; it leases
//! as many flows as its executor has room for, runs each as its own task,
//! batches what they report, and carries on through reconnects.
//!
//! What it guarantees, whatever the executor does:
//! - a flow runs only while the runner holds it: pause, stop and expired
//!   leases cancel the flow's task (dropping it, which closes its browser
//!   context), within the time a notice takes to arrive;
//! - a report is sent until the gateway answers it, under the same batch id
//!   across reconnects, so it counts once; while the gateway is away, flows
//!   in hand finish and their reports wait in a bounded outbox;
//! - while it is cut off it starts no new flow: leases it cannot renew will
//!   expire, and their flows belong to someone else by then;
//! - a failed flow's artifacts are uploaded before its report, which then
//!   names them; artifacts waiting are bounded in bytes, and beyond that a
//!   flow is reported without its own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
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
use uuid::Uuid;

use crate::client::{
    Answer, ClientConfig, ClientError, Connection, Leased, Notice, fresh_request_id,
};

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
    /// Most reports kept while the gateway is away; beyond it log lines
    /// are dropped first (flow outcomes are never dropped).
    pub outbox_limit: usize,
    /// Stop after finding no work this long (`None`: run until told).
    pub idle_exit: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            gateways: Arc::default(),
            queued_per_slot: 1,
            flush_every: Duration::from_millis(250),
            outbox_limit: 10_000,
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
    pub leases: u64,
    pub reconnects: u64,
}

enum Event {
    Report(JobId, FlowReport),
    Done(JobId, FlowId, Finished),
}

/// A batch formed and sent (maybe) but not yet answered.
struct Batch {
    id: Uuid,
    job: JobId,
    reports: Vec<FlowReport>,
}

/// Reports waiting to go, per job, oldest first.
#[derive(Default)]
struct Outbox {
    waiting: VecDeque<(JobId, FlowReport)>,
    since: Option<Instant>,
    unanswered: Option<Batch>,
}

impl Outbox {
    fn len(&self) -> usize {
        self.waiting.len() + self.unanswered.as_ref().map_or(0, |b| b.reports.len())
    }

    fn push(&mut self, job: JobId, report: FlowReport, limit: usize, totals: &mut Totals) {
        if self.len() >= limit {
            // Keep outcomes; make room by dropping the oldest log line.
            if let Some(i) = self
                .waiting
                .iter()
                .position(|(_, r)| matches!(r, FlowReport::Log { .. }))
            {
                self.waiting.remove(i);
                totals.dropped += 1;
            } else if matches!(report, FlowReport::Log { .. }) {
                totals.dropped += 1;
                return;
            }
        }
        self.since.get_or_insert_with(Instant::now);
        self.waiting.push_back((job, report));
    }

    /// The batch to send now: the unanswered one, else a new one of the
    /// oldest job's reports when full or due.
    fn due(&mut self, max: usize, every: Duration, force: bool) -> Option<&Batch> {
        if self.unanswered.is_none() {
            let due = self.waiting.len() >= max
                || force
                || self.since.is_some_and(|s| s.elapsed() >= every);
            if !due || self.waiting.is_empty() {
                return None;
            }
            let job = self.waiting[0].0;
            let mut reports = Vec::new();
            let mut rest = VecDeque::new();
            for (j, r) in self.waiting.drain(..) {
                if j == job && reports.len() < max {
                    reports.push(r);
                } else {
                    rest.push_back((j, r));
                }
            }
            self.waiting = rest;
            self.since = (!self.waiting.is_empty()).then(Instant::now);
            self.unanswered = Some(Batch {
                id: Uuid::now_v7(),
                job,
                reports,
            });
        }
        self.unanswered.as_ref()
    }

    /// When the next batch falls due, if anything waits.
    fn deadline(&self, every: Duration) -> Option<Instant> {
        self.since.map(|s| s + every)
    }

    /// Forgets every report on `job`'s flows (those in `flows`, or all).
    fn forget(&mut self, job: JobId, flows: Option<&[FlowRange]>) -> u64 {
        let gone = |j: JobId, r: &FlowReport| {
            j == job
                && match (flows, r.flow()) {
                    (None, _) => true,
                    (Some(ranges), Some(f)) => within(ranges, f),
                    (Some(_), None) => false,
                }
        };
        let before = self.len();
        self.waiting.retain(|(j, r)| !gone(*j, r));
        if let Some(batch) = &mut self.unanswered {
            let j = batch.job;
            batch.reports.retain(|r| !gone(j, r));
            // It keeps its id: if the gateway recorded it before the
            // answer was lost, the id alone makes it a duplicate.
            if batch.reports.is_empty() {
                self.unanswered = None;
            }
        }
        (before - self.len()) as u64
    }
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
}

impl Hand {
    fn running(&self) -> usize {
        self.flows.values().filter(|h| h.running.is_some()).count()
    }

    fn running_of(&self, job: JobId) -> u32 {
        self.flows
            .range((job, FlowId(0))..=(job, FlowId(u64::MAX)))
            .filter(|(_, h)| h.running.is_some())
            .count() as u32
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
            if let Some(held) = self.flows.remove(&key)
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
        let known = self.flows.remove(&(job, flow)).is_some();
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

fn within(ranges: &[FlowRange], flow: FlowId) -> bool {
    ranges
        .iter()
        .any(|r| (r.start()..r.end()).contains(&flow.0))
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

/// Runs flows on `executor` until `stop` resolves (then drains: running
/// flows finish within `grace`, the rest is handed back) or, with
/// `idle_exit`, until there has been no work that long.
pub async fn run<E: Executor>(
    config: ClientConfig,
    options: WorkerOptions,
    executor: Arc<E>,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> Totals {
    let (out, events) = mpsc::unbounded_channel();
    let mut worker = Worker {
        config,
        options,
        executor,
        out,
        events,
        hand: Hand::default(),
        outbox: Outbox::default(),
        totals: Totals::default(),
        lease_request: None,
        lease_after: Instant::now(),
        hand_back: Vec::new(),
        draining: false,
        gateway: 0,
        idle_since: None,
        resting: Vec::new(),
        uploads: VecDeque::new(),
    };
    tokio::select! {
        () = worker.work() => return worker.totals,
        () = stop => {}
    }
    worker.draining = true;
    let _ = tokio::time::timeout(grace, worker.work()).await;
    worker.totals
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
    /// Jobs whose flows it gives back before anything else.
    hand_back: Vec<(JobId, Option<Vec<FlowRange>>)>,
    draining: bool,
    gateway: usize,
    idle_since: Option<Instant>,
    /// Slots resting after a flow, until these times.
    resting: Vec<Instant>,
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

    /// Connects and works, reconnecting with backoff, until done.
    async fn work(&mut self) {
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
                }
            };
            match opened {
                Ok(mut connection) => {
                    backoff = Duration::from_millis(100);
                    match self.session(&mut connection).await {
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
            self.absorb_while_away(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Takes in what flows report for `wait`, starting nothing new.
    async fn absorb_while_away(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while let Ok(Some(event)) = tokio::time::timeout_at(until, self.events.recv()).await {
            self.absorb(event);
        }
    }

    fn absorb(&mut self, event: Event) {
        match event {
            Event::Report(job, report) => {
                // A flow let go of (stopped, expired) reports nothing more.
                if report
                    .flow()
                    .is_none_or(|f| self.hand.flows.contains_key(&(job, f)))
                {
                    self.outbox
                        .push(job, report, self.options.outbox_limit, &mut self.totals);
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
            }
        }
    }

    /// Queues a finished flow's report, naming the artifacts it uploaded.
    fn report_finished(&mut self, upload: Upload) {
        self.outbox.push(
            upload.job,
            FlowReport::Finished(upload.report),
            usize::MAX,
            &mut self.totals,
        );
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

    /// Works over one connection; `Ok` when done (idle, or drained).
    async fn session(&mut self, connection: &mut Connection) -> Result<(), ClientError> {
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

            let force = self.draining && self.hand.running() == 0;
            if let Some(batch) = self.outbox.due(max_batch, self.options.flush_every, force) {
                let answer = connection
                    .report(batch.id, batch.job, batch.reports.clone())
                    .await?;
                self.answered(answer);
                continue;
            }
            if let Some((job, flows)) = self.hand_back.pop() {
                connection.hand_back(job, flows).await?;
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
                if self.hand.flows.is_empty() && self.outbox.len() == 0 {
                    return Ok(());
                }
            } else {
                self.start_flows();
                if self.wants_lease() && Instant::now() >= self.lease_after {
                    self.lease(connection).await?;
                    continue;
                }
                if self.hand.flows.is_empty()
                    && self.outbox.len() == 0
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
            if let Some(held) = self.hand.flows.get_mut(&key) {
                held.running = Some(task.abort_handle());
            }
        }
    }

    /// Room for more flows than it holds?
    fn wants_lease(&self) -> bool {
        let capacity = u64::from(self.executor.capacity());
        let held = self.hand.flows.len() as u64;
        held < capacity * (1 + self.options.queued_per_slot)
    }

    async fn lease(&mut self, connection: &mut Connection) -> Result<(), ClientError> {
        let capacity = self.executor.capacity();
        let slots = capacity.saturating_sub(self.hand.total_slots());
        let flows = (u64::from(capacity) * (1 + self.options.queued_per_slot))
            .saturating_sub(self.hand.flows.len() as u64)
            .max(1);
        let request = *self.lease_request.get_or_insert_with(fresh_request_id);
        let answer = connection.lease_as(request, slots, flows).await?;
        self.lease_request = None;
        match answer {
            Leased::Granted(grant) => {
                self.totals.leases += 1;
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
                self.outbox.unanswered = None;
                self.totals.recorded += u64::from(recorded);
                self.totals.duplicates += u64::from(duplicates);
            }
            Answer::Refused(e) => self.refused(e),
            Answer::HandedBack => self.outbox.unanswered = None,
        }
    }

    /// A refused batch: drop what the gateway will never take, keep the
    /// rest for a new batch; `RETRY` sends the same batch again.
    fn refused(&mut self, e: ErrorMessage) {
        let Some(batch) = self.outbox.unanswered.take() else {
            return;
        };
        match e.code {
            ErrorCode::Retry => {
                self.outbox.unanswered = Some(batch);
            }
            ErrorCode::FlowsNotHeld if !e.flows.is_empty() => {
                let before = batch.reports.len();
                let kept: Vec<FlowReport> = batch
                    .reports
                    .into_iter()
                    .filter(|r| r.flow().is_none_or(|f| !e.flows.contains(&f)))
                    .collect();
                self.totals.dropped += (before - kept.len()) as u64;
                for report in kept.into_iter().rev() {
                    self.outbox.waiting.push_front((batch.job, report));
                }
                self.outbox.since.get_or_insert_with(Instant::now);
            }
            _ => {
                tracing::warn!(code = %e.code, message = %e.message, "reports refused");
                self.totals.dropped += batch.reports.len() as u64;
            }
        }
    }

    fn noticed(&mut self, notice: Notice, connection: &Connection) {
        match notice {
            Notice::Briefed(job)
            | Notice::ProxyDisabled { job, .. }
            | Notice::ProxyEnabled { job, .. } => {
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

    fn r(s: u64, e: u64) -> FlowRange {
        FlowRange::new(s, e).unwrap()
    }

    #[test]
    fn flow_ids_become_the_fewest_ranges() {
        let got: Vec<(u64, u64)> = ranges(&[1, 2, 3, 7, 9, 10])
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect();
        assert_eq!(got, vec![(1, 4), (7, 8), (9, 11)]);
        assert!(ranges(&[]).is_empty());
    }

    fn log(flow: u64) -> FlowReport {
        FlowReport::Log {
            flow: Some(FlowId(flow)),
            level: LogLevel::Info,
            message: "x".into(),
        }
    }

    fn started(flow: u64) -> FlowReport {
        FlowReport::Started {
            flow: FlowId(flow),
            proxy: None,
        }
    }

    #[test]
    fn a_full_outbox_drops_log_lines_but_never_outcomes() {
        let job = JobId(Uuid::from_u128(1));
        let mut outbox = Outbox::default();
        let mut totals = Totals::default();
        outbox.push(job, log(1), 2, &mut totals);
        outbox.push(job, started(2), 2, &mut totals);
        outbox.push(job, started(3), 2, &mut totals);
        assert_eq!(totals.dropped, 1, "the log line made room");
        outbox.push(job, log(4), 2, &mut totals);
        assert_eq!(totals.dropped, 2, "a log line over the limit is dropped");
        assert_eq!(outbox.len(), 2);
    }

    #[test]
    fn a_batch_is_one_jobs_reports_and_keeps_its_id_until_answered() {
        let (a, b) = (JobId(Uuid::from_u128(1)), JobId(Uuid::from_u128(2)));
        let mut outbox = Outbox::default();
        let mut totals = Totals::default();
        for (job, flow) in [(a, 1), (b, 2), (a, 3)] {
            outbox.push(job, started(flow), 100, &mut totals);
        }
        assert!(outbox.due(10, Duration::from_secs(60), false).is_none());
        let batch = outbox.due(10, Duration::from_secs(60), true).unwrap();
        let (id, job, n) = (batch.id, batch.job, batch.reports.len());
        assert_eq!((job, n), (a, 2));
        let again = outbox.due(10, Duration::from_secs(60), true).unwrap();
        assert_eq!(again.id, id, "sent again under the same id");
        outbox.unanswered = None;
        let next = outbox.due(10, Duration::ZERO, false).unwrap();
        assert_eq!((next.job, next.reports.len()), (b, 1));
    }

    #[test]
    fn forgetting_an_expired_range_keeps_other_flows_reports() {
        let job = JobId(Uuid::from_u128(1));
        let mut outbox = Outbox::default();
        let mut totals = Totals::default();
        for flow in 0..6 {
            outbox.push(job, started(flow), 100, &mut totals);
        }
        assert_eq!(outbox.forget(job, Some(&[r(2, 4)])), 2);
        assert_eq!(outbox.len(), 4);
    }
}

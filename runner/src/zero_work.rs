//! A runner that does no work: it leases flows and reports each finished
//! at once, through the real protocol client. The orchestrator's recovery
//! tests and its benchmark run fleets of these; what they prove about
//! leases, reports and recovery holds for browser runners, which differ
//! only in how long a flow takes.
//!
//! It reconnects with backoff when its gateway goes away and sends an
//! unanswered batch again under the same id, so a flow counts once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::flow::{FlowFinished, FlowId, FlowOutcome, FlowRange, FlowReport, PageLoad};
use domain::job::JobId;
use domain::runner_protocol::ErrorCode;
use domain::web_vitals::PageVitals;
use uuid::Uuid;

use crate::client::{
    Answer, ClientConfig, ClientError, Connection, Leased, Notice, fresh_request_id,
};

/// How a zero-work runner behaves.
#[derive(Debug, Clone)]
pub struct ZeroWorkOptions {
    /// Browser slots it asks for.
    pub slots: u32,
    /// Flows it asks for per lease request.
    pub flows_per_lease: u64,
    /// Stop after finding no work this long (`None`: run until told).
    pub idle_exit: Option<Duration>,
    /// Gateways to connect to, tried in turn when one goes away; empty:
    /// the config's URL only. Shared, so a test can point a fleet at a
    /// gateway restarted on another port.
    pub gateways: Arc<Mutex<Vec<String>>>,
    /// How long each batch of flows takes before it is reported: zero
    /// work, or a stand-in for real work.
    pub work_per_batch: Duration,
    /// Most flows reported in one batch (the gateway's limit applies too).
    pub batch: usize,
}

impl Default for ZeroWorkOptions {
    fn default() -> Self {
        Self {
            slots: 4,
            flows_per_lease: 256,
            idle_exit: Some(Duration::from_secs(3)),
            gateways: Arc::default(),
            work_per_batch: Duration::ZERO,
            batch: usize::MAX,
        }
    }
}

/// What a zero-work runner did.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Flows the gateway recorded as finished by this runner.
    pub recorded: u64,
    /// Reports the gateway already knew (batches sent again).
    pub duplicates: u64,
    pub leases: u64,
    /// Time from a lease request to its grant, per grant.
    pub lease_round_trips: Vec<Duration>,
    pub reconnects: u64,
    /// Flows given up because the gateway refused them (expired leases,
    /// stopped jobs).
    pub dropped: u64,
}

/// A batch sent, and not yet answered.
struct Pending {
    batch: Uuid,
    job: JobId,
    reports: Vec<FlowReport>,
}

/// The flows it holds, by job, in the order granted.
#[derive(Default)]
struct Queue(VecDeque<(JobId, FlowRange)>);

impl Queue {
    /// Takes up to `n` flows of one job.
    fn take(&mut self, n: usize) -> Option<(JobId, Vec<FlowId>)> {
        let (job, _) = *self.0.front()?;
        let mut flows = Vec::new();
        while flows.len() < n {
            let Some((j, range)) = self.0.front_mut() else {
                break;
            };
            if *j != job {
                break;
            }
            let want = (n - flows.len()) as u64;
            let take = want.min(range.len());
            flows.extend((range.start()..range.start() + take).map(FlowId));
            if take == range.len() {
                self.0.pop_front();
            } else if let Ok(rest) = FlowRange::new(range.start() + take, range.end()) {
                *range = rest;
            }
        }
        Some((job, flows))
    }

    /// Forgets flows of `job` (all, or those in `ranges`); how many.
    fn forget(&mut self, job: JobId, ranges: Option<&[FlowRange]>) -> u64 {
        let before: u64 = self.0.iter().map(|(_, r)| r.len()).sum();
        let mut kept = VecDeque::new();
        for (j, r) in self.0.drain(..) {
            if j != job {
                kept.push_back((j, r));
                continue;
            }
            let Some(ranges) = ranges else { continue };
            // Keep the parts of `r` outside every range forgotten.
            let mut parts = vec![r];
            for gone in ranges {
                parts = parts
                    .into_iter()
                    .flat_map(|p| {
                        let mut out = Vec::new();
                        if p.start() < gone.start() {
                            out.extend(FlowRange::new(p.start(), gone.start().min(p.end())).ok());
                        }
                        if p.end() > gone.end() {
                            out.extend(FlowRange::new(gone.end().max(p.start()), p.end()).ok());
                        }
                        out
                    })
                    .collect();
            }
            kept.extend(parts.into_iter().map(|p| (j, p)));
        }
        self.0 = kept;
        before - self.0.iter().map(|(_, r)| r.len()).sum::<u64>()
    }

    fn jobs(&self) -> Vec<JobId> {
        let mut jobs: Vec<JobId> = self.0.iter().map(|(j, _)| *j).collect();
        jobs.dedup();
        jobs
    }
}

fn finished(flow: FlowId) -> FlowReport {
    FlowReport::Finished(FlowFinished {
        flow,
        outcome: FlowOutcome::Succeeded,
        duration_ms: 0,
        proxy: None,
        pages: vec![PageLoad {
            ms: 1,
            status: Some(200),
            vitals: PageVitals::default(),
        }],
        clicks: Vec::new(),
        artifacts: Vec::new(),
    })
}

/// Runs until idle for `idle_exit`, or until `stop` resolves.
pub async fn run(
    config: ClientConfig,
    options: ZeroWorkOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Totals {
    let mut worker = Worker {
        config,
        options,
        totals: Totals::default(),
        queue: Queue::default(),
        pending: None,
        draining: false,
        hand_back: Vec::new(),
        lease_request: None,
        gateway: 0,
    };
    tokio::select! {
        () = worker.work() => {}
        () = stop => {}
    }
    worker.totals
}

struct Worker {
    config: ClientConfig,
    options: ZeroWorkOptions,
    totals: Totals,
    queue: Queue,
    pending: Option<Pending>,
    draining: bool,
    /// Jobs whose flows it gives back before anything else.
    hand_back: Vec<JobId>,
    /// A lease request sent and not answered yet.
    lease_request: Option<u64>,
    /// The gateway it uses, an index into the options' list.
    gateway: usize,
}

impl Worker {
    async fn work(&mut self) {
        let mut backoff = Duration::from_millis(50);
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
            match Connection::open(&config).await {
                Ok(mut connection) => {
                    backoff = Duration::from_millis(50);
                    match self.session(&mut connection).await {
                        Ok(()) => return,
                        Err(e) => tracing::info!(error = %e, "zero-work runner lost its gateway"),
                    }
                }
                Err(ClientError::Refused(e)) if e.code != ErrorCode::Internal => {
                    tracing::warn!(code = %e.code, message = %e.message, "zero-work runner refused");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "zero-work runner cannot connect"),
            }
            self.totals.reconnects += 1;
            self.gateway += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Works over one connection; `Ok` when done (idle or drained).
    async fn session(&mut self, connection: &mut Connection) -> Result<(), ClientError> {
        let mut idle_since: Option<Instant> = None;
        let batch_size = connection
            .terms()
            .limits
            .max_reports_per_batch
            .min(self.options.batch.max(1));
        loop {
            for notice in connection.notices() {
                self.noticed(notice);
            }
            if let Some(pending) = &self.pending {
                let answer = connection
                    .report(pending.batch, pending.job, pending.reports.clone())
                    .await?;
                let sent = pending.reports.len() as u64;
                self.pending = None;
                match answer {
                    Answer::Accepted {
                        recorded,
                        duplicates,
                    } => {
                        self.totals.recorded += u64::from(recorded);
                        self.totals.duplicates += u64::from(duplicates);
                    }
                    Answer::Refused(e) if e.code == ErrorCode::Retry => {
                        return Err(ClientError::Unexpected {
                            expected: "report_accepted",
                            got: e.message,
                        });
                    }
                    Answer::Refused(_) | Answer::HandedBack => self.totals.dropped += sent,
                }
                continue;
            }
            if let Some(&job) = self.hand_back.last() {
                connection.hand_back(job, None).await?;
                self.hand_back.pop();
                continue;
            }
            if self.draining {
                for job in self.queue.jobs() {
                    connection.hand_back(job, None).await?;
                }
                self.queue = Queue::default();
                return Ok(());
            }
            if let Some((job, flows)) = self.queue.take(batch_size) {
                connection.set_busy(self.options.slots);
                if !self.options.work_per_batch.is_zero() {
                    tokio::time::sleep(self.options.work_per_batch).await;
                }
                self.pending = Some(Pending {
                    batch: Uuid::now_v7(),
                    job,
                    reports: flows.into_iter().map(finished).collect(),
                });
                continue;
            }
            let asked = Instant::now();
            // Kept until answered: sent again after a reconnect, it gets
            // the grant its lost answer carried.
            let request = *self.lease_request.get_or_insert_with(fresh_request_id);
            let answer = connection
                .lease_as(request, self.options.slots, self.options.flows_per_lease)
                .await?;
            self.lease_request = None;
            match answer {
                Leased::Granted(grant) => {
                    self.totals.leases += 1;
                    self.totals.lease_round_trips.push(asked.elapsed());
                    idle_since = None;
                    for work in grant.work {
                        self.queue.0.push_back((grant.job, work.flows));
                    }
                }
                Leased::NoWork { retry_after } => {
                    connection.set_busy(0);
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if self
                        .options
                        .idle_exit
                        .is_some_and(|limit| since.elapsed() >= limit)
                    {
                        return Ok(());
                    }
                    let wait = retry_after.min(Duration::from_millis(200));
                    if let Some(notice) = connection.next_notice(wait).await? {
                        self.noticed(notice);
                    }
                }
                Leased::Refused(e) if e.code == ErrorCode::Draining => self.draining = true,
                Leased::Refused(e) => {
                    tracing::debug!(code = %e.code, message = %e.message, "lease refused");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn noticed(&mut self, notice: Notice) {
        match notice {
            Notice::JobStopped(job) => {
                self.totals.dropped += self.queue.forget(job, None);
            }
            // Start nothing new of it: what is queued goes back at once.
            Notice::JobPaused(job) => {
                if self.queue.forget(job, None) > 0 {
                    self.hand_back.push(job);
                }
            }
            Notice::LeaseExpired { job, flows } => {
                self.totals.dropped += self.queue.forget(job, Some(&flows));
            }
            Notice::Drain { .. } => self.draining = true,
            // It does no work: briefs and proxies are nothing to it.
            Notice::Briefed(_) | Notice::ProxyDisabled { .. } | Notice::ProxyEnabled { .. } => {}
            Notice::Error(e) => {
                tracing::debug!(code = %e.code, message = %e.message, "gateway error")
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
    fn the_queue_hands_out_flows_of_one_job_at_a_time_and_forgets_ranges() {
        let (a, b) = (JobId(Uuid::from_u128(1)), JobId(Uuid::from_u128(2)));
        let mut q = Queue::default();
        q.0.extend([(a, r(0, 3)), (a, r(5, 7)), (b, r(0, 2))]);
        assert_eq!(
            q.take(4),
            Some((a, vec![FlowId(0), FlowId(1), FlowId(2), FlowId(5)]))
        );
        assert_eq!(q.take(4), Some((a, vec![FlowId(6)])));
        q.0.push_front((a, r(10, 20)));
        assert_eq!(q.forget(a, Some(&[r(12, 15)])), 3);
        assert_eq!(q.take(100).unwrap().1.len(), 7);
        assert_eq!(q.forget(b, None), 2);
        assert!(q.0.is_empty());
    }
}

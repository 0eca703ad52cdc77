//! Reports waiting for the gateway: in memory up to a bound, past it in
//! the spill file of the runner's state directory (bounded too), and there
//! also whatever is left when the runner stops. Sent oldest first, one
//! job's reports a batch, each batch under one id until the gateway
//! answers it, across reconnects and restarts, so it counts once.
//!
//! Order: the batch in flight, then the spill file's batches, then memory.
//! A batch is formed in memory only while the file is empty, and a spill
//! moves such a batch into the file first, so the file always holds the
//! oldest reports.

use std::collections::VecDeque;
use std::time::Duration;

use domain::flow::{FlowId, FlowRange, FlowReport};
use domain::job::JobId;
use tokio::time::Instant;
use uuid::Uuid;

use crate::spill_file::{Batch, SpillError, SpillFile};

/// A batch sent (maybe) but not answered yet, and where it is kept.
#[derive(Debug)]
struct Sent {
    batch: Batch,
    /// It is the spill file's oldest batch (else it is only in memory).
    from_file: bool,
}

/// What a push did beyond keeping the report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// Reports moved from memory into the spill file.
    pub spilled: u64,
    /// Log lines dropped because even the spill file was full.
    pub dropped: u64,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    waiting: VecDeque<(JobId, FlowReport)>,
    since: Option<Instant>,
    unanswered: Option<Sent>,
    spill: SpillFile,
    /// Most reports kept in memory before they are spilled.
    memory: usize,
    /// Most reports a batch holds, as the gateway last said.
    max_batch: usize,
    /// The last spill failed; said once until one works again.
    spill_failing: bool,
}

impl Outbox {
    pub fn new(spill: SpillFile, memory: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            since: None,
            unanswered: None,
            spill,
            memory: memory.max(1),
            max_batch: domain::runner_protocol::Limits::THIS_BUILD.max_reports_per_batch,
            spill_failing: false,
        }
    }

    /// Reports waiting, in memory and on disk.
    pub fn len(&self) -> usize {
        let in_memory = self
            .unanswered
            .as_ref()
            .filter(|s| !s.from_file)
            .map_or(0, |s| s.batch.reports.len());
        self.waiting.len() + in_memory + self.spill.reports()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Are any reports on `job` waiting?
    pub fn holds(&self, job: JobId) -> bool {
        self.waiting.iter().any(|(j, _)| *j == job)
            || self.unanswered.as_ref().is_some_and(|s| s.batch.job == job)
            || self.spill.holds(job)
    }

    /// Keeps a report. Past the memory bound, memory goes to the spill
    /// file; when that fails too (full, or the disk refuses), log lines
    /// are dropped, oldest first, and outcomes stay in memory (there are
    /// no more of them than flows in hand: none starts while cut off).
    pub fn push(&mut self, job: JobId, report: FlowReport) -> Pushed {
        self.since.get_or_insert_with(Instant::now);
        self.waiting.push_back((job, report));
        let mut pushed = Pushed::default();
        if self.waiting.len() <= self.memory {
            return pushed;
        }
        match self.spill_memory() {
            Ok(spilled) => pushed.spilled = spilled,
            Err(e) => {
                if !std::mem::replace(&mut self.spill_failing, true) {
                    tracing::error!(error = %e, "the runner's outbox is full in memory and cannot spill to disk: log lines are dropped until the gateway takes reports; flow outcomes are kept");
                }
                if let Some(i) = self
                    .waiting
                    .iter()
                    .position(|(_, r)| matches!(r, FlowReport::Log { .. }))
                {
                    self.waiting.remove(i);
                    pushed.dropped = 1;
                }
            }
        }
        pushed
    }

    /// Moves what memory holds into the spill file (the batch in flight
    /// first): how many reports moved. All or nothing.
    fn spill_memory(&mut self) -> Result<u64, SpillError> {
        let in_flight = self
            .unanswered
            .as_ref()
            .filter(|s| !s.from_file)
            .map(|s| s.batch.clone());
        let mut batches: Vec<Batch> = in_flight.iter().cloned().collect();
        let mut taken = std::mem::take(&mut self.waiting);
        while let Some(batch) = take_batch(&mut taken, self.max_batch) {
            batches.push(batch);
        }
        let from_memory = batches.len() - usize::from(in_flight.is_some());
        match self.spill.push(&batches) {
            Ok(()) => {
                if in_flight.is_some() {
                    self.unanswered = None;
                }
                self.since = None;
                if std::mem::replace(&mut self.spill_failing, false) {
                    tracing::info!(path = %self.spill.path().display(), "the runner's outbox spills to disk again");
                }
                Ok(batches.iter().map(|b| b.reports.len() as u64).sum())
            }
            Err(e) => {
                for batch in batches.into_iter().rev().take(from_memory) {
                    for report in batch.reports.into_iter().rev() {
                        self.waiting.push_front((batch.job, report));
                    }
                }
                Err(e)
            }
        }
    }

    /// Keeps everything not delivered on disk, for the next start: how
    /// many reports are lost because it cannot.
    pub fn keep_for_next_start(&mut self) -> u64 {
        let in_flight = self.unanswered.as_ref().is_some_and(|s| !s.from_file);
        if self.waiting.is_empty() && !in_flight {
            return 0;
        }
        match self.spill_memory() {
            Ok(kept) => {
                tracing::info!(reports = kept, path = %self.spill.path().display(), "reports the gateway did not take are kept for the next start");
                0
            }
            Err(e) => {
                let lost = self.len() - self.spill.reports();
                tracing::error!(reports = lost, error = %e, "reports the gateway did not take are lost");
                lost as u64
            }
        }
    }

    /// The batch to send now: the one in flight, else the spill file's
    /// oldest, else one of the oldest job's reports in memory when full
    /// or due (`max` at most, as the gateway says).
    pub fn due(&mut self, max: usize, every: Duration, force: bool) -> Option<&Batch> {
        self.max_batch = max.max(1);
        if self.unanswered.is_none() {
            if let Some(batch) = self.spill.head() {
                self.unanswered = Some(Sent {
                    batch,
                    from_file: true,
                });
            } else {
                let due = self.waiting.len() >= self.max_batch
                    || force
                    || self.since.is_some_and(|s| s.elapsed() >= every);
                if !due {
                    return None;
                }
                let batch = take_batch(&mut self.waiting, self.max_batch)?;
                self.since = (!self.waiting.is_empty()).then(Instant::now);
                self.unanswered = Some(Sent {
                    batch,
                    from_file: false,
                });
            }
        }
        self.unanswered.as_ref().map(|s| &s.batch)
    }

    /// When the next batch falls due, if anything waits in memory.
    pub fn deadline(&self, every: Duration) -> Option<Instant> {
        self.since.map(|s| s + every)
    }

    /// The batch in flight was answered (taken, or refused for good): it is
    /// done with.
    pub fn answered(&mut self) -> u64 {
        let Some(sent) = self.unanswered.take() else {
            return 0;
        };
        if sent.from_file {
            self.spill.advance();
        }
        sent.batch.reports.len() as u64
    }

    /// The batch in flight was refused for its reports on flows in
    /// `not_held`: those are dropped (how many), the rest go out again in
    /// a new batch. (From the spill file, they follow the file's other
    /// batches: order among reports of flows still held is kept.)
    pub fn refused_flows(&mut self, not_held: &[FlowId]) -> u64 {
        let Some(sent) = self.unanswered.take() else {
            return 0;
        };
        if sent.from_file {
            self.spill.advance();
        }
        let Batch { job, reports, .. } = sent.batch;
        let before = reports.len();
        let kept: Vec<FlowReport> = reports
            .into_iter()
            .filter(|r| r.flow().is_none_or(|f| !not_held.contains(&f)))
            .collect();
        let dropped = (before - kept.len()) as u64;
        for report in kept.into_iter().rev() {
            self.waiting.push_front((job, report));
        }
        if !self.waiting.is_empty() {
            self.since.get_or_insert_with(Instant::now);
        }
        dropped
    }

    /// Forgets the reports on `job`'s flows (those in `flows`, or all)
    /// held in memory: how many. Those in the spill file go to the
    /// gateway, which refuses them.
    pub fn forget(&mut self, job: JobId, flows: Option<&[FlowRange]>) -> u64 {
        let gone = |j: JobId, r: &FlowReport| {
            j == job
                && match (flows, r.flow()) {
                    (None, _) => true,
                    (Some(ranges), Some(f)) => within(ranges, f),
                    (Some(_), None) => false,
                }
        };
        let before = self.waiting.len();
        self.waiting.retain(|(j, r)| !gone(*j, r));
        let mut forgotten = (before - self.waiting.len()) as u64;
        if let Some(sent) = &mut self.unanswered {
            let j = sent.batch.job;
            let before = sent.batch.reports.len();
            sent.batch.reports.retain(|r| !gone(j, r));
            forgotten += (before - sent.batch.reports.len()) as u64;
            // It keeps its id: if the gateway recorded it before the
            // answer was lost, the id alone makes it a duplicate.
            if sent.batch.reports.is_empty() {
                self.answered();
            }
        }
        forgotten
    }
}

/// Takes a batch of the oldest job's reports, at most `max`, from `waiting`.
fn take_batch(waiting: &mut VecDeque<(JobId, FlowReport)>, max: usize) -> Option<Batch> {
    let job = waiting.front()?.0;
    let mut reports = Vec::new();
    let mut rest = VecDeque::with_capacity(waiting.len());
    for (j, r) in waiting.drain(..) {
        if j == job && reports.len() < max {
            reports.push(r);
        } else {
            rest.push_back((j, r));
        }
    }
    *waiting = rest;
    Some(Batch {
        id: Uuid::now_v7(),
        job,
        reports,
    })
}

pub(crate) fn within(ranges: &[FlowRange], flow: FlowId) -> bool {
    ranges
        .iter()
        .any(|r| (r.start()..r.end()).contains(&flow.0))
}

#[cfg(test)]
mod tests {
    use domain::flow::LogLevel;

    use super::*;

    fn r(s: u64, e: u64) -> FlowRange {
        FlowRange::new(s, e).unwrap()
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

    fn outbox(dir: &tempfile::TempDir, memory: usize, disk: u64) -> Outbox {
        Outbox::new(SpillFile::open(dir.path(), disk).unwrap(), memory)
    }

    const LATER: Duration = Duration::from_secs(60);

    /// Sends everything, each batch answered: (job, flow) of each report.
    fn deliver(outbox: &mut Outbox, max: usize) -> Vec<(JobId, Option<FlowId>)> {
        let mut out = Vec::new();
        while let Some(batch) = outbox.due(max, LATER, true) {
            out.extend(batch.reports.iter().map(|r| (batch.job, r.flow())));
            outbox.answered();
        }
        out
    }

    #[test]
    fn a_batch_is_one_jobs_reports_and_keeps_its_id_until_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (JobId(Uuid::from_u128(1)), JobId(Uuid::from_u128(2)));
        let mut outbox = outbox(&dir, 100, 1 << 20);
        for (job, flow) in [(a, 1), (b, 2), (a, 3)] {
            outbox.push(job, started(flow));
        }
        assert!(outbox.due(10, LATER, false).is_none());
        let batch = outbox.due(10, LATER, true).unwrap();
        let (id, job, n) = (batch.id, batch.job, batch.reports.len());
        assert_eq!((job, n), (a, 2));
        let again = outbox.due(10, LATER, true).unwrap();
        assert_eq!(again.id, id, "sent again under the same id");
        outbox.answered();
        let next = outbox.due(10, Duration::ZERO, false).unwrap();
        assert_eq!((next.job, next.reports.len()), (b, 1));
    }

    #[test]
    fn past_the_memory_bound_reports_spill_to_disk_and_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId(Uuid::from_u128(1));
        let mut outbox = outbox(&dir, 4, 1 << 20);
        for flow in 0..3 {
            outbox.push(job, started(flow));
        }
        // A batch goes out and its answer is lost with the connection.
        let in_flight = outbox.due(2, LATER, true).unwrap().id;
        let mut spilled = 0;
        for flow in 3..10 {
            spilled += outbox.push(job, started(flow)).spilled;
        }
        assert_eq!(spilled, 7, "the batch in flight, then all of memory");
        assert_eq!(outbox.len(), 10);
        assert_eq!(
            outbox.due(2, LATER, false).unwrap().id,
            in_flight,
            "the batch in flight goes first, under its id, from the file"
        );
        let flows: Vec<_> = deliver(&mut outbox, 2)
            .into_iter()
            .map(|(_, f)| f.unwrap().0)
            .collect();
        assert_eq!(flows, (0..10).collect::<Vec<_>>());
        assert!(outbox.is_empty());
    }

    #[test]
    fn with_the_disk_full_too_log_lines_are_dropped_but_never_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId(Uuid::from_u128(1));
        let mut outbox = outbox(&dir, 2, 10);
        assert_eq!(outbox.push(job, log(1)), Pushed::default());
        outbox.push(job, started(2));
        let pushed = outbox.push(job, started(3));
        assert_eq!(pushed.dropped, 1, "the log line made room");
        let pushed = outbox.push(job, log(4));
        assert_eq!(pushed.dropped, 1, "a log line over the bound is dropped");
        outbox.push(job, started(5));
        assert_eq!(outbox.len(), 3, "outcomes stay, past the bound");
    }

    #[test]
    fn what_is_left_at_a_stop_is_delivered_after_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (JobId(Uuid::from_u128(1)), JobId(Uuid::from_u128(2)));
        let in_flight = {
            let mut outbox = outbox(&dir, 100, 1 << 20);
            for (job, flow) in [(a, 1), (b, 2), (a, 3)] {
                outbox.push(job, started(flow));
            }
            let id = outbox.due(1, LATER, true).unwrap().id;
            assert_eq!(outbox.keep_for_next_start(), 0);
            id
        };
        let mut outbox = outbox(&dir, 100, 1 << 20);
        assert!(outbox.holds(b));
        assert_eq!(outbox.due(1, LATER, false).unwrap().id, in_flight);
        let delivered = deliver(&mut outbox, 10);
        assert_eq!(
            delivered,
            vec![
                (a, Some(FlowId(1))),
                (b, Some(FlowId(2))),
                (a, Some(FlowId(3)))
            ]
        );
    }

    #[test]
    fn forgetting_an_expired_range_keeps_other_flows_reports() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId(Uuid::from_u128(1));
        let mut outbox = outbox(&dir, 100, 1 << 20);
        for flow in 0..6 {
            outbox.push(job, started(flow));
        }
        assert_eq!(outbox.forget(job, Some(&[r(2, 4)])), 2);
        assert_eq!(outbox.len(), 4);
    }

    #[test]
    fn a_batch_refused_for_flows_not_held_goes_again_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId(Uuid::from_u128(1));
        let mut outbox = outbox(&dir, 100, 1 << 20);
        for flow in 0..4 {
            outbox.push(job, started(flow));
        }
        let first = outbox.due(10, LATER, true).unwrap().id;
        assert_eq!(outbox.refused_flows(&[FlowId(1), FlowId(2)]), 2);
        let again = outbox.due(10, LATER, true).unwrap();
        assert_ne!(again.id, first, "other reports, another batch");
        let flows: Vec<_> = again.reports.iter().map(|r| r.flow().unwrap().0).collect();
        assert_eq!(flows, vec![0, 3]);
    }
}

//! A job's plan: the flows it has and, for each, its target, its ordinal,
//! whether it should click and its target's domain. Built from the rows of
//! the targets version as runs of alike consecutive targets, so that a
//! 100,000-row list of similar targets is a few runs in the event and the
//! state, and a flow's place is found by binary search, never stored.
//!
//! Flows are numbered target by target, in row order, and by ordinal within
//! a target: target 0's flows first. Flow `ordinal < clicks` of a target is
//! one that should click, so "clickTarget of flowTarget" needs no list.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain_name::DomainName;
use crate::flow::{FlowId, FlowRange};

/// Most targets one job may have.
pub const MAX_TARGETS_PER_JOB: u32 = 1_000_000;
/// Most flows one job may have.
pub const MAX_FLOWS_PER_JOB: u64 = 100_000_000;
/// Most runs one event carries: at most about 300 bytes each (a domain is at
/// most 253), so an event stays well under the store's 1 MiB.
pub const RUNS_PER_EVENT: usize = 2048;

/// One row of the targets version, as far as the orchestrator needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPlan {
    pub domain: DomainName,
    /// Visits wanted (the row's flow target).
    pub flows: u32,
    /// Of those, visits that should click (the row's click target).
    pub clicks: u32,
}

/// Consecutive targets alike in domain, flows and clicks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRun {
    pub targets: u32,
    pub domain: DomainName,
    pub flows: u32,
    pub clicks: u32,
}

/// Why the targets cannot make a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the targets version has no targets")]
    NoTargets,
    #[error("the job has {count} targets; a job holds at most {MAX_TARGETS_PER_JOB}")]
    TooManyTargets { count: usize },
    #[error("target {target} wants {clicks} clicks of {flows} visits; clicks cannot exceed visits")]
    ClicksOverFlows {
        target: u32,
        clicks: u32,
        flows: u32,
    },
    #[error("no target wants a visit: every flow target is 0")]
    NoFlows,
    #[error("the targets want {flows} visits; a job holds at most {MAX_FLOWS_PER_JOB}")]
    TooManyFlows { flows: u64 },
}

/// Checks the rows and folds them into runs, in order.
pub fn runs(targets: &[TargetPlan]) -> Result<Vec<TargetRun>, PlanError> {
    if targets.is_empty() {
        return Err(PlanError::NoTargets);
    }
    if targets.len() > MAX_TARGETS_PER_JOB as usize {
        return Err(PlanError::TooManyTargets {
            count: targets.len(),
        });
    }
    let mut runs: Vec<TargetRun> = Vec::new();
    let mut flows = 0u64;
    for (i, t) in targets.iter().enumerate() {
        if t.clicks > t.flows {
            return Err(PlanError::ClicksOverFlows {
                target: i as u32,
                clicks: t.clicks,
                flows: t.flows,
            });
        }
        flows += u64::from(t.flows);
        match runs.last_mut() {
            Some(run)
                if run.domain == t.domain && run.flows == t.flows && run.clicks == t.clicks =>
            {
                run.targets += 1;
            }
            _ => runs.push(TargetRun {
                targets: 1,
                domain: t.domain.clone(),
                flows: t.flows,
                clicks: t.clicks,
            }),
        }
    }
    if flows == 0 {
        return Err(PlanError::NoFlows);
    }
    if flows > MAX_FLOWS_PER_JOB {
        return Err(PlanError::TooManyFlows { flows });
    }
    Ok(runs)
}

/// A run placed in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlacedRun {
    first_target: u32,
    first_flow: u64,
    targets: u32,
    flows: u32,
    clicks: u32,
    /// Index into [`JobPlan::domains`].
    domain: u32,
}

impl PlacedRun {
    fn end_flow(&self) -> u64 {
        self.first_flow + u64::from(self.targets) * u64::from(self.flows)
    }
}

/// Where a flow sits in its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowPlace {
    pub target: u32,
    pub ordinal: u32,
    /// Should this flow click?
    pub clicks: bool,
    /// Index into [`JobPlan::domains`].
    pub domain: u32,
}

/// Flows of one target that alike click or not: what a lease grant tells a
/// runner to do with a range, once the gateway adds the target's URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowPiece {
    pub flows: FlowRange,
    pub target: u32,
    pub clicks: bool,
    /// Index into [`JobPlan::domains`].
    pub domain: u32,
}

/// The placed runs, and the distinct domains they name. Fixed once the job
/// is created, so it is shared, not copied, when a state is cloned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredPlan", into = "StoredPlan")]
pub struct JobPlan(Arc<Placed>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Placed {
    domains: Vec<DomainName>,
    runs: Vec<PlacedRun>,
}

/// A plan in a snapshot: each run as `[targets, flows, clicks, domain]`;
/// where each starts is summed up again on load.
#[derive(Serialize, Deserialize)]
struct StoredPlan {
    domains: Vec<DomainName>,
    runs: Vec<[u32; 4]>,
}

impl From<JobPlan> for StoredPlan {
    fn from(plan: JobPlan) -> Self {
        StoredPlan {
            domains: plan.0.domains.clone(),
            runs: plan
                .0
                .runs
                .iter()
                .map(|r| [r.targets, r.flows, r.clicks, r.domain])
                .collect(),
        }
    }
}

impl From<StoredPlan> for JobPlan {
    fn from(stored: StoredPlan) -> Self {
        let mut placed = Placed {
            domains: stored.domains,
            runs: Vec::with_capacity(stored.runs.len()),
        };
        for [targets, flows, clicks, domain] in stored.runs {
            placed.push(targets, flows, clicks, domain);
        }
        JobPlan(Arc::new(placed))
    }
}

impl Placed {
    fn push(&mut self, targets: u32, flows: u32, clicks: u32, domain: u32) {
        let (first_target, first_flow) = self
            .runs
            .last()
            .map_or((0, 0), |r| (r.first_target + r.targets, r.end_flow()));
        self.runs.push(PlacedRun {
            first_target,
            first_flow,
            targets,
            flows,
            clicks,
            domain,
        });
    }
}

impl JobPlan {
    /// Places `runs` after those already placed.
    pub fn extend(&mut self, runs: &[TargetRun]) {
        let placed = Arc::make_mut(&mut self.0);
        let mut index: HashMap<DomainName, u32> = placed
            .domains
            .iter()
            .enumerate()
            .map(|(i, d)| (d.clone(), i as u32))
            .collect();
        for run in runs {
            let domain = *index.entry(run.domain.clone()).or_insert_with(|| {
                placed.domains.push(run.domain.clone());
                (placed.domains.len() - 1) as u32
            });
            placed.push(run.targets, run.flows, run.clicks, domain);
        }
    }

    /// Targets placed so far.
    pub fn targets(&self) -> u32 {
        self.0.runs.last().map_or(0, |r| r.first_target + r.targets)
    }

    /// Flows placed so far: ids `0..flows()`.
    pub fn flows(&self) -> u64 {
        self.0.runs.last().map_or(0, PlacedRun::end_flow)
    }

    /// The distinct domains, in order of first appearance.
    pub fn domains(&self) -> &[DomainName] {
        &self.0.domains
    }

    /// Where `flow` sits; `None` when the job has no such flow.
    pub fn locate(&self, flow: FlowId) -> Option<FlowPlace> {
        // Runs with no flows end where they start, so the first run that
        // ends after the flow holds it.
        let i = self.0.runs.partition_point(|r| r.end_flow() <= flow.0);
        let run = self.0.runs.get(i)?;
        let offset = flow.0 - run.first_flow;
        let per = u64::from(run.flows);
        let ordinal = (offset % per) as u32;
        Some(FlowPlace {
            target: run.first_target + (offset / per) as u32,
            ordinal,
            clicks: ordinal < run.clicks,
            domain: run.domain,
        })
    }

    /// `range` cut where the target or the click decision changes, in
    /// order; flows beyond the plan are left out.
    pub fn pieces(&self, range: FlowRange) -> Vec<FlowPiece> {
        let mut pieces = Vec::new();
        let mut next = range.start();
        while next < range.end() {
            let Some(place) = self.locate(FlowId(next)) else {
                break;
            };
            let i = self.0.runs.partition_point(|r| r.end_flow() <= next);
            let run = &self.0.runs[i];
            // The target's flows end at `per`; its clicking ones at `clicks`.
            let target_start = next - u64::from(place.ordinal);
            let boundary = if place.clicks { run.clicks } else { run.flows };
            let end = (target_start + u64::from(boundary)).min(range.end());
            pieces.push(FlowPiece {
                flows: FlowRange::new(next, end).expect("a flow's piece holds it"),
                target: place.target,
                clicks: place.clicks,
                domain: place.domain,
            });
            next = end;
        }
        pieces
    }

    /// The id of `target`'s `ordinal`-th flow, if there is one.
    pub fn flow_id(&self, target: u32, ordinal: u32) -> Option<FlowId> {
        let i = self
            .0
            .runs
            .partition_point(|r| r.first_target + r.targets <= target);
        let run = self.0.runs.get(i)?;
        (ordinal < run.flows).then(|| {
            FlowId(
                run.first_flow
                    + u64::from(target - run.first_target) * u64::from(run.flows)
                    + u64::from(ordinal),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    fn t(domain: &str, flows: u32, clicks: u32) -> TargetPlan {
        TargetPlan {
            domain: d(domain),
            flows,
            clicks,
        }
    }

    fn plan(targets: &[TargetPlan]) -> JobPlan {
        let mut plan = JobPlan::default();
        plan.extend(&runs(targets).unwrap());
        plan
    }

    #[test]
    fn alike_consecutive_targets_fold_into_one_run() {
        let mut rows = vec![t("a.example", 10, 2); 100_000];
        rows.push(t("b.example", 10, 2));
        rows.push(t("a.example", 10, 2));
        let runs = runs(&rows).unwrap();
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[0].targets, 100_000);
        let plan = plan(&rows);
        assert_eq!(plan.targets(), 100_002);
        assert_eq!(plan.flows(), 1_000_020);
        assert_eq!(plan.domains(), [d("a.example"), d("b.example")]);
    }

    #[test]
    fn flows_are_numbered_target_by_target_and_located_back() {
        let plan = plan(&[
            t("a.example", 3, 1),
            t("a.example", 0, 0),
            t("b.example", 2, 2),
            t("b.example", 2, 2),
        ]);
        let places: Vec<(u32, u32, bool, u32)> = (0..plan.flows())
            .map(|f| {
                let p = plan.locate(FlowId(f)).unwrap();
                (p.target, p.ordinal, p.clicks, p.domain)
            })
            .collect();
        assert_eq!(
            places,
            [
                (0, 0, true, 0),
                (0, 1, false, 0),
                (0, 2, false, 0),
                (2, 0, true, 1),
                (2, 1, true, 1),
                (3, 0, true, 1),
                (3, 1, true, 1),
            ]
        );
        assert_eq!(plan.locate(FlowId(7)), None);
        for f in 0..plan.flows() {
            let p = plan.locate(FlowId(f)).unwrap();
            assert_eq!(plan.flow_id(p.target, p.ordinal), Some(FlowId(f)));
        }
        assert_eq!(plan.flow_id(1, 0), None);
        assert_eq!(plan.flow_id(0, 3), None);
        assert_eq!(plan.flow_id(4, 0), None);
    }

    #[test]
    fn a_range_is_cut_where_its_target_or_click_decision_changes() {
        let plan = plan(&[
            t("a.example", 3, 1),
            t("a.example", 3, 1),
            t("b.example", 2, 0),
        ]);
        let piece = |s: u64, e: u64, target, clicks, domain| FlowPiece {
            flows: FlowRange::new(s, e).unwrap(),
            target,
            clicks,
            domain,
        };
        assert_eq!(
            plan.pieces(FlowRange::new(0, 8).unwrap()),
            [
                piece(0, 1, 0, true, 0),
                piece(1, 3, 0, false, 0),
                piece(3, 4, 1, true, 0),
                piece(4, 6, 1, false, 0),
                piece(6, 8, 2, false, 1),
            ]
        );
        assert_eq!(
            plan.pieces(FlowRange::new(2, 100).unwrap()),
            [
                piece(2, 3, 0, false, 0),
                piece(3, 4, 1, true, 0),
                piece(4, 6, 1, false, 0),
                piece(6, 8, 2, false, 1),
            ]
        );
        assert_eq!(plan.pieces(FlowRange::new(8, 9).unwrap()), []);
    }

    #[test]
    fn a_plan_placed_in_pieces_equals_one_placed_at_once() {
        let rows: Vec<TargetPlan> = (0..50)
            .map(|i| t(if i % 3 == 0 { "a.example" } else { "b.example" }, i % 4, 0))
            .collect();
        let all = runs(&rows).unwrap();
        let mut pieces = JobPlan::default();
        for chunk in all.chunks(7) {
            pieces.extend(chunk);
        }
        assert_eq!(pieces, plan(&rows));
    }

    #[test]
    fn a_plan_reads_back_from_its_compact_snapshot() {
        let plan = plan(&[
            t("a.example", 3, 1),
            t("a.example", 0, 0),
            t("b.example", 2, 2),
        ]);
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(
            json,
            r#"{"domains":["a.example","b.example"],"runs":[[1,3,1,0],[1,0,0,0],[1,2,2,1]]}"#
        );
        assert_eq!(serde_json::from_str::<JobPlan>(&json).unwrap(), plan);
    }

    #[test]
    fn impossible_targets_are_refused_naming_the_row() {
        assert_eq!(runs(&[]), Err(PlanError::NoTargets));
        assert_eq!(
            runs(&[t("a.example", 1, 0), t("a.example", 2, 3)]),
            Err(PlanError::ClicksOverFlows {
                target: 1,
                clicks: 3,
                flows: 2
            })
        );
        assert_eq!(runs(&[t("a.example", 0, 0)]), Err(PlanError::NoFlows));
        let huge = vec![t("a.example", u32::MAX, 0); 30];
        assert!(matches!(runs(&huge), Err(PlanError::TooManyFlows { .. })));
    }
}

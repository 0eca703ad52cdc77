//! Flows, a job's units of work: their ids, compact sets of them, and what
//! runners report about them. Shared by the job decider and the runner
//! protocol, so a report means the same on the wire and in the log.
//!
//! Pure data and plain functions.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::artifact::ArtifactRef;
use crate::domain_name::DomainName;
use crate::web_vitals::PageVitals;

/// Most pages one flow may report.
pub const MAX_PAGES_PER_FLOW: usize = 50;
/// Most clicks one flow may report.
pub const MAX_CLICKS_PER_FLOW: usize = 20;
/// Longest log line kept, in characters; longer ones are cut.
pub const MAX_LOG_CHARS: usize = 500;
/// Longest error detail kept (a failure, a proxy error), in characters.
pub const MAX_DETAIL_CHARS: usize = 300;

/// A flow's id within its job. Flows are numbered target by target in the
/// targets version's row order, and by ordinal within a target, so the id
/// is a pure function of (target index, ordinal) and the job's plan (see
/// [`crate::job_plan::JobPlan`]), and a flow is the same flow however often
/// it is leased.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct FlowId(pub u64);

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flow {}", self.0)
    }
}

/// The flows `start..end` (half-open, never empty), written `[start, end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "[u64; 2]", into = "[u64; 2]")]
pub struct FlowRange {
    start: u64,
    end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flow range [{start}, {end}] is empty or reversed: write [first, last + 1]")]
pub struct FlowRangeError {
    pub start: u64,
    pub end: u64,
}

impl FlowRange {
    pub fn new(start: u64, end: u64) -> Result<Self, FlowRangeError> {
        if start < end {
            Ok(Self { start, end })
        } else {
            Err(FlowRangeError { start, end })
        }
    }

    /// The one flow `flow`.
    pub fn one(flow: FlowId) -> Self {
        Self {
            start: flow.0,
            end: flow.0 + 1,
        }
    }

    pub fn start(self) -> u64 {
        self.start
    }

    pub fn end(self) -> u64 {
        self.end
    }

    pub fn len(self) -> u64 {
        self.end - self.start
    }

    /// Never true; here for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    pub fn flows(self) -> impl Iterator<Item = FlowId> {
        (self.start..self.end).map(FlowId)
    }
}

impl TryFrom<[u64; 2]> for FlowRange {
    type Error = FlowRangeError;
    fn try_from([start, end]: [u64; 2]) -> Result<Self, Self::Error> {
        Self::new(start, end)
    }
}

impl From<FlowRange> for [u64; 2] {
    fn from(r: FlowRange) -> Self {
        [r.start, r.end]
    }
}

impl fmt::Display for FlowRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len() == 1 {
            write!(f, "flow {}", self.start)
        } else {
            write!(f, "flows {}..{}", self.start, self.end)
        }
    }
}

/// A set of flows as sorted, disjoint, non-adjacent ranges: a job's 100,000
/// flows done in lease order are a handful of ranges, not 100,000 entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FlowSet(Vec<FlowRange>);

impl FlowSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ranges(&self) -> &[FlowRange] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many flows the set holds.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|r| r.len()).sum()
    }

    pub fn contains(&self, flow: FlowId) -> bool {
        let i = self.0.partition_point(|r| r.end <= flow.0);
        self.0.get(i).is_some_and(|r| r.start <= flow.0)
    }

    /// Adds `range`, merging with the ranges it overlaps or touches.
    pub fn insert(&mut self, range: FlowRange) {
        let from = self.0.partition_point(|r| r.end < range.start);
        let to = self.0.partition_point(|r| r.start <= range.end);
        let merged = match (self.0.get(from), to.checked_sub(1).map(|i| self.0[i])) {
            (Some(first), Some(last)) if from < to => FlowRange {
                start: first.start.min(range.start),
                end: last.end.max(range.end),
            },
            _ => range,
        };
        self.0.splice(from..to, [merged]);
    }

    /// Takes `range` out, splitting the ranges it cuts.
    pub fn remove(&mut self, range: FlowRange) {
        let from = self.0.partition_point(|r| r.end <= range.start);
        let to = self.0.partition_point(|r| r.start < range.end);
        if from >= to {
            return;
        }
        let (first, last) = (self.0[from], self.0[to - 1]);
        let left = (first.start < range.start).then_some(FlowRange {
            start: first.start,
            end: range.start,
        });
        let right = (last.end > range.end).then_some(FlowRange {
            start: range.end,
            end: last.end,
        });
        self.0.splice(from..to, left.into_iter().chain(right));
    }

    /// The parts of `range` in the set, in order.
    pub fn overlap(&self, range: FlowRange) -> impl Iterator<Item = FlowRange> + '_ {
        let from = self.0.partition_point(|r| r.end <= range.start);
        self.0[from..]
            .iter()
            .take_while(move |r| r.start < range.end)
            .map(move |r| FlowRange {
                start: r.start.max(range.start),
                end: r.end.min(range.end),
            })
    }

    /// The parts of `range` not in the set, in order.
    pub fn gaps(&self, range: FlowRange) -> Vec<FlowRange> {
        let mut gaps = Vec::new();
        let mut next = range.start;
        for inside in self.overlap(range) {
            if next < inside.start {
                gaps.push(FlowRange {
                    start: next,
                    end: inside.start,
                });
            }
            next = inside.end;
        }
        if next < range.end {
            gaps.push(FlowRange {
                start: next,
                end: range.end,
            });
        }
        gaps
    }

    /// The set's first `n` flows (fewer if it holds fewer), as ranges.
    pub fn first(&self, n: u64) -> Vec<FlowRange> {
        let mut left = n;
        let mut taken = Vec::new();
        for r in &self.0 {
            if left == 0 {
                break;
            }
            let len = r.len().min(left);
            taken.push(FlowRange {
                start: r.start,
                end: r.start + len,
            });
            left -= len;
        }
        taken
    }
}

impl Extend<FlowRange> for FlowSet {
    fn extend<I: IntoIterator<Item = FlowRange>>(&mut self, ranges: I) {
        for r in ranges {
            self.insert(r);
        }
    }
}

impl FromIterator<FlowRange> for FlowSet {
    fn from_iter<I: IntoIterator<Item = FlowRange>>(ranges: I) -> Self {
        let mut set = FlowSet::new();
        set.extend(ranges);
        set
    }
}

/// A proxy by its row in the job's proxies version: a report names which
/// proxy it used without ever carrying an address or a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProxyIndex(pub u32);

impl fmt::Display for ProxyIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proxy #{}", self.0)
    }
}

/// One thing a runner says about the flows it holds. A batch of these is
/// one report and, once validated, one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FlowReport {
    /// A browser began the flow.
    Started {
        flow: FlowId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proxy: Option<ProxyIndex>,
    },
    /// The flow ended; it counts once, whoever reports it again.
    Finished(FlowFinished),
    /// The flow's proxy failed and it moved to another (or to none left).
    ProxyFailedOver {
        flow: FlowId,
        from: ProxyIndex,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<ProxyIndex>,
        error: String,
    },
    /// A line for the job's log.
    Log {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow: Option<FlowId>,
        level: LogLevel,
        message: String,
    },
}

impl FlowReport {
    /// The flow the report is about, if any.
    pub fn flow(&self) -> Option<FlowId> {
        match self {
            FlowReport::Started { flow, .. } | FlowReport::ProxyFailedOver { flow, .. } => {
                Some(*flow)
            }
            FlowReport::Finished(f) => Some(f.flow),
            FlowReport::Log { flow, .. } => *flow,
        }
    }
}

/// How a flow ended and what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowFinished {
    pub flow: FlowId,
    pub outcome: FlowOutcome,
    pub duration_ms: u64,
    /// The proxy the flow ended on; `None` without proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyIndex>,
    /// Each page visited, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<PageLoad>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clicks: Vec<Click>,
    /// A failed flow's debugging artifacts, uploaded before the report,
    /// at most one of each kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRef>,
}

impl FlowFinished {
    /// Did the flow click a link (internal or external)? A skipped click
    /// is not a click done.
    pub fn clicked(&self) -> bool {
        self.clicks
            .iter()
            .any(|c| !matches!(c, Click::Skipped { .. }))
    }

    /// Pages that answered with a server error or not at all.
    pub fn page_errors(&self) -> u64 {
        self.pages.iter().filter(|p| p.is_error()).count() as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FlowOutcome {
    Succeeded,
    Failed { reason: FlowFailure },
}

/// Why a flow failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FlowFailure {
    /// The flow ran out of time.
    Timeout,
    /// The target answered with an error status.
    HttpStatus {
        status: u16,
    },
    /// The target could not be reached (DNS, TCP, TLS).
    Network {
        detail: String,
    },
    /// Every proxy failed.
    Proxy {
        detail: String,
    },
    /// The browser crashed or hung.
    Browser {
        detail: String,
    },
    Other {
        detail: String,
    },
}

impl fmt::Display for FlowFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowFailure::Timeout => f.write_str("timed out"),
            FlowFailure::HttpStatus { status } => write!(f, "HTTP {status}"),
            FlowFailure::Network { detail } => write!(f, "network error: {detail}"),
            FlowFailure::Proxy { detail } => write!(f, "proxy failed: {detail}"),
            FlowFailure::Browser { detail } => write!(f, "browser failed: {detail}"),
            FlowFailure::Other { detail } => f.write_str(detail),
        }
    }
}

/// One page visit: how long it took to load, what the target answered,
/// and its Web Vitals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageLoad {
    pub ms: u32,
    /// The HTTP status; `None` when nothing came back (a timeout, a reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Added later: pages reported before have none.
    #[serde(default, skip_serializing_if = "PageVitals::is_empty")]
    pub vitals: PageVitals,
}

impl PageLoad {
    /// Does this visit count against the target's error rate (5xx, or no
    /// answer at all)?
    pub fn is_error(self) -> bool {
        self.status.is_none_or(|s| s >= 500)
    }
}

/// A click a flow made, or skipped and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Click {
    /// A link within the target's site.
    Internal,
    /// A link to another site, which the owner consented to.
    External { domain: DomainName },
    /// A click the flow did not make.
    Skipped {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<DomainName>,
        reason: SkipReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The link leads to a domain without the owner's external-click consent.
    NotConsented,
    /// The job's settings do not follow external links.
    ExternalClicksOff,
    /// The page had no link to click.
    NoLink,
    /// The click did not go through.
    Failed,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NotConsented => "the domain has no external-click consent",
            SkipReason::ExternalClicksOff => "external clicks are off for this job",
            SkipReason::NoLink => "no link to click",
            SkipReason::Failed => "the click failed",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> FlowRange {
        FlowRange::new(start, end).unwrap()
    }

    fn set(ranges: &[(u64, u64)]) -> FlowSet {
        ranges.iter().map(|&(s, e)| r(s, e)).collect()
    }

    fn pairs(s: &FlowSet) -> Vec<(u64, u64)> {
        s.ranges().iter().map(|r| (r.start(), r.end())).collect()
    }

    #[test]
    fn ranges_are_never_empty_and_read_as_pairs() {
        assert!(FlowRange::new(3, 3).is_err());
        assert!(FlowRange::new(4, 3).is_err());
        assert_eq!(serde_json::to_string(&r(2, 5)).unwrap(), "[2,5]");
        assert_eq!(serde_json::from_str::<FlowRange>("[2,5]").unwrap(), r(2, 5));
        let err = serde_json::from_str::<FlowRange>("[5,5]").unwrap_err();
        assert!(err.to_string().contains("empty or reversed"), "{err}");
    }

    #[test]
    fn inserting_merges_overlapping_and_touching_ranges() {
        let mut s = set(&[(0, 2), (5, 7), (10, 12)]);
        s.insert(r(2, 5));
        assert_eq!(pairs(&s), [(0, 7), (10, 12)]);
        s.insert(r(8, 9));
        assert_eq!(pairs(&s), [(0, 7), (8, 9), (10, 12)]);
        s.insert(r(1, 20));
        assert_eq!(pairs(&s), [(0, 20)]);
        s.insert(r(25, 26));
        s.insert(r(22, 23));
        assert_eq!(pairs(&s), [(0, 20), (22, 23), (25, 26)]);
        assert_eq!(s.len(), 22);
    }

    #[test]
    fn removing_splits_the_ranges_it_cuts() {
        let mut s = set(&[(0, 10), (20, 30)]);
        s.remove(r(5, 25));
        assert_eq!(pairs(&s), [(0, 5), (25, 30)]);
        s.remove(r(0, 1));
        s.remove(r(29, 30));
        s.remove(r(40, 50));
        assert_eq!(pairs(&s), [(1, 5), (25, 29)]);
        s.remove(r(2, 3));
        assert_eq!(pairs(&s), [(1, 2), (3, 5), (25, 29)]);
        s.remove(r(0, 100));
        assert!(s.is_empty());
    }

    #[test]
    fn membership_overlap_gaps_and_first_flows() {
        let s = set(&[(2, 4), (6, 9)]);
        let members: Vec<u64> = (0..10).filter(|&f| s.contains(FlowId(f))).collect();
        assert_eq!(members, [2, 3, 6, 7, 8]);
        let overlap: Vec<FlowRange> = s.overlap(r(3, 7)).collect();
        assert_eq!(overlap, [r(3, 4), r(6, 7)]);
        assert_eq!(s.gaps(r(0, 10)), [r(0, 2), r(4, 6), r(9, 10)]);
        assert_eq!(s.gaps(r(6, 9)), []);
        assert_eq!(s.first(3), [r(2, 4), r(6, 7)]);
        assert_eq!(s.first(100), s.ranges());
        assert_eq!(s.first(0), []);
    }

    #[test]
    fn a_set_agrees_with_a_plain_set_under_random_edits() {
        // A small deterministic generator: no dependency for one test.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut s = FlowSet::new();
        let mut plain = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let start = next(200);
            let range = r(start, start + 1 + next(8));
            if next(2) == 0 {
                s.insert(range);
                plain.extend(range.flows());
            } else {
                s.remove(range);
                range.flows().for_each(|f| {
                    plain.remove(&f);
                });
            }
            let flows: Vec<FlowId> = s.ranges().iter().flat_map(|r| r.flows()).collect();
            assert_eq!(flows, plain.iter().copied().collect::<Vec<_>>());
            assert!(
                s.ranges().windows(2).all(|w| w[0].end() < w[1].start()),
                "ranges must stay sorted, disjoint and apart: {s:?}"
            );
        }
    }

    #[test]
    fn reports_read_as_tagged_json() {
        let finished = FlowReport::Finished(FlowFinished {
            flow: FlowId(7),
            outcome: FlowOutcome::Failed {
                reason: FlowFailure::HttpStatus { status: 503 },
            },
            duration_ms: 1200,
            proxy: Some(ProxyIndex(2)),
            pages: vec![PageLoad {
                ms: 800,
                status: Some(503),
                vitals: PageVitals::default(),
            }],
            clicks: vec![Click::Skipped {
                domain: Some(DomainName::parse("other.example").unwrap()),
                reason: SkipReason::NotConsented,
            }],
            artifacts: vec![],
        });
        let json = serde_json::to_string(&finished).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"finished","flow":7,"outcome":{"status":"failed","reason":{"kind":"http_status","status":503}},"duration_ms":1200,"proxy":2,"pages":[{"ms":800,"status":503}],"clicks":[{"kind":"skipped","domain":"other.example","reason":"not_consented"}]}"#
        );
        assert_eq!(serde_json::from_str::<FlowReport>(&json).unwrap(), finished);
        let FlowReport::Finished(f) = finished else {
            unreachable!()
        };
        assert!(!f.clicked());
        assert_eq!(f.page_errors(), 1);
    }

    #[test]
    fn a_page_without_an_answer_or_with_a_5xx_is_an_error() {
        let page = |status| PageLoad {
            ms: 10,
            status,
            vitals: PageVitals::default(),
        };
        assert!(page(None).is_error());
        assert!(page(Some(502)).is_error());
        assert!(!page(Some(404)).is_error());
        assert!(!page(Some(200)).is_error());
    }
}

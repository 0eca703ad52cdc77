//! What the engine reports about each view: its phase, checkpoint and
//! progress, and the failure that stopped it, for readiness and metrics.

use std::fmt;

use domain::{EventId, Position};
use time::OffsetDateTime;

/// Where a view's projection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Reading its checkpoint, creating or rebuilding its tables.
    Starting,
    /// Applying events that were stored before it started.
    CatchingUp,
    /// Has caught up since it (re)started, and follows new events.
    Live,
    /// Stopped on an error it will not get past by itself.
    Failed(ProjectionFailure),
    /// Stopped on request (shutdown).
    Stopped,
}

/// The event a projection stopped on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEvent {
    pub id: EventId,
    pub event_type: String,
    pub position: Position,
}

/// Why a projection stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionFailure {
    /// The event it could not apply, when one is to blame.
    pub event: Option<FailedEvent>,
    pub error: String,
}

impl fmt::Display for ProjectionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.event {
            Some(e) => write!(
                f,
                "event {} ({}) at position {}: {}",
                e.id, e.event_type, e.position, self.error
            ),
            None => f.write_str(&self.error),
        }
    }
}

/// One view's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionStatus {
    pub name: &'static str,
    pub phase: Phase,
    /// Every event up to here is in the view (its committed checkpoint).
    pub checkpoint: Position,
    /// At the last look no readable event was left to apply. Flips back to
    /// false only when a look finds more; `phase` says whether it ever caught up.
    pub caught_up: bool,
    /// Events applied since the engine started it, or last rebuilt it.
    pub applied: u64,
    /// When the last applied event was recorded.
    pub last_event_at: Option<OffsetDateTime>,
    /// Trouble being retried (store or view storage unreachable), if any.
    pub retrying: Option<String>,
    /// This engine projects the view; false while another gateway on the
    /// store does and this one follows its checkpoint.
    pub projecting: bool,
}

impl ProjectionStatus {
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            phase: Phase::Starting,
            checkpoint: Position::START,
            caught_up: false,
            applied: 0,
            last_event_at: None,
            retrying: None,
            projecting: false,
        }
    }

    /// The failure that stopped it, if it failed.
    pub fn failure(&self) -> Option<&ProjectionFailure> {
        match &self.phase {
            Phase::Failed(f) => Some(f),
            _ => None,
        }
    }
}

/// Every view the engine runs, in the order they were given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStatus {
    pub projections: Vec<ProjectionStatus>,
}

impl EngineStatus {
    /// The view called `name`.
    pub fn get(&self, name: &str) -> Option<&ProjectionStatus> {
        self.projections.iter().find(|p| p.name == name)
    }

    /// Every view has caught up since it started: ready to serve reads.
    pub fn all_live(&self) -> bool {
        self.projections.iter().all(|p| p.phase == Phase::Live)
    }

    /// The first view that failed.
    pub fn first_failure(&self) -> Option<(&'static str, &ProjectionFailure)> {
        self.projections
            .iter()
            .find_map(|p| p.failure().map(|f| (p.name, f)))
    }
}

//! The `EventStore` trait and the values it speaks in.

use std::fmt;

use async_trait::async_trait;
use domain::{BlobHash, EventId, NewEvent, Position, RecordedEvent, StreamId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::StoreError;
use crate::subscription::Subscription;

/// What the writer believes about a stream before appending to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have this version (its first is 0).
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

impl ExpectedVersion {
    /// Does a stream whose last version is `actual` (None: no stream) meet it?
    pub fn admits(self, actual: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual.is_none(),
            Self::StreamExists => actual.is_some(),
            Self::Exact(v) => actual == Some(v),
        }
    }
}

/// The outcome of an append (the same when an append is repeated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The version of the last event appended: what to expect next time.
    pub version: u64,
    /// The global position of the last event appended.
    pub position: Position,
}

/// A decider's state saved at a stream version, so that loading a long
/// stream reads only the events after it. A cache, not a record: a store may
/// lose snapshots (PostgreSQL's table is unlogged), never events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// What `data` holds: the decider and its state version (`licence/1`).
    /// A reader ignores a snapshot of another kind.
    pub kind: String,
    /// The last stream version folded into `data`.
    pub version: u64,
    /// The state, as JSON.
    pub data: String,
}

/// Where a stream read begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrom {
    Start,
    End,
    /// Includes this version.
    Version(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// A stream read as SQL sees it: `version <cmp> from ORDER BY version <order>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamRange {
    pub cmp: &'static str,
    pub order: &'static str,
    pub from: i64,
}

impl StreamRange {
    /// `None` when the read is empty by definition (forward from the end).
    pub(crate) fn of(from: StreamFrom, direction: Direction) -> Option<Self> {
        // Stored versions fit in i64; clamping keeps huge requests in range.
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        let (cmp, order, from) = match (direction, from) {
            (Direction::Forward, StreamFrom::End) => return None,
            (Direction::Forward, StreamFrom::Start) => (">=", "ASC", 0),
            (Direction::Forward, StreamFrom::Version(v)) => (">=", "ASC", clamp(v)),
            (Direction::Backward, StreamFrom::Start) => ("<=", "DESC", 0),
            (Direction::Backward, StreamFrom::Version(v)) => ("<=", "DESC", clamp(v)),
            (Direction::Backward, StreamFrom::End) => ("<=", "DESC", i64::MAX),
        };
        Some(Self { cmp, order, from })
    }
}

/// Where a subscription begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeFrom {
    /// Every event, from the first.
    Start,
    /// Only events that were not yet visible when the subscription started
    /// (the store's [`Head`] then).
    End,
    /// Only events that were not yet visible at this head, taken earlier.
    Head(Head),
    /// Events strictly after this position (a checkpoint).
    After(Position),
}

/// The log's "now": which events were already visible, and where to read
/// on for the rest.
///
/// On PostgreSQL, transactions commit out of id order, so "now" is not one
/// position: below the read horizon everything is final, but above it some
/// commits are visible and some (older transactions still open) will land
/// later, *below* positions already visible. A head keeps the horizon and
/// the open transactions, so a subscription started from it reads on from
/// the horizon and passes over what was already visible, losing nothing.
/// On SQLite (one writer at a time) it is just the last event's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Every event at or before this position is in the past.
    pub after: Position,
    /// Commits from `after.commit` up to (excluding) this one were visible,
    /// except those in `open`.
    visible_below: u64,
    /// Commits that were still open: their events are yet to come.
    open: Vec<u64>,
}

impl Head {
    /// A head with nothing in flight: every event after `position` is new.
    pub fn at(position: Position) -> Self {
        Self {
            after: position,
            visible_below: 0,
            open: Vec::new(),
        }
    }

    /// From a PostgreSQL snapshot: its xmin (the horizon), xmax (the first
    /// transaction id not yet assigned) and the transactions open between.
    pub(crate) fn snapshot(xmin: u64, xmax: u64, open: Vec<u64>) -> Self {
        Self {
            after: Position::new(xmin, 0),
            visible_below: xmax,
            open,
        }
    }

    /// Was the event at `position` already visible at this head?
    pub fn saw(&self, position: Position) -> bool {
        position <= self.after
            || (position.commit < self.visible_below && !self.open.contains(&position.commit))
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.open.len() {
            0 => self.after.fmt(f),
            n => write!(f, "{} ({n} transactions in flight)", self.after),
        }
    }
}

/// Which events a global read or subscription delivers. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Keep events whose stream id starts with one of these.
    pub stream_prefixes: Vec<String>,
    /// Keep events of one of these types.
    pub event_types: Vec<String>,
}

impl Filter {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn stream_prefix(prefix: impl Into<String>) -> Self {
        Self {
            stream_prefixes: vec![prefix.into()],
            event_types: vec![],
        }
    }

    pub fn event_type(event_type: impl Into<String>) -> Self {
        Self {
            stream_prefixes: vec![],
            event_types: vec![event_type.into()],
        }
    }

    pub fn is_all(&self) -> bool {
        self.stream_prefixes.is_empty() && self.event_types.is_empty()
    }

    /// Does `stream_id` / `event_type` pass?
    pub fn admits(&self, stream_id: &str, event_type: &str) -> bool {
        (self.stream_prefixes.is_empty()
            || self
                .stream_prefixes
                .iter()
                .any(|p| stream_id.starts_with(p.as_str())))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// One page of a global read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Matching events in global order.
    pub events: Vec<RecordedEvent>,
    /// Read on after this position: every event up to it, matching or not,
    /// has been considered. At least the last event's position.
    pub next: Position,
    /// True when the page ended early (fewer events than asked for) although
    /// committed events exist beyond `next` that are not yet safe to read, because
    /// an older transaction is still open. A reader should look again soon.
    pub pending: bool,
}

/// Largest event payload accepted. Bigger contents belong in the blob store.
pub const MAX_EVENT_DATA_BYTES: usize = 1024 * 1024;

/// When a runner was last heard from, and by which connection: liveness
/// kept beside the log, never in it (see [`EventStore::touch_presence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub runner: Uuid,
    /// The connection that heard it; unique across gateways and restarts.
    pub holder: Uuid,
    /// Kept to the microsecond.
    pub seen_at: OffsetDateTime,
    /// Browsers busy, as it last said.
    pub busy: u32,
}

/// A time as presence rows keep it: microseconds since the epoch.
pub(crate) fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// A time kept as [`micros`].
pub(crate) fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// An append-only, totally ordered log of streams of events.
///
/// Guarantees every backend keeps (the conformance suite checks them):
/// - an append lands whole or not at all, and only if the expected version holds;
/// - appending event ids that are already stored (the same batch again) is a
///   no-op that returns the first append's result;
/// - a global read or subscription sees every committed event exactly once,
///   in one global order that never changes, with no gap, whatever the
///   concurrency of writers.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if `expected` holds.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Reads up to `limit` events of one stream.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamFrom,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The event with this id, wherever it is.
    async fn read_event(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError>;

    /// Reads up to `limit` matching events strictly after `after`, in global order.
    async fn read_all(
        &self,
        after: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<Page, StoreError>;

    /// The log's "now": what is visible, and where the rest will appear.
    async fn head(&self) -> Result<Head, StoreError>;

    /// Catch-up then live delivery of matching events, in global order.
    fn subscribe_all(&self, from: SubscribeFrom, filter: Filter) -> Subscription;

    /// Stores `bytes` under their SHA-256 (once, however often it is put).
    async fn put_blob(&self, bytes: &[u8]) -> Result<BlobHash, StoreError>;

    /// The bytes stored under `hash`, if any.
    async fn get_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stages chunk `index` of upload `upload`, replacing one staged
    /// before under that index (a client's retry). Chunks are staging, not
    /// a record: see [`EventStore::delete_chunks`].
    async fn put_chunk(&self, upload: Uuid, index: u32, bytes: Vec<u8>) -> Result<(), StoreError>;

    /// The indexes of `upload`'s staged chunks, ascending.
    async fn chunk_indexes(&self, upload: Uuid) -> Result<Vec<u32>, StoreError>;

    /// `upload`'s staged chunks, as (index, bytes) in index order.
    async fn read_chunks(&self, upload: Uuid) -> Result<Vec<(u32, Vec<u8>)>, StoreError>;

    /// Deletes `upload`'s staged chunks (once it finished or expired);
    /// returns how many there were.
    async fn delete_chunks(&self, upload: Uuid) -> Result<u64, StoreError>;

    /// The uploads that have chunks staged, so a sweep can reclaim those of
    /// uploads that ended (a chunk may land just after its upload ended).
    async fn staged_uploads(&self) -> Result<Vec<Uuid>, StoreError>;

    /// Records `presence` as its runner's, replacing the row of whichever
    /// connection held it before: the connection that last heard from a
    /// runner holds it. Presence is liveness, not a record.
    async fn touch_presence(&self, presence: Presence) -> Result<(), StoreError>;

    /// Forgets `runner`'s presence if `holder` still holds it; true if it
    /// did, false if a newer connection took the runner over meanwhile (or
    /// there was nothing to forget).
    async fn release_presence(&self, runner: Uuid, holder: Uuid) -> Result<bool, StoreError>;

    /// Every runner's presence.
    async fn presences(&self) -> Result<Vec<Presence>, StoreError>;

    /// Saves `snapshot` as `stream`'s, replacing any earlier one.
    async fn put_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError>;

    /// `stream`'s snapshot, if any.
    async fn get_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError>;

    /// A short name for logs and benchmarks: `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
}

/// Checks what every backend refuses before touching the database.
pub(crate) fn validate_append(events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::InvalidAppend(
            "an append needs at least one event".into(),
        ));
    }
    let mut ids = std::collections::HashSet::with_capacity(events.len());
    for e in events {
        if e.event_type.is_empty() {
            return Err(StoreError::InvalidAppend(format!(
                "event {} has an empty event type",
                e.id
            )));
        }
        if e.data.len() > MAX_EVENT_DATA_BYTES {
            return Err(StoreError::InvalidAppend(format!(
                "event {} ({}) has a {}-byte payload; the limit is {MAX_EVENT_DATA_BYTES} bytes (store large contents as blobs)",
                e.id,
                e.event_type,
                e.data.len()
            )));
        }
        if !ids.insert(e.id) {
            return Err(StoreError::InvalidAppend(format!(
                "event id {} appears twice in one append",
                e.id
            )));
        }
    }
    Ok(())
}

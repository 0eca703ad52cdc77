//! The one command handler every aggregate goes through: load state, decide,
//! append with the expected version; on a version conflict, catch up and
//! decide again (bounded, then CONFLICT).
//!
//! Recently used states stay in memory with their version, so a command on
//! a long stream costs what it costs on a new one. A cached state is never
//! trusted blindly: the append expects its exact version, and a conflict
//! reads only the events after it. A state not in memory starts from the
//! stream's snapshot, saved every [`SNAPSHOT_EVERY`] events, so a restarted
//! gateway does not fold a long stream from its start either. This is the
//! only place where deciders meet I/O.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use domain::{
    Context, Decider, DecodeError, EventId, EventRegistry, EventSet, Metadata, PayloadError,
    Position, StreamId,
};
use store::{Direction, EventStore, ExpectedVersion, Snapshot, StoreError, StreamFrom};
use uuid::Uuid;

/// Decisions re-made after version conflicts before giving up.
const MAX_ATTEMPTS: usize = 8;
/// Aggregate states kept in memory.
const CACHE_CAPACITY: usize = 10_000;
/// Events read per page when loading or catching up.
const PAGE: usize = 1000;
/// Events folded past a stream's last snapshot before the next one is
/// saved: a state loaded afresh reads at most about this many events.
pub const SNAPSHOT_EVERY: u64 = 1000;

/// Where a command comes from, for the events' metadata.
#[derive(Debug, Clone, Default)]
pub struct CommandMeta {
    /// The client's idempotency key: the same key on the same stream returns
    /// the first result instead of deciding again.
    pub idempotency_key: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// `gateway`, `cli`, `runner:<id>`.
    pub source: Option<String>,
}

/// A random pause of up to 2^attempt milliseconds (at most 64).
fn jitter(attempt: usize) -> std::time::Duration {
    let ceiling_us = 1000u64 << attempt.min(6);
    // A UUIDv7's low bits are random: no extra dependency for a coin toss.
    let random = Uuid::now_v7().as_u128() as u64;
    std::time::Duration::from_micros(random % (ceiling_us + 1))
}

/// What a handled command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled<E> {
    /// The events appended (or, for a repeated idempotency key, appended the first time).
    pub events: Vec<E>,
    /// The stream's version after them; `None` if the stream still does not exist.
    pub version: Option<u64>,
    /// The last event's global position, when events were appended.
    pub position: Option<Position>,
    /// True when an earlier command with the same idempotency key produced this result.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The decider refused the command.
    #[error(transparent)]
    Rejected(E),
    #[error("stream {stream} kept changing: gave up after {attempts} attempts")]
    Conflict { stream: StreamId, attempts: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stream {stream} holds an event this build cannot read: {source}")]
    Decode {
        stream: StreamId,
        source: DecodeError,
    },
    #[error("an event does not serialize: {0}")]
    Encode(#[from] PayloadError),
}

struct Cached {
    version: Option<u64>,
    /// The version of the stream's last snapshot saved or loaded.
    snapshot: Option<u64>,
    state: Box<dyn Any + Send + Sync>,
    last_used: u64,
}

/// A state and where it stands in its stream.
#[derive(Default)]
struct Loaded<S> {
    version: Option<u64>,
    snapshot: Option<u64>,
    state: S,
}

/// Handles commands for every decider, over one event store.
pub struct CommandHandler {
    store: Arc<dyn EventStore>,
    registry: Arc<EventRegistry>,
    cache: Mutex<Cache>,
    snapshot_every: u64,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<StreamId, Cached>,
    clock: u64,
}

impl CommandHandler {
    pub fn new(store: Arc<dyn EventStore>, registry: Arc<EventRegistry>) -> Self {
        Self {
            store,
            registry,
            cache: Mutex::new(Cache::default()),
            snapshot_every: SNAPSHOT_EVERY,
        }
    }

    /// Saves a stream's snapshot every `events` events (at least 1) instead
    /// of every [`SNAPSHOT_EVERY`].
    pub fn with_snapshot_every(mut self, events: u64) -> Self {
        self.snapshot_every = events.max(1);
        self
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The event types this handler decodes.
    pub fn registry(&self) -> &EventRegistry {
        &self.registry
    }

    /// The current state of a stream, from the cache when possible.
    pub async fn load<D: Decider>(
        &self,
        stream: &StreamId,
    ) -> Result<(Option<u64>, D::State), CommandError<D::Error>> {
        let loaded = match self.cached::<D>(stream) {
            Some(cached) => cached,
            None => self.restore::<D>(stream).await,
        };
        let loaded = self.catch_up::<D>(stream, loaded).await?;
        Ok((loaded.version, loaded.state))
    }

    /// Decides `command` against `stream` and appends the outcome.
    pub async fn handle<D: Decider>(
        &self,
        stream: &StreamId,
        command: D::Command,
        ctx: &Context,
        meta: &CommandMeta,
    ) -> Result<Handled<D::Event>, CommandError<D::Error>>
    where
        D::Command: Clone,
    {
        if let Some(key) = &meta.idempotency_key
            && let Some(first) = self.earlier_result::<D>(stream, key).await?
        {
            return Ok(first);
        }
        // `fresh`: the state was read from the store during this call. A
        // refusal or no-op decided on a cached state is checked once more
        // against the store, since only an append would reveal staleness.
        let (mut loaded, mut fresh) = match self.cached::<D>(stream) {
            Some(cached) => (cached, false),
            None => {
                let restored = self.restore::<D>(stream).await;
                (self.catch_up::<D>(stream, restored).await?, true)
            }
        };
        for attempt in 0..MAX_ATTEMPTS {
            let decided = D::decide(&loaded.state, command.clone(), ctx);
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                _ if !fresh => {
                    loaded = self.catch_up::<D>(stream, loaded).await?;
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(CommandError::Rejected(e)),
                Ok(events) => {
                    return Ok(Handled {
                        events,
                        version: loaded.version,
                        position: None,
                        replayed: false,
                    });
                }
            };
            let metadata = Metadata {
                actor: Some(ctx.actor.name()),
                correlation_id: meta.correlation_id,
                causation_id: meta.causation_id,
                source: meta.source.clone(),
            };
            let mut new_events = Vec::with_capacity(events.len());
            for (i, e) in events.iter().enumerate() {
                let mut new = e.to_new_event(metadata.clone())?;
                if let Some(key) = &meta.idempotency_key {
                    new = new.with_id(EventId::derived(stream.as_str(), key, i as u32));
                }
                new_events.push(new);
            }
            let expected = loaded
                .version
                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            match self.store.append(stream, expected, new_events).await {
                Ok(result) => {
                    let state = events.iter().fold(loaded.state, |s, e| D::evolve(s, e));
                    self.remember::<D>(
                        stream,
                        Loaded {
                            version: Some(result.version),
                            snapshot: loaded.snapshot,
                            state,
                        },
                    )
                    .await;
                    return Ok(Handled {
                        events,
                        version: Some(result.version),
                        position: Some(result.position),
                        replayed: false,
                    });
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) if actual < loaded.version => {
                    // The state is ahead of the stream: only a snapshot that
                    // does not belong to it can do that. Fold from the start.
                    tracing::warn!(%stream, ?actual, state_version = ?loaded.version,
                        "a state ahead of its stream (a foreign snapshot?); folding the stream again");
                    loaded = self.catch_up::<D>(stream, Loaded::default()).await?;
                    if loaded.snapshot != loaded.version {
                        // Replace the foreign snapshot now, however short the stream.
                        self.save_snapshot::<D>(stream, &loaded).await;
                        loaded.snapshot = loaded.version;
                    }
                    fresh = true;
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    // Writers that collide once tend to collide again in
                    // lockstep; a random pause breaks the step.
                    tokio::time::sleep(jitter(attempt)).await;
                    loaded = self.catch_up::<D>(stream, loaded).await?;
                    fresh = true;
                }
                Err(StoreError::IdempotencyConflict { .. }) if meta.idempotency_key.is_some() => {
                    // The same key won a race with us: return its result.
                    let key = meta.idempotency_key.as_deref().unwrap_or_default();
                    if let Some(first) = self.earlier_result::<D>(stream, key).await? {
                        return Ok(first);
                    }
                    return Err(CommandError::Conflict {
                        stream: stream.clone(),
                        attempts: 1,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.forget(stream);
        Err(CommandError::Conflict {
            stream: stream.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The events an earlier command with this idempotency key appended.
    async fn earlier_result<D: Decider>(
        &self,
        stream: &StreamId,
        key: &str,
    ) -> Result<Option<Handled<D::Event>>, CommandError<D::Error>> {
        let mut events = Vec::new();
        let mut last = None;
        for i in 0u32.. {
            let Some(recorded) = self
                .store
                .read_event(EventId::derived(stream.as_str(), key, i))
                .await?
            else {
                break;
            };
            events.push(self.decode::<D>(stream, &recorded)?);
            last = Some((recorded.stream_version, recorded.position));
        }
        Ok(last.map(|(version, position)| Handled {
            events,
            version: Some(version),
            position: Some(position),
            replayed: true,
        }))
    }

    fn decode<D: Decider>(
        &self,
        stream: &StreamId,
        recorded: &domain::RecordedEvent,
    ) -> Result<D::Event, CommandError<D::Error>> {
        self.registry
            .decode::<D::Event>(recorded)
            .map_err(|source| CommandError::Decode {
                stream: stream.clone(),
                source,
            })
    }

    /// The stream's snapshot, or the initial state. A snapshot is a cache:
    /// one that cannot be read is passed over, never an error.
    async fn restore<D: Decider>(&self, stream: &StreamId) -> Loaded<D::State> {
        let snapshot = match self.store.get_snapshot(stream).await {
            Ok(Some(snapshot)) if snapshot.kind == D::SNAPSHOT_KIND => snapshot,
            Ok(_) => return Loaded::default(),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot unreadable; folding the whole stream");
                return Loaded::default();
            }
        };
        match serde_json::from_str(&snapshot.data) {
            Ok(state) => Loaded {
                version: Some(snapshot.version),
                snapshot: Some(snapshot.version),
                state,
            },
            Err(e) => {
                tracing::warn!(%stream, kind = snapshot.kind, error = %e,
                    "snapshot does not decode; folding the whole stream");
                Loaded::default()
            }
        }
    }

    /// Folds the events after `loaded.version` into its state.
    async fn catch_up<D: Decider>(
        &self,
        stream: &StreamId,
        mut loaded: Loaded<D::State>,
    ) -> Result<Loaded<D::State>, CommandError<D::Error>> {
        loop {
            let from = loaded
                .version
                .map_or(StreamFrom::Start, |v| StreamFrom::Version(v + 1));
            let page = self
                .store
                .read_stream(stream, from, Direction::Forward, PAGE)
                .await?;
            for recorded in &page {
                let event = self.decode::<D>(stream, recorded)?;
                loaded.state = D::evolve(loaded.state, &event);
                loaded.version = Some(recorded.stream_version);
            }
            if page.len() < PAGE {
                break;
            }
        }
        loaded.snapshot = self
            .remember::<D>(
                stream,
                Loaded {
                    version: loaded.version,
                    snapshot: loaded.snapshot,
                    state: loaded.state.clone(),
                },
            )
            .await;
        Ok(loaded)
    }

    fn cached<D: Decider>(&self, stream: &StreamId) -> Option<Loaded<D::State>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.clock += 1;
        let now = cache.clock;
        let entry = cache.entries.get_mut(stream)?;
        entry.last_used = now;
        let state = entry.state.downcast_ref::<D::State>()?.clone();
        Some(Loaded {
            version: entry.version,
            snapshot: entry.snapshot,
            state,
        })
    }

    /// Keeps `loaded` in memory, and saves a snapshot when one is due.
    /// Returns the version of the stream's last snapshot, as now known.
    async fn remember<D: Decider>(
        &self,
        stream: &StreamId,
        mut loaded: Loaded<D::State>,
    ) -> Option<u64> {
        let due = match (loaded.version, loaded.snapshot) {
            (Some(v), Some(s)) => v.saturating_sub(s) >= self.snapshot_every,
            (Some(v), None) => v + 1 >= self.snapshot_every,
            (None, _) => false,
        };
        if due {
            self.save_snapshot::<D>(stream, &loaded).await;
            loaded.snapshot = loaded.version;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.clock += 1;
        let last_used = cache.clock;
        if cache.entries.len() >= CACHE_CAPACITY && !cache.entries.contains_key(stream) {
            // Evict the least recently used tenth in one pass.
            let mut ages: Vec<u64> = cache.entries.values().map(|c| c.last_used).collect();
            let cut = ages.len() / 10;
            let (_, threshold, _) = ages.select_nth_unstable(cut);
            let threshold = *threshold;
            cache.entries.retain(|_, c| c.last_used > threshold);
        }
        cache.entries.insert(
            stream.clone(),
            Cached {
                version: loaded.version,
                snapshot: loaded.snapshot,
                state: Box::new(loaded.state),
                last_used,
            },
        );
        loaded.snapshot
    }

    /// Saves `loaded` as the stream's snapshot: one write per
    /// [`SNAPSHOT_EVERY`] events, on PostgreSQL to an unlogged table. A cache
    /// that cannot be written fails nothing.
    async fn save_snapshot<D: Decider>(&self, stream: &StreamId, loaded: &Loaded<D::State>) {
        let Some(version) = loaded.version else {
            return;
        };
        let data = match serde_json::to_string(&loaded.state) {
            Ok(data) => data,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "state does not serialize; no snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            kind: D::SNAPSHOT_KIND.to_owned(),
            version,
            data,
        };
        if let Err(e) = self.store.put_snapshot(stream, snapshot).await {
            tracing::warn!(%stream, error = %e, "snapshot not saved");
        }
    }

    fn forget(&self, stream: &StreamId) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.entries.remove(stream);
    }
}

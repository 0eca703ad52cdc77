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
    Context, Decider, DecodeError, EventId, EventRegistry, EventSet, Metadata, NewEvent,
    PayloadError, Position, StreamId,
};
use store::{
    AppendResult, Direction, EventStore, ExpectedVersion, Snapshot, StoreError, StreamFrom,
};
use uuid::Uuid;

/// Decisions re-made after version conflicts before giving up. A writer
/// that holds its state in memory appends back to back while a rival must
/// re-read after each loss; on a loaded 2-core machine 8 attempts (about
/// 130 ms of pauses) were seen to run out, so give the rival about a second.
const MAX_ATTEMPTS: usize = 16;
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

/// A random pause of up to 2^attempt milliseconds (at most 128).
fn jitter(attempt: usize) -> std::time::Duration {
    let ceiling_us = 1000u64 << attempt.min(7);
    std::time::Duration::from_micros(rand::random_range(0..=ceiling_us))
}

/// What a handled command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled<E> {
    /// The events appended (or, for a repeated idempotency key, appended the first time).
    pub events: Vec<E>,
    /// Their ids, in the same order: what events they cause can name them.
    pub ids: Vec<EventId>,
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

/// The state a decision is made on.
struct Current<S> {
    loaded: Loaded<S>,
    /// Taken from memory without asking the store during this command.
    cached: bool,
}

impl<S> Current<S> {
    /// What the append must find: the version this state was folded to.
    fn expected(&self) -> ExpectedVersion {
        self.loaded
            .version
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
    }
}

impl<E> Handled<E> {
    /// A command that changed nothing.
    fn nothing(events: Vec<E>, version: Option<u64>) -> Self {
        Self {
            events,
            ids: vec![],
            version,
            position: None,
            replayed: false,
        }
    }
}

/// The events to append, with the command's metadata; ids derived from the
/// idempotency key, when there is one, so a repeat appends nothing.
fn new_events<E: EventSet, X: std::error::Error>(
    stream: &StreamId,
    events: &[E],
    ctx: &Context,
    meta: &CommandMeta,
) -> Result<Vec<NewEvent>, CommandError<X>> {
    let metadata = Metadata {
        actor: Some(ctx.actor.name()),
        correlation_id: meta.correlation_id,
        causation_id: meta.causation_id,
        source: meta.source.clone(),
    };
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let new = e.to_new_event(metadata.clone())?;
            Ok(match &meta.idempotency_key {
                Some(key) => new.with_id(EventId::derived(stream.as_str(), key, i as u32)),
                None => new,
            })
        })
        .collect()
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
        let mut current = self.current::<D>(stream).await?;
        for attempt in 0..MAX_ATTEMPTS {
            let decided = D::decide(&current.loaded.state, command.clone(), ctx);
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                // Only an append reveals a stale cache: a refusal or no-op
                // decided on cached state is decided again on the store's.
                _ if current.cached => {
                    current = self.refreshed::<D>(stream, current.loaded).await?;
                    continue;
                }
                Err(e) => return Err(CommandError::Rejected(e)),
                Ok(none) => return Ok(Handled::nothing(none, current.loaded.version)),
            };
            let new_events = new_events(stream, &events, ctx, meta)?;
            let ids = new_events.iter().map(|e| e.id).collect();
            match self
                .store
                .append(stream, current.expected(), new_events)
                .await
            {
                Ok(result) => {
                    return Ok(self
                        .appended::<D>(stream, current.loaded, events, ids, result)
                        .await);
                }
                Err(StoreError::WrongExpectedVersion { actual, .. })
                    if actual < current.loaded.version =>
                {
                    current = self.refolded::<D>(stream, actual, current.loaded).await?;
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    // Writers that collide once tend to collide again in
                    // lockstep; a random pause breaks the step.
                    tokio::time::sleep(jitter(attempt)).await;
                    current = self.refreshed::<D>(stream, current.loaded).await?;
                }
                Err(StoreError::IdempotencyConflict { .. }) if meta.idempotency_key.is_some() => {
                    return self.key_winner::<D>(stream, meta).await;
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

    /// The state to decide on: the cached one, or the store's.
    async fn current<D: Decider>(
        &self,
        stream: &StreamId,
    ) -> Result<Current<D::State>, CommandError<D::Error>> {
        match self.cached::<D>(stream) {
            Some(loaded) => Ok(Current {
                loaded,
                cached: true,
            }),
            None => {
                let restored = self.restore::<D>(stream).await;
                self.refreshed::<D>(stream, restored).await
            }
        }
    }

    /// `loaded` caught up with the store.
    async fn refreshed<D: Decider>(
        &self,
        stream: &StreamId,
        loaded: Loaded<D::State>,
    ) -> Result<Current<D::State>, CommandError<D::Error>> {
        Ok(Current {
            loaded: self.catch_up::<D>(stream, loaded).await?,
            cached: false,
        })
    }

    /// The stream folded from its start, after a state turned out to be
    /// ahead of it: only a snapshot that does not belong to the stream can
    /// do that, so that snapshot is replaced now, however short the stream.
    async fn refolded<D: Decider>(
        &self,
        stream: &StreamId,
        actual: Option<u64>,
        ahead: Loaded<D::State>,
    ) -> Result<Current<D::State>, CommandError<D::Error>> {
        tracing::warn!(%stream, ?actual, state_version = ?ahead.version,
            "a state ahead of its stream (a foreign snapshot?); folding the stream again");
        let mut current = self.refreshed::<D>(stream, Loaded::default()).await?;
        let loaded = &mut current.loaded;
        if loaded.snapshot != loaded.version {
            self.save_snapshot::<D>(stream, loaded).await;
            loaded.snapshot = loaded.version;
        }
        Ok(current)
    }

    /// Remembers the state after `events` and says what was appended.
    async fn appended<D: Decider>(
        &self,
        stream: &StreamId,
        loaded: Loaded<D::State>,
        events: Vec<D::Event>,
        ids: Vec<EventId>,
        result: AppendResult,
    ) -> Handled<D::Event> {
        let state = events.iter().fold(loaded.state, |s, e| D::evolve(s, e));
        let remembered = Loaded {
            version: Some(result.version),
            snapshot: loaded.snapshot,
            state,
        };
        self.remember::<D>(stream, remembered).await;
        Handled {
            events,
            ids,
            version: Some(result.version),
            position: Some(result.position),
            replayed: false,
        }
    }

    /// The same idempotency key won a race with us: its result is ours.
    async fn key_winner<D: Decider>(
        &self,
        stream: &StreamId,
        meta: &CommandMeta,
    ) -> Result<Handled<D::Event>, CommandError<D::Error>> {
        let key = meta.idempotency_key.as_deref().unwrap_or_default();
        match self.earlier_result::<D>(stream, key).await? {
            Some(first) => Ok(first),
            None => Err(CommandError::Conflict {
                stream: stream.clone(),
                attempts: 1,
            }),
        }
    }

    /// The events an earlier command with this idempotency key appended.
    async fn earlier_result<D: Decider>(
        &self,
        stream: &StreamId,
        key: &str,
    ) -> Result<Option<Handled<D::Event>>, CommandError<D::Error>> {
        let mut events = Vec::new();
        let mut ids = Vec::new();
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
            ids.push(recorded.id);
            last = Some((recorded.stream_version, recorded.position));
        }
        Ok(last.map(|(version, position)| Handled {
            events,
            ids,
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

//! The one command handler every aggregate goes through: load state, decide,
//! append with the expected version; on a version conflict, catch up and
//! decide again (bounded, then CONFLICT).
//!
//! Recently used states stay in memory with their version, so a command on
//! a long stream costs what it costs on a new one. A cached state is never
//! trusted blindly: the append expects its exact version, and a conflict
//! reads only the events after it. This is the only place where deciders
//! meet I/O.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use domain::{
    Context, Decider, DecodeError, EventId, EventRegistry, EventSet, Metadata, PayloadError,
    Position, StreamId,
};
use store::{Direction, EventStore, ExpectedVersion, StoreError, StreamFrom};
use uuid::Uuid;

/// Decisions re-made after version conflicts before giving up.
const MAX_ATTEMPTS: usize = 8;
/// Aggregate states kept in memory.
const CACHE_CAPACITY: usize = 10_000;
/// Events read per page when loading or catching up.
const PAGE: usize = 1000;

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
    state: Box<dyn Any + Send + Sync>,
    last_used: u64,
}

/// Handles commands for every decider, over one event store.
pub struct CommandHandler {
    store: Arc<dyn EventStore>,
    registry: Arc<EventRegistry>,
    cache: Mutex<Cache>,
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
        }
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
        let (version, state) = self.cached::<D>(stream).unwrap_or_default();
        self.catch_up::<D>(stream, version, state).await
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
        let (mut version, mut state, mut fresh) = match self.cached::<D>(stream) {
            Some((version, state)) => (version, state, false),
            None => {
                let (version, state) = self
                    .catch_up::<D>(stream, None, D::State::default())
                    .await?;
                (version, state, true)
            }
        };
        for attempt in 0..MAX_ATTEMPTS {
            let decided = D::decide(&state, command.clone(), ctx);
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                _ if !fresh => {
                    (version, state) = self.catch_up::<D>(stream, version, state).await?;
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(CommandError::Rejected(e)),
                Ok(events) => {
                    return Ok(Handled {
                        events,
                        version,
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
            let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            match self.store.append(stream, expected, new_events).await {
                Ok(result) => {
                    let state = events.iter().fold(state, |s, e| D::evolve(s, e));
                    self.remember::<D>(stream, Some(result.version), state);
                    return Ok(Handled {
                        events,
                        version: Some(result.version),
                        position: Some(result.position),
                        replayed: false,
                    });
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    // Writers that collide once tend to collide again in
                    // lockstep; a random pause breaks the step.
                    tokio::time::sleep(jitter(attempt)).await;
                    (version, state) = self.catch_up::<D>(stream, version, state).await?;
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

    /// Folds the events after `version` into `state`.
    async fn catch_up<D: Decider>(
        &self,
        stream: &StreamId,
        mut version: Option<u64>,
        mut state: D::State,
    ) -> Result<(Option<u64>, D::State), CommandError<D::Error>> {
        loop {
            let from = version.map_or(StreamFrom::Start, |v| StreamFrom::Version(v + 1));
            let page = self
                .store
                .read_stream(stream, from, Direction::Forward, PAGE)
                .await?;
            for recorded in &page {
                let event = self.decode::<D>(stream, recorded)?;
                state = D::evolve(state, &event);
                version = Some(recorded.stream_version);
            }
            if page.len() < PAGE {
                break;
            }
        }
        self.remember::<D>(stream, version, state.clone());
        Ok((version, state))
    }

    fn cached<D: Decider>(&self, stream: &StreamId) -> Option<(Option<u64>, D::State)> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.clock += 1;
        let now = cache.clock;
        let entry = cache.entries.get_mut(stream)?;
        entry.last_used = now;
        let state = entry.state.downcast_ref::<D::State>()?.clone();
        Some((entry.version, state))
    }

    fn remember<D: Decider>(&self, stream: &StreamId, version: Option<u64>, state: D::State) {
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
                version,
                state: Box::new(state),
                last_used,
            },
        );
    }

    fn forget(&self, stream: &StreamId) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.entries.remove(stream);
    }
}

//! The event envelope: what every stored event carries besides its payload.
//!
//! Pure data. The store assigns stream version, global position and
//! recorded-at; everything else is chosen by the writer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// An event's identity (UUIDv7, so ids sort by creation time) and its
/// idempotency key: appending the same id twice writes it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A fresh UUIDv7.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl EventId {
    /// A deterministic id for the `index`-th event caused under a client's
    /// idempotency `key` in `scope` (a stream): the same key and index give
    /// the same id, so the store's idempotent append turns a repeated
    /// command into a no-op. UUIDv8 from SHA-256, not UUIDv7.
    pub fn derived(scope: &str, key: &str, index: u32) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            scope.as_bytes(),
            b"\0",
            key.as_bytes(),
            b"\0",
            &index.to_be_bytes(),
        ] {
            h.update(part);
        }
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Longest stream name we accept; long enough for `target-<any domain>`.
pub const MAX_STREAM_ID_LEN: usize = 300;

/// A stream's name, `<aggregate>-<id>` by convention (`job-…`, `target-example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    #[error("stream id is empty")]
    Empty,
    #[error("stream id is {len} characters long; the limit is {MAX_STREAM_ID_LEN}")]
    TooLong { len: usize },
    #[error("stream id {0:?} contains whitespace or a control character")]
    BadCharacter(String),
}

impl StreamId {
    /// Accepts any non-empty printable name without whitespace.
    pub fn parse(s: impl Into<String>) -> Result<Self, StreamIdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(StreamIdError::Empty);
        }
        let len = s.chars().count();
        if len > MAX_STREAM_ID_LEN {
            return Err(StreamIdError::TooLong { len });
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StreamIdError::BadCharacter(s));
        }
        Ok(Self(s))
    }

    /// `<aggregate>-<id>`.
    pub fn for_aggregate(aggregate: &str, id: impl fmt::Display) -> Result<Self, StreamIdError> {
        Self::parse(format!("{aggregate}-{id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = StreamIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<StreamId> for String {
    fn from(s: StreamId) -> String {
        s.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event's place in the global order (the `$all` stream).
///
/// A pair, as in EventStoreDB: `commit` orders transactions and `prepare`
/// orders events within one. On PostgreSQL `commit` is the writing
/// transaction's id, which is what makes a gap-free reader possible (see
/// DESIGN.md, "The store"); on SQLite, where commits are serial, it is the
/// row number and `prepare` is 0. Positions compare lexicographically.
/// "After position P" means strictly greater than P, so `Position::START`
/// precedes every event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Position {
    pub commit: u64,
    pub prepare: u64,
}

impl Position {
    /// Before every event.
    pub const START: Position = Position {
        commit: 0,
        prepare: 0,
    };

    pub const fn new(commit: u64, prepare: u64) -> Self {
        Self { commit, prepare }
    }
}

/// Written `COMMIT` when `prepare` is 0, else `COMMIT:PREPARE`.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prepare == 0 {
            write!(f, "{}", self.commit)
        } else {
            write!(f, "{}:{}", self.commit, self.prepare)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {0:?} is not COMMIT or COMMIT:PREPARE (two non-negative whole numbers)")]
pub struct PositionParseError(String);

impl FromStr for Position {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PositionParseError(s.to_owned());
        let (commit, prepare) = match s.split_once(':') {
            Some((c, p)) => (c, p),
            None => (s, "0"),
        };
        Ok(Self {
            commit: commit.trim().parse().map_err(|_| err())?,
            prepare: prepare.trim().parse().map_err(|_| err())?,
        })
    }
}

/// Who did it, why, and where it came from. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// The account (or system principal) on whose behalf the event was written.
    pub actor: Option<String>,
    /// Shared by every event that one request caused, across streams.
    pub correlation_id: Option<Uuid>,
    /// The event or command that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// Which process wrote it: `gateway`, `runner:<id>`, `cli`.
    pub source: Option<String>,
}

/// A JSON document, validated once when it is made; stored and read back as text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<serde_json::value::RawValue>);

/// Equal when the JSON text is equal.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Payload {}

#[derive(Debug, thiserror::Error)]
#[error("event payload is not valid JSON: {0}")]
pub struct PayloadError(#[from] serde_json::Error);

impl Payload {
    /// Serializes any value.
    pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Self, PayloadError> {
        Ok(Self(serde_json::value::to_raw_value(value)?))
    }

    /// Validates JSON text.
    pub fn from_json_text(text: impl Into<String>) -> Result<Self, PayloadError> {
        Ok(Self(serde_json::value::RawValue::from_string(text.into())?))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: String,
    pub schema_version: u32,
    pub data: Payload,
    pub metadata: Metadata,
}

impl NewEvent {
    /// A new event with a fresh id and empty metadata.
    pub fn new(event_type: impl Into<String>, schema_version: u32, data: Payload) -> Self {
        Self {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version,
            data,
            metadata: Metadata::default(),
        }
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// The event as a store would record it at `position`, as version
    /// `stream_version` of `stream_id` (for tests and tools that need a
    /// recorded event without a store).
    pub fn recorded(
        self,
        stream_id: StreamId,
        stream_version: u64,
        position: Position,
        recorded_at: OffsetDateTime,
    ) -> RecordedEvent {
        RecordedEvent {
            id: self.id,
            stream_id,
            stream_version,
            position,
            event_type: self.event_type,
            schema_version: self.schema_version,
            recorded_at,
            metadata: self.metadata,
            data: self.data.as_str().into(),
        }
    }
}

/// An event as stored: the full envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub id: EventId,
    pub stream_id: StreamId,
    /// 0 for a stream's first event.
    pub stream_version: u64,
    pub position: Position,
    pub event_type: String,
    pub schema_version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    pub metadata: Metadata,
    /// The payload as stored: JSON text. Decode it through an [`crate::EventRegistry`].
    /// Serialized as embedded JSON, not as a string.
    #[serde(with = "json_text")]
    pub data: String,
}

/// Serializes a string of JSON text as the JSON it holds.
mod json_text {
    use serde::de::Deserialize;
    use serde::ser::Error as _;
    use serde::{Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
        let raw: Box<RawValue> =
            RawValue::from_string(text.to_owned()).map_err(S::Error::custom)?;
        raw.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Box::<RawValue>::deserialize(d)?.get().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_id_refuses_empty_long_and_spaced_names() {
        assert_eq!(StreamId::parse(""), Err(StreamIdError::Empty));
        assert!(matches!(
            StreamId::parse("x".repeat(MAX_STREAM_ID_LEN + 1)),
            Err(StreamIdError::TooLong { .. })
        ));
        assert!(matches!(
            StreamId::parse("job 1"),
            Err(StreamIdError::BadCharacter(_))
        ));
        assert_eq!(
            StreamId::for_aggregate("target", "example.com")
                .unwrap()
                .as_str(),
            "target-example.com"
        );
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = EventId::derived("job-1", "key", 0);
        assert_eq!(a, EventId::derived("job-1", "key", 0));
        assert_ne!(a, EventId::derived("job-1", "key", 1));
        assert_ne!(a, EventId::derived("job-2", "key", 0));
        assert_ne!(a, EventId::derived("job-1", "other", 0));
        assert_eq!(a.0.get_version_num(), 8);
    }

    #[test]
    fn positions_print_and_parse_both_forms() {
        for (text, pos) in [("42", Position::new(42, 0)), ("7:9", Position::new(7, 9))] {
            assert_eq!(text.parse::<Position>().unwrap(), pos);
            assert_eq!(pos.to_string(), text);
        }
        assert!("x:1".parse::<Position>().is_err());
        assert!("-1".parse::<Position>().is_err());
    }

    #[test]
    fn positions_order_by_commit_then_prepare() {
        assert!(Position::new(1, 9) < Position::new(2, 0));
        assert!(Position::new(2, 0) < Position::new(2, 1));
        assert!(Position::START < Position::new(0, 1));
    }

    #[test]
    fn a_recorded_event_serializes_its_payload_as_json_and_back() {
        let event = RecordedEvent {
            id: EventId::new(),
            stream_id: StreamId::parse("job-1").unwrap(),
            stream_version: 3,
            position: Position::new(10, 2),
            event_type: "JobStarted".into(),
            schema_version: 1,
            recorded_at: OffsetDateTime::UNIX_EPOCH,
            metadata: Metadata::default(),
            data: r#"{"flows":5}"#.into(),
        };
        let line = serde_json::to_string(&event).unwrap();
        assert!(line.contains(r#""data":{"flows":5}"#), "{line}");
        assert_eq!(serde_json::from_str::<RecordedEvent>(&line).unwrap(), event);
    }

    #[test]
    fn a_payload_must_be_json() {
        assert!(Payload::from_json_text("{\"a\":1}").is_ok());
        assert!(Payload::from_json_text("{nope").is_err());
    }
}

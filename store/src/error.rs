//! What can go wrong in the store, as typed errors whose messages say what to fix.

use domain::{EventId, StreamId};

use crate::event_store::ExpectedVersion;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream}: expected {expected}, but {}", describe_actual(*actual))]
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        /// The stream's last version; None when the stream does not exist.
        actual: Option<u64>,
    },

    #[error(
        "stream {stream}: event {event_id} was already appended, but not as part of this same batch ({reason})"
    )]
    IdempotencyConflict {
        stream: StreamId,
        event_id: EventId,
        reason: String,
    },

    #[error("invalid append: {0}")]
    InvalidAppend(String),

    #[error("bad store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },

    /// Passing trouble: the connection, or a conflict the database broke.
    #[error("cannot reach the {backend} store: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },

    #[error("migration {name} failed: {message}")]
    Migration { name: String, message: String },

    #[error("stored data is corrupt: {0}")]
    Corrupt(String),

    /// A lasting database error: retrying will not help; a person must act.
    #[error("{backend} error: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
}

fn describe_actual(actual: Option<u64>) -> String {
    match actual {
        None => "the stream does not exist".into(),
        Some(v) => format!("it is at version {v}"),
    }
}

impl StoreError {
    /// Worth retrying after a pause (the database went away, a pool timed
    /// out, a serialization failure or deadlock)? Lasting errors are not:
    /// they fail loudly with what to fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

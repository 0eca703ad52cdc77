//! What can go wrong on the read side, as typed errors whose messages say
//! what went wrong and where (view, statement, event position).

use crate::sql::{OutOfRange, SqlValue};

/// A projection could not turn an event into writes: a bug in the view or
/// an event it does not understand. The engine stops the view on it.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("the payload is not what this view expects: {0}")]
    Payload(#[from] serde_json::Error),
    #[error(transparent)]
    Decode(#[from] domain::DecodeError),
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
    #[error("{0}")]
    Invalid(String),
}

/// Reading or writing view storage failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("cannot reach the {backend} view store: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },

    #[error("view {view}: statement #{index} ({sql}) failed: {message}")]
    Statement {
        view: String,
        /// Index into the committed batch's statements.
        index: usize,
        sql: String,
        message: String,
    },

    #[error(
        "view {view}: its checkpoint is {found}, not {expected} as this engine believed (another engine projects it too, or it was reset)"
    )]
    CheckpointMoved {
        view: String,
        expected: String,
        found: String,
    },

    #[error("SQL {sql:?} is not portable: {reason}")]
    InvalidSql { sql: String, reason: String },

    #[error(
        "{what} {name:?} must be lowercase letters, digits and underscores, not starting with a digit"
    )]
    InvalidName { what: &'static str, name: String },

    #[error("view {view}: schema statement {sql:?} failed: {message}")]
    Schema {
        view: String,
        sql: String,
        message: String,
    },

    #[error("query {sql:?} failed: {message}")]
    Query { sql: String, message: String },

    #[error(
        "column {column} has PostgreSQL type {ty}, which views do not use; CAST it to BIGINT, INTEGER, DOUBLE PRECISION, TEXT or BOOLEAN"
    )]
    UnsupportedColumn { column: String, ty: String },

    #[error("checkpoint of view {view} is corrupt: {reason}")]
    CorruptCheckpoint { view: String, reason: String },

    #[error("{backend} view store error: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
}

/// The store's classification carried over: passing trouble stays
/// retryable, everything else needs a fix.
impl From<store::StoreError> for ViewError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Unavailable { backend, message } => {
                ViewError::Unavailable { backend, message }
            }
            store::StoreError::Backend { backend, message } => {
                ViewError::Backend { backend, message }
            }
            other => ViewError::Backend {
                backend: "store",
                message: other.to_string(),
            },
        }
    }
}

impl ViewError {
    /// Worth retrying after a pause (the database went away, was busy, or
    /// aborted the transaction to break a deadlock)? The store's rule
    /// (`store::postgres::is_transient`, `store::sqlite::is_transient`)
    /// decides which errors are `Unavailable`; the rest need a fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// A column of a [`crate::Row`] could not be read as asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("no column {column} in this row (it has: {columns})")]
    NoSuchColumn { column: String, columns: String },
    #[error("column {column} holds {}, not {wanted}", found.kind())]
    WrongType {
        column: String,
        wanted: &'static str,
        found: SqlValue,
    },
}

/// Why the engine refused a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "two projections are named {0:?}; a name is its view's checkpoint key and must be unique"
    )]
    DuplicateName(&'static str),

    #[error("no projection is named {name:?} (this engine runs: {known})")]
    UnknownProjection { name: String, known: String },

    #[error("view {view} stopped: {failure}")]
    Failed {
        view: &'static str,
        failure: crate::status::ProjectionFailure,
    },

    #[error("the projection engine has shut down")]
    ShutDown,

    #[error(transparent)]
    View(#[from] ViewError),
}

//! What goes wrong with an import: the file is not what it claims to be, or
//! some of its rows are bad (every bad row is reported at once).

use std::fmt;

use domain::ImportFormat;

/// How many row errors an import reports in full; the rest are counted.
pub const MAX_REPORTED: usize = 1_000;

/// Why an upload's bytes did not become rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The bytes are not a file of that format (or that format cannot hold this kind).
    #[error("not a valid {format:?} file: {why}")]
    NotThatFormat { format: ImportFormat, why: String },
    /// Some rows (or the header) are invalid: the first [`MAX_REPORTED`]
    /// errors, in file order, and how many errors there are in all.
    #[error("{total} error(s) in the rows; first: {}", first_of(.errors))]
    Rows { errors: Vec<RowError>, total: usize },
    /// The file holds no rows at all.
    #[error("the file holds no rows")]
    Empty,
}

fn first_of(errors: &[RowError]) -> String {
    errors.first().map(ToString::to_string).unwrap_or_default()
}

impl ImportError {
    pub(crate) fn not(format: ImportFormat, why: impl Into<String>) -> Self {
        ImportError::NotThatFormat {
            format,
            why: why.into(),
        }
    }
}

/// One bad row (or header): where it is and why. Never quotes a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowError {
    /// 1-based line (txt, csv), row (xlsx), paragraph (docx) or array index + 1 (json).
    pub line: u64,
    /// The column as the file names it (a header, a json key), if one is at fault.
    pub column: Option<String>,
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "line {}, column {column:?}: {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// A stored blob that does not read back as rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dataset blob, line {line}: {why}")]
pub struct DecodeError {
    pub line: u64,
    pub why: String,
}

/// Rows that may not be stored as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A proxy password is still in clear: seal the rows first.
    #[error("row {row} has a password in clear: call Rows::seal_credentials before encoding")]
    UnsealedCredential { row: usize },
    /// A row that JSON cannot hold (never expected of validated rows).
    #[error("a row does not serialize: {0}")]
    Serialize(String),
}

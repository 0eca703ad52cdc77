//! An upload: a file sent in chunks, checked and parsed when its owner
//! finishes it, and published as a dataset version. Stream `upload-<id>`.
//!
//! The chunks are not events (too big, and reclaimable): the store stages
//! them beside the log until the upload finishes or expires. This module
//! holds the rules: who may send to an upload, which chunks it expects and
//! how long each is, and how it ends — finished, failed or expired — once.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::account::Username;
use crate::blob::BlobHash;
use crate::dataset::{DatasetId, DatasetName};
use crate::dataset_kind::{DatasetKind, ImportFormat};
use crate::decider::{Actor, Context, Decider};
use crate::envelope::StreamId;
use crate::reason::one_line;

/// The largest file an upload takes: 64 MiB.
pub const MAX_UPLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// The smallest chunk size an upload may ask for (the last chunk may be shorter).
pub const MIN_CHUNK_BYTES: u32 = 1024;
/// The largest chunk size: what one request body carries, base64-encoded.
pub const MAX_CHUNK_BYTES: u32 = 4 * 1024 * 1024;
/// The chunk size when the client does not ask for one.
pub const DEFAULT_CHUNK_BYTES: u32 = 1024 * 1024;
/// Bad rows a failure records, the first ones; the client was told of all.
pub const MAX_ROW_ERRORS_KEPT: usize = 100;
/// How long a kept row error's reason or column may be, in characters.
const MAX_PROBLEM_TEXT: usize = 300;
/// How long an xlsx sheet's name may be (Excel's own limit).
pub const MAX_SHEET_NAME: usize = 31;

crate::uuid_id::uuid_id!(
    /// An upload's identity, chosen by the gateway when it starts.
    UploadId,
    "upload"
);

/// Where a finished upload's rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "into", rename_all = "snake_case")]
pub enum Destination {
    /// A dataset made for it, with the upload's name; its id is chosen at
    /// the start, so a retried finish publishes into the same one.
    NewDataset { dataset: DatasetId },
    /// A new version of the owner's existing dataset.
    NewVersion { dataset: DatasetId },
}

impl Destination {
    pub fn dataset(&self) -> DatasetId {
        match self {
            Destination::NewDataset { dataset } | Destination::NewVersion { dataset } => *dataset,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStarted {
    pub owner: Username,
    pub kind: DatasetKind,
    /// The new dataset's name (a new version keeps its dataset's name).
    pub name: DatasetName,
    pub format: ImportFormat,
    /// The file's size in bytes, as declared.
    pub size: u64,
    /// The file's SHA-256, as declared.
    pub sha256: BlobHash,
    pub chunk_size: u32,
    /// The xlsx sheet to read; the first when `None`.
    pub sheet: Option<String>,
    pub destination: Destination,
    /// Chunks and the finish are accepted until then.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl UploadStarted {
    /// How many chunks make the file.
    pub fn chunk_count(&self) -> u32 {
        self.size.div_ceil(u64::from(self.chunk_size)) as u32
    }

    /// The length chunk `index` must have, or `None` past the last.
    pub fn chunk_len(&self, index: u32) -> Option<u32> {
        let start = u64::from(index) * u64::from(self.chunk_size);
        (index < self.chunk_count()).then(|| (self.size - start).min(self.chunk_size.into()) as u32)
    }
}

/// A bad row, where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowProblem {
    /// 1-based: the line of a text file, the row of a sheet, the element of
    /// a JSON array.
    pub line: u64,
    /// The column (header name) at fault, when one is.
    pub column: Option<String>,
    pub reason: String,
}

/// Why an upload's contents were refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum UploadFailure {
    /// The chunks add up to another size than was declared.
    Size { declared: u64, received: u64 },
    /// The chunks hash to another SHA-256 than was declared.
    Checksum {
        declared: BlobHash,
        received: BlobHash,
    },
    /// The file is not what its format says (not a zip, no header row…).
    Format { why: String },
    /// Rows that do not parse or validate: how many, and the first ones.
    Rows { count: u64, first: Vec<RowProblem> },
}

impl UploadFailure {
    /// The same failure, small enough for an event: the first
    /// [`MAX_ROW_ERRORS_KEPT`] rows, each text one bounded line.
    fn bounded(self) -> Self {
        let text = |s: &str| one_line(s, MAX_PROBLEM_TEXT);
        match self {
            UploadFailure::Format { why } => UploadFailure::Format { why: text(&why) },
            UploadFailure::Rows { count, first } => UploadFailure::Rows {
                count,
                first: first
                    .into_iter()
                    .take(MAX_ROW_ERRORS_KEPT)
                    .map(|p| RowProblem {
                        line: p.line,
                        column: p.column.as_deref().map(text),
                        reason: text(&p.reason),
                    })
                    .collect(),
            },
            other => other,
        }
    }
}

impl fmt::Display for UploadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadFailure::Size { declared, received } => write!(
                f,
                "the chunks hold {received} bytes, but the upload declared {declared}"
            ),
            UploadFailure::Checksum { declared, received } => write!(
                f,
                "the file's SHA-256 is {received}, but the upload declared {declared}"
            ),
            UploadFailure::Format { why } => write!(f, "the file cannot be read: {why}"),
            UploadFailure::Rows { count, first } => {
                write!(f, "{count} bad row{}", if *count == 1 { "" } else { "s" })?;
                if let Some(p) = first.first() {
                    write!(f, "; line {}", p.line)?;
                    if let Some(column) = &p.column {
                        write!(f, ", column {column}")?;
                    }
                    write!(f, ": {}", p.reason)?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadFinished {
    pub dataset: DatasetId,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadFailed {
    pub failure: UploadFailure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadExpired {}

crate::event_set! {
    /// What happens to an upload.
    pub enum UploadEvent {
        UploadStarted(UploadStarted) = 1,
        UploadFinished(UploadFinished) = 1,
        UploadFailed(UploadFailed) = 1,
        UploadExpired(UploadExpired) = 1,
    }
}

impl crate::registry::Summary for UploadEvent {
    // Row reasons stay out: they may quote the file's contents.
    fn summary(&self, stream: &StreamId) -> String {
        let id = stream
            .as_str()
            .strip_prefix("upload-")
            .unwrap_or(stream.as_str());
        match self {
            Self::UploadStarted(s) => format!(
                "upload {id} of {} \"{}\" ({}, {} bytes) started by {}",
                s.kind,
                s.name,
                format!("{:?}", s.format).to_lowercase(),
                s.size,
                s.owner
            ),
            Self::UploadFinished(f) => format!(
                "upload {id} published as version {} of dataset {}",
                f.version, f.dataset
            ),
            Self::UploadFailed(f) => match &f.failure {
                UploadFailure::Rows { count, .. } => {
                    format!("upload {id} refused: {count} bad rows")
                }
                UploadFailure::Format { .. } => {
                    format!("upload {id} refused: the file cannot be read")
                }
                other => format!("upload {id} refused: {other}"),
            },
            Self::UploadExpired(_) => format!("upload {id} expired unfinished"),
        }
    }
}

/// Commands on an upload.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadCommand {
    /// Starts the upload as described, once its rules are met.
    Start(UploadStarted),
    /// The rows were published as `version` of `dataset`.
    Finish { dataset: DatasetId, version: u32 },
    /// The contents were refused.
    Fail { failure: UploadFailure },
    /// The sweep found it unfinished past its expiry.
    Expire,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("no such upload")]
    NotFound,
    #[error("forbidden: only the account that started an upload may send to it or finish it")]
    NotOwner,
    #[error("forbidden: uploads are started by an account, for itself")]
    NotForSelf,
    #[error("the upload has started already")]
    AlreadyStarted,
    #[error("the file is empty")]
    Empty,
    #[error("the file is {size} bytes; the limit is {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("a chunk size must be from {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES} bytes, not {0}")]
    ChunkSize(u32),
    #[error("a sheet is chosen only for xlsx files")]
    SheetNotApplicable,
    #[error("a sheet name is 1 to {MAX_SHEET_NAME} characters, without control characters")]
    BadSheet,
    #[error("the expiry {0} is not in the future")]
    ExpiryNotInFuture(OffsetDateTime),
    #[error("the upload was published already, as version {version} of dataset {dataset}")]
    Finished { dataset: DatasetId, version: u32 },
    #[error("the upload was refused: {0}; start a new upload with a corrected file")]
    Failed(UploadFailure),
    #[error("the upload expired at {0}; start it again")]
    Expired(OffsetDateTime),
    #[error("chunk {index} is past the last one: the upload has {count} chunks, numbered from 0")]
    NoSuchChunk { index: u32, count: u32 },
    #[error("chunk {index} must be {expected} bytes, not {received}")]
    ChunkLength {
        index: u32,
        expected: u32,
        received: u64,
    },
    #[error("the upload is open until {0}; it cannot expire before")]
    NotDue(OffsetDateTime),
    #[error("forbidden: only the system expires uploads")]
    SystemOnly,
}

/// How an upload ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Finished { dataset: DatasetId, version: u32 },
    Failed(UploadFailure),
    Expired,
}

/// The upload as it stands: `started` is `None` before it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    pub started: Option<UploadStarted>,
    pub outcome: Option<Outcome>,
}

impl UploadState {
    /// The upload, if `ctx`'s actor started it: the guard of every read.
    pub fn owned(&self, ctx: &Context) -> Result<&UploadStarted, UploadError> {
        let started = self.started.as_ref().ok_or(UploadError::NotFound)?;
        if ctx.actor.is_account(started.owner.as_str()) {
            Ok(started)
        } else {
            Err(UploadError::NotOwner)
        }
    }

    /// The upload, if it is `ctx`'s actor's, has not ended and has not
    /// expired: what sending a chunk or beginning to finish needs.
    pub fn open(&self, ctx: &Context) -> Result<&UploadStarted, UploadError> {
        let started = self.owned(ctx)?;
        match &self.outcome {
            Some(ended) => Err(ended_error(ended, started)),
            None if ctx.now >= started.expires_at => Err(UploadError::Expired(started.expires_at)),
            None => Ok(started),
        }
    }

    /// May chunk `index` of `len` bytes be stored? Sending one again is
    /// fine: it replaces the first, so a client may retry.
    pub fn accepts_chunk(&self, index: u32, len: u64, ctx: &Context) -> Result<(), UploadError> {
        let started = self.open(ctx)?;
        let expected = started.chunk_len(index).ok_or(UploadError::NoSuchChunk {
            index,
            count: started.chunk_count(),
        })?;
        if u64::from(expected) != len {
            return Err(UploadError::ChunkLength {
                index,
                expected,
                received: len,
            });
        }
        Ok(())
    }
}

fn ended_error(outcome: &Outcome, started: &UploadStarted) -> UploadError {
    match outcome {
        Outcome::Finished { dataset, version } => UploadError::Finished {
            dataset: *dataset,
            version: *version,
        },
        Outcome::Failed(failure) => UploadError::Failed(failure.clone()),
        Outcome::Expired => UploadError::Expired(started.expires_at),
    }
}

pub struct Upload;

inventory::submit! { crate::replay::Replayer::of::<Upload>() }

impl Decider for Upload {
    const SNAPSHOT_KIND: &'static str = "upload/1";
    type State = UploadState;
    type Command = UploadCommand;
    type Event = UploadEvent;
    type Error = UploadError;

    fn evolve(mut state: UploadState, event: &UploadEvent) -> UploadState {
        match event {
            UploadEvent::UploadStarted(s) => state.started = Some(s.clone()),
            UploadEvent::UploadFinished(f) => {
                state.outcome = Some(Outcome::Finished {
                    dataset: f.dataset,
                    version: f.version,
                });
            }
            UploadEvent::UploadFailed(f) => {
                state.outcome = Some(Outcome::Failed(f.failure.clone()))
            }
            UploadEvent::UploadExpired(_) => state.outcome = Some(Outcome::Expired),
        }
        state
    }

    fn decide(
        state: &UploadState,
        command: UploadCommand,
        ctx: &Context,
    ) -> Result<Vec<UploadEvent>, UploadError> {
        match command {
            UploadCommand::Start(plan) => start(state, plan, ctx),
            UploadCommand::Finish { dataset, version } => {
                let started = state.owned(ctx)?;
                match &state.outcome {
                    // Finishing twice: the first result stands.
                    Some(Outcome::Finished { .. }) => Ok(vec![]),
                    Some(failed @ Outcome::Failed(_)) => Err(ended_error(failed, started)),
                    // The rows were published (a finish begun in time may
                    // outlast the expiry): that is what happened.
                    Some(Outcome::Expired) | None => {
                        Ok(vec![UploadEvent::UploadFinished(UploadFinished {
                            dataset,
                            version,
                        })])
                    }
                }
            }
            UploadCommand::Fail { failure } => {
                let started = state.owned(ctx)?;
                match &state.outcome {
                    Some(finished @ Outcome::Finished { .. }) => {
                        Err(ended_error(finished, started))
                    }
                    Some(Outcome::Failed(_) | Outcome::Expired) => Ok(vec![]),
                    None => Ok(vec![UploadEvent::UploadFailed(UploadFailed {
                        failure: failure.bounded(),
                    })]),
                }
            }
            UploadCommand::Expire => {
                if ctx.actor != Actor::System {
                    return Err(UploadError::SystemOnly);
                }
                let started = state.started.as_ref().ok_or(UploadError::NotFound)?;
                if state.outcome.is_some() {
                    return Ok(vec![]);
                }
                if ctx.now < started.expires_at {
                    return Err(UploadError::NotDue(started.expires_at));
                }
                Ok(vec![UploadEvent::UploadExpired(UploadExpired {})])
            }
        }
    }
}

fn start(
    state: &UploadState,
    plan: UploadStarted,
    ctx: &Context,
) -> Result<Vec<UploadEvent>, UploadError> {
    if !ctx.actor.is_account(plan.owner.as_str()) {
        return Err(UploadError::NotForSelf);
    }
    if state.started.is_some() {
        return Err(UploadError::AlreadyStarted);
    }
    if plan.size == 0 {
        return Err(UploadError::Empty);
    }
    if plan.size > MAX_UPLOAD_BYTES {
        return Err(UploadError::TooLarge {
            size: plan.size,
            max: MAX_UPLOAD_BYTES,
        });
    }
    if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&plan.chunk_size) {
        return Err(UploadError::ChunkSize(plan.chunk_size));
    }
    if let Some(sheet) = &plan.sheet {
        if plan.format != ImportFormat::Xlsx {
            return Err(UploadError::SheetNotApplicable);
        }
        let len = sheet.chars().count();
        if len == 0 || len > MAX_SHEET_NAME || sheet.chars().any(char::is_control) {
            return Err(UploadError::BadSheet);
        }
    }
    if plan.expires_at <= ctx.now {
        return Err(UploadError::ExpiryNotInFuture(plan.expires_at));
    }
    Ok(vec![UploadEvent::UploadStarted(plan)])
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use time::Duration;

    use super::*;
    use crate::decider::Role;
    use crate::registry::Summary;
    use crate::spec::{Spec, acting_as};

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn as_account(name: &str) -> Context {
        acting_as(name, Role::User, now())
    }

    fn ada() -> Context {
        as_account("ada")
    }

    fn later(ctx: Context, by: Duration) -> Context {
        Context {
            now: ctx.now + by,
            ..ctx
        }
    }

    fn dataset() -> DatasetId {
        DatasetId(Uuid::from_u128(5))
    }

    fn plan(size: u64, chunk_size: u32) -> UploadStarted {
        UploadStarted {
            owner: Username::parse("ada").unwrap(),
            kind: DatasetKind::Targets,
            name: DatasetName::parse("Spring launch").unwrap(),
            format: ImportFormat::Csv,
            size,
            sha256: BlobHash([7; 32]),
            chunk_size,
            sheet: None,
            destination: Destination::NewDataset { dataset: dataset() },
            expires_at: now() + Duration::hours(24),
        }
    }

    fn started(size: u64, chunk_size: u32) -> UploadEvent {
        UploadEvent::UploadStarted(plan(size, chunk_size))
    }

    fn finished() -> UploadEvent {
        UploadEvent::UploadFinished(UploadFinished {
            dataset: dataset(),
            version: 1,
        })
    }

    fn finish() -> UploadCommand {
        UploadCommand::Finish {
            dataset: dataset(),
            version: 1,
        }
    }

    fn bad_rows(count: u64) -> UploadFailure {
        UploadFailure::Rows {
            count,
            first: (1..=count)
                .map(|line| RowProblem {
                    line,
                    column: Some("url".into()),
                    reason: "not a URL".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn an_account_starts_an_upload_of_its_own() {
        let state = Spec::<Upload>::given([])
            .in_context(ada())
            .when(UploadCommand::Start(plan(2500, 1024)))
            .then([started(2500, 1024)]);
        let s = state.started.unwrap();
        assert_eq!(s.chunk_count(), 3);
        assert_eq!(
            (0..4).map(|i| s.chunk_len(i)).collect::<Vec<_>>(),
            [Some(1024), Some(1024), Some(452), None]
        );
        Spec::<Upload>::given([])
            .in_context(as_account("bob"))
            .when(UploadCommand::Start(plan(2500, 1024)))
            .then_err(|e| *e == UploadError::NotForSelf);
    }

    #[test]
    fn a_file_that_is_empty_or_over_the_limit_is_refused_at_the_start() {
        Spec::<Upload>::given([])
            .in_context(ada())
            .when(UploadCommand::Start(plan(0, 1024)))
            .then_err(|e| *e == UploadError::Empty);
        Spec::<Upload>::given([])
            .in_context(ada())
            .when(UploadCommand::Start(plan(
                MAX_UPLOAD_BYTES + 1,
                MAX_CHUNK_BYTES,
            )))
            .then_err(|e| {
                e.to_string() == "the file is 67108865 bytes; the limit is 67108864 bytes"
            });
        Spec::<Upload>::given([])
            .in_context(ada())
            .when(UploadCommand::Start(plan(
                MAX_UPLOAD_BYTES,
                MAX_CHUNK_BYTES,
            )))
            .then([started(MAX_UPLOAD_BYTES, MAX_CHUNK_BYTES)]);
    }

    #[test]
    fn chunk_sizes_sheets_and_expiry_are_checked_at_the_start() {
        for size in [MIN_CHUNK_BYTES - 1, MAX_CHUNK_BYTES + 1] {
            Spec::<Upload>::given([])
                .in_context(ada())
                .when(UploadCommand::Start(plan(10, size)))
                .then_err(|e| *e == UploadError::ChunkSize(size));
        }
        let with_sheet = |format, sheet: &str| UploadStarted {
            format,
            sheet: Some(sheet.into()),
            ..plan(10, 1024)
        };
        Spec::<Upload>::given([])
            .in_context(ada())
            .when(UploadCommand::Start(with_sheet(
                ImportFormat::Csv,
                "Sheet1",
            )))
            .then_err(|e| *e == UploadError::SheetNotApplicable);
        Spec::<Upload>::given([])
            .in_context(ada())
            .when(UploadCommand::Start(with_sheet(
                ImportFormat::Xlsx,
                &"s".repeat(32),
            )))
            .then_err(|e| *e == UploadError::BadSheet);
        Spec::<Upload>::given([])
            .in_context(ada())
            .when(UploadCommand::Start(UploadStarted {
                expires_at: now(),
                ..plan(10, 1024)
            }))
            .then_err(|e| matches!(e, UploadError::ExpiryNotInFuture(_)));
        Spec::<Upload>::given([started(10, 1024)])
            .in_context(ada())
            .when(UploadCommand::Start(plan(10, 1024)))
            .then_err(|e| *e == UploadError::AlreadyStarted);
    }

    #[test]
    fn chunks_are_accepted_from_the_owner_at_their_place_and_length_until_expiry() {
        let state = Upload::fold(&[started(2500, 1024)]);
        assert_eq!(state.accepts_chunk(2, 452, &ada()), Ok(()));
        assert_eq!(state.accepts_chunk(0, 1024, &ada()), Ok(()));
        assert_eq!(
            state.accepts_chunk(3, 10, &ada()),
            Err(UploadError::NoSuchChunk { index: 3, count: 3 })
        );
        assert_eq!(
            state
                .accepts_chunk(1, 1000, &ada())
                .unwrap_err()
                .to_string(),
            "chunk 1 must be 1024 bytes, not 1000"
        );
        assert_eq!(
            state.accepts_chunk(0, 1024, &as_account("bob")),
            Err(UploadError::NotOwner)
        );
        assert_eq!(
            state.accepts_chunk(0, 1024, &later(ada(), Duration::hours(24))),
            Err(UploadError::Expired(now() + Duration::hours(24)))
        );
        assert_eq!(
            UploadState::default().accepts_chunk(0, 1, &ada()),
            Err(UploadError::NotFound)
        );
    }

    #[test]
    fn an_ended_upload_takes_no_more_chunks_and_says_how_it_ended() {
        let state = Upload::fold(&[started(10, 1024), finished()]);
        assert_eq!(
            state.accepts_chunk(0, 10, &ada()),
            Err(UploadError::Finished {
                dataset: dataset(),
                version: 1
            })
        );
        let state = Upload::fold(&[
            started(10, 1024),
            UploadEvent::UploadFailed(UploadFailed {
                failure: bad_rows(2),
            }),
        ]);
        assert!(matches!(
            state.open(&ada()),
            Err(UploadError::Failed(UploadFailure::Rows { count: 2, .. }))
        ));
    }

    #[test]
    fn finishing_records_the_published_version_once() {
        let state = Spec::<Upload>::given([started(10, 1024)])
            .in_context(ada())
            .when(finish())
            .then([finished()]);
        assert_eq!(
            state.outcome,
            Some(Outcome::Finished {
                dataset: dataset(),
                version: 1
            })
        );
        Spec::<Upload>::given([started(10, 1024), finished()])
            .in_context(ada())
            .when(finish())
            .then([]);
        Spec::<Upload>::given([started(10, 1024)])
            .in_context(as_account("bob"))
            .when(finish())
            .then_err(|e| *e == UploadError::NotOwner);
    }

    #[test]
    fn a_finish_that_outlasted_the_expiry_still_records_what_it_published() {
        Spec::<Upload>::given([
            started(10, 1024),
            UploadEvent::UploadExpired(UploadExpired {}),
        ])
        .in_context(ada())
        .when(finish())
        .then([finished()]);
    }

    #[test]
    fn a_failure_keeps_the_first_hundred_bad_rows_and_their_count() {
        let mut sent = bad_rows(150);
        let mut kept = bad_rows(150);
        if let (UploadFailure::Rows { first, .. }, UploadFailure::Rows { first: k, .. }) =
            (&mut sent, &mut kept)
        {
            first[0].reason = format!("bad\n{}", "x".repeat(400));
            k[0].reason = format!("bad {}…", "x".repeat(296));
            k.truncate(MAX_ROW_ERRORS_KEPT);
        }
        let state = Spec::<Upload>::given([started(10, 1024)])
            .in_context(ada())
            .when(UploadCommand::Fail { failure: sent })
            .then([UploadEvent::UploadFailed(UploadFailed {
                failure: kept.clone(),
            })]);
        assert_eq!(state.outcome, Some(Outcome::Failed(kept)));
    }

    #[test]
    fn failing_a_finished_upload_is_refused_and_failing_twice_records_nothing() {
        Spec::<Upload>::given([started(10, 1024), finished()])
            .in_context(ada())
            .when(UploadCommand::Fail {
                failure: bad_rows(1),
            })
            .then_err(|e| matches!(e, UploadError::Finished { version: 1, .. }));
        let failed = UploadEvent::UploadFailed(UploadFailed {
            failure: bad_rows(1),
        });
        Spec::<Upload>::given([started(10, 1024), failed.clone()])
            .in_context(ada())
            .when(UploadCommand::Fail {
                failure: bad_rows(1),
            })
            .then([]);
        Spec::<Upload>::given([started(10, 1024), failed])
            .in_context(ada())
            .when(finish())
            .then_err(|e| {
                e.to_string()
                    .starts_with("the upload was refused: 1 bad row; line 1, column url: not a URL")
            });
    }

    #[test]
    fn the_system_expires_an_open_upload_once_its_time_is_up() {
        let system = |by| later(Context::new(now(), Actor::System), by);
        Spec::<Upload>::given([started(10, 1024)])
            .in_context(system(Duration::hours(1)))
            .when(UploadCommand::Expire)
            .then_err(|e| matches!(e, UploadError::NotDue(_)));
        Spec::<Upload>::given([started(10, 1024)])
            .in_context(system(Duration::hours(24)))
            .when(UploadCommand::Expire)
            .then([UploadEvent::UploadExpired(UploadExpired {})]);
        Spec::<Upload>::given([started(10, 1024), finished()])
            .in_context(system(Duration::hours(48)))
            .when(UploadCommand::Expire)
            .then([]);
        Spec::<Upload>::given([started(10, 1024)])
            .in_context(later(ada(), Duration::hours(48)))
            .when(UploadCommand::Expire)
            .then_err(|e| *e == UploadError::SystemOnly);
    }

    #[test]
    fn summaries_say_what_happened_without_quoting_rows() {
        let stream = UploadId(Uuid::from_u128(3)).stream();
        let id = "00000000-0000-0000-0000-000000000003";
        assert_eq!(stream.as_str(), format!("upload-{id}"));
        assert_eq!(
            started(2500, 1024).summary(&stream),
            format!("upload {id} of targets \"Spring launch\" (csv, 2500 bytes) started by ada")
        );
        assert_eq!(
            finished().summary(&stream),
            format!(
                "upload {id} published as version 1 of dataset 00000000-0000-0000-0000-000000000005"
            )
        );
        let failed = UploadEvent::UploadFailed(UploadFailed {
            failure: bad_rows(3),
        });
        assert_eq!(
            failed.summary(&stream),
            format!("upload {id} refused: 3 bad rows")
        );
    }
}

//! Uploads over GraphQL: `startUpload` → `uploadChunk` (base64, any order,
//! retried at will) → `finishUpload`, and `upload(id)` to resume after a
//! disconnect (which chunks are missing). Finishing is `publishing::finish`;
//! here its outcome becomes an `Upload` or an error with every bad row in
//! its extensions.

use async_graphql::{Context, Enum, ErrorExtensionValues, Object, SimpleObject, Value};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::dataset::{Dataset, DatasetError, DatasetId, DatasetName};
use domain::upload::{
    DEFAULT_CHUNK_BYTES, Destination, Outcome, RowProblem, Upload, UploadCommand, UploadError,
    UploadFailure, UploadId, UploadStarted, UploadState,
};
use domain::{BlobHash, DatasetKind, ImportFormat};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::graphql::error::{self, Code, Coded, refused};
use crate::graphql::licence::licensed_decision;
use crate::graphql::{app, decision, handle, meta, now, principal};
use crate::publishing::{self, PublishError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum UploadStatus {
    /// Taking chunks; finish it once none is missing.
    Open,
    /// Published as `version` of `datasetId`.
    Finished,
    /// Its contents were refused: see `failure` and `rowErrors`.
    Failed,
    /// Not finished in time; its chunks are gone.
    Expired,
}

/// A bad row: where, and why.
#[derive(SimpleObject, Clone)]
pub struct RowError {
    pub line: u64,
    /// The column (header name) at fault, when one is.
    pub column: Option<String>,
    pub reason: String,
}

/// An upload as its owner sees it.
pub struct UploadInfo {
    id: UploadId,
    started: UploadStarted,
    outcome: Option<Outcome>,
}

impl UploadInfo {
    fn of(id: UploadId, state: &UploadState, ctx: &domain::Context) -> Result<Self, UploadError> {
        Ok(Self {
            id,
            started: state.owned(ctx)?.clone(),
            outcome: state.outcome.clone(),
        })
    }
}

#[Object(name = "Upload")]
impl UploadInfo {
    async fn id(&self) -> Uuid {
        self.id.0
    }

    async fn kind(&self) -> DatasetKind {
        self.started.kind
    }

    /// The new dataset's name (a new version keeps its dataset's).
    async fn name(&self) -> &str {
        self.started.name.as_str()
    }

    async fn format(&self) -> ImportFormat {
        self.started.format
    }

    /// The file's size in bytes, as declared.
    async fn size(&self) -> u64 {
        self.started.size
    }

    /// The file's SHA-256, as declared (hex).
    async fn sha256(&self) -> String {
        self.started.sha256.to_string()
    }

    /// Bytes per chunk; the last chunk holds the rest.
    async fn chunk_size(&self) -> u32 {
        self.started.chunk_size
    }

    /// Chunks `0` to `chunkCount - 1` make the file.
    async fn chunk_count(&self) -> u32 {
        self.started.chunk_count()
    }

    async fn status(&self) -> UploadStatus {
        match &self.outcome {
            Some(Outcome::Finished { .. }) => UploadStatus::Finished,
            Some(Outcome::Failed(_)) => UploadStatus::Failed,
            Some(Outcome::Expired) => UploadStatus::Expired,
            None if now() >= self.started.expires_at => UploadStatus::Expired,
            None => UploadStatus::Open,
        }
    }

    /// Chunks and the finish are accepted until then.
    async fn expires_at(&self) -> OffsetDateTime {
        self.started.expires_at
    }

    /// The dataset the rows go to (made for them, or the one named at the start).
    async fn dataset_id(&self) -> Uuid {
        self.started.destination.dataset().0
    }

    /// The version published, once finished.
    async fn version(&self) -> Option<u32> {
        match &self.outcome {
            Some(Outcome::Finished { version, .. }) => Some(*version),
            _ => None,
        }
    }

    /// The chunks not received yet, while open: send these, then finish.
    async fn missing_chunks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<u32>> {
        if self.outcome.is_some() {
            return Ok(Vec::new());
        }
        let present = app(ctx)
            .store
            .chunk_indexes(self.id.0)
            .await
            .map_err(|e| error::internal("cannot read the upload's chunks", &e))?;
        Ok((0..self.started.chunk_count())
            .filter(|i| present.binary_search(i).is_err())
            .collect())
    }

    /// Why the contents were refused, when they were.
    async fn failure(&self) -> Option<String> {
        match &self.outcome {
            Some(Outcome::Failed(f)) => Some(f.to_string()),
            _ => None,
        }
    }

    /// The first bad rows of a refused file (the finish reported them all).
    async fn row_errors(&self) -> Vec<RowError> {
        match &self.outcome {
            Some(Outcome::Failed(UploadFailure::Rows { first, .. })) => row_errors(first),
            _ => Vec::new(),
        }
    }
}

#[derive(Default)]
pub struct UploadQuery;

#[Object]
impl UploadQuery {
    /// One of the logged-in account's uploads: its status and, while open,
    /// which chunks are missing.
    async fn upload(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<UploadInfo> {
        load(ctx, UploadId(id)).await
    }
}

#[derive(Default)]
pub struct UploadMutation;

#[Object]
impl UploadMutation {
    /// Starts an upload of a file of `size` bytes whose SHA-256 is
    /// `sha256` (hex), into a new dataset named `name`, or as a new version
    /// of `dataset`. Send its chunks with `uploadChunk`, then `finishUpload`.
    #[allow(clippy::too_many_arguments)]
    async fn start_upload(
        &self,
        ctx: &Context<'_>,
        kind: DatasetKind,
        name: String,
        format: ImportFormat,
        size: u64,
        sha256: String,
        #[graphql(desc = "Bytes per chunk, 1 KiB to 4 MiB (default 1 MiB).")] chunk_size: Option<
            u32,
        >,
        #[graphql(desc = "The xlsx sheet to read (default: the first).")] sheet: Option<String>,
        #[graphql(desc = "An existing dataset of yours to add a version to.")] dataset: Option<
            Uuid,
        >,
    ) -> async_graphql::Result<UploadInfo> {
        let owner = principal(ctx)?.username.clone();
        let name = DatasetName::parse(&name).map_err(|e| error::invalid("name", e))?;
        let sha256: BlobHash = sha256
            .parse()
            .map_err(|_| error::invalid("sha256", "the file's SHA-256 is 64 hex digits"))?;
        let decision = decision(ctx)?;
        let destination = match dataset {
            None => Destination::NewDataset {
                dataset: DatasetId::new(),
            },
            Some(id) => {
                let dataset = DatasetId(id);
                let (_, state) = app(ctx)
                    .handler
                    .load::<Dataset>(&dataset.stream())
                    .await
                    .map_err(|e| error::internal("cannot read the dataset", &e))?;
                let info = state.owned_by(&decision).map_err(|e| refused(&e))?;
                if info.kind != kind {
                    return Err(refused(&DatasetError::KindMismatch {
                        dataset: info.kind,
                        rows: kind,
                    }));
                }
                Destination::NewVersion { dataset }
            }
        };
        let id = UploadId::new();
        let plan = UploadStarted {
            owner,
            kind,
            name,
            format,
            size,
            sha256,
            chunk_size: chunk_size.unwrap_or(DEFAULT_CHUNK_BYTES),
            sheet,
            destination,
            expires_at: decision.now + app(ctx).upload_ttl,
        };
        handle::<Upload>(
            ctx,
            &id.stream(),
            UploadCommand::Start(plan),
            &decision,
            None,
        )
        .await?;
        load(ctx, id).await
    }

    /// Stores chunk `index` (from 0) of an open upload, its bytes in
    /// base64. Chunks may come in any order; sending one again replaces it.
    async fn upload_chunk(
        &self,
        ctx: &Context<'_>,
        upload_id: Uuid,
        index: u32,
        data: String,
    ) -> async_graphql::Result<UploadInfo> {
        let decision = decision(ctx)?;
        let bytes = BASE64
            .decode(data.as_bytes())
            .map_err(|e| error::invalid("data", format!("not base64: {e}")))?;
        drop(data);
        let id = UploadId(upload_id);
        let state = state(ctx, id).await?;
        state
            .accepts_chunk(index, bytes.len() as u64, &decision)
            .map_err(|e| refused(&e))?;
        app(ctx)
            .store
            .put_chunk(id.0, index, bytes)
            .await
            .map_err(|e| error::internal("cannot store the chunk", &e))?;
        UploadInfo::of(id, &state, &decision).map_err(|e| refused(&e))
    }

    /// Assembles the upload, checks its size and SHA-256, reads every row
    /// and publishes them as a dataset version. A refused file publishes
    /// nothing and reports every bad row in the error's `rowErrors`.
    /// Finishing again returns the same version.
    async fn finish_upload(
        &self,
        ctx: &Context<'_>,
        upload_id: Uuid,
    ) -> async_graphql::Result<UploadInfo> {
        let owner = principal(ctx)?.username.clone();
        let id = UploadId(upload_id);
        let decision = licensed_decision(ctx, &owner).await?;
        publishing::finish(app(ctx), id, &decision, &meta(None))
            .await
            .map_err(publish_error)?;
        load(ctx, id).await
    }
}

async fn state(ctx: &Context<'_>, id: UploadId) -> async_graphql::Result<UploadState> {
    let (_, state) = app(ctx)
        .handler
        .load::<Upload>(&id.stream())
        .await
        .map_err(|e| error::internal("cannot read the upload", &e))?;
    Ok(state)
}

async fn load(ctx: &Context<'_>, id: UploadId) -> async_graphql::Result<UploadInfo> {
    let state = state(ctx, id).await?;
    UploadInfo::of(id, &state, &decision(ctx)?).map_err(|e| refused(&e))
}

fn row_errors(problems: &[RowProblem]) -> Vec<RowError> {
    problems
        .iter()
        .map(|p| RowError {
            line: p.line,
            column: p.column.clone(),
            reason: p.reason.clone(),
        })
        .collect()
}

/// A refused file's error: VALIDATION, with `problem` (size, checksum,
/// format, rows) and, for rows, `errorCount` and every `rowErrors` entry.
fn failure_extensions(failure: &UploadFailure, x: &mut ErrorExtensionValues) {
    let problem = match failure {
        UploadFailure::Size { .. } => "size",
        UploadFailure::Checksum { .. } => "checksum",
        UploadFailure::Format { .. } => "format",
        UploadFailure::Rows { count, first } => {
            x.set("errorCount", *count);
            let rows = row_errors(first)
                .into_iter()
                .map(|e| {
                    let mut row = async_graphql::indexmap::IndexMap::new();
                    row.insert(async_graphql::Name::new("line"), Value::from(e.line));
                    row.insert(
                        async_graphql::Name::new("column"),
                        e.column.map_or(Value::Null, Value::from),
                    );
                    row.insert(async_graphql::Name::new("reason"), Value::from(e.reason));
                    Value::Object(row)
                })
                .collect::<Vec<_>>();
            x.set("rowErrors", Value::List(rows));
            "rows"
        }
    };
    x.set("problem", problem);
}

/// A finish that did not publish, as the client is told.
pub(crate) fn publish_error(e: PublishError) -> async_graphql::Error {
    use async_graphql::ErrorExtensions;
    let message = e.to_string();
    match e {
        PublishError::MissingChunks(missing) => {
            error::invalid("uploadId", message).extend_with(|_, x| {
                x.set("missingChunks", missing.clone());
            })
        }
        PublishError::Contents(failure) => error::error(Code::Validation, failure.to_string())
            .extend_with(|_, x| failure_extensions(&failure, x)),
        PublishError::Upload(e) => refused(&e),
        PublishError::Dataset(e) => refused(&e),
        PublishError::NoDataKey => {
            tracing::warn!("{message}");
            error::error(Code::Internal, message)
        }
        PublishError::Internal(why) => error::internal("publishing the rows failed", &why),
    }
}

impl Coded for UploadError {
    fn code(&self) -> Code {
        use UploadError as E;
        match self {
            E::NotFound => Code::NotFound,
            E::NotOwner | E::NotForSelf | E::SystemOnly => Code::Forbidden,
            E::AlreadyStarted | E::Finished { .. } | E::Expired(_) | E::NotDue(_) => Code::Conflict,
            E::Empty
            | E::TooLarge { .. }
            | E::ChunkSize(_)
            | E::SheetNotApplicable
            | E::BadSheet
            | E::ExpiryNotInFuture(_)
            | E::NoSuchChunk { .. }
            | E::ChunkLength { .. }
            | E::Failed(_) => Code::Validation,
        }
    }

    fn extend(&self, x: &mut ErrorExtensionValues) {
        if let UploadError::Failed(failure) = self {
            failure_extensions(failure, x);
        }
    }
}

//! Publishing dataset versions: the one path by which rows become a
//! version, whether they come from a finished upload or from the built-in
//! device catalogue. Finishing an upload assembles its staged chunks,
//! checks them against what the upload declared and parses them (off the
//! async runtime); then, as for the catalogue, proxy passwords are sealed
//! with the data key, the rows are encoded, the dataset decider is asked
//! first (so a refused version stores no blob), the blob is stored and the
//! version published.
//!
//! A failed finish publishes nothing, so the dataset's previous version
//! stands. Bad contents are recorded (`UploadFailed`) and the upload ends;
//! a licence refusal is not (the owner may raise the licence and finish
//! again before the upload expires). A retried finish publishes nothing
//! twice: the version is published under the upload's idempotency key.

use std::sync::Arc;

use datasets::{DataKey, EncodeError, ImportError, ImportOptions, Rows};
use domain::dataset::{
    Dataset, DatasetCommand, DatasetError, DatasetEvent, DatasetId, NewDataset, NewVersion,
    VersionSource,
};
use domain::upload::{
    Destination, Outcome, RowProblem, Upload, UploadCommand, UploadError, UploadFailure, UploadId,
    UploadStarted,
};
use domain::{BlobHash, Context, Decider, RowsSummary};

use crate::command_handler::{CommandError, CommandMeta};
use crate::state::AppState;

/// Why rows were not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Some chunks have not arrived: nothing was recorded.
    #[error("chunks {} have not arrived; send them and finish again", list(.0))]
    MissingChunks(Vec<u32>),
    /// The file was refused; every bad row the parser reported is here, and
    /// the upload recorded the first ones.
    #[error("{0}")]
    Contents(UploadFailure),
    #[error(transparent)]
    Upload(UploadError),
    #[error(transparent)]
    Dataset(DatasetError),
    #[error(
        "proxy passwords are sealed with the gateway's data key, and none is set: set TB_DATA_KEY \
         (32 bytes as 64 hex digits or base64, the same on every gateway) to import proxies with credentials"
    )]
    NoDataKey,
    #[error("{0}")]
    Internal(String),
}

fn list(indexes: &[u32]) -> String {
    indexes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<store::StoreError> for PublishError {
    fn from(e: store::StoreError) -> Self {
        PublishError::Internal(e.to_string())
    }
}

impl<E: std::error::Error> From<CommandError<E>> for PublishError
where
    PublishError: From<E>,
{
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(e) => e.into(),
            other => PublishError::Internal(other.to_string()),
        }
    }
}

impl From<UploadError> for PublishError {
    fn from(e: UploadError) -> Self {
        PublishError::Upload(e)
    }
}

impl From<DatasetError> for PublishError {
    fn from(e: DatasetError) -> Self {
        PublishError::Dataset(e)
    }
}

/// A published version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub dataset: DatasetId,
    pub version: u32,
}

/// Rows ready to store: encoded, with what they ask of the licence.
struct Encoded {
    rows: Arc<Rows>,
    summary: RowsSummary,
    bytes: Vec<u8>,
    hash: BlobHash,
}

/// Where rows go: a dataset to create, or one that exists.
pub struct Target {
    pub dataset: DatasetId,
    pub create: Option<NewDataset>,
}

/// Finishes upload `id` for `ctx`'s actor (with their licence in force):
/// the version it published, now or before.
pub async fn finish(
    app: &AppState,
    id: UploadId,
    ctx: &Context,
    meta: &CommandMeta,
) -> Result<Published, PublishError> {
    let stream = id.stream();
    let (_, state) = app.handler.load::<Upload>(&stream).await?;
    if let Some(Outcome::Finished { dataset, version }) = &state.outcome {
        state.owned(ctx)?;
        return Ok(Published {
            dataset: *dataset,
            version: *version,
        });
    }
    let started = state.open(ctx)?.clone();
    let present = app.store.chunk_indexes(id.0).await?;
    let missing = missing(&present, started.chunk_count());
    if !missing.is_empty() {
        return Err(PublishError::MissingChunks(missing));
    }
    let chunks = app.store.read_chunks(id.0).await?;
    let key = app.data_key.clone();
    let plan = started.clone();
    let read = tokio::task::spawn_blocking(move || read_upload(&plan, chunks, key.as_deref()))
        .await
        .map_err(|e| PublishError::Internal(format!("reading the upload failed: {e}")))?;
    let encoded = match read {
        Ok(encoded) => encoded,
        Err(PublishError::Contents(failure)) => {
            let command = UploadCommand::Fail {
                failure: failure.clone(),
            };
            match app
                .handler
                .handle::<Upload>(&stream, command, ctx, meta)
                .await
            {
                // Another finish of the same upload got there first.
                Err(CommandError::Rejected(UploadError::Finished { dataset, version })) => {
                    return Ok(Published { dataset, version });
                }
                done => done?,
            };
            discard_chunks(app, id).await;
            return Err(PublishError::Contents(failure));
        }
        Err(other) => return Err(other),
    };
    let target = Target {
        dataset: started.destination.dataset(),
        create: match started.destination {
            Destination::NewDataset { .. } => Some(NewDataset {
                owner: started.owner.clone(),
                name: started.name.clone(),
            }),
            Destination::NewVersion { .. } => None,
        },
    };
    let source = VersionSource::Upload {
        upload: id,
        format: started.format,
        sha256: started.sha256,
    };
    // Under the upload's key: a finish retried after a crash, or two at
    // once, publish one version.
    let keyed = CommandMeta {
        idempotency_key: Some(stream.to_string()),
        ..meta.clone()
    };
    let published = store_and_publish(app, encoded, target, source, ctx, &keyed).await?;
    let finish = UploadCommand::Finish {
        dataset: published.dataset,
        version: published.version,
    };
    app.handler
        .handle::<Upload>(&stream, finish, ctx, meta)
        .await?;
    discard_chunks(app, id).await;
    Ok(published)
}

/// Publishes `rows` (the catalogue's, say) into `target`.
pub async fn publish_rows(
    app: &AppState,
    rows: Rows,
    target: Target,
    source: VersionSource,
    ctx: &Context,
    meta: &CommandMeta,
) -> Result<Published, PublishError> {
    let key = app.data_key.clone();
    let encoded = tokio::task::spawn_blocking(move || encode(rows, key.as_deref()))
        .await
        .map_err(|e| PublishError::Internal(format!("encoding the rows failed: {e}")))??;
    store_and_publish(app, encoded, target, source, ctx, meta).await
}

/// The indexes below `count` not in `present` (ascending).
fn missing(present: &[u32], count: u32) -> Vec<u32> {
    let mut present = present.iter().peekable();
    (0..count)
        .filter(|i| {
            while present.next_if(|p| *p < i).is_some() {}
            present.next_if_eq(&i).is_none()
        })
        .collect()
}

/// The upload's file from its chunks, checked against what it declared,
/// parsed and encoded. Blocking: run it off the async runtime.
fn read_upload(
    started: &UploadStarted,
    chunks: Vec<(u32, Vec<u8>)>,
    key: Option<&DataKey>,
) -> Result<Encoded, PublishError> {
    let received: u64 = chunks.iter().map(|(_, c)| c.len() as u64).sum();
    if received != started.size {
        return Err(PublishError::Contents(UploadFailure::Size {
            declared: started.size,
            received,
        }));
    }
    let mut file = Vec::with_capacity(received as usize);
    for (_, chunk) in chunks {
        file.extend_from_slice(&chunk);
    }
    let sha256 = BlobHash::of(&file);
    if sha256 != started.sha256 {
        return Err(PublishError::Contents(UploadFailure::Checksum {
            declared: started.sha256,
            received: sha256,
        }));
    }
    let options = ImportOptions {
        sheet: started.sheet.clone(),
    };
    let rows = datasets::parse(started.kind, started.format, &file, &options)
        .map_err(|e| PublishError::Contents(failure_of(e)))?;
    drop(file);
    encode(rows, key)
}

/// What the parser refused, as the upload records it.
fn failure_of(e: ImportError) -> UploadFailure {
    match e {
        ImportError::Rows { errors, total } => UploadFailure::Rows {
            count: total as u64,
            first: errors
                .into_iter()
                .map(|e| RowProblem {
                    line: e.line,
                    column: e.column,
                    reason: e.reason,
                })
                .collect(),
        },
        other @ (ImportError::NotThatFormat { .. } | ImportError::Empty) => UploadFailure::Format {
            why: other.to_string(),
        },
    }
}

/// Seals proxy passwords and encodes the rows. Blocking (hashing, AEAD).
fn encode(mut rows: Rows, key: Option<&DataKey>) -> Result<Encoded, PublishError> {
    if let Some(key) = key {
        rows.seal_credentials(key)
            .map_err(|e| PublishError::Internal(e.to_string()))?;
    }
    let bytes = datasets::encode(&rows).map_err(|e| match e {
        EncodeError::UnsealedCredential { .. } => PublishError::NoDataKey,
        other => PublishError::Internal(other.to_string()),
    })?;
    Ok(Encoded {
        summary: rows.summary(),
        hash: BlobHash::of(&bytes),
        rows: Arc::new(rows),
        bytes,
    })
}

async fn store_and_publish(
    app: &AppState,
    encoded: Encoded,
    target: Target,
    source: VersionSource,
    ctx: &Context,
    meta: &CommandMeta,
) -> Result<Published, PublishError> {
    let stream = target.dataset.stream();
    let command = DatasetCommand::Publish {
        create: target.create,
        version: NewVersion {
            kind: encoded.rows.kind(),
            summary: encoded.summary,
            blob: encoded.hash,
            source,
        },
    };
    // Asked first, so a refused version (over the licence, say) leaves no
    // blob behind; the handler asks again on the state it appends to.
    let (_, state) = app.handler.load::<Dataset>(&stream).await?;
    Dataset::decide(&state, command.clone(), ctx)?;
    let hash = app.store.put_blob(&encoded.bytes).await?;
    app.rows.insert(hash, encoded.rows, encoded.bytes.len());
    let handled = app
        .handler
        .handle::<Dataset>(&stream, command, ctx, meta)
        .await?;
    handled
        .events
        .iter()
        .find_map(|e| match e {
            DatasetEvent::DatasetVersionPublished(p) => Some(Published {
                dataset: target.dataset,
                version: p.version,
            }),
            _ => None,
        })
        .ok_or_else(|| PublishError::Internal("publishing recorded no version".into()))
}

/// Chunks are staging: once the upload has ended they go. Failing to
/// delete them now leaves them to nobody but costs only space, so it is
/// logged, not reported to the client.
async fn discard_chunks(app: &AppState, id: UploadId) {
    if let Err(e) = app.store.delete_chunks(id.0).await {
        tracing::warn!(error = %e, upload = %id, "cannot delete an upload's chunks");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_chunks_are_the_indexes_not_yet_stored() {
        assert_eq!(missing(&[], 3), [0, 1, 2]);
        assert_eq!(missing(&[0, 2], 4), [1, 3]);
        assert_eq!(missing(&[0, 1, 2], 3), Vec::<u32>::new());
        assert_eq!(missing(&[1, 5, 9], 3), [0, 2]);
    }
}

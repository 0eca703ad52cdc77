//! The dataset versions a job references, read from the log (a version is
//! immutable, and its `DatasetVersionPublished` event names its blob), and
//! their rows from the gateway's rows cache. Read when a job is created and
//! when its flows are leased; never from a view, which may lag.

use std::sync::Arc;

use datasets::Rows;
use domain::dataset::{Dataset, DatasetEvent, DatasetId, DatasetState};
use domain::job::DatasetVersionRef;
use domain::{BlobHash, DatasetKind};
use store::{Direction, StreamFrom};

use crate::state::AppState;

/// Why a referenced version cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("there is no dataset {0}")]
    NoDataset(uuid::Uuid),
    #[error("dataset {dataset} has no version {version}")]
    NoVersion { dataset: uuid::Uuid, version: u32 },
    #[error("dataset {dataset} holds {holds}, not {wanted}")]
    WrongKind {
        dataset: uuid::Uuid,
        holds: DatasetKind,
        wanted: DatasetKind,
    },
    #[error("{0}")]
    Internal(String),
}

/// A dataset's events read to find a version: one per version, rename and
/// deletion, so a dataset of thousands of versions is still read whole.
const MAX_EVENTS: usize = 100_000;

/// The blob of version `version` of `dataset`, as its publication recorded
/// it, with the dataset's state (owner, kind).
async fn version_blob(
    app: &AppState,
    version: DatasetVersionRef,
) -> Result<(DatasetState, BlobHash), VersionError> {
    let id = DatasetId(version.dataset);
    let stream = id.stream();
    let (_, state) = app
        .handler
        .load::<Dataset>(&stream)
        .await
        .map_err(|e| VersionError::Internal(e.to_string()))?;
    if state.dataset.is_none() {
        return Err(VersionError::NoDataset(version.dataset));
    }
    let events = app
        .store
        .read_stream(&stream, StreamFrom::Start, Direction::Forward, MAX_EVENTS)
        .await
        .map_err(|e| VersionError::Internal(e.to_string()))?;
    for recorded in events {
        if recorded.event_type != "DatasetVersionPublished" {
            continue;
        }
        if let Ok(DatasetEvent::DatasetVersionPublished(p)) =
            app.handler.registry().decode::<DatasetEvent>(&recorded)
            && p.version == version.version
        {
            return Ok((state, p.blob));
        }
    }
    Err(VersionError::NoVersion {
        dataset: version.dataset,
        version: version.version,
    })
}

/// The rows of a referenced version of `kind`.
pub async fn rows(
    app: &AppState,
    version: DatasetVersionRef,
    kind: DatasetKind,
) -> Result<(DatasetState, Arc<Rows>), VersionError> {
    let (state, blob) = version_blob(app, version).await?;
    let holds = state.dataset.as_ref().map(|d| d.kind);
    if let Some(holds) = holds.filter(|&h| h != kind) {
        return Err(VersionError::WrongKind {
            dataset: version.dataset,
            holds,
            wanted: kind,
        });
    }
    let rows = app
        .rows
        .get(app.store.as_ref(), blob)
        .await
        .map_err(|e| VersionError::Internal(e.to_string()))?;
    Ok((state, rows))
}

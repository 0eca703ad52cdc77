//! The `datasets` view: every live dataset with its latest version, and
//! every version of each. A deleted dataset leaves both tables.

use domain::RecordedEvent;
use domain::dataset::{DatasetEvent, VersionSource};
use store::Filter;

use crate::decode::registry;
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::{SqlValue, Statement};

pub struct DatasetsView;

/// One row per live dataset.
pub const TABLE: &str = "view_datasets";
/// One row per version of a live dataset.
pub const VERSIONS: &str = "view_dataset_versions";

const PREFIX: &str = "dataset-";

const SCHEMA: &[&str] = &[
    "CREATE TABLE view_datasets (
    dataset_id        TEXT NOT NULL PRIMARY KEY,
    owner             TEXT NOT NULL,
    kind              TEXT NOT NULL,
    name              TEXT NOT NULL,
    latest_version    BIGINT,
    row_count         BIGINT,
    blob              TEXT,
    catalogue_version BIGINT,
    published_at      BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
)",
    "CREATE INDEX view_datasets_owner ON view_datasets (owner, kind, dataset_id)",
    "CREATE TABLE view_dataset_versions (
    dataset_id        TEXT NOT NULL,
    version           BIGINT NOT NULL,
    row_count         BIGINT NOT NULL,
    blob              TEXT NOT NULL,
    format            TEXT,
    source_sha256     TEXT,
    upload_id         TEXT,
    catalogue_version BIGINT,
    published_at      BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, version)
)",
];

impl Projection for DatasetsView {
    fn name(&self) -> &'static str {
        "datasets"
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE, VERSIONS]
    }

    fn filter(&self) -> Filter {
        Filter::stream_prefix(PREFIX)
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let Some(id) = event.stream_id.as_str().strip_prefix(PREFIX) else {
            return Ok(());
        };
        let at = event.recorded_at;
        match registry().decode::<DatasetEvent>(event)? {
            DatasetEvent::DatasetCreated(c) => out.push(
                Statement::new(
                    "INSERT INTO view_datasets (dataset_id, owner, kind, name, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind(id)
                .bind(c.owner.as_str())
                .bind(c.kind.as_str())
                .bind(c.name.as_str())
                .bind(at),
            ),
            DatasetEvent::DatasetVersionPublished(p) => {
                let rows = SqlValue::try_from(p.rows)?;
                let catalogue = p.source.catalogue_version();
                let (format, sha256, upload) = match &p.source {
                    VersionSource::Upload {
                        upload,
                        format,
                        sha256,
                    } => (
                        SqlValue::Text(format_name(format)?),
                        SqlValue::Text(sha256.to_string()),
                        SqlValue::Text(upload.to_string()),
                    ),
                    VersionSource::Catalogue { .. } => (SqlValue::Null, SqlValue::Null, SqlValue::Null),
                };
                out.push(
                    Statement::new(
                        "UPDATE view_datasets SET latest_version = $2, row_count = $3, blob = $4, \
                         catalogue_version = $5, published_at = $6, updated_at = $6 WHERE dataset_id = $1",
                    )
                    .bind(id)
                    .bind(p.version)
                    .bind(rows.clone())
                    .bind(p.blob.to_string())
                    .bind(catalogue)
                    .bind(at),
                );
                out.push(
                    Statement::new(
                        "INSERT INTO view_dataset_versions (dataset_id, version, row_count, blob, format, \
                         source_sha256, upload_id, catalogue_version, published_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(id)
                    .bind(p.version)
                    .bind(rows)
                    .bind(p.blob.to_string())
                    .bind(format)
                    .bind(sha256)
                    .bind(upload)
                    .bind(catalogue)
                    .bind(at),
                );
            }
            DatasetEvent::DatasetRenamed(r) => out.push(
                Statement::new("UPDATE view_datasets SET name = $2, updated_at = $3 WHERE dataset_id = $1")
                    .bind(id)
                    .bind(r.name.as_str())
                    .bind(at),
            ),
            DatasetEvent::DatasetDeleted(_) => {
                for table in [TABLE, VERSIONS] {
                    out.push(
                        Statement::new(format!("DELETE FROM {table} WHERE dataset_id = $1")).bind(id),
                    );
                }
            }
        }
        Ok(())
    }
}

/// The format's serde name (`Csv`), which the GraphQL face reads back.
pub fn format_name(format: &domain::ImportFormat) -> Result<String, ProjectionError> {
    match serde_json::to_value(format)? {
        serde_json::Value::String(name) => Ok(name),
        other => Err(ProjectionError::Invalid(format!(
            "import format {other} is not a name"
        ))),
    }
}

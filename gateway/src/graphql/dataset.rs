//! Datasets over GraphQL: the logged-in account's datasets and their
//! versions from the `datasets` view, a version's rows in pages (decoded
//! once, from its blob, and cached), renaming and deleting, publishing the
//! built-in device catalogue, and `datasetChanged` live.

use std::str::FromStr;
use std::sync::LazyLock;

use async_graphql::{
    ComplexObject, Context, Enum, ErrorExtensionValues, Object, SimpleObject, Subscription,
};
use datasets::{Rows, catalogue};
use domain::dataset::{
    Dataset as DatasetDecider, DatasetCommand, DatasetError, DatasetEvent, DatasetId, DatasetName,
    NewDataset, VersionSource,
};
use domain::{BlobHash, DatasetKind, ImportFormat};
use futures_util::{Stream, StreamExt};
use projections::{Row, SqlValue, datasets_view};
use store::Filter;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::dataset_references;
use crate::graphql::cursor;
use crate::graphql::dataset_rows::{self, DatasetRow};
use crate::graphql::error::{self, Code, Coded};
use crate::graphql::licence::licensed_decision;
use crate::graphql::session_watch::{Seen, under_session};
use crate::graphql::upload::publish_error;
use crate::graphql::{app, check_first, decision, from_micros, handle, meta, principal, row_err};
use crate::publishing::{self, Target};

/// A dataset of the logged-in account, with its latest version.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Dataset {
    pub id: Uuid,
    pub kind: DatasetKind,
    pub name: String,
    /// Null until a version is published.
    pub latest_version: Option<u32>,
    /// Rows in the latest version.
    pub row_count: Option<u64>,
    pub published_at: Option<OffsetDateTime>,
    /// For a device-profile dataset published from the built-in catalogue:
    /// the catalogue's version then.
    pub catalogue_version: Option<u32>,
    /// A newer built-in catalogue ships than the one the latest version
    /// came from: `publishDeviceCatalogue(dataset: id)` brings it in.
    pub update_available: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    #[graphql(skip)]
    blob: Option<BlobHash>,
}

/// One published version.
#[derive(SimpleObject)]
pub struct DatasetVersion {
    pub version: u32,
    pub row_count: u64,
    /// The rows' blob (SHA-256, hex).
    pub blob: String,
    /// How it came: the uploaded file's format and SHA-256, and the upload.
    pub format: Option<ImportFormat>,
    pub source_sha256: Option<String>,
    pub upload_id: Option<Uuid>,
    /// Or the built-in catalogue's version.
    pub catalogue_version: Option<u32>,
    pub published_at: OffsetDateTime,
}

/// A page of a version's rows.
#[derive(SimpleObject)]
pub struct RowPage {
    pub version: u32,
    /// Rows in the version.
    pub total: u64,
    pub offset: u32,
    pub rows: Vec<DatasetRow>,
}

#[derive(SimpleObject)]
pub struct DatasetPage {
    /// In creation order.
    pub entries: Vec<Dataset>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[ComplexObject]
impl Dataset {
    /// Every version, oldest first.
    async fn versions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<DatasetVersion>> {
        static VERSIONS: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT * FROM {} WHERE dataset_id = $1 ORDER BY version",
                datasets_view::VERSIONS
            )
        });
        let rows = app(ctx)
            .views
            .query(&VERSIONS, vec![SqlValue::from(self.id.to_string())])
            .await
            .map_err(|e| error::internal("cannot read the dataset's versions", &e))?;
        rows.iter().map(version_from).collect()
    }

    /// Rows `offset` to `offset + first` of `version` (default: the latest).
    async fn rows(
        &self,
        ctx: &Context<'_>,
        version: Option<u32>,
        #[graphql(default = 100)] first: i32,
        #[graphql(default = 0)] offset: u32,
    ) -> async_graphql::Result<RowPage> {
        check_first(first)?;
        let (version, blob) = match (version, self.latest_version, self.blob) {
            (None, Some(latest), Some(blob)) => (latest, blob),
            (None, _, _) => {
                return Err(error::error(
                    Code::NotFound,
                    "the dataset has no version yet",
                ));
            }
            (Some(v), _, _) => (v, self.blob_of(ctx, v).await?),
        };
        let app = app(ctx);
        let rows = app
            .rows
            .get(app.store.as_ref(), blob)
            .await
            .map_err(|e| error::internal("cannot read the version's rows", &e))?;
        Ok(RowPage {
            version,
            total: rows.len() as u64,
            offset,
            rows: dataset_rows::page(&rows, offset as usize, first as usize),
        })
    }
}

impl Dataset {
    async fn blob_of(&self, ctx: &Context<'_>, version: u32) -> async_graphql::Result<BlobHash> {
        static BLOB: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT blob FROM {} WHERE dataset_id = $1 AND version = $2",
                datasets_view::VERSIONS
            )
        });
        let rows = app(ctx)
            .views
            .query(
                &BLOB,
                vec![SqlValue::from(self.id.to_string()), SqlValue::from(version)],
            )
            .await
            .map_err(|e| error::internal("cannot read the dataset's versions", &e))?;
        let row = rows.first().ok_or_else(|| {
            error::error(
                Code::NotFound,
                format!("version: the dataset has no version {version}"),
            )
        })?;
        let blob: String = row.get("blob").map_err(row_err)?;
        blob.parse().map_err(row_err)
    }
}

#[derive(Default)]
pub struct DatasetQuery;

#[Object]
impl DatasetQuery {
    /// The logged-in account's datasets (of one kind, if given), `first`
    /// after the cursor `after`.
    async fn datasets(
        &self,
        ctx: &Context<'_>,
        kind: Option<DatasetKind>,
        #[graphql(default = 100)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<DatasetPage> {
        static OWN: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT * FROM {} WHERE owner = $1 AND ($2 = '' OR kind = $2) AND dataset_id > $3 \
                 ORDER BY dataset_id LIMIT $4",
                datasets_view::TABLE
            )
        });
        let p = principal(ctx)?;
        check_first(first)?;
        let after = match after {
            None => String::new(),
            Some(cursor) => Uuid::parse_str(&cursor)
                .map_err(|_| {
                    error::invalid(
                        "after",
                        format!("{cursor:?} is not a cursor returned by datasets"),
                    )
                })?
                .to_string(),
        };
        let rows = app(ctx)
            .views
            .query(
                &OWN,
                vec![
                    SqlValue::from(p.username.as_str()),
                    // '': every kind.
                    SqlValue::from(kind.map_or("", DatasetKind::as_str)),
                    SqlValue::from(after),
                    SqlValue::Int(i64::from(first) + 1),
                ],
            )
            .await
            .map_err(|e| error::internal("cannot read datasets", &e))?;
        let entries = rows
            .iter()
            .take(first as usize)
            .map(dataset_from)
            .collect::<async_graphql::Result<Vec<_>>>()?;
        let next_cursor = (rows.len() > first as usize)
            .then(|| entries.last().map(|d| d.id.to_string()))
            .flatten();
        Ok(DatasetPage {
            entries,
            next_cursor,
        })
    }

    /// One of the logged-in account's datasets, with its versions and rows.
    async fn dataset(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Dataset> {
        own_dataset(ctx, id).await
    }
}

/// The logged-in account's dataset `id` from the view, or NOT_FOUND.
pub(crate) async fn own_dataset(ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Dataset> {
    static ONE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT * FROM {} WHERE dataset_id = $1 AND owner = $2",
            datasets_view::TABLE
        )
    });
    let p = principal(ctx)?;
    let rows = app(ctx)
        .views
        .query(
            &ONE,
            vec![
                SqlValue::from(id.to_string()),
                SqlValue::from(p.username.as_str()),
            ],
        )
        .await
        .map_err(|e| error::internal("cannot read the dataset", &e))?;
    match rows.first() {
        Some(row) => dataset_from(row),
        None => Err(error::error(
            Code::NotFound,
            format!("id: you have no dataset {id}"),
        )),
    }
}

/// A version just published.
#[derive(SimpleObject)]
pub struct PublishedVersion {
    pub dataset_id: Uuid,
    pub version: u32,
}

/// The name of a dataset made from the catalogue when none is given.
const CATALOGUE_NAME: &str = "Device catalogue";

#[derive(Default)]
pub struct DatasetMutation;

#[Object]
impl DatasetMutation {
    /// Publishes the built-in device catalogue in one step: as a new
    /// device-profile dataset (named `name`, default "Device catalogue"),
    /// or as a new version of `dataset` (when it says `updateAvailable`).
    async fn publish_device_catalogue(
        &self,
        ctx: &Context<'_>,
        name: Option<String>,
        dataset: Option<Uuid>,
    ) -> async_graphql::Result<PublishedVersion> {
        let owner = principal(ctx)?.username.clone();
        let target = match dataset {
            Some(id) => Target {
                dataset: DatasetId(id),
                create: None,
            },
            None => Target {
                dataset: DatasetId::new(),
                create: Some(NewDataset {
                    name: DatasetName::parse(name.as_deref().unwrap_or(CATALOGUE_NAME))
                        .map_err(|e| error::invalid("name", e))?,
                    owner: owner.clone(),
                }),
            },
        };
        let decision = licensed_decision(ctx, &owner).await?;
        let published = publishing::publish_rows(
            app(ctx),
            Rows::DeviceProfiles(catalogue::device_profiles()),
            target,
            VersionSource::Catalogue {
                version: catalogue::VERSION,
            },
            &decision,
            &meta(None),
        )
        .await
        .map_err(publish_error)?;
        Ok(PublishedVersion {
            dataset_id: published.dataset.0,
            version: published.version,
        })
    }

    /// Renames one of the logged-in account's datasets.
    async fn rename_dataset(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        name: String,
    ) -> async_graphql::Result<bool> {
        let name = DatasetName::parse(&name).map_err(|e| error::invalid("name", e))?;
        let dataset = DatasetId(id);
        handle::<DatasetDecider>(
            ctx,
            &dataset.stream(),
            DatasetCommand::Rename { name },
            &decision(ctx)?,
            None,
        )
        .await?;
        Ok(true)
    }

    /// Deletes one of the logged-in account's datasets, unless a job or a
    /// schedule uses one of its versions (the error names them).
    async fn delete_dataset(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<bool> {
        let dataset = DatasetId(id);
        let references = dataset_references::referrers(app(ctx), dataset)
            .await
            .map_err(|e| error::internal("cannot find what uses the dataset", &e))?;
        handle::<DatasetDecider>(
            ctx,
            &dataset.stream(),
            DatasetCommand::Delete { references },
            &decision(ctx)?,
            None,
        )
        .await?;
        Ok(true)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum DatasetChangeKind {
    Created,
    Published,
    Renamed,
    Deleted,
}

/// A change to one of the account's datasets; read `dataset(id)` for the rest.
#[derive(SimpleObject, Clone)]
pub struct DatasetChanged {
    /// The position of the event; pass as `after` to resume.
    pub position: String,
    pub dataset_id: Uuid,
    pub kind: DatasetKind,
    pub change: DatasetChangeKind,
    /// The version published, for `PUBLISHED`.
    pub version: Option<u32>,
    /// The name given, for `CREATED` and `RENAMED`.
    pub name: Option<String>,
}

#[derive(Default)]
pub struct DatasetSubscription;

#[Subscription]
impl DatasetSubscription {
    /// The logged-in account's datasets (of one kind, if given) as they
    /// are created, published, renamed and deleted; with `after` (a
    /// change's `position`), the changes since then first.
    async fn dataset_changed(
        &self,
        ctx: &Context<'_>,
        kind: Option<DatasetKind>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = DatasetChanged>> {
        let p = principal(ctx)?.clone();
        let after = cursor("after", after.as_deref())?;
        let app = app(ctx).clone();
        let owner = p.username.clone();
        let filter = Filter::stream_prefix("dataset-");
        Ok(
            under_session(app.clone(), p, Some(filter), after).filter_map(move |seen| {
                let (app, owner) = (app.clone(), owner.clone());
                async move {
                    let Seen::Event(event) = seen else {
                        return None;
                    };
                    let id =
                        DatasetId::from_str(event.stream_id.as_str().strip_prefix("dataset-")?)
                            .ok()?;
                    let change = app.handler.registry().decode::<DatasetEvent>(&event).ok()?;
                    // The owner and kind never change: the state as it is now says.
                    let (_, state) = app
                        .handler
                        .load::<DatasetDecider>(&id.stream())
                        .await
                        .ok()?;
                    let info = state.dataset?;
                    if info.owner != owner || kind.is_some_and(|k| k != info.kind) {
                        return None;
                    }
                    let (change, version, name) = match change {
                        DatasetEvent::DatasetCreated(c) => {
                            (DatasetChangeKind::Created, None, Some(c.name.to_string()))
                        }
                        DatasetEvent::DatasetVersionPublished(v) => {
                            (DatasetChangeKind::Published, Some(v.version), None)
                        }
                        DatasetEvent::DatasetRenamed(r) => {
                            (DatasetChangeKind::Renamed, None, Some(r.name.to_string()))
                        }
                        DatasetEvent::DatasetDeleted(_) => (DatasetChangeKind::Deleted, None, None),
                    };
                    Some(DatasetChanged {
                        position: event.position.to_string(),
                        dataset_id: id.0,
                        kind: info.kind,
                        change,
                        version,
                        name,
                    })
                }
            }),
        )
    }
}

fn dataset_from(row: &Row) -> async_graphql::Result<Dataset> {
    let id: String = row.get("dataset_id").map_err(row_err)?;
    let kind: String = row.get("kind").map_err(row_err)?;
    let kind = DatasetKind::from_str(&kind).map_err(row_err)?;
    let catalogue_version = row
        .get::<Option<i64>>("catalogue_version")
        .map_err(row_err)?
        .map(|v| v as u32);
    let blob = row
        .get::<Option<String>>("blob")
        .map_err(row_err)?
        .map(|b| b.parse::<BlobHash>())
        .transpose()
        .map_err(row_err)?;
    Ok(Dataset {
        id: Uuid::parse_str(&id).map_err(row_err)?,
        kind,
        name: row.get("name").map_err(row_err)?,
        latest_version: row
            .get::<Option<i64>>("latest_version")
            .map_err(row_err)?
            .map(|v| v as u32),
        row_count: row.get("row_count").map_err(row_err)?,
        published_at: row
            .get::<Option<i64>>("published_at")
            .map_err(row_err)?
            .map(from_micros),
        update_available: catalogue_version.is_some_and(|v| v < catalogue::VERSION),
        catalogue_version,
        created_at: from_micros(row.get("created_at").map_err(row_err)?),
        updated_at: from_micros(row.get("updated_at").map_err(row_err)?),
        blob,
    })
}

fn version_from(row: &Row) -> async_graphql::Result<DatasetVersion> {
    let text = |column: &str| row.get::<Option<String>>(column).map_err(row_err);
    let format = text("format")?
        .map(|f| serde_json::from_value::<ImportFormat>(serde_json::Value::String(f)))
        .transpose()
        .map_err(row_err)?;
    Ok(DatasetVersion {
        version: row.get::<i64>("version").map_err(row_err)? as u32,
        row_count: row.get("row_count").map_err(row_err)?,
        blob: row.get("blob").map_err(row_err)?,
        format,
        source_sha256: text("source_sha256")?,
        upload_id: text("upload_id")?
            .map(|u| Uuid::parse_str(&u))
            .transpose()
            .map_err(row_err)?,
        catalogue_version: row
            .get::<Option<i64>>("catalogue_version")
            .map_err(row_err)?
            .map(|v| v as u32),
        published_at: from_micros(row.get("published_at").map_err(row_err)?),
    })
}

impl Coded for DatasetError {
    fn code(&self) -> Code {
        match self {
            DatasetError::NotFound | DatasetError::Deleted => Code::NotFound,
            DatasetError::NotOwner => Code::Forbidden,
            DatasetError::KindMismatch { .. } => Code::Validation,
            DatasetError::NotLicensed(n) => n.code(),
            DatasetError::Referenced(_) => Code::Conflict,
        }
    }

    fn extend(&self, x: &mut ErrorExtensionValues) {
        match self {
            DatasetError::NotLicensed(n) => n.extend(x),
            DatasetError::Referenced(referrers) => {
                let names: Vec<String> = referrers.iter().map(ToString::to_string).collect();
                x.set("referrers", names);
            }
            _ => {}
        }
    }
}

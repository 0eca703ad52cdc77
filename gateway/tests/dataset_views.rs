//! The dataset views projected from commands run through the real command
//! handler on real stores, and equal to themselves after a rebuild.

use std::sync::Arc;

use domain::account::Username;
use domain::dataset::{
    Dataset, DatasetCommand, DatasetId, DatasetName, NewDataset, NewVersion, VersionSource,
};
use domain::licence::{Allowances, LicenceTerms};
use domain::upload::{
    Destination, RowProblem, Upload, UploadCommand, UploadFailure, UploadId, UploadStarted,
};
use domain::{Actor, BlobHash, Context, DatasetKind, ImportFormat, Role, RowsSummary};
use gateway::{CommandHandler, CommandMeta};
use projections::{ProjectionEngine, SqlValue, ViewStore};
use store::testing::{TestStore, eventually};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

fn ada(now: OffsetDateTime) -> Context {
    Context::new(
        now,
        Actor::Account {
            account_id: Uuid::now_v7(),
            username: "ada".into(),
            roles: [Role::User].into(),
        },
    )
    .with_licence(LicenceTerms {
        allows: Allowances {
            max_targets: 100,
            ..Allowances::default()
        },
        expires_at: now + Duration::days(1),
    })
}

/// Every row of `table` in key order, as values.
async fn rows(views: &ViewStore, sql: &str) -> Vec<Vec<SqlValue>> {
    views
        .query(sql, vec![])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.values().to_vec())
        .collect()
}

const DATASETS: &str = "SELECT dataset_id, owner, kind, name, latest_version, row_count, blob, catalogue_version \
     FROM view_datasets ORDER BY dataset_id";
const VERSIONS: &str = "SELECT dataset_id, version, row_count, blob, format, source_sha256, upload_id, catalogue_version \
     FROM view_dataset_versions ORDER BY dataset_id, version";
const UPLOADS: &str = "SELECT upload_id, owner, status FROM view_uploads ORDER BY upload_id";

mod cases {
    use super::*;

    pub async fn the_dataset_views_follow_uploads_versions_renames_and_deletes(store: &TestStore) {
        let events = store.open().await;
        let views = ViewStore::open(&store.open_backend().await).await.unwrap();
        let engine =
            ProjectionEngine::start(events.clone(), views, projections::all_views()).unwrap();
        let handler = CommandHandler::new(events, Arc::new(domain::event_registry()));
        let meta = CommandMeta::default();
        let now = OffsetDateTime::now_utc();
        let ctx = ada(now);
        let run = |stream: domain::StreamId, command| {
            let (handler, meta, ctx) = (&handler, &meta, &ctx);
            async move {
                handler
                    .handle::<Dataset>(&stream, command, ctx, meta)
                    .await
                    .unwrap();
            }
        };
        let upload = |command: UploadCommand, id: UploadId, ctx: Context| {
            let (handler, meta) = (&handler, &meta);
            async move {
                handler
                    .handle::<Upload>(&id.stream(), command, &ctx, meta)
                    .await
                    .unwrap();
            }
        };
        let (shop, devices, gone) = (DatasetId::new(), DatasetId::new(), DatasetId::new());
        let (finished, failed, abandoned) = (UploadId::new(), UploadId::new(), UploadId::new());
        // Published by a client of its own, say: only its version matters here.
        let json_upload = UploadId::new();
        let plan = |dataset| UploadStarted {
            owner: Username::parse("ada").unwrap(),
            kind: DatasetKind::Targets,
            name: DatasetName::parse("Shop").unwrap(),
            format: ImportFormat::Csv,
            size: 10,
            sha256: BlobHash([9; 32]),
            chunk_size: 1024,
            sheet: None,
            destination: Destination::NewDataset { dataset },
            expires_at: now + Duration::hours(1),
        };
        let version = |kind, rows, blob: u8, source| NewVersion {
            kind,
            summary: RowsSummary {
                rows,
                ..RowsSummary::default()
            },
            blob: BlobHash([blob; 32]),
            source,
        };
        let from_upload = VersionSource::Upload {
            upload: finished,
            format: ImportFormat::Csv,
            sha256: BlobHash([9; 32]),
        };

        // An upload makes the shop's dataset; a second version follows; a rename.
        upload(UploadCommand::Start(plan(shop)), finished, ctx.clone()).await;
        let create = Some(NewDataset {
            owner: Username::parse("ada").unwrap(),
            name: DatasetName::parse("Shop").unwrap(),
        });
        run(
            shop.stream(),
            DatasetCommand::Publish {
                create: create.clone(),
                version: version(DatasetKind::Targets, 3, 1, from_upload.clone()),
            },
        )
        .await;
        let finish = UploadCommand::Finish {
            dataset: shop,
            version: 1,
        };
        upload(finish, finished, ctx.clone()).await;
        run(
            shop.stream(),
            DatasetCommand::Publish {
                create: None,
                version: version(
                    DatasetKind::Targets,
                    5,
                    2,
                    VersionSource::Upload {
                        upload: json_upload,
                        format: ImportFormat::Json,
                        sha256: BlobHash([8; 32]),
                    },
                ),
            },
        )
        .await;
        run(
            shop.stream(),
            DatasetCommand::Rename {
                name: DatasetName::parse("Shop, renamed").unwrap(),
            },
        )
        .await;
        // The device catalogue; and a dataset deleted, gone from both tables.
        let catalogue = |version| VersionSource::Catalogue { version };
        run(
            devices.stream(),
            DatasetCommand::Publish {
                create: create.clone(),
                version: version(DatasetKind::DeviceProfiles, 12, 3, catalogue(1)),
            },
        )
        .await;
        run(
            gone.stream(),
            DatasetCommand::Publish {
                create,
                version: version(DatasetKind::Targets, 1, 4, from_upload.clone()),
            },
        )
        .await;
        run(gone.stream(), DatasetCommand::Delete { references: vec![] }).await;
        // An upload refused, and one abandoned and expired.
        upload(
            UploadCommand::Start(plan(DatasetId::new())),
            failed,
            ctx.clone(),
        )
        .await;
        let bad_row = UploadFailure::Rows {
            count: 1,
            first: vec![RowProblem {
                line: 2,
                column: Some("url".into()),
                reason: "not a URL".into(),
            }],
        };
        upload(
            UploadCommand::Fail { failure: bad_row },
            failed,
            ctx.clone(),
        )
        .await;
        upload(
            UploadCommand::Start(plan(DatasetId::new())),
            abandoned,
            ctx.clone(),
        )
        .await;
        let later = Context::new(now + Duration::hours(2), Actor::System);
        upload(UploadCommand::Expire, abandoned, later).await;

        let text = |s: &str| SqlValue::Text(s.into());
        let hash = |b: u8| text(&BlobHash([b; 32]).to_string());
        let (id, devices_id) = (shop.to_string(), devices.to_string());
        let mut expected_datasets = vec![
            vec![
                text(&id),
                text("ada"),
                text("targets"),
                text("Shop, renamed"),
                SqlValue::Int(2),
                SqlValue::Int(5),
                hash(2),
                SqlValue::Null,
            ],
            vec![
                text(&devices_id),
                text("ada"),
                text("deviceProfiles"),
                text("Shop"),
                SqlValue::Int(1),
                SqlValue::Int(12),
                hash(3),
                SqlValue::Int(1),
            ],
        ];
        let mut expected_versions = vec![
            vec![
                text(&id),
                SqlValue::Int(1),
                SqlValue::Int(3),
                hash(1),
                text("Csv"),
                hash(9),
                text(&finished.to_string()),
                SqlValue::Null,
            ],
            vec![
                text(&devices_id),
                SqlValue::Int(1),
                SqlValue::Int(12),
                hash(3),
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Int(1),
            ],
        ];
        expected_versions.push(vec![
            text(&id),
            SqlValue::Int(2),
            SqlValue::Int(5),
            hash(2),
            text("Json"),
            hash(8),
            text(&json_upload.to_string()),
            SqlValue::Null,
        ]);
        expected_datasets.sort_by_key(|r| r[0].to_string());
        expected_versions.sort_by_key(|r| (r[0].to_string(), r[1].to_string()));
        let mut expected_uploads = vec![
            vec![text(&finished.to_string()), text("ada"), text("finished")],
            vec![text(&failed.to_string()), text("ada"), text("failed")],
            vec![text(&abandoned.to_string()), text("ada"), text("expired")],
        ];
        expected_uploads.sort_by_key(|r| r[0].to_string());
        let all = || async {
            let v = engine.views();
            (
                rows(v, DATASETS).await,
                rows(v, VERSIONS).await,
                rows(v, UPLOADS).await,
            )
        };
        let expected = (expected_datasets, expected_versions, expected_uploads);
        engine.wait_until_live().await.unwrap();
        eventually("the dataset views", || async { all().await == expected }).await;
        for view in ["datasets", "uploads"] {
            engine.rebuild(view).await.unwrap();
        }
        engine.wait_until_live().await.unwrap();
        eventually("the rebuilt dataset views", || async {
            all().await == expected
        })
        .await;
        // The decider's own record agrees with the view.
        let (_, state) = handler.load::<Dataset>(&shop.stream()).await.unwrap();
        assert_eq!(state.dataset.unwrap().latest, 2);
        let (_, state) = handler.load::<Upload>(&failed.stream()).await.unwrap();
        assert!(matches!(
            state.outcome,
            Some(domain::upload::Outcome::Failed(UploadFailure::Rows {
                count: 1,
                ..
            }))
        ));
        engine.shutdown().await;
    }
}

store::each_backend!(the_dataset_views_follow_uploads_versions_renames_and_deletes);

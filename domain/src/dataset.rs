//! A dataset: an account's rows of one kind (targets, proxies, device
//! profiles, settings profiles), published as immutable numbered versions.
//! Stream `dataset-<id>`.
//!
//! The rows live in the blob store; a version names its blob by hash, with
//! its row count and where it came from. Publishing checks the licence in
//! force against what the rows ask of it ([`RowsSummary`]), so the decider
//! never sees the rows. Deleting is refused while a job or schedule refers
//! to the dataset: who refers to it arrives in the command, from the
//! gateway, so the rule is decided here without reading other aggregates.

use std::fmt;

use crate::account::Username;
use crate::blob::BlobHash;
use crate::dataset_kind::{DatasetKind, ImportFormat, RowsSummary};
use crate::decider::{Context, Decider};
use crate::envelope::StreamId;
use crate::licence::{Feature, Limit, NotLicensed};
use crate::upload::UploadId;
use serde::{Deserialize, Serialize};

crate::uuid_id::uuid_id!(
    /// A dataset's identity, chosen by the gateway when its first upload starts.
    DatasetId,
    "dataset"
);

/// How long a dataset's name may be, in characters.
pub const MAX_NAME: usize = 100;

/// A dataset's name as its owner sees it: trimmed, one line, 1 to 100
/// characters. Not unique: the id identifies a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatasetName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatasetNameError {
    #[error("a dataset needs a name")]
    Empty,
    #[error("the name is {len} characters long; keep it to {MAX_NAME}")]
    TooLong { len: usize },
    #[error("the name must be one line, without control characters")]
    ControlCharacter,
}

impl DatasetName {
    pub fn parse(raw: &str) -> Result<Self, DatasetNameError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(DatasetNameError::Empty);
        }
        let len = name.chars().count();
        if len > MAX_NAME {
            return Err(DatasetNameError::TooLong { len });
        }
        if name.chars().any(char::is_control) {
            return Err(DatasetNameError::ControlCharacter);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DatasetName {
    type Error = DatasetNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DatasetName> for String {
    fn from(n: DatasetName) -> String {
        n.0
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a version's rows came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum VersionSource {
    /// A file uploaded in chunks: the upload, its format and the SHA-256 of
    /// the file as sent (the blob holds the parsed rows, not the file).
    Upload {
        upload: UploadId,
        format: ImportFormat,
        sha256: BlobHash,
    },
    /// The gateway's built-in device catalogue, at this catalogue version.
    Catalogue { version: u32 },
}

impl VersionSource {
    /// The catalogue version the rows came from, if they did.
    pub fn catalogue_version(&self) -> Option<u32> {
        match self {
            VersionSource::Catalogue { version } => Some(*version),
            VersionSource::Upload { .. } => None,
        }
    }
}

impl fmt::Display for VersionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionSource::Upload { upload, format, .. } => {
                let format = format!("{format:?}").to_lowercase();
                write!(f, "upload {upload} ({format})")
            }
            VersionSource::Catalogue { version } => {
                write!(f, "the built-in device catalogue (version {version})")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetCreated {
    pub owner: Username,
    pub kind: DatasetKind,
    pub name: DatasetName,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetVersionPublished {
    /// 1 for the first version, then one more each time.
    pub version: u32,
    pub rows: u64,
    /// The rows, encoded, in the blob store.
    pub blob: BlobHash,
    pub source: VersionSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRenamed {
    pub name: DatasetName,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetDeleted {
    pub by: String,
}

crate::event_set! {
    /// What happens to a dataset.
    pub enum DatasetEvent {
        DatasetCreated(DatasetCreated) = 1,
        DatasetVersionPublished(DatasetVersionPublished) = 1,
        DatasetRenamed(DatasetRenamed) = 1,
        DatasetDeleted(DatasetDeleted) = 1,
    }
}

impl crate::registry::Summary for DatasetEvent {
    fn summary(&self, stream: &StreamId) -> String {
        let id = stream
            .as_str()
            .strip_prefix("dataset-")
            .unwrap_or(stream.as_str());
        match self {
            Self::DatasetCreated(c) => format!(
                "{} dataset {id} \"{}\" created for {}",
                c.kind, c.name, c.owner
            ),
            Self::DatasetVersionPublished(p) => format!(
                "version {} of dataset {id} published: {} rows from {}",
                p.version, p.rows, p.source
            ),
            Self::DatasetRenamed(r) => {
                format!("dataset {id} renamed to \"{}\" by {}", r.name, r.by)
            }
            Self::DatasetDeleted(d) => format!("dataset {id} deleted by {}", d.by),
        }
    }
}

/// What refers to a dataset, so that it may not be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub kind: ReferrerKind,
    /// The job's or schedule's id.
    pub id: String,
    /// The dataset version it uses.
    pub version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferrerKind {
    Job,
    Schedule,
}

impl fmt::Display for Referrer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ReferrerKind::Job => "job",
            ReferrerKind::Schedule => "schedule",
        };
        write!(f, "{kind} {} (version {})", self.id, self.version)
    }
}

/// A dataset to create with its first version.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDataset {
    pub owner: Username,
    pub name: DatasetName,
}

/// A version to publish: the rows' kind and what they ask of the licence,
/// the blob already stored, and where the rows came from.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    pub kind: DatasetKind,
    pub summary: RowsSummary,
    pub blob: BlobHash,
    pub source: VersionSource,
}

/// Commands on a dataset.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetCommand {
    /// Publishes a new version; with `create`, makes the dataset first if
    /// it does not exist yet.
    Publish {
        create: Option<NewDataset>,
        version: NewVersion,
    },
    Rename {
        name: DatasetName,
    },
    /// Deletes the dataset unless one of `references` (every job and
    /// schedule that uses one of its versions) still does.
    Delete {
        references: Vec<Referrer>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatasetError {
    #[error("no such dataset")]
    NotFound,
    #[error("the dataset was deleted")]
    Deleted,
    #[error("forbidden: only the dataset's owner may change it")]
    NotOwner,
    #[error("the dataset holds {dataset}, and these rows are {rows}")]
    KindMismatch {
        dataset: DatasetKind,
        rows: DatasetKind,
    },
    #[error(transparent)]
    NotLicensed(#[from] NotLicensed),
    #[error("the dataset is still used by {}; remove it from them first", list(.0))]
    Referenced(Vec<Referrer>),
}

fn list(referrers: &[Referrer]) -> String {
    referrers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A dataset as its decider sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub owner: Username,
    pub kind: DatasetKind,
    pub name: DatasetName,
    /// The latest version; 0 before the first.
    pub latest: u32,
    pub deleted: bool,
}

/// `None` until the dataset is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetState {
    pub dataset: Option<DatasetInfo>,
}

impl DatasetState {
    /// The dataset, deleted or not, if `ctx`'s actor owns it.
    pub fn owned(&self, ctx: &Context) -> Result<&DatasetInfo, DatasetError> {
        let info = self.dataset.as_ref().ok_or(DatasetError::NotFound)?;
        if ctx.actor.is_account(info.owner.as_str()) {
            Ok(info)
        } else {
            Err(DatasetError::NotOwner)
        }
    }

    /// The live dataset, if `ctx`'s actor owns it: the guard every change
    /// and every read of a dataset passes.
    pub fn owned_by(&self, ctx: &Context) -> Result<&DatasetInfo, DatasetError> {
        let info = self.owned(ctx)?;
        if info.deleted {
            return Err(DatasetError::Deleted);
        }
        Ok(info)
    }
}

/// Does the licence in force allow rows that ask for `summary`?
pub fn require_licence(
    kind: DatasetKind,
    summary: &RowsSummary,
    ctx: &Context,
) -> Result<(), NotLicensed> {
    match kind {
        DatasetKind::Targets => ctx.require_within(Limit::MaxTargets, summary.rows)?,
        DatasetKind::Proxies => ctx.require(Feature::ImportProxy)?,
        DatasetKind::DeviceProfiles | DatasetKind::SettingsProfiles => {}
    }
    if summary.human_surfing {
        ctx.require(Feature::HumanSurfing)?;
    }
    if summary.external_clicks {
        ctx.require(Feature::ExternalClicks)?;
    }
    if summary.max_instances > 0 {
        ctx.require_within(Limit::MaxInstances, u64::from(summary.max_instances))?;
    }
    Ok(())
}

pub struct Dataset;

inventory::submit! { crate::replay::Replayer::of::<Dataset>() }

impl Decider for Dataset {
    const SNAPSHOT_KIND: &'static str = "dataset/1";
    type State = DatasetState;
    type Command = DatasetCommand;
    type Event = DatasetEvent;
    type Error = DatasetError;

    fn evolve(mut state: DatasetState, event: &DatasetEvent) -> DatasetState {
        match event {
            DatasetEvent::DatasetCreated(c) => {
                state.dataset = Some(DatasetInfo {
                    owner: c.owner.clone(),
                    kind: c.kind,
                    name: c.name.clone(),
                    latest: 0,
                    deleted: false,
                });
            }
            DatasetEvent::DatasetVersionPublished(p) => {
                if let Some(d) = &mut state.dataset {
                    d.latest = p.version;
                }
            }
            DatasetEvent::DatasetRenamed(r) => {
                if let Some(d) = &mut state.dataset {
                    d.name = r.name.clone();
                }
            }
            DatasetEvent::DatasetDeleted(_) => {
                if let Some(d) = &mut state.dataset {
                    d.deleted = true;
                }
            }
        }
        state
    }

    fn decide(
        state: &DatasetState,
        command: DatasetCommand,
        ctx: &Context,
    ) -> Result<Vec<DatasetEvent>, DatasetError> {
        match command {
            DatasetCommand::Publish { create, version } => publish(state, create, version, ctx),
            DatasetCommand::Rename { name } => {
                let info = state.owned_by(ctx)?;
                if info.name == name {
                    return Ok(vec![]);
                }
                Ok(vec![DatasetEvent::DatasetRenamed(DatasetRenamed {
                    name,
                    by: ctx.actor.name(),
                })])
            }
            DatasetCommand::Delete { references } => {
                if state.owned(ctx)?.deleted {
                    return Ok(vec![]);
                }
                if !references.is_empty() {
                    return Err(DatasetError::Referenced(references));
                }
                Ok(vec![DatasetEvent::DatasetDeleted(DatasetDeleted {
                    by: ctx.actor.name(),
                })])
            }
        }
    }
}

fn publish(
    state: &DatasetState,
    create: Option<NewDataset>,
    version: NewVersion,
    ctx: &Context,
) -> Result<Vec<DatasetEvent>, DatasetError> {
    let mut events = Vec::with_capacity(2);
    let latest = match (&state.dataset, create) {
        (None, None) => return Err(DatasetError::NotFound),
        (None, Some(new)) => {
            if !ctx.actor.is_account(new.owner.as_str()) {
                return Err(DatasetError::NotOwner);
            }
            events.push(DatasetEvent::DatasetCreated(DatasetCreated {
                owner: new.owner,
                kind: version.kind,
                name: new.name,
            }));
            0
        }
        // Created already (a retried first upload): publish as to any dataset.
        (Some(_), _) => {
            let info = state.owned_by(ctx)?;
            if info.kind != version.kind {
                return Err(DatasetError::KindMismatch {
                    dataset: info.kind,
                    rows: version.kind,
                });
            }
            info.latest
        }
    };
    require_licence(version.kind, &version.summary, ctx)?;
    events.push(DatasetEvent::DatasetVersionPublished(
        DatasetVersionPublished {
            version: latest + 1,
            rows: version.summary.rows,
            blob: version.blob,
            source: version.source,
        },
    ));
    Ok(events)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use time::{Duration, OffsetDateTime};

    use super::*;
    use crate::decider::Role;
    use crate::licence::{Allowances, LicenceTerms, OverLimit};
    use crate::registry::Summary;
    use crate::spec::{Spec, acting_as};

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn allows() -> Allowances {
        Allowances {
            max_instances: 4,
            human_surfing: true,
            import_proxy: true,
            scheduler: false,
            external_clicks: true,
            max_targets: 1000,
            max_flows_per_day: 10_000,
        }
    }

    fn as_account(name: &str, allows: Allowances) -> Context {
        acting_as(name, Role::User, now()).with_licence(LicenceTerms {
            allows,
            expires_at: now() + Duration::days(30),
        })
    }

    fn ada() -> Context {
        as_account("ada", allows())
    }

    fn name(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    fn hash(fill: u8) -> BlobHash {
        BlobHash([fill; 32])
    }

    fn upload_source() -> VersionSource {
        VersionSource::Upload {
            upload: UploadId(Uuid::from_u128(9)),
            format: ImportFormat::Csv,
            sha256: hash(2),
        }
    }

    fn rows(kind: DatasetKind, rows: u64) -> NewVersion {
        NewVersion {
            kind,
            summary: RowsSummary {
                rows,
                ..RowsSummary::default()
            },
            blob: hash(1),
            source: upload_source(),
        }
    }

    fn settings(summary: RowsSummary) -> NewVersion {
        NewVersion {
            summary,
            ..rows(DatasetKind::SettingsProfiles, summary.rows)
        }
    }

    fn created() -> DatasetEvent {
        DatasetEvent::DatasetCreated(DatasetCreated {
            owner: Username::parse("ada").unwrap(),
            kind: DatasetKind::Targets,
            name: name("Spring launch"),
        })
    }

    fn published(version: u32, rows: u64) -> DatasetEvent {
        DatasetEvent::DatasetVersionPublished(DatasetVersionPublished {
            version,
            rows,
            blob: hash(1),
            source: upload_source(),
        })
    }

    fn publish_new(version: NewVersion) -> DatasetCommand {
        DatasetCommand::Publish {
            create: Some(NewDataset {
                owner: Username::parse("ada").unwrap(),
                name: name("Spring launch"),
            }),
            version,
        }
    }

    fn publish(version: NewVersion) -> DatasetCommand {
        DatasetCommand::Publish {
            create: None,
            version,
        }
    }

    fn referrer(kind: ReferrerKind, id: &str) -> Referrer {
        Referrer {
            kind,
            id: id.into(),
            version: 1,
        }
    }

    #[test]
    fn names_are_trimmed_single_lines_of_at_most_100_characters() {
        assert_eq!(name("  Spring  ").as_str(), "Spring");
        assert_eq!(DatasetName::parse(" "), Err(DatasetNameError::Empty));
        assert_eq!(
            DatasetName::parse(&"x".repeat(101)),
            Err(DatasetNameError::TooLong { len: 101 })
        );
        assert_eq!(
            DatasetName::parse("a\nb"),
            Err(DatasetNameError::ControlCharacter)
        );
    }

    #[test]
    fn a_first_publication_creates_the_dataset_with_version_1() {
        let state = Spec::<Dataset>::given([])
            .in_context(ada())
            .when(publish_new(rows(DatasetKind::Targets, 3)))
            .then([created(), published(1, 3)]);
        let info = state.dataset.unwrap();
        assert_eq!((info.kind, info.latest), (DatasetKind::Targets, 1));
    }

    #[test]
    fn each_publication_makes_the_next_version_even_when_retried_as_a_first() {
        Spec::<Dataset>::given([created(), published(1, 3)])
            .in_context(ada())
            .when(publish(rows(DatasetKind::Targets, 5)))
            .then([published(2, 5)]);
        Spec::<Dataset>::given([created(), published(1, 3)])
            .in_context(ada())
            .when(publish_new(rows(DatasetKind::Targets, 5)))
            .then([published(2, 5)]);
    }

    #[test]
    fn publishing_to_a_dataset_that_does_not_exist_is_not_found() {
        Spec::<Dataset>::given([])
            .in_context(ada())
            .when(publish(rows(DatasetKind::Targets, 1)))
            .then_err(|e| *e == DatasetError::NotFound);
    }

    #[test]
    fn only_the_owner_publishes_renames_and_deletes() {
        let bob = || as_account("bob", allows());
        for command in [
            publish(rows(DatasetKind::Targets, 1)),
            DatasetCommand::Rename { name: name("mine") },
            DatasetCommand::Delete { references: vec![] },
        ] {
            Spec::<Dataset>::given([created()])
                .in_context(bob())
                .when(command)
                .then_err(|e| *e == DatasetError::NotOwner);
        }
        // Nor may anyone create a dataset for another account.
        Spec::<Dataset>::given([])
            .in_context(bob())
            .when(publish_new(rows(DatasetKind::Targets, 1)))
            .then_err(|e| *e == DatasetError::NotOwner);
    }

    #[test]
    fn rows_of_another_kind_are_refused_naming_both() {
        Spec::<Dataset>::given([created()])
            .in_context(ada())
            .when(publish(rows(DatasetKind::Proxies, 1)))
            .then_err(|e| e.to_string() == "the dataset holds targets, and these rows are proxies");
    }

    #[test]
    fn more_targets_than_the_licence_allows_are_refused_naming_the_limit() {
        Spec::<Dataset>::given([created()])
            .in_context(ada())
            .when(publish(rows(DatasetKind::Targets, 1200)))
            .then_err(|e| {
                matches!(e, DatasetError::NotLicensed(n) if n.feature == "maxTargets"
                    && n.limit == Some(OverLimit { allowed: 1000, requested: 1200 }))
            });
        Spec::<Dataset>::given([created()])
            .in_context(ada())
            .when(publish(rows(DatasetKind::Targets, 1000)))
            .then([published(1, 1000)]);
    }

    #[test]
    fn proxies_need_the_import_proxy_feature() {
        let no_proxies = as_account(
            "ada",
            Allowances {
                import_proxy: false,
                ..allows()
            },
        );
        Spec::<Dataset>::given([])
            .in_context(no_proxies)
            .when(publish_new(rows(DatasetKind::Proxies, 2)))
            .then_err(|e| matches!(e, DatasetError::NotLicensed(n) if n.feature == "importProxy"));
        Spec::<Dataset>::given([])
            .in_context(Context::new(now(), ada().actor))
            .when(publish_new(rows(DatasetKind::Proxies, 2)))
            .then_err(|e| e.to_string().contains("no licence is in force"));
    }

    #[test]
    fn settings_profiles_need_the_features_and_instances_they_ask_for() {
        let bare = Allowances {
            human_surfing: false,
            external_clicks: false,
            max_instances: 2,
            ..allows()
        };
        let cases = [
            (
                RowsSummary {
                    rows: 1,
                    human_surfing: true,
                    ..RowsSummary::default()
                },
                "humanSurfing",
            ),
            (
                RowsSummary {
                    rows: 1,
                    external_clicks: true,
                    ..RowsSummary::default()
                },
                "externalClicks",
            ),
            (
                RowsSummary {
                    rows: 1,
                    max_instances: 3,
                    ..RowsSummary::default()
                },
                "maxInstances",
            ),
        ];
        for (summary, feature) in cases {
            Spec::<Dataset>::given([])
                .in_context(as_account("ada", bare.clone()))
                .when(publish_new(settings(summary)))
                .then_err(|e| matches!(e, DatasetError::NotLicensed(n) if n.feature == feature));
        }
        let within = RowsSummary {
            rows: 1,
            max_instances: 2,
            ..RowsSummary::default()
        };
        Spec::<Dataset>::given([])
            .in_context(as_account("ada", bare))
            .when(publish_new(settings(within)))
            .then([
                DatasetEvent::DatasetCreated(DatasetCreated {
                    owner: Username::parse("ada").unwrap(),
                    kind: DatasetKind::SettingsProfiles,
                    name: name("Spring launch"),
                }),
                published(1, 1),
            ]);
    }

    #[test]
    fn renaming_records_the_new_name_once() {
        let state = Spec::<Dataset>::given([created()])
            .in_context(ada())
            .when(DatasetCommand::Rename {
                name: name("Summer launch"),
            })
            .then([DatasetEvent::DatasetRenamed(DatasetRenamed {
                name: name("Summer launch"),
                by: "ada".into(),
            })]);
        assert_eq!(state.dataset.unwrap().name, name("Summer launch"));
        Spec::<Dataset>::given([created()])
            .in_context(ada())
            .when(DatasetCommand::Rename {
                name: name("Spring launch"),
            })
            .then([]);
    }

    #[test]
    fn a_dataset_in_use_is_not_deleted_and_the_error_names_every_referrer() {
        let references = vec![
            referrer(ReferrerKind::Job, "job-7"),
            referrer(ReferrerKind::Schedule, "nightly"),
        ];
        Spec::<Dataset>::given([created(), published(1, 3)])
            .in_context(ada())
            .when(DatasetCommand::Delete { references })
            .then_err(|e| {
                e.to_string()
                    == "the dataset is still used by job job-7 (version 1), schedule nightly (version 1); remove it from them first"
            });
    }

    #[test]
    fn a_deleted_dataset_takes_no_more_changes_and_deleting_again_records_nothing() {
        let deleted = DatasetEvent::DatasetDeleted(DatasetDeleted { by: "ada".into() });
        Spec::<Dataset>::given([created()])
            .in_context(ada())
            .when(DatasetCommand::Delete { references: vec![] })
            .then([deleted.clone()]);
        Spec::<Dataset>::given([created(), deleted.clone()])
            .in_context(ada())
            .when(DatasetCommand::Delete { references: vec![] })
            .then([]);
        for command in [
            publish(rows(DatasetKind::Targets, 1)),
            DatasetCommand::Rename { name: name("x") },
        ] {
            Spec::<Dataset>::given([created(), deleted.clone()])
                .in_context(ada())
                .when(command)
                .then_err(|e| *e == DatasetError::Deleted);
        }
    }

    #[test]
    fn summaries_say_what_happened_to_which_dataset() {
        let stream = DatasetId(Uuid::from_u128(1)).stream();
        let id = "00000000-0000-0000-0000-000000000001";
        assert_eq!(stream.as_str(), format!("dataset-{id}"));
        assert_eq!(
            created().summary(&stream),
            format!("targets dataset {id} \"Spring launch\" created for ada")
        );
        assert_eq!(
            published(2, 40).summary(&stream),
            format!(
                "version 2 of dataset {id} published: 40 rows from upload 00000000-0000-0000-0000-000000000009 (csv)"
            )
        );
        let catalogue = DatasetEvent::DatasetVersionPublished(DatasetVersionPublished {
            version: 1,
            rows: 12,
            blob: hash(1),
            source: VersionSource::Catalogue { version: 3 },
        });
        assert!(
            catalogue
                .summary(&stream)
                .ends_with("12 rows from the built-in device catalogue (version 3)")
        );
    }
}

//! Set-up the benches that run jobs share, through the gateway's own paths:
//! an owner and an admin to act as, datasets published, a domain
//! allow-listed and safe mode turned off, each as its event.

use anyhow::Context as _;
use domain::account::Username;
use domain::dataset::{DatasetId, DatasetName, NewDataset, VersionSource};
use domain::job::DatasetVersionRef;
use domain::licence::{Allowances, LicenceTerms};
use domain::system_settings::{self, SystemSettings, SystemSettingsCommand, SystemSettingsState};
use domain::target_domain::{self, TargetDomain, TargetDomainCommand, TargetDomainState};
use domain::upload::UploadId;
use domain::{
    Actor, BlobHash, Context, DatasetKind, Decider, DomainName, ImportFormat, Reason, Role,
    StreamId,
};
use gateway::CommandHandler;
use gateway::publishing;
use gateway::state::AppState;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::bench::live::bench_meta;

/// `name` as a user licensed for `allows` for a day.
pub(crate) fn owner(name: &str, allows: Allowances) -> Context {
    Context::new(
        OffsetDateTime::now_utc(),
        Actor::Account {
            account_id: Uuid::now_v7(),
            username: name.into(),
            roles: [Role::User].into(),
        },
    )
    .with_licence(LicenceTerms {
        allows,
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(1),
    })
}

/// A super-admin.
pub(crate) fn admin() -> Context {
    Context::new(
        OffsetDateTime::now_utc(),
        Actor::Account {
            account_id: Uuid::now_v7(),
            username: "bench-root".into(),
            roles: [Role::SuperAdmin].into(),
        },
    )
}

/// Publishes `csv` as a new dataset of `owner`'s (acting as `as_owner`),
/// through the gateway's own publishing path: its first version.
pub(crate) async fn publish(
    app: &AppState,
    owner: &str,
    as_owner: &Context,
    kind: DatasetKind,
    csv: &str,
) -> anyhow::Result<DatasetVersionRef> {
    let rows = datasets::parse(kind, ImportFormat::Csv, csv.as_bytes(), &Default::default())
        .with_context(|| format!("the bench's {kind}"))?;
    let target = publishing::Target {
        dataset: DatasetId::new(),
        create: Some(NewDataset {
            owner: Username::parse(owner)?,
            name: DatasetName::parse(&format!("bench {kind}"))?,
        }),
    };
    let source = VersionSource::Upload {
        upload: UploadId::new(),
        format: ImportFormat::Csv,
        sha256: BlobHash::of(csv.as_bytes()),
    };
    let published = publishing::publish_rows(app, rows, target, source, as_owner, &bench_meta())
        .await
        .map_err(|e| anyhow::anyhow!("publishing the bench's {kind}: {e}"))?;
    Ok(DatasetVersionRef {
        dataset: published.dataset.0,
        version: published.version,
    })
}

/// Allow-lists `domain` as a super-admin would, and returns its state.
pub(crate) async fn allow_list(
    handler: &CommandHandler,
    domain: &DomainName,
    why: &str,
) -> anyhow::Result<TargetDomainState> {
    let command = TargetDomainCommand::AllowList {
        reason: Reason::parse(why)?,
    };
    as_admin::<TargetDomain>(handler, &target_domain::stream(domain)?, command)
        .await
        .with_context(|| format!("allow-listing {domain}"))
}

/// Turns safe mode off as a super-admin would (the gateway halts any run it
/// finds while safe mode is on), and returns the system settings.
pub(crate) async fn safe_mode_off(
    handler: &CommandHandler,
    why: &str,
) -> anyhow::Result<SystemSettingsState> {
    let command = SystemSettingsCommand::TurnSafeModeOff {
        reason: Reason::parse(why)?,
    };
    as_admin::<SystemSettings>(handler, &system_settings::stream()?, command)
        .await
        .context("turning safe mode off")
}

/// Handles `command` on `stream` as a super-admin; the stream's state after it.
async fn as_admin<D: Decider>(
    handler: &CommandHandler,
    stream: &StreamId,
    command: D::Command,
) -> anyhow::Result<D::State>
where
    D::Command: Clone,
{
    handler
        .handle::<D>(stream, command, &admin(), &bench_meta())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, state) = handler
        .load::<D>(stream)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(state)
}

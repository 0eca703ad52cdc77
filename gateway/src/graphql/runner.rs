//! The runner fleet over GraphQL: `runners` (admins) from the runners view,
//! with how busy each is and when a gateway last heard from it;
//! `availablePlatforms`, the OS/browser pairs online runners serve, for
//! every logged-in account; both as subscriptions; `drainRunner` (admins).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_graphql::{Context, ID, Object, SimpleObject, Subscription};
use domain::runner::{Platform, Runner as RunnerDecider, RunnerCommand, RunnerError, RunnerId};
use futures_util::Stream;
use projections::{Row, runners_view};
use store::{Filter, Presence};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::graphql::error::{self, Code, Coded};
use crate::graphql::view_watch::view_changes;
use crate::graphql::{ADMINS, app, decision, from_micros, principal, principal_with, row_err};
use crate::runner_link::presence;
use crate::state::AppState;

/// Answers a subscription at most this often.
const EVERY: Duration = Duration::from_millis(250);

/// A label a runner carries, e.g. `region = eu-west`.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// A runner as the fleet view has it.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct RunnerInfo {
    pub id: ID,
    pub name: String,
    /// The runner key it authenticated with.
    pub key_id: ID,
    pub platform: Platform,
    pub browser_version: String,
    pub max_instances: u32,
    pub labels: Vec<Label>,
    /// The protocol version agreed at its registration.
    pub protocol: u32,
    pub online: bool,
    /// It finishes what it holds and takes no new leases.
    pub draining: bool,
    pub deregistered: bool,
    /// Why it went offline: `disconnected` or `silent`.
    pub offline_reason: Option<String>,
    pub registered_at: OffsetDateTime,
    pub changed_at: OffsetDateTime,
    /// Browsers busy, by its last heartbeat, while it is online (on
    /// whichever gateway holds its connection).
    pub busy: Option<u32>,
    /// When a gateway last heard from it.
    pub last_heartbeat_at: Option<OffsetDateTime>,
}

static ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM {} ORDER BY deregistered, name, runner",
        runners_view::TABLE
    )
});

/// A serde enum from its stored name.
fn enum_from<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> async_graphql::Result<T> {
    let raw: String = row.get(column).map_err(row_err)?;
    serde_json::from_value(serde_json::Value::String(raw)).map_err(row_err)
}

fn platform_from(row: &Row) -> async_graphql::Result<Platform> {
    Ok(Platform {
        os: enum_from(row, "os")?,
        browser: enum_from(row, "browser")?,
    })
}

fn runner_from(
    presences: &HashMap<RunnerId, Presence>,
    row: &Row,
) -> async_graphql::Result<RunnerInfo> {
    let id: String = row.get("runner").map_err(row_err)?;
    let presence = Uuid::parse_str(&id)
        .ok()
        .and_then(|u| presences.get(&RunnerId(u)));
    let labels: String = row.get("labels").map_err(row_err)?;
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&labels).map_err(row_err)?;
    let max_instances: i64 = row.get("max_instances").map_err(row_err)?;
    let protocol: i64 = row.get("protocol").map_err(row_err)?;
    let online: bool = row.get("online").map_err(row_err)?;
    Ok(RunnerInfo {
        id: ID(id),
        name: row.get("name").map_err(row_err)?,
        key_id: ID(row.get::<String>("key_id").map_err(row_err)?),
        platform: platform_from(row)?,
        browser_version: row.get("browser_version").map_err(row_err)?,
        max_instances: u32::try_from(max_instances).map_err(row_err)?,
        labels: labels
            .into_iter()
            .map(|(key, value)| Label { key, value })
            .collect(),
        protocol: u32::try_from(protocol).map_err(row_err)?,
        online,
        draining: row.get("draining").map_err(row_err)?,
        deregistered: row.get("deregistered").map_err(row_err)?,
        offline_reason: row.get("offline_reason").map_err(row_err)?,
        registered_at: from_micros(row.get("registered_at").map_err(row_err)?),
        changed_at: from_micros(row.get("changed_at").map_err(row_err)?),
        busy: presence.filter(|_| online).map(|p| p.busy),
        last_heartbeat_at: presence.map(|p| p.seen_at),
    })
}

async fn all_runners(app: AppState) -> async_graphql::Result<Vec<RunnerInfo>> {
    let rows = app
        .views
        .query(&ALL, vec![])
        .await
        .map_err(|e| error::internal("cannot read the runners", &e))?;
    let presences = presence::all(&app).await;
    rows.iter()
        .map(|row| runner_from(&presences, row))
        .collect()
}

/// What online runners serve: their own platforms and those they emulate
/// (see [`Platform::serves`]), each once, in a fixed order.
async fn available_platforms(app: AppState) -> async_graphql::Result<Vec<Platform>> {
    let rows = app
        .views
        .query(runners_view::AVAILABLE_PLATFORMS, vec![])
        .await
        .map_err(|e| error::internal("cannot read the runners", &e))?;
    let online: Vec<Platform> = rows.iter().map(platform_from).collect::<Result<_, _>>()?;
    Ok(Platform::all()
        .filter(|&wanted| online.iter().any(|runner| runner.serves(wanted)))
        .collect())
}

fn runner_streams() -> Filter {
    Filter::stream_prefix("runner-")
}

#[derive(Default)]
pub struct RunnerQuery;

#[Object]
impl RunnerQuery {
    /// Every runner that registered, deregistered ones last (admins).
    async fn runners(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<RunnerInfo>> {
        principal_with(ctx, ADMINS, "listing runners")?;
        all_runners(app(ctx).clone()).await
    }

    /// The OS/browser pairs that online runners serve, their own and the
    /// phones they emulate: the device profiles a job can run now.
    async fn available_platforms(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Platform>> {
        principal(ctx)?;
        available_platforms(app(ctx).clone()).await
    }
}

#[derive(Default)]
pub struct RunnerMutation;

#[Object]
impl RunnerMutation {
    /// Makes a runner finish what it holds and take no new leases
    /// (admins). It hears of it within a second, on whichever gateway it
    /// is connected to.
    async fn drain_runner(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        principal_with(ctx, ADMINS, "draining runners")?;
        let runner = Uuid::parse_str(id.trim())
            .map(RunnerId)
            .map_err(|e| error::invalid("id", format!("not a runner id: {e}")))?;
        let stream = runner.stream().map_err(|e| error::invalid("id", e))?;
        crate::graphql::handle::<RunnerDecider>(
            ctx,
            &stream,
            RunnerCommand::RequestDrain,
            &decision(ctx)?,
            None,
        )
        .await?;
        Ok(true)
    }
}

#[derive(Default)]
pub struct RunnerSubscription;

#[Subscription]
impl RunnerSubscription {
    /// The runners now, then again whenever one registers, goes offline,
    /// drains or leaves (admins).
    async fn runners(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Vec<RunnerInfo>>>> {
        let p = principal_with(ctx, ADMINS, "watching runners")?.clone();
        Ok(view_changes(
            app(ctx).clone(),
            p,
            runner_streams(),
            "runners",
            EVERY,
            all_runners,
        ))
    }

    /// The available platforms now, then again whenever they change.
    async fn available_platforms(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Vec<Platform>>>> {
        let p = principal(ctx)?.clone();
        Ok(view_changes(
            app(ctx).clone(),
            p,
            runner_streams(),
            "runners",
            EVERY,
            available_platforms,
        ))
    }
}

impl Coded for RunnerError {
    fn code(&self) -> Code {
        match self {
            RunnerError::Forbidden(_) => Code::Forbidden,
            RunnerError::BadCapabilities(_) => Code::Validation,
            RunnerError::NotRegistered => Code::NotFound,
        }
    }
}

//! Proxy pools' health over GraphQL: `proxyPool(dataset, version)` and
//! `jobProxies(id)` list a proxies version's proxies (never a password)
//! with their health from the proxy pools view — healthy, disabled until
//! when and why, or on trial — and the same as subscriptions, answered
//! again as the health changes. Read by the dataset's (or job's) owner,
//! admins and auditors.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_graphql::{Context, Enum, ID, Object, SimpleObject, Subscription};
use datasets::Rows;
use domain::DatasetKind;
use domain::job::{DatasetVersionRef, JobAggregate};
use domain::proxy_pool;
use futures_util::Stream;
use projections::{Row, SqlValue, datasets_view, proxy_pools_view};
use store::Filter;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::sessions::Principal;
use crate::graphql::dataset_rows::ProxyScheme;
use crate::graphql::error::{self, Code};
use crate::graphql::job::{parse_job_id, readable_job};
use crate::graphql::view_watch::view_changes;
use crate::graphql::{AUDITORS, app, check_first, from_micros, principal, row_err};
use crate::job_datasets::{self, VersionError};
use crate::state::AppState;

/// A subscription answers at most this often.
const EVERY: Duration = Duration::from_millis(250);

/// Where a proxy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum ProxyHealthStatus {
    /// Runners pick it.
    Healthy,
    /// It kept failing: runners pick it for no new flow until `disabledUntil`.
    Disabled,
    /// Its cool-down is over: runners pick it again, and the next flow
    /// through it decides (a success restores it, a failure disables it
    /// for twice as long).
    Trial,
}

/// A proxy of a proxies version and its health. Its password stays in
/// the gateway.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct ProxyHealth {
    /// Its row in the version: what reports and runners name it by.
    pub row: u32,
    pub scheme: ProxyScheme,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub has_password: bool,
    pub region: Option<String>,
    pub status: ProxyHealthStatus,
    /// Failovers away from it that runners reported (not counted while it
    /// is disabled).
    pub failures: u64,
    /// What a runner saw when it last failed.
    pub last_error: Option<String>,
    pub disabled_until: Option<OffsetDateTime>,
    /// When its health last changed; none if it never failed.
    pub changed_at: Option<OffsetDateTime>,
}

/// A page of a proxies version's proxies with their health.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct ProxyPoolInfo {
    pub dataset: ID,
    pub version: u32,
    /// Proxies in the version.
    pub total: u64,
    /// Of those, disabled now.
    pub disabled: u64,
    /// On trial now.
    pub on_trial: u64,
    pub offset: u32,
    pub proxies: Vec<ProxyHealth>,
}

/// Who may read a pool owned by `owner`.
fn may_read(p: &Principal, owner: &str) -> bool {
    p.username.as_str() == owner || AUDITORS.iter().any(|r| p.roles.contains(r))
}

static OWNER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT owner FROM {} WHERE dataset_id = $1",
        datasets_view::TABLE
    )
});

/// NOT_FOUND unless `p` may read the dataset, so others' ids reveal nothing.
async fn readable_dataset(
    app: &AppState,
    p: &Principal,
    dataset: Uuid,
) -> async_graphql::Result<()> {
    let rows = app
        .views
        .query(&OWNER, vec![SqlValue::from(dataset.to_string())])
        .await
        .map_err(|e| error::internal("cannot read the dataset", &e))?;
    let owner: Option<String> = rows
        .first()
        .map(|r| r.get("owner"))
        .transpose()
        .map_err(row_err)?;
    match owner {
        Some(owner) if may_read(p, &owner) => Ok(()),
        _ => Err(error::error(
            Code::NotFound,
            format!("dataset: there is no dataset {dataset}"),
        )),
    }
}

static HEALTH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT proxy, status, failures, last_error, disabled_until, changed_at FROM {} \
         WHERE dataset = $1 AND version = $2",
        proxy_pools_view::TABLE
    )
});

fn status_of(row: &Row) -> async_graphql::Result<ProxyHealthStatus> {
    let status: String = row.get("status").map_err(row_err)?;
    match status.as_str() {
        "healthy" => Ok(ProxyHealthStatus::Healthy),
        "disabled" => Ok(ProxyHealthStatus::Disabled),
        "trial" => Ok(ProxyHealthStatus::Trial),
        other => Err(error::internal(
            "cannot read the proxies' health",
            &format!("unknown status {other:?}"),
        )),
    }
}

/// The pool `version` (proxies rows `offset..offset + first`) with health.
async fn pool(
    app: &AppState,
    version: DatasetVersionRef,
    first: i32,
    offset: u32,
) -> async_graphql::Result<ProxyPoolInfo> {
    let (_, rows) = job_datasets::rows(app, version, DatasetKind::Proxies)
        .await
        .map_err(|e| match e {
            VersionError::Internal(_) => error::internal("cannot read the proxies", &e),
            other => error::error(Code::NotFound, other.to_string()),
        })?;
    let Rows::Proxies(rows) = &*rows else {
        return Err(error::error(Code::NotFound, "the version holds no proxies"));
    };
    let health = app
        .views
        .query(
            &HEALTH,
            vec![
                SqlValue::from(version.dataset.to_string()),
                SqlValue::from(version.version),
            ],
        )
        .await
        .map_err(|e| error::internal("cannot read the proxies' health", &e))?;
    let mut by_row = HashMap::new();
    let (mut disabled, mut on_trial) = (0, 0);
    for h in &health {
        let row: i64 = h.get("proxy").map_err(row_err)?;
        let status = status_of(h)?;
        disabled += u64::from(status == ProxyHealthStatus::Disabled);
        on_trial += u64::from(status == ProxyHealthStatus::Trial);
        by_row.insert(row, h);
    }
    let start = (offset as usize).min(rows.len());
    let end = (start + first as usize).min(rows.len());
    let mut proxies = Vec::with_capacity(end - start);
    for (i, p) in rows[start..end].iter().enumerate() {
        let row = (start + i) as u32;
        let h = by_row.get(&i64::from(row));
        let (status, failures, last_error, disabled_until, changed_at) = match h {
            None => (ProxyHealthStatus::Healthy, 0, None, None, None),
            Some(h) => (
                status_of(h)?,
                h.get::<i64>("failures").map_err(row_err)?.max(0) as u64,
                h.get::<Option<String>>("last_error").map_err(row_err)?,
                h.get::<Option<i64>>("disabled_until")
                    .map_err(row_err)?
                    .map(from_micros),
                Some(from_micros(h.get("changed_at").map_err(row_err)?)),
            ),
        };
        proxies.push(ProxyHealth {
            row,
            scheme: p.scheme.into(),
            host: p.host.clone(),
            port: p.port,
            username: p.username.clone(),
            has_password: p.password.is_some(),
            region: p.region.clone(),
            status,
            failures,
            last_error,
            disabled_until,
            changed_at,
        });
    }
    Ok(ProxyPoolInfo {
        dataset: ID(version.dataset.to_string()),
        version: version.version,
        total: rows.len() as u64,
        disabled,
        on_trial,
        offset,
        proxies,
    })
}

/// The proxies version of job `id`, if `p` may read the job and it has one.
async fn job_pool(
    app: &AppState,
    p: &Principal,
    id: &ID,
) -> async_graphql::Result<Option<DatasetVersionRef>> {
    let job = parse_job_id("id", id)?;
    readable_job(app, p, job).await?;
    let stream = job.stream().map_err(|e| error::invalid("id", e))?;
    let (_, state) = app
        .handler
        .load::<JobAggregate>(&stream)
        .await
        .map_err(|e| error::internal("cannot read the job", &e))?;
    Ok(state
        .job
        .and_then(|j| j.spec.proxies)
        .map(|pool| pool.version))
}

fn pool_events(version: DatasetVersionRef) -> async_graphql::Result<Filter> {
    let stream = proxy_pool::stream(version).map_err(|e| error::internal("a pool's stream", &e))?;
    Ok(Filter::stream_prefix(stream.as_str()))
}

fn version_of(dataset: Uuid, version: u32) -> DatasetVersionRef {
    DatasetVersionRef { dataset, version }
}

#[derive(Default)]
pub struct ProxyPoolQuery;

#[Object]
impl ProxyPoolQuery {
    /// The proxies of a proxies version with their health (the dataset's
    /// owner, admins and auditors).
    async fn proxy_pool(
        &self,
        ctx: &Context<'_>,
        dataset: Uuid,
        version: u32,
        #[graphql(default = 100)] first: i32,
        #[graphql(default = 0)] offset: u32,
    ) -> async_graphql::Result<ProxyPoolInfo> {
        check_first(first)?;
        let p = principal(ctx)?;
        readable_dataset(app(ctx), p, dataset).await?;
        pool(app(ctx), version_of(dataset, version), first, offset).await
    }

    /// The proxies of job `id` with their health; none when the job uses
    /// no proxies (whoever may read the job).
    async fn job_proxies(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default = 100)] first: i32,
        #[graphql(default = 0)] offset: u32,
    ) -> async_graphql::Result<Option<ProxyPoolInfo>> {
        check_first(first)?;
        let p = principal(ctx)?;
        match job_pool(app(ctx), p, &id).await? {
            Some(version) => pool(app(ctx), version, first, offset).await.map(Some),
            None => Ok(None),
        }
    }
}

#[derive(Default)]
pub struct ProxyPoolSubscription;

#[Subscription]
impl ProxyPoolSubscription {
    /// `proxyPool` now, then again whenever a proxy's health changes.
    async fn proxy_pool(
        &self,
        ctx: &Context<'_>,
        dataset: Uuid,
        version: u32,
        #[graphql(default = 100)] first: i32,
        #[graphql(default = 0)] offset: u32,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ProxyPoolInfo>>> {
        check_first(first)?;
        let p = principal(ctx)?.clone();
        readable_dataset(app(ctx), &p, dataset).await?;
        let version = version_of(dataset, version);
        Ok(view_changes(
            app(ctx).clone(),
            p,
            pool_events(version)?,
            "proxy_pools",
            EVERY,
            move |app| async move { pool(&app, version, first, offset).await },
        ))
    }

    /// `jobProxies` now, then again whenever a proxy's health changes.
    /// Refused at once when the job uses no proxies.
    async fn job_proxies(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default = 100)] first: i32,
        #[graphql(default = 0)] offset: u32,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ProxyPoolInfo>>> {
        check_first(first)?;
        let p = principal(ctx)?.clone();
        let Some(version) = job_pool(app(ctx), &p, &id).await? else {
            return Err(error::error(Code::NotFound, "id: the job uses no proxies"));
        };
        Ok(view_changes(
            app(ctx).clone(),
            p,
            pool_events(version)?,
            "proxy_pools",
            EVERY,
            move |app| async move { pool(&app, version, first, offset).await },
        ))
    }
}

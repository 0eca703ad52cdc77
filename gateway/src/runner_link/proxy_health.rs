//! Proxy health from runners' reports (see [`domain::proxy_pool`]): each
//! accepted batch's failovers and proxied successes go to the job's pool,
//! which disables a proxy that keeps failing; a sweep re-enables, on
//! trial, those whose cool-down is over. Runners briefed on the pool's jobs
//! hear of both through the fleet's relay, on whichever gateway holds them.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use domain::flow::{FlowOutcome, FlowReport, ProxyIndex};
use domain::job::{DatasetVersionRef, JobId, ProxiesRef};
use domain::proxy_pool::{self, ProxyFailure, ProxyPool, ProxyPoolCommand};
use domain::runner::RunnerId;
use projections::{SqlValue, proxy_pools_view};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::command_handler::CommandMeta;
use crate::runner_link::connection::runner_meta;
use crate::runner_link::work::in_turn;
use crate::state::AppState;

/// What a batch says of proxies: failovers away from them, and flows
/// that finished well through them.
fn outcomes(reports: &[FlowReport]) -> (Vec<ProxyFailure>, Vec<ProxyIndex>) {
    let mut failures = Vec::new();
    let mut successes = BTreeSet::new();
    for r in reports {
        match r {
            FlowReport::ProxyFailedOver { from, error, .. } => failures.push(ProxyFailure {
                proxy: *from,
                error: error.clone(),
            }),
            FlowReport::Finished(f) if f.outcome == FlowOutcome::Succeeded => {
                successes.extend(f.proxy);
            }
            _ => {}
        }
    }
    (failures, successes.into_iter().collect())
}

/// Records what a batch the job accepted (`reports`, as recorded) says of
/// the job's proxies. Keyed by the batch, so a batch sent again counts once.
pub(crate) async fn record(
    app: &AppState,
    job: JobId,
    pool: ProxiesRef,
    runner: RunnerId,
    batch: Uuid,
    reports: &[FlowReport],
) {
    let (failures, successes) = outcomes(reports);
    if failures.is_empty() && successes.is_empty() {
        return;
    }
    let Ok(stream) = proxy_pool::stream(pool.version) else {
        return;
    };
    let command = ProxyPoolCommand::RecordOutcomes {
        job,
        runner,
        proxies: pool.proxies,
        failures,
        successes,
    };
    let meta = runner_meta(runner, Some(format!("proxy-health:{runner}:{batch}")));
    if let Err(e) = in_turn::<ProxyPool>(app, &stream, command, &meta).await {
        tracing::warn!(%job, %runner, %batch, error = %e, "proxy health not recorded");
    }
}

/// Pools with a proxy whose cool-down is over by `$1`.
static DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT DISTINCT dataset, version FROM {} WHERE status = 'disabled' AND disabled_until <= $1",
        proxy_pools_view::TABLE
    )
});

/// Re-enables, on trial, every proxy whose cool-down is over at `now`;
/// how many. Safe on many gateways at once: a proxy is re-enabled once,
/// whoever appends first.
pub async fn re_enable_due(app: &AppState, now: OffsetDateTime) -> usize {
    let rows = match app.views.query(&DUE, vec![SqlValue::micros(now)]).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the disabled proxies");
            return 0;
        }
    };
    let mut re_enabled = 0;
    for row in rows {
        let (Ok(dataset), Ok(version)) = (row.get::<String>("dataset"), row.get::<i64>("version"))
        else {
            continue;
        };
        let (Ok(dataset), Ok(version)) = (Uuid::parse_str(&dataset), u32::try_from(version)) else {
            continue;
        };
        let Ok(stream) = proxy_pool::stream(DatasetVersionRef { dataset, version }) else {
            continue;
        };
        let meta = CommandMeta {
            source: Some("gateway".into()),
            ..Default::default()
        };
        let ctx = domain::Context::new(now, domain::Actor::System);
        match app
            .handler
            .handle::<ProxyPool>(&stream, ProxyPoolCommand::ReEnableDue, &ctx, &meta)
            .await
        {
            Ok(handled) => re_enabled += handled.events.len(),
            Err(e) => tracing::warn!(%stream, error = %e, "proxies not re-enabled"),
        }
    }
    re_enabled
}

/// How often the sweep looks for proxies to re-enable.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Re-enables proxies as their cool-downs end, forever.
pub async fn sweep(app: AppState) {
    if !crate::live::view_created(&app, proxy_pools_view::NAME).await {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = re_enable_due(&app, OffsetDateTime::now_utc()).await;
        if n > 0 {
            tracing::info!(proxies = n, "re-enabled proxies on trial");
        }
    }
}

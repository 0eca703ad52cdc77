//! The `proxy_pools` view: the health of each proxy with any history, per
//! proxies dataset version (pool) — healthy, disabled until when, or on
//! trial — with its failures and the last error a runner saw. A proxy
//! without a row is healthy and never failed.

use domain::RecordedEvent;
use domain::proxy_pool::{self, ProxyPoolEvent};
use store::Filter;

use crate::decode::registry;
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::Statement;

pub struct ProxyPoolsView;

pub const TABLE: &str = "view_proxy_health";

const SCHEMA: &[&str] = &[
    "CREATE TABLE view_proxy_health (
    dataset         TEXT NOT NULL,
    version         BIGINT NOT NULL,
    proxy           BIGINT NOT NULL,
    status          TEXT NOT NULL,
    failures        BIGINT NOT NULL,
    last_error      TEXT,
    disabled_until  BIGINT,
    strikes         BIGINT NOT NULL,
    changed_at      BIGINT NOT NULL,
    PRIMARY KEY (dataset, version, proxy)
)",
    "CREATE INDEX view_proxy_health_due ON view_proxy_health (status, disabled_until)",
];

/// Writes a proxy's row: `values` (status, failures, last_error,
/// disabled_until, strikes, after `$1` dataset, `$2` version, `$3` proxy;
/// `$4` is the time) when it has none, else `set`.
fn upsert(values: &str, set: &str) -> String {
    format!(
        "INSERT INTO view_proxy_health (dataset, version, proxy, status, failures, last_error, \
         disabled_until, strikes, changed_at) VALUES ($1, $2, $3, {values}, $4) \
         ON CONFLICT (dataset, version, proxy) DO UPDATE SET {set}, changed_at = excluded.changed_at"
    )
}

/// The view's name, in the projections' status and checkpoints.
pub const NAME: &str = "proxy_pools";

impl Projection for ProxyPoolsView {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn filter(&self) -> Filter {
        Filter::stream_prefix("proxy-pool-")
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let Some(pool) = proxy_pool::pool_of(event.stream_id.as_str()) else {
            return Ok(());
        };
        let at = event.recorded_at;
        let row = |proxy: domain::flow::ProxyIndex, values: &str, set: &str| {
            Statement::new(upsert(values, set))
                .bind(pool.dataset.to_string())
                .bind(pool.version)
                .bind(proxy.0)
                .bind(at)
        };
        match registry().decode::<ProxyPoolEvent>(event)? {
            ProxyPoolEvent::ProxyFailuresRecorded(e) => {
                for f in e.failures {
                    out.push(
                        row(
                            f.proxy,
                            "'healthy', 1, $5, NULL, 0",
                            "failures = view_proxy_health.failures + 1, last_error = excluded.last_error",
                        )
                        .bind(f.error),
                    );
                }
            }
            ProxyPoolEvent::ProxyDisabled(e) => out.push(
                row(
                    e.proxy,
                    "'disabled', 0, $6, $5, 1",
                    "status = 'disabled', disabled_until = excluded.disabled_until, \
                     last_error = excluded.last_error, strikes = view_proxy_health.strikes + 1",
                )
                .bind(e.until)
                .bind(e.last_error),
            ),
            ProxyPoolEvent::ProxyReEnabled(e) => out.push(row(
                e.proxy,
                "'trial', 0, NULL, NULL, 0",
                "status = 'trial', disabled_until = NULL",
            )),
            ProxyPoolEvent::ProxyRecovered(e) => out.push(row(
                e.proxy,
                "'healthy', 0, NULL, NULL, 0",
                "status = 'healthy', strikes = 0",
            )),
        }
        Ok(())
    }
}

//! The `runners` view: every runner that ever registered, with its latest
//! capabilities and standing (online, draining, deregistered). Heartbeats
//! are not events: how busy a connected runner is, the gateway holding its
//! connection adds from memory.

use domain::RecordedEvent;
use domain::runner::RunnerEvent;
use store::Filter;
use uuid::Uuid;

use crate::decode::registry;
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::Statement;

pub struct RunnersView;

pub const TABLE: &str = "view_runners";

const PREFIX: &str = "runner-";

const SCHEMA: &[&str] = &["CREATE TABLE view_runners (
    runner          TEXT NOT NULL PRIMARY KEY,
    name            TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    os              TEXT NOT NULL,
    browser         TEXT NOT NULL,
    browser_version TEXT NOT NULL,
    max_instances   BIGINT NOT NULL,
    labels          TEXT NOT NULL,
    protocol        BIGINT NOT NULL,
    online          BOOLEAN NOT NULL,
    draining        BOOLEAN NOT NULL,
    deregistered    BOOLEAN NOT NULL,
    offline_reason  TEXT,
    registered_at   BIGINT NOT NULL,
    changed_at      BIGINT NOT NULL
)"];

/// A serde enum's name as stored, e.g. `linux`.
fn name_of(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The view's name, in the projections' status and checkpoints.
pub const NAME: &str = "runners";

impl Projection for RunnersView {
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
        Filter::stream_prefix(PREFIX)
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        // `runner-keys` shares the prefix; a runner's stream ends in its id.
        let Some(runner) = event
            .stream_id
            .as_str()
            .strip_prefix(PREFIX)
            .filter(|id| Uuid::parse_str(id).is_ok())
        else {
            return Ok(());
        };
        let at = event.recorded_at;
        out.push(match registry().decode::<RunnerEvent>(event)? {
            RunnerEvent::RunnerRegistered(r) => {
                let c = &r.capabilities;
                let labels = serde_json::to_string(&c.labels).unwrap_or_default();
                // A registration after going offline is a fresh process: an
                // old drain does not follow it (as the decider's evolve).
                Statement::new(
                    "INSERT INTO view_runners (runner, name, key_id, os, browser, browser_version, \
                     max_instances, labels, protocol, online, draining, deregistered, offline_reason, \
                     registered_at, changed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, TRUE, FALSE, FALSE, NULL, $10, $10) \
                     ON CONFLICT (runner) DO UPDATE SET name = excluded.name, key_id = excluded.key_id, \
                     os = excluded.os, browser = excluded.browser, browser_version = excluded.browser_version, \
                     max_instances = excluded.max_instances, labels = excluded.labels, \
                     protocol = excluded.protocol, \
                     draining = (view_runners.draining AND view_runners.online AND NOT view_runners.deregistered), \
                     online = TRUE, deregistered = FALSE, offline_reason = NULL, \
                     registered_at = excluded.registered_at, changed_at = excluded.changed_at",
                )
                .bind(runner)
                .bind(r.name)
                .bind(r.key.to_string())
                .bind(name_of(c.platform.os))
                .bind(name_of(c.platform.browser))
                .bind(c.browser_version.clone())
                .bind(i64::from(c.max_instances))
                .bind(labels)
                .bind(i64::from(r.protocol))
                .bind(at)
            }
            RunnerEvent::RunnerWentOffline(o) => Statement::new(
                "UPDATE view_runners SET online = FALSE, offline_reason = $2, changed_at = $3 \
                 WHERE runner = $1",
            )
            .bind(runner)
            .bind(name_of(o.reason))
            .bind(at),
            RunnerEvent::DrainRequested(_) => Statement::new(
                "UPDATE view_runners SET draining = TRUE, changed_at = $2 WHERE runner = $1",
            )
            .bind(runner)
            .bind(at),
            RunnerEvent::RunnerDeregistered(_) => Statement::new(
                "UPDATE view_runners SET online = FALSE, deregistered = TRUE, offline_reason = NULL, \
                 changed_at = $2 WHERE runner = $1",
            )
            .bind(runner)
            .bind(at),
        });
        Ok(())
    }
}

/// The online runners' platforms, each once: what jobs can run on now.
pub const AVAILABLE_PLATFORMS: &str = "SELECT DISTINCT os, browser FROM view_runners WHERE online AND NOT deregistered \
     ORDER BY os, browser";

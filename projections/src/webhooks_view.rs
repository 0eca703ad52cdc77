//! The `webhooks` view: each account's webhooks, and every delivery the
//! log calls for — one per event of a chosen topic per webhook that existed
//! when the event happened — with its attempts as the sender recorded them.
//! It is the webhooks' delivery checkpoint: a delivery exists once, whatever
//! restarts, and the gateway's sender reads what is due here.
//!
//! Who an event concerns comes from the view's own index of owners (jobs,
//! schedules and datasets as they were created); runner events concern the
//! whole fleet, which only admins' webhooks may hear of.

use domain::RecordedEvent;
use domain::dataset::DatasetEvent;
use domain::job::JobEvent;
use domain::schedule::ScheduleEvent;
use domain::webhook::{Topic, WebhookEvent, WebhookId};
use store::Filter;
use time::format_description::well_known::Rfc3339;

use crate::decode::registry;
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::Statement;

pub struct WebhooksView;

/// The view's name, in the projections' status and checkpoints.
pub const NAME: &str = "webhooks";
pub const WEBHOOKS: &str = "view_webhooks";
pub const DELIVERIES: &str = "view_webhook_deliveries";
const TOPICS: &str = "view_webhook_topics";
const OWNERS: &str = "view_webhook_owners";

/// A delivery's state: `pending` (due at `next_attempt_at`), `delivered`,
/// `failed` (given up), `cancelled` (its webhook was deleted first).
pub const PENDING: &str = "pending";

const SCHEMA: &[&str] = &[
    "CREATE TABLE view_webhooks (
    webhook        TEXT NOT NULL PRIMARY KEY,
    owner          TEXT NOT NULL,
    url            TEXT NOT NULL,
    topics         TEXT NOT NULL,
    sealed_secret  TEXT NOT NULL,
    deleted        BOOLEAN NOT NULL,
    created_at     BIGINT NOT NULL
)",
    "CREATE INDEX view_webhooks_owner ON view_webhooks (owner, created_at)",
    "CREATE TABLE view_webhook_topics (
    topic    TEXT NOT NULL,
    webhook  TEXT NOT NULL,
    owner    TEXT NOT NULL,
    PRIMARY KEY (topic, webhook)
)",
    "CREATE TABLE view_webhook_owners (
    source  TEXT NOT NULL PRIMARY KEY,
    owner   TEXT NOT NULL
)",
    "CREATE TABLE view_webhook_deliveries (
    delivery         TEXT NOT NULL PRIMARY KEY,
    webhook          TEXT NOT NULL,
    owner            TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    topic            TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    retry_from       BIGINT NOT NULL,
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    last_status      BIGINT,
    last_error       TEXT,
    last_attempt_at  BIGINT,
    next_attempt_at  BIGINT,
    delivered_at     BIGINT
)",
    "CREATE INDEX view_webhook_deliveries_due ON view_webhook_deliveries (state, next_attempt_at)",
    "CREATE INDEX view_webhook_deliveries_webhook ON view_webhook_deliveries (webhook, created_at)",
];

/// Events whose stream names an owner, and events webhooks hear of.
const EVENT_TYPES: &[&str] = &[
    "WebhookCreated",
    "WebhookDeleted",
    "WebhookDeliveryAttempted",
    "WebhookRedeliveryRequested",
    "JobCreated",
    "ScheduleCreated",
    "DatasetCreated",
    "JobStarted",
    "JobCompleted",
    "JobFailed",
    "JobStopped",
    "JobHalted",
    "ScheduleFired",
    "ScheduleFireRefused",
    "ProxyDisabled",
    "RunnerWentOffline",
];

impl Projection for WebhooksView {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[WEBHOOKS, TOPICS, OWNERS, DELIVERIES]
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec![],
            event_types: EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let stream = event.stream_id.as_str();
        let at = event.recorded_at;
        if let Some(webhook) = WebhookId::of_stream(stream) {
            webhook_event(webhook, event, out)?;
            return Ok(());
        }
        match event.event_type.as_str() {
            "JobCreated" => {
                if let JobEvent::JobCreated(c) = registry().decode::<JobEvent>(event)? {
                    out.push(owner_of(stream, c.spec.owner.as_str()));
                }
                return Ok(());
            }
            "ScheduleCreated" => {
                if let ScheduleEvent::ScheduleCreated(c) =
                    registry().decode::<ScheduleEvent>(event)?
                {
                    out.push(owner_of(stream, c.spec.owner.as_str()));
                }
                return Ok(());
            }
            "DatasetCreated" => {
                if let DatasetEvent::DatasetCreated(c) = registry().decode::<DatasetEvent>(event)? {
                    out.push(owner_of(stream, c.owner.as_str()));
                }
                return Ok(());
            }
            _ => {}
        }
        let Some(topic) = Topic::of_event_type(&event.event_type) else {
            return Ok(());
        };
        let data: serde_json::Value = serde_json::from_str(&event.data)?;
        let body = serde_json::json!({
            "id": event.id.to_string(),
            "type": topic.as_str(),
            "occurred_at": at.format(&Rfc3339).unwrap_or_default(),
            "subject": stream,
            "data": data,
        })
        .to_string();
        let insert = "INSERT INTO view_webhook_deliveries (delivery, webhook, owner, event_id, \
             topic, body, created_at, retry_from, state, attempts, next_attempt_at) \
             SELECT CAST($1 AS TEXT) || '.' || t.webhook, t.webhook, t.owner, CAST($1 AS TEXT), \
             CAST($2 AS TEXT), CAST($3 AS TEXT), CAST($4 AS BIGINT), CAST($4 AS BIGINT), 'pending', \
             0, CAST($4 AS BIGINT) FROM view_webhook_topics t WHERE t.topic = $2";
        let deliveries = |sql: String| {
            Statement::new(sql)
                .bind(event.id.to_string())
                .bind(topic.as_str())
                .bind(body.clone())
                .bind(at)
        };
        if topic.fleet_wide() {
            out.push(deliveries(insert.to_owned()));
        } else if let Some(source) = owning_source(stream) {
            let of_owner = format!(
                "{insert} AND t.owner = (SELECT o.owner FROM view_webhook_owners o \
                 WHERE o.source = CAST($5 AS TEXT))"
            );
            out.push(deliveries(of_owner).bind(source));
        }
        Ok(())
    }
}

/// The stream whose creation named the owner an event concerns.
fn owning_source(stream: &str) -> Option<String> {
    if stream.starts_with("job-") || stream.starts_with("schedule-") {
        return Some(stream.to_owned());
    }
    domain::proxy_pool::pool_of(stream).map(|pool| format!("dataset-{}", pool.dataset))
}

fn owner_of(source: &str, owner: &str) -> Statement {
    Statement::new(
        "INSERT INTO view_webhook_owners (source, owner) VALUES ($1, $2) \
         ON CONFLICT (source) DO UPDATE SET owner = excluded.owner",
    )
    .bind(source)
    .bind(owner)
}

fn webhook_event(
    webhook: WebhookId,
    event: &RecordedEvent,
    out: &mut Vec<Statement>,
) -> Result<(), ProjectionError> {
    let id = webhook.to_string();
    let at = event.recorded_at;
    match registry().decode::<WebhookEvent>(event)? {
        WebhookEvent::WebhookCreated(c) => {
            let topics: Vec<&str> = c.topics.iter().map(|t| t.as_str()).collect();
            out.push(
                Statement::new(
                    "INSERT INTO view_webhooks (webhook, owner, url, topics, sealed_secret, \
                     deleted, created_at) VALUES ($1, $2, $3, $4, $5, FALSE, $6) \
                     ON CONFLICT (webhook) DO NOTHING",
                )
                .bind(id.clone())
                .bind(c.owner.as_str())
                .bind(c.url)
                .bind(topics.join(","))
                .bind(c.sealed_secret)
                .bind(at),
            );
            for topic in topics {
                out.push(
                    Statement::new(
                        "INSERT INTO view_webhook_topics (topic, webhook, owner) VALUES ($1, $2, $3) \
                         ON CONFLICT (topic, webhook) DO NOTHING",
                    )
                    .bind(topic)
                    .bind(id.clone())
                    .bind(c.owner.as_str()),
                );
            }
        }
        WebhookEvent::WebhookDeleted(_) => {
            out.push(
                Statement::new("UPDATE view_webhooks SET deleted = TRUE WHERE webhook = $1")
                    .bind(id.clone()),
            );
            out.push(
                Statement::new("DELETE FROM view_webhook_topics WHERE webhook = $1")
                    .bind(id.clone()),
            );
            out.push(
                Statement::new(
                    "UPDATE view_webhook_deliveries SET state = 'cancelled', next_attempt_at = NULL \
                     WHERE webhook = $1 AND state = 'pending'",
                )
                .bind(id),
            );
        }
        WebhookEvent::WebhookDeliveryAttempted(a) => {
            let state = match (a.delivered, a.next_attempt_at) {
                (true, _) => "delivered",
                (false, Some(_)) => PENDING,
                (false, None) => "failed",
            };
            // A stale record (two senders raced) never rolls a delivery back.
            out.push(
                Statement::new(
                    "UPDATE view_webhook_deliveries SET state = $3, attempts = $2, last_status = $4, \
                     last_error = $5, last_attempt_at = $6, next_attempt_at = $7, \
                     delivered_at = CASE WHEN $3 = 'delivered' THEN $6 ELSE delivered_at END \
                     WHERE delivery = $1 AND attempts < $2 AND state <> 'cancelled'",
                )
                .bind(a.delivery.to_string())
                .bind(a.attempt)
                .bind(state)
                .bind(a.status.map(u32::from))
                .bind(a.error)
                .bind(at)
                .bind(a.next_attempt_at),
            );
        }
        WebhookEvent::WebhookRedeliveryRequested(r) => out.push(
            Statement::new(
                "UPDATE view_webhook_deliveries SET state = 'pending', next_attempt_at = $2, \
                 retry_from = $2 WHERE delivery = $1",
            )
            .bind(r.delivery.to_string())
            .bind(at),
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_concerns_the_owner_of_the_job_schedule_or_dataset_behind_its_stream() {
        let id = "0195f0a0-0000-7000-8000-000000000001";
        assert_eq!(
            owning_source(&format!("job-{id}")),
            Some(format!("job-{id}"))
        );
        assert_eq!(
            owning_source(&format!("schedule-{id}")),
            Some(format!("schedule-{id}"))
        );
        // A proxy pool is a version of a proxy dataset: its owner's.
        assert_eq!(
            owning_source(&format!("proxy-pool-{id}-v3")),
            Some(format!("dataset-{id}"))
        );
        assert_eq!(owning_source(&format!("runner-{id}")), None);
    }
}

//! Webhook delivery: the `webhooks` view lists every delivery the log calls
//! for (its checkpoint is the delivery checkpoint); this sender POSTs the
//! due ones, signed, and records each attempt on the webhook's stream with
//! when to try again: exponential backoff with jitter for a day from the
//! delivery (or from a redelivery request), then the delivery is failed.
//!
//! At least once: a delivery stays due until an attempt is recorded, so a
//! gateway that dies mid-POST leaves it for the next. Only the gateway
//! projecting the view sends (one per store on PostgreSQL). A slow or dead
//! receiver holds at most [`PER_WEBHOOK`] of [`AT_ONCE`] slots, for at most
//! [`Retries::timeout`] each, and never the gateway's other work.

pub mod post;
pub mod signature;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use datasets::secret::WEBHOOK_SECRET;
use datasets::{DataKey, Sealed};
use domain::webhook::{DeliveryId, Webhook, WebhookCommand, WebhookDeliveryAttempted};
use domain::{Actor, Context, Position};
use hyper::body::Bytes;
use hyper::header::HeaderName;
use projections::webhooks_view::NAME;
use projections::{Row, SqlValue};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::command_handler::CommandMeta;
use crate::state::AppState;

/// Attempts in flight on one gateway.
pub const AT_ONCE: usize = 32;
/// Attempts in flight to one webhook.
pub const PER_WEBHOOK: usize = 4;
/// How often the sender looks for due deliveries.
const EVERY: Duration = Duration::from_millis(250);

/// When to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// The wait after the first failed attempt; it doubles after each.
    pub first: Duration,
    /// The longest wait between attempts.
    pub longest: Duration,
    /// How long after the delivery (or a redelivery request) to keep trying.
    pub give_up_after: Duration,
    /// The longest one attempt may take, connection included.
    pub timeout: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(30),
            longest: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Retries {
    /// When attempt `attempt + 1` is due after attempt `attempt` failed at
    /// `now`, or `None` once the delivery is past its window. `jitter` in
    /// [0, 1) spreads receivers' retries so they do not come back as one.
    pub fn next_after(
        &self,
        attempt: u32,
        now: OffsetDateTime,
        window_from: OffsetDateTime,
        jitter: f64,
    ) -> Option<OffsetDateTime> {
        let doubled = self
            .first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let wait = doubled
            .min(self.longest)
            .mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0);
        let next = now + wait;
        (next <= window_from + self.give_up_after).then_some(next)
    }
}

/// The secret's form when the gateway makes one: `whsec_` and 256 random bits.
pub fn generate_secret() -> SecretString {
    let bytes: [u8; 32] = rand::random();
    SecretString::from(format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A secret a user gives: 16 to 256 visible ASCII characters.
pub fn check_secret(raw: &str) -> Result<SecretString, &'static str> {
    if (16..=256).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(SecretString::from(raw.to_owned()))
    } else {
        Err("a webhook secret is 16 to 256 visible ASCII characters (no spaces)")
    }
}

pub fn seal(key: &DataKey, secret: &SecretString) -> Result<String, datasets::secret::SealError> {
    Sealed::seal_as(key, secret, WEBHOOK_SECRET).map(|s| s.as_str().to_owned())
}

fn open(key: Option<&DataKey>, sealed: &str) -> Result<SecretString, &'static str> {
    let key = key.ok_or(
        "this gateway has no data key (data_key, TB_DATA_KEY) to open the webhook's secret",
    )?;
    Sealed::from_stored(sealed)
        .and_then(|s| s.open_as(key, WEBHOOK_SECRET).ok())
        .ok_or("the webhook's secret does not open with this gateway's data key; was data_key changed?")
}

/// One due delivery, with what sending it takes.
struct Due {
    delivery: String,
    webhook: String,
    topic: String,
    body: String,
    attempts: u32,
    retry_from: OffsetDateTime,
    url: String,
    sealed_secret: String,
}

const DUE: &str = "SELECT d.delivery, d.webhook, d.topic, d.body, d.attempts, d.retry_from, \
     w.url, w.sealed_secret FROM view_webhook_deliveries d \
     JOIN view_webhooks w ON w.webhook = d.webhook \
     WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND NOT w.deleted \
     ORDER BY d.next_attempt_at LIMIT $2";

fn due_from(row: &Row) -> Result<Due, projections::RowError> {
    Ok(Due {
        delivery: row.get("delivery")?,
        webhook: row.get("webhook")?,
        topic: row.get("topic")?,
        body: row.get("body")?,
        attempts: u32::try_from(row.get::<i64>("attempts")?).unwrap_or(u32::MAX),
        retry_from: crate::graphql::from_micros(row.get("retry_from")?),
        url: row.get("url")?,
        sealed_secret: row.get("sealed_secret")?,
    })
}

/// Attempts under way: delivery → webhook. An entry stays until the view
/// shows the attempt, so a delivery the view still lists as due is not
/// sent twice meanwhile.
#[derive(Default)]
struct InFlight(Mutex<HashMap<String, String>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn projecting(app: &AppState) -> bool {
    app.projections
        .borrow()
        .get(NAME)
        .is_some_and(|view| view.projecting)
}

/// Sends due deliveries until the gateway stops.
pub async fn run(app: AppState) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if !crate::live::view_created(&app, NAME).await {
        return;
    }
    let in_flight = Arc::new(InFlight::default());
    let slots = Arc::new(Semaphore::new(AT_ONCE));
    loop {
        every.tick().await;
        if !projecting(&app) {
            continue;
        }
        let now = OffsetDateTime::now_utc();
        let rows = match app
            .views
            .query(
                DUE,
                vec![SqlValue::micros(now), SqlValue::from(AT_ONCE as i64 * 8)],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "the webhook sender cannot read its deliveries");
                continue;
            }
        };
        for row in rows {
            let due = match due_from(&row) {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "a webhook delivery row does not read back");
                    continue;
                }
            };
            {
                let mut flying = in_flight.lock();
                if flying.contains_key(&due.delivery)
                    || flying.values().filter(|w| **w == due.webhook).count() >= PER_WEBHOOK
                {
                    continue;
                }
                flying.insert(due.delivery.clone(), due.webhook.clone());
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                in_flight.lock().remove(&due.delivery);
                break;
            };
            let app = app.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let delivery = due.delivery.clone();
                if let Some(recorded) = attempt(&app, due).await {
                    // Until the view shows the attempt, it lists the delivery as due.
                    crate::live::view_reached(&app, NAME, recorded).await;
                }
                in_flight.lock().remove(&delivery);
                drop(slot);
            });
        }
    }
}

/// Sends one delivery and records the attempt; where the record is in
/// the log, or `None` if nothing was recorded.
async fn attempt(app: &AppState, due: Due) -> Option<Position> {
    let Ok(delivery) = due.delivery.parse::<DeliveryId>() else {
        tracing::warn!(delivery = %due.delivery, "a webhook delivery id does not parse");
        return None;
    };
    let number = due.attempts + 1;
    let started = std::time::Instant::now();
    let outcome = send(app, &due, number).await;
    let now = OffsetDateTime::now_utc();
    let (status, error) = match outcome {
        Ok(status) if (200..300).contains(&status) => (Some(status), None),
        Ok(status) => (
            Some(status),
            Some(format!("the receiver answered HTTP {status}")),
        ),
        Err(why) => (None, Some(why)),
    };
    let delivered = error.is_none();
    let next_attempt_at = if delivered {
        None
    } else {
        app.webhook_retries
            .next_after(number, now, due.retry_from, rand::random())
    };
    let record = WebhookDeliveryAttempted {
        delivery,
        attempt: number,
        status,
        error,
        delivered,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        next_attempt_at,
    };
    let stream = delivery.webhook.stream().ok()?;
    let meta = CommandMeta {
        source: Some("gateway".into()),
        ..CommandMeta::default()
    };
    match app
        .handler
        .handle::<Webhook>(
            &stream,
            WebhookCommand::RecordAttempt(record),
            &Context::new(now, Actor::System),
            &meta,
        )
        .await
    {
        Ok(handled) => handled.position,
        Err(e) => {
            tracing::warn!(delivery = %delivery, error = %e, "cannot record a webhook attempt");
            None
        }
    }
}

/// The POST itself, bounded in time: the receiver's status, or why none.
async fn send(app: &AppState, due: &Due, number: u32) -> Result<u16, String> {
    let secret = open(app.data_key.as_deref(), &due.sealed_secret)?;
    let url = url::Url::parse(&due.url).map_err(|e| format!("the webhook's URL: {e}"))?;
    let t = OffsetDateTime::now_utc().unix_timestamp();
    let body = Bytes::from(due.body.clone());
    let headers = [
        (
            HeaderName::from_static(signature::HEADER),
            signature::sign(secret.expose_secret().as_bytes(), t, &body),
        ),
        (
            HeaderName::from_static("x-trafficbuster-delivery"),
            due.delivery.clone(),
        ),
        (
            HeaderName::from_static("x-trafficbuster-event"),
            due.topic.clone(),
        ),
        (
            HeaderName::from_static("x-trafficbuster-attempt"),
            number.to_string(),
        ),
    ];
    let timeout = app.webhook_retries.timeout;
    tokio::time::timeout(timeout, post::post(&app.verifier, &url, &headers, body))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn retries_double_up_to_the_longest_wait_and_stop_after_a_day() {
        let r = Retries::default();
        let t0 = datetime!(2026-11-24 09:00 UTC);
        // Without jitter's spread (jitter 1.0): 30 s, 60 s, 120 s, …
        assert_eq!(
            r.next_after(1, t0, t0, 1.0),
            Some(t0 + time::Duration::seconds(30))
        );
        assert_eq!(
            r.next_after(2, t0, t0, 1.0),
            Some(t0 + time::Duration::seconds(60))
        );
        assert_eq!(
            r.next_after(12, t0, t0, 1.0),
            Some(t0 + time::Duration::hours(1))
        );
        // Jitter only ever shortens, by at most half.
        assert_eq!(
            r.next_after(1, t0, t0, 0.0),
            Some(t0 + time::Duration::seconds(15))
        );
        let late = t0 + time::Duration::hours(23) + time::Duration::minutes(30);
        assert_eq!(r.next_after(12, late, t0, 1.0), None);
        assert!(r.next_after(40, t0, t0, 0.5).is_some());
    }

    #[test]
    fn secrets_are_made_checked_and_sealed_as_their_own_kind() {
        let made = generate_secret();
        assert!(made.expose_secret().starts_with("whsec_"));
        assert!(check_secret(made.expose_secret()).is_ok());
        assert!(check_secret("short").is_err());
        assert!(check_secret("has a space in it, 16+").is_err());
        let key = DataKey::generate().unwrap();
        let sealed = seal(&key, &made).unwrap();
        assert!(!sealed.contains(made.expose_secret()));
        assert_eq!(
            open(Some(&key), &sealed).unwrap().expose_secret(),
            made.expose_secret()
        );
        // A proxy password's seal does not open as a webhook secret.
        let proxy = Sealed::seal(&key, &made).unwrap();
        assert!(open(Some(&key), proxy.as_str()).is_err());
        assert!(open(None, &sealed).is_err());
    }
}

//! Webhooks on a real gateway, on both stores, to real HTTP receivers on
//! loopback: every delivery is signed as documented and checked by the
//! receiver; a receiver that answers 500 twice gets the delivery a third
//! time; each attempt is recorded and shown; a redelivery is sent again; an
//! old delivery replayed to the receiver fails the documented check; a
//! deleted webhook and another account's webhook hear nothing; and a
//! webhook to a private address is refused by the guard (and retried).

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use domain::account::Username;
use domain::job::JobCommand;
use domain::webhook::{DeliveryId, Topic, Webhook, WebhookCommand, WebhookEvent, WebhookId};
use domain::{Context, RecordedEvent};
use gateway::CommandMeta;
use gateway::webhooks::signature::{self, Refusal};
use gateway::webhooks::{self, Retries};
use projections::SqlValue;
use secrecy::SecretString;
use store::testing::{TestStore, eventually};
use time::OffsetDateTime;
use uuid::Uuid;

use support::*;

const SECRET: &str = "whsec_the-tests-own-secret";

/// What a receiver saw of one request.
#[derive(Debug, Clone)]
struct Received {
    delivery: String,
    event: String,
    attempt: String,
    signature: String,
    body: String,
    /// The documented check, made when the request arrived.
    verified: Result<(), Refusal>,
    answered: u16,
}

/// An HTTP receiver on loopback: answers 500 to a delivery's first
/// `fail_first` tries of `failing` topic, 200 otherwise.
#[derive(Clone)]
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

#[derive(Clone)]
struct Script {
    failing: &'static str,
    fail_first: usize,
    seen: Arc<Mutex<Vec<Received>>>,
}

async fn receive(State(script): State<Script>, headers: HeaderMap, body: String) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature = header(signature::HEADER);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let verified = signature::verify(SECRET.as_bytes(), &signature, body.as_bytes(), now);
    let mut seen = script.seen.lock().unwrap();
    let delivery = header("x-trafficbuster-delivery");
    let event = header("x-trafficbuster-event");
    let before = seen.iter().filter(|r| r.delivery == delivery).count();
    let answered = if event == script.failing && before < script.fail_first {
        500
    } else {
        200
    };
    seen.push(Received {
        delivery,
        event,
        attempt: header("x-trafficbuster-attempt"),
        signature,
        body,
        verified,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

impl Receiver {
    async fn start(failing: &'static str, fail_first: usize) -> Self {
        let seen = Arc::new(Mutex::new(vec![]));
        let script = Script {
            failing,
            fail_first,
            seen: seen.clone(),
        };
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(script);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

/// Quick retries, so a test sees several attempts in a second or two.
const QUICK: Retries = Retries {
    first: Duration::from_millis(100),
    longest: Duration::from_millis(400),
    give_up_after: Duration::from_secs(120),
    timeout: Duration::from_secs(5),
};

fn as_user(name: &str) -> Context {
    let mut ctx = owner();
    if let domain::Actor::Account { username, .. } = &mut ctx.actor {
        *username = name.into();
    }
    ctx
}

/// A webhook of `owner`'s to `url` for `topics`, made as `createWebhook`
/// makes it (the secret sealed with the gateway's data key).
async fn webhook(live: &Live, owner: &str, url: &str, topics: &[Topic]) -> WebhookId {
    let id = WebhookId(Uuid::now_v7());
    let key = live.app().data_key.clone().unwrap();
    let sealed_secret = webhooks::seal(&key, &SecretString::from(SECRET)).unwrap();
    live.handler
        .handle::<Webhook>(
            &id.stream().unwrap(),
            WebhookCommand::Create {
                webhook: id,
                owner: Username::parse(owner).unwrap(),
                url: url.into(),
                topics: topics.to_vec(),
                sealed_secret,
            },
            &if owner == "root" {
                root()
            } else {
                as_user(owner)
            },
            &CommandMeta::default(),
        )
        .await
        .unwrap();
    id
}

/// (delivery, state, attempts, last_status, last_error) of `webhook`'s deliveries.
async fn deliveries(
    live: &Live,
    webhook: WebhookId,
) -> Vec<(String, String, i64, Option<i64>, Option<String>)> {
    let rows = live
        .views
        .query(
            "SELECT delivery, state, attempts, last_status, last_error \
             FROM view_webhook_deliveries WHERE webhook = $1 ORDER BY created_at, delivery",
            vec![SqlValue::from(webhook.to_string())],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.get("delivery").unwrap(),
                r.get("state").unwrap(),
                r.get("attempts").unwrap(),
                r.get("last_status").unwrap(),
                r.get("last_error").unwrap(),
            )
        })
        .collect()
}

fn attempts_on(events: &[RecordedEvent], webhook: WebhookId) -> Vec<(u32, Option<u16>, bool)> {
    let stream = webhook.stream().unwrap();
    let registry = domain::event_registry();
    events
        .iter()
        .filter(|e| e.stream_id == stream)
        .filter_map(|e| match registry.decode::<WebhookEvent>(e) {
            Ok(WebhookEvent::WebhookDeliveryAttempted(a)) => {
                Some((a.attempt, a.status, a.delivered))
            }
            _ => None,
        })
        .collect()
}

mod cases {
    use super::*;

    pub async fn deliveries_are_signed_retried_recorded_and_redelivered(store: &TestStore) {
        let live = Live::start_for_webhooks(store, QUICK).await;
        let ada = Receiver::start("job.started", 2).await;
        let bob = Receiver::start("", 0).await;
        let hook = webhook(
            &live,
            OWNER,
            &ada.url,
            &[Topic::JobStarted, Topic::JobStopped],
        )
        .await;
        let bobs = webhook(
            &live,
            "bob",
            &bob.url,
            &[Topic::JobStarted, Topic::JobStopped],
        )
        .await;

        let job = live.running_job(1, 2, 0, 1).await;
        live.job(job, JobCommand::Stop { reason: None }, &owner())
            .await
            .unwrap();

        // started: 500, 500, then 200; stopped: 200 at once.
        eventually("both deliveries delivered", || async {
            let d = deliveries(&live, hook).await;
            d.len() == 2 && d.iter().all(|(_, state, ..)| state == "delivered")
        })
        .await;
        let seen = ada.seen();
        let answers: HashMap<&str, Vec<u16>> = seen.iter().fold(HashMap::new(), |mut m, r| {
            m.entry(r.event.as_str()).or_default().push(r.answered);
            m
        });
        assert_eq!(answers["job.started"], [500, 500, 200]);
        assert_eq!(answers["job.stopped"], [200]);
        for r in &seen {
            assert_eq!(r.verified, Ok(()), "{r:?}");
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["type"], r.event.as_str());
            assert_eq!(body["subject"], job.stream().unwrap().as_str());
            let delivery: DeliveryId = r.delivery.parse().unwrap();
            assert_eq!(delivery.webhook, hook);
            assert_eq!(body["id"], delivery.event.to_string());
        }
        let started: Vec<&str> = seen
            .iter()
            .filter(|r| r.event == "job.started")
            .map(|r| r.attempt.as_str())
            .collect();
        assert_eq!(started, ["1", "2", "3"]);

        // Each attempt is an event on the webhook's stream, and in the view.
        let events = live.store_events().await;
        let mut attempts = attempts_on(&events, hook);
        attempts.sort();
        assert_eq!(
            attempts,
            [
                (1, Some(200), true),
                (1, Some(500), false),
                (2, Some(500), false),
                (3, Some(200), true),
            ]
        );
        let view = deliveries(&live, hook).await;
        let by_state: Vec<(i64, Option<i64>)> = view
            .iter()
            .map(|(_, _, n, status, _)| (*n, *status))
            .collect();
        assert!(by_state.contains(&(3, Some(200))) && by_state.contains(&(1, Some(200))));

        // Someone replaying a delivery later fails the documented check.
        let first = &seen[0];
        let t: i64 = first.signature[2..first.signature.find(',').unwrap()]
            .parse()
            .unwrap();
        assert_eq!(
            signature::verify(
                SECRET.as_bytes(),
                &first.signature,
                first.body.as_bytes(),
                t + 61
            ),
            Err(Refusal::TooOld { age_s: 61 })
        );

        // A redelivery is sent again, as the next attempt.
        let stopped: DeliveryId = seen
            .iter()
            .find(|r| r.event == "job.stopped")
            .unwrap()
            .delivery
            .parse()
            .unwrap();
        live.handler
            .handle::<Webhook>(
                &hook.stream().unwrap(),
                WebhookCommand::Redeliver { delivery: stopped },
                &owner(),
                &CommandMeta::default(),
            )
            .await
            .unwrap();
        eventually("the redelivery received", || async {
            ada.seen()
                .iter()
                .any(|r| r.delivery == stopped.to_string() && r.attempt == "2")
        })
        .await;

        // bob's webhook heard nothing of ada's job.
        assert!(bob.seen().is_empty());
        assert!(deliveries(&live, bobs).await.is_empty());

        // Once deleted, a webhook hears of nothing new.
        live.handler
            .handle::<Webhook>(
                &hook.stream().unwrap(),
                WebhookCommand::Delete,
                &owner(),
                &CommandMeta::default(),
            )
            .await
            .unwrap();
        let later = live.running_job(1, 1, 0, 1).await;
        let handled = live
            .handler
            .handle::<domain::job::JobAggregate>(
                &later.stream().unwrap(),
                JobCommand::Stop { reason: None },
                &owner(),
                &CommandMeta::default(),
            )
            .await
            .unwrap();
        assert!(
            gateway::live::view_reached(live.app(), "webhooks", handled.position.unwrap()).await
        );
        assert_eq!(deliveries(&live, hook).await.len(), 2);
        live.stop().await;
    }

    pub async fn a_receiver_that_never_answers_holds_up_no_other(store: &TestStore) {
        // Attempts wait up to 30 s for an answer that never comes.
        let patient = Retries {
            timeout: Duration::from_secs(30),
            ..QUICK
        };
        let live = Live::start_for_webhooks(store, patient).await;
        let silent = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
        let held = Arc::new(Mutex::new(vec![]));
        let holding = held.clone();
        tokio::spawn(async move {
            // Takes connections and keeps them, saying nothing.
            while let Ok((tcp, _)) = silent.accept().await {
                holding.lock().unwrap().push(tcp);
            }
        });
        let good = Receiver::start("", 0).await;
        let topics = [Topic::JobStarted, Topic::JobStopped];
        let stuck = webhook(&live, OWNER, &silent_url, &topics).await;
        let answered = webhook(&live, OWNER, &good.url, &topics).await;
        for _ in 0..6 {
            let job = live.running_job(1, 1, 0, 1).await;
            live.job(job, JobCommand::Stop { reason: None }, &owner())
                .await
                .unwrap();
        }
        eventually("all 12 deliveries to the answering receiver", || async {
            let d = deliveries(&live, answered).await;
            d.len() == 12 && d.iter().all(|(_, state, ..)| state == "delivered")
        })
        .await;
        // Meanwhile the silent one holds its share of connections, and no
        // attempt of it has ended.
        let waiting = deliveries(&live, stuck).await;
        assert_eq!(waiting.len(), 12);
        assert!(
            waiting
                .iter()
                .all(|(_, state, n, ..)| state == "pending" && *n == 0)
        );
        let open = held.lock().unwrap().len();
        assert!(
            (1..=webhooks::PER_WEBHOOK).contains(&open),
            "{open} connections"
        );
        live.stop().await;
    }

    pub async fn runner_offline_reaches_the_fleets_webhooks(store: &TestStore) {
        let live = Live::start_for_webhooks(store, QUICK).await;
        let receiver = Receiver::start("", 0).await;
        let hook = webhook(&live, "root", &receiver.url, &[Topic::RunnerOffline]).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let connection = runner::Connection::open(&live.config(runner, &key))
            .await
            .unwrap();
        drop(connection);
        eventually("runner.offline delivered", || async {
            receiver.seen().iter().any(|r| r.event == "runner.offline")
        })
        .await;
        let r = receiver.seen().remove(0);
        assert_eq!(r.verified, Ok(()));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["subject"], runner.stream().unwrap().as_str());
        assert_eq!(body["data"]["reason"], "disconnected");
        assert_eq!(deliveries(&live, hook).await.len(), 1);
        live.stop().await;
    }

    pub async fn a_private_address_is_refused_by_the_guard_and_retried(store: &TestStore) {
        // The default settings: no private addresses.
        let live = Live::start(store).await;
        let receiver = Receiver::start("", 0).await;
        let hook = webhook(&live, OWNER, &receiver.url, &[Topic::JobStarted]).await;
        live.running_job(1, 1, 0, 1).await;
        eventually("the refused attempt recorded", || async {
            deliveries(&live, hook)
                .await
                .first()
                .is_some_and(|(_, state, n, _, _)| state == "pending" && *n >= 1)
        })
        .await;
        let (_, _, _, status, error) = deliveries(&live, hook).await.remove(0);
        assert_eq!(status, None);
        let error = error.unwrap();
        assert!(
            error.contains("127.0.0.1") && error.contains("non-public"),
            "{error}"
        );
        assert!(receiver.seen().is_empty());
        live.stop().await;
    }
}

store::each_backend!(
    deliveries_are_signed_retried_recorded_and_redelivered,
    a_private_address_is_refused_by_the_guard_and_retried,
    a_receiver_that_never_answers_holds_up_no_other,
    runner_offline_reaches_the_fleets_webhooks,
);

/// Two gateways on one PostgreSQL store: only the one projecting the
/// webhooks view sends, so each delivery is sent once, not once per gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_on_postgresql_send_each_delivery_once() {
    let Some(store) = TestStore::postgres("webhooks_two_gateways").await else {
        return;
    };
    let first = Live::start_for_webhooks(&store, QUICK).await;
    let second = Live::start_for_webhooks(&store.shared(), QUICK).await;
    let receiver = Receiver::start("", 0).await;
    webhook(
        &first,
        OWNER,
        &receiver.url,
        &[Topic::JobStarted, Topic::JobStopped],
    )
    .await;
    for _ in 0..5 {
        let job = second.running_job(1, 1, 0, 1).await;
        second
            .job(job, JobCommand::Stop { reason: None }, &owner())
            .await
            .unwrap();
    }
    eventually("10 deliveries received", || async {
        receiver.seen().len() >= 10
    })
    .await;
    // Time for a second sender, if there were one, to send again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = receiver.seen();
    let mut ids: Vec<&str> = seen.iter().map(|r| r.delivery.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((seen.len(), ids.len()), (10, 10), "{seen:#?}");
    assert!(seen.iter().all(|r| r.attempt == "1" && r.verified.is_ok()));
    second.stop().await;
    first.stop().await;
    store.cleanup().await;
}

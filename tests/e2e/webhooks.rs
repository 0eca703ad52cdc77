//! Webhooks end to end over GraphQL: bad input refused naming the field;
//! a webhook made with a generated secret shown once; a job run and
//! stopped over GraphQL reaches a receiver on loopback as two signed
//! deliveries (checked with the README's scheme); `webhookDeliveries`
//! shows them delivered; `redeliver` sends one again; another account
//! sees none of it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::app::TestApp;
use crate::helpers::{PASSWORD, TestStore, code, spawn_app};
use crate::jobs::{CREATE, ISSUE, RUN, datasets_of, licence};

const CREATE_WEBHOOK: &str = "mutation($u: String!, $e: [String!]!, $s: String) { \
    createWebhook(url: $u, events: $e, secret: $s) { secret webhook { id url events owner } } }";
const DELIVERIES: &str = "query($w: ID!) { webhookDeliveries(webhookId: $w) \
    { id event state attempts lastStatus lastError deliveredAt body } }";

/// One request a receiver took: its headers (lowercased names) and body.
#[derive(Debug, Clone)]
struct Request {
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v)
    }
}

/// A plain HTTP/1.1 receiver on loopback that answers 204 to every POST.
async fn receiver() -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/tb", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(vec![]));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut raw = vec![];
                let mut buf = [0u8; 4096];
                // The head, then as many bytes as Content-Length says.
                let (head, body_start) = loop {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (String::from_utf8_lossy(&raw[..end]).into_owned(), end + 4);
                    }
                };
                let headers: Vec<(String, String)> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while raw.len() < body_start + length {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                let body = String::from_utf8_lossy(&raw[body_start..]).into_owned();
                log.lock().unwrap().push(Request { headers, body });
                let _ = tcp
                    .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, seen)
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(r: &Value) -> &str {
    r["errors"][0]["message"].as_str().unwrap_or_default()
}

/// ada's job of one target, run then stopped over GraphQL.
async fn run_and_stop_a_job(app: &TestApp, root: &str, ada: &str) {
    let r = app
        .gql(ISSUE, json!({ "u": "ada", "l": licence(8) }), Some(root))
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
    let off = "mutation($r: String!) { turnSafeModeOff(reason: $r) { safeMode { on } } }";
    let r = app
        .gql(off, json!({ "r": "webhooks e2e" }), Some(root))
        .await;
    assert_eq!(r["data"]["turnSafeModeOff"]["safeMode"]["on"], false, "{r}");
    let list = "mutation($d: String!, $r: String!) { allowListDomain(domain: $d, reason: $r) }";
    let r = app
        .gql(
            list,
            json!({ "d": "shop.example.com", "r": "staging" }),
            Some(root),
        )
        .await;
    assert_eq!(r["data"]["allowListDomain"], true, "{r}");
    let mut vars = datasets_of(app, ada, "https://shop.example.com/a,3,0\n", 1).await;
    vars["n"] = json!("hooked");
    let r = app.gql(CREATE, vars, Some(ada)).await;
    let job = r["data"]["createJob"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let r = app.gql(RUN, json!({ "id": job }), Some(ada)).await;
    assert_eq!(r["data"]["runJob"]["status"], "RUNNING", "{r}");
    let stop = "mutation($id: ID!) { stopJob(id: $id) { status } }";
    let r = app.gql(stop, json!({ "id": job }), Some(ada)).await;
    assert_eq!(r["data"]["stopJob"]["status"], "STOPPED", "{r}");
}

async fn webhooks_deliver_signed_events(store: TestStore) {
    let app = spawn_app()
        .store(store)
        .flags(&["--verification-allow-private-addresses", "true"])
        // PostgreSQL has no data key unless given (SQLite makes one).
        .env("TB_DATA_KEY", &"5".repeat(64))
        .await;
    let root = app.with_accounts().await;
    let ada = app.token("ada", PASSWORD).await;
    let (url, seen) = receiver().await;

    // Bad input, each naming its field.
    for (vars, expected_code, starts) in [
        (
            json!({ "u": "ftp://example.com/x", "e": ["job.done"] }),
            "VALIDATION",
            "url: its scheme is \"ftp\"",
        ),
        (
            json!({ "u": url, "e": ["job.done", "job.finished"] }),
            "VALIDATION",
            "events[1]: unknown event \"job.finished\"",
        ),
        (
            json!({ "u": url, "e": [] }),
            "VALIDATION",
            "events: choose at least one",
        ),
        (
            json!({ "u": url, "e": ["job.done"], "s": "short" }),
            "VALIDATION",
            "secret: a webhook secret is 16 to 256",
        ),
        (
            json!({ "u": url, "e": ["runner.offline"] }),
            "FORBIDDEN",
            "events: runner.offline concerns the whole fleet",
        ),
    ] {
        let r = app.gql(CREATE_WEBHOOK, vars, Some(&ada)).await;
        assert_eq!(code(&r), expected_code, "{r}");
        assert!(message(&r).starts_with(starts), "{r}");
    }

    let r = app
        .gql(
            CREATE_WEBHOOK,
            json!({ "u": url, "e": ["job.started", "job.stopped"] }),
            Some(&ada),
        )
        .await;
    let created = &r["data"]["createWebhook"];
    let secret = created["secret"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(secret.starts_with("whsec_"), "{r}");
    assert_eq!(
        created["webhook"]["events"],
        json!(["job.started", "job.stopped"])
    );
    assert_eq!(created["webhook"]["owner"], "ada");
    let hook = created["webhook"]["id"].as_str().unwrap().to_owned();
    let r = app
        .gql("{ webhooks { id url } }", json!({}), Some(&ada))
        .await;
    assert_eq!(
        r["data"]["webhooks"],
        json!([{ "id": hook, "url": url }]),
        "{r}"
    );

    run_and_stop_a_job(&app, &root, &ada).await;
    until("two deliveries received", || {
        seen.lock().unwrap().len() >= 2
    })
    .await;
    let received = seen.lock().unwrap().clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut events: Vec<&str> = vec![];
    for request in &received {
        let header = request.header("x-trafficbuster-signature");
        assert_eq!(
            gateway::webhooks::signature::verify(
                secret.as_bytes(),
                header,
                request.body.as_bytes(),
                now
            ),
            Ok(()),
            "{request:?}"
        );
        assert_eq!(request.header("content-type"), "application/json");
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["type"], request.header("x-trafficbuster-event"));
        events.push(request.header("x-trafficbuster-event"));
    }
    events.sort();
    assert_eq!(events, ["job.started", "job.stopped"]);

    let mut listed = json!([]);
    until_listed(&app, &ada, &hook, &mut listed).await;
    for d in listed.as_array().unwrap() {
        assert_eq!(d["attempts"], 1, "{d}");
        assert_eq!(d["lastStatus"], 204, "{d}");
        assert!(d["deliveredAt"].is_string(), "{d}");
    }

    // Sent again on request, as attempt 2.
    let delivery = listed[0]["id"].as_str().unwrap().to_owned();
    let r = app
        .gql(
            "mutation($d: ID!) { redeliver(deliveryId: $d) }",
            json!({ "d": delivery }),
            Some(&ada),
        )
        .await;
    assert_eq!(r["data"]["redeliver"], true, "{r}");
    until("the redelivery", || {
        seen.lock().unwrap().iter().any(|r| {
            r.header("x-trafficbuster-delivery") == delivery
                && r.header("x-trafficbuster-attempt") == "2"
        })
    })
    .await;

    // Another account sees none of it.
    let audrey = app.token("audrey", PASSWORD).await;
    let r = app
        .gql(DELIVERIES, json!({ "w": hook }), Some(&audrey))
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = app
        .gql("{ webhooks { id } }", json!({}), Some(&audrey))
        .await;
    assert_eq!(r["data"]["webhooks"], json!([]), "{r}");
}

/// Polls `webhookDeliveries` until both show delivered.
async fn until_listed(app: &TestApp, token: &str, hook: &str, out: &mut Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = app.gql(DELIVERIES, json!({ "w": hook }), Some(token)).await;
        let list = &r["data"]["webhookDeliveries"];
        if list
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|d| d["state"] == "delivered"))
        {
            *out = list.clone();
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries not shown delivered: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_signed_events_on_sqlite() {
    webhooks_deliver_signed_events(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_signed_events_on_postgres() {
    let Some(store) = TestStore::postgres("e2e_webhooks").await else {
        return;
    };
    webhooks_deliver_signed_events(store).await;
}

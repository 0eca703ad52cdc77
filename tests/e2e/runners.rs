//! The runner fleet end to end: an admin makes a runner key over GraphQL,
//! a protocol-client runner connects to the real gateway with it, and the
//! fleet shows it (runners, availablePlatforms and its subscription); an
//! admin drains it, and revoking its key drops it.

use std::time::Duration;

use domain::runner::{Browser, Capabilities, Os, Platform, RunnerId};
use domain::runner_key::RunnerKey;
use domain::runner_protocol::{ErrorCode, VersionRange};
use futures_util::SinkExt;
use runner::{ClientConfig, ClientError, Connection, Notice};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::graphql::{ws_connect, ws_next};
use crate::helpers::{PASSWORD, TestApp, TestStore, code, spawn_app};

const CREATE_KEY: &str = "mutation($n: String!) { createRunnerKey(name: $n) { id name key } }";

/// A runner key made by `token`'s holder: (id, key).
pub async fn runner_key(app: &TestApp, token: &str) -> (String, RunnerKey) {
    let r = app
        .gql(CREATE_KEY, json!({ "n": "eu fleet" }), Some(token))
        .await;
    let made = &r["data"]["createRunnerKey"];
    let key = made["key"].as_str().unwrap_or_else(|| panic!("{r}"));
    (
        made["id"].as_str().unwrap().to_owned(),
        RunnerKey::parse(key).unwrap(),
    )
}

/// A Linux Chromium runner's client configuration for `app`.
pub fn runner_config(app: &TestApp, runner: RunnerId, key: &RunnerKey) -> ClientConfig {
    ClientConfig {
        url: format!("ws://{}/runner", app.addr),
        runner,
        key: key.clone(),
        name: "rack-1".into(),
        software: "trafficbuster e2e".into(),
        capabilities: Capabilities {
            platform: Platform {
                os: Os::Linux,
                browser: Browser::Chromium,
            },
            browser_version: "126.0.6478.126".into(),
            max_instances: 8,
            labels: [("region".to_owned(), "eu-west".to_owned())].into(),
        },
        protocol: VersionRange::THIS_BUILD,
    }
}

/// The next `availablePlatforms` answer of subscription "p".
async fn next_platforms(ws: &mut crate::graphql::Ws) -> Value {
    let next = ws_next(ws).await;
    assert_eq!(next["type"], "next", "{next}");
    next["payload"]["data"]["availablePlatforms"].clone()
}

async fn fleet_over_graphql(store: TestStore) {
    let app = spawn_app().store(store).await;
    let root = app.with_accounts().await;
    let ada = app.token("ada", PASSWORD).await;

    let r = app
        .gql(CREATE_KEY, json!({ "n": "mine" }), Some(&ada))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let (key_id, key) = runner_key(&app, &root).await;
    assert!(key.expose().starts_with("tbr_"));
    let r = app
        .gql("{ runnerKeys { id name revoked } }", json!({}), Some(&root))
        .await;
    assert_eq!(
        r["data"]["runnerKeys"],
        json!([{ "id": key_id, "name": "eu fleet", "revoked": false }]),
        "{r}"
    );

    // Any account watches the platforms it may choose.
    let mut ws = ws_connect(&app.addr, "graphql-transport-ws", &ada).await;
    ws.send(Message::text(
        json!({ "id": "p", "type": "subscribe",
                "payload": { "query": "subscription { availablePlatforms { os browser } }" } })
        .to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_platforms(&mut ws).await, json!([]));

    let runner = RunnerId(Uuid::now_v7());
    let mut connection = Connection::open(&runner_config(&app, runner, &key))
        .await
        .unwrap();
    // Its own platform, and the phones a Chromium runner emulates.
    assert_eq!(
        next_platforms(&mut ws).await,
        json!([{ "os": "LINUX", "browser": "CHROMIUM" },
               { "os": "ANDROID", "browser": "CHROMIUM" }, { "os": "ANDROID", "browser": "CHROME" },
               { "os": "IOS", "browser": "CHROMIUM" }, { "os": "IOS", "browser": "CHROME" }])
    );
    let fleet = "{ runners { id name platform { os browser } maxInstances labels { key value } online draining keyId } }";
    let r = app.gql(fleet, json!({}), Some(&root)).await;
    assert_eq!(
        r["data"]["runners"],
        json!([{ "id": runner.to_string(), "name": "rack-1",
                 "platform": { "os": "LINUX", "browser": "CHROMIUM" }, "maxInstances": 8,
                 "labels": [{ "key": "region", "value": "eu-west" }],
                 "online": true, "draining": false, "keyId": key_id }]),
        "{r}"
    );
    let r = app.gql(fleet, json!({}), Some(&ada)).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");

    // A drain reaches the runner within a second.
    let r = app
        .gql(
            "mutation($id: ID!) { drainRunner(id: $id) }",
            json!({ "id": runner.to_string() }),
            Some(&root),
        )
        .await;
    assert_eq!(r["data"]["drainRunner"], true, "{r}");
    let notice = connection
        .next_notice(Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(notice, Some(Notice::Drain { by: "root".into() }));

    // Revoking its key drops it: its platform is no longer available.
    let r = app
        .gql(
            "mutation($id: ID!) { revokeRunnerKey(id: $id) }",
            json!({ "id": key_id }),
            Some(&root),
        )
        .await;
    assert_eq!(r["data"]["revokeRunnerKey"], true, "{r}");
    match connection.next_notice(Duration::from_secs(2)).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::Unauthenticated),
        other => panic!("the revoked runner got {other:?}"),
    }
    assert_eq!(next_platforms(&mut ws).await, json!([]));
    match Connection::open(&runner_config(&app, runner, &key)).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::Unauthenticated),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a revoked key let a runner in"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_over_graphql_on_sqlite() {
    fleet_over_graphql(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_over_graphql_on_postgres() {
    let Some(store) = TestStore::postgres("e2e_fleet_over_graphql").await else {
        return;
    };
    fleet_over_graphql(store).await;
}

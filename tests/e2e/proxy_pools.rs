//! Proxy health end to end: a job over uploaded proxies (passwords sealed),
//! a protocol-client runner briefed with the passwords in clear, and the
//! UI's view of it over GraphQL — `jobProxies` and `proxyPool` list the
//! proxies (never a password) and the subscription sees a proxy that keeps
//! failing turn DISABLED live, with why and until when.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use domain::flow::{FlowId, FlowReport, ProxyIndex};
use domain::job::JobId;
use runner::{Answer, Connection, Leased};

use crate::datasets::{File, published};
use crate::graphql::{ws_connect, ws_next};
use crate::helpers::{PASSWORD, TestApp, TestStore, code, spawn_app};
use crate::jobs::{ISSUE, RUN};
use crate::runners::{runner_config, runner_key};

/// The first proxy's password: it reaches the runner's brief and nothing else.
const PROXY_PASSWORD: &str = "e2e-proxy-pw-5517";

const CREATE: &str = "mutation($n: String!, $t: DatasetVersionInput!, $d: DatasetVersionInput!, \
    $s: DatasetVersionInput!, $p: DatasetVersionInput) { createJob(name: $n, targets: $t, \
    deviceProfiles: $d, settingsProfile: $s, proxies: $p) { id } }";

const POOL_FIELDS: &str = "dataset version total disabled onTrial \
    proxies { row host port username hasPassword status failures lastError disabledUntil }";

fn licence() -> Value {
    json!({ "maxInstances": 4, "humanSurfing": true, "importProxy": true,
        "scheduler": false, "externalClicks": false, "maxTargets": 100, "maxFlowsPerDay": 100000,
        "expiresAt": "2099-01-01T00:00:00Z" })
}

/// The proxies of `payload`'s pool as (row, status, failures).
fn statuses(pool: &Value) -> Vec<(u64, String, u64)> {
    pool["proxies"]
        .as_array()
        .unwrap_or_else(|| panic!("{pool}"))
        .iter()
        .map(|p| {
            (
                p["row"].as_u64().unwrap(),
                p["status"].as_str().unwrap().to_owned(),
                p["failures"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn proxy_health_is_watched_live(app: TestApp) {
    let root = app.with_accounts().await;
    let ada = app.token("ada", PASSWORD).await;
    let stranger = "mutation($u: String!, $p: String!, $r: [RoleName!]!) { createAccount(username: $u, password: $p, roles: $r) }";
    app.gql(
        stranger,
        json!({ "u": "bob", "p": PASSWORD, "r": ["USER"] }),
        Some(&root),
    )
    .await;
    let bob = app.token("bob", PASSWORD).await;
    let r = app
        .gql(ISSUE, json!({ "u": "ada", "l": licence() }), Some(&root))
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
    let file = |kind, csv: String| File::new(kind, "CSV", csv);
    let targets = file(
        "TARGETS",
        "url,flow_target\nhttps://shop.example.com/,10\n".into(),
    );
    let profiles = file(
        "DEVICE_PROFILES",
        "name,os,browser,user_agent,viewport_width,viewport_height\n\
         desk,linux,chromium,Mozilla/5.0 (X11; Linux x86_64) Chrome/126,1920,1080\n"
            .into(),
    );
    let settings = file(
        "SETTINGS_PROFILES",
        "name,instances,proxy_switching\nproxied,2,on_failure\n".into(),
    );
    let proxies = file(
        "PROXIES",
        format!(
            "host,port,username,password\n10.0.0.1,3128,alice,{PROXY_PASSWORD}\n10.0.0.2,3128,,\n"
        ),
    );
    let version = |id: String| json!({ "dataset": id, "version": 1 });
    let proxies_id = published(&app, &ada, &proxies).await;
    let vars = json!({
        "n": "proxied",
        "t": version(published(&app, &ada, &targets).await),
        "d": version(published(&app, &ada, &profiles).await),
        "s": version(published(&app, &ada, &settings).await),
        "p": version(proxies_id.clone()),
    });
    let r = app.gql(CREATE, vars, Some(&ada)).await;
    let job = r["data"]["createJob"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let off = "mutation($r: String!) { turnSafeModeOff(reason: $r) { safeMode { on } } }";
    app.gql(off, json!({ "r": "proxy e2e" }), Some(&root)).await;
    let list = "mutation($d: String!, $r: String!) { allowListDomain(domain: $d, reason: $r) }";
    let r = app
        .gql(
            list,
            json!({ "d": "shop.example.com", "r": "staging" }),
            Some(&root),
        )
        .await;
    assert_eq!(r["data"]["allowListDomain"], true, "{r}");
    let r = app.gql(RUN, json!({ "id": job }), Some(&ada)).await;
    assert_eq!(r["data"]["runJob"]["status"], "RUNNING", "{r}");

    // The UI lists the job's proxies: healthy, passwords only as a flag.
    let query = format!("query($id: ID!) {{ jobProxies(id: $id) {{ {POOL_FIELDS} }} }}");
    let r = app.gql(&query, json!({ "id": job }), Some(&ada)).await;
    let pool = &r["data"]["jobProxies"];
    assert_eq!(
        statuses(pool),
        [(0, "HEALTHY".into(), 0), (1, "HEALTHY".into(), 0)],
        "{r}"
    );
    assert_eq!(pool["proxies"][0]["hasPassword"], true, "{r}");
    assert!(!r.to_string().contains(PROXY_PASSWORD));
    let r = app.gql(&query, json!({ "id": job }), Some(&bob)).await;
    assert_eq!(code(&r), "NOT_FOUND", "another account's job: {r}");
    let by_version = format!(
        "query($d: UUID!, $v: Int!) {{ proxyPool(dataset: $d, version: $v) {{ {POOL_FIELDS} }} }}"
    );
    let r = app
        .gql(&by_version, json!({ "d": proxies_id, "v": 1 }), Some(&bob))
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "another account's dataset: {r}");

    // ada watches them.
    let mut ws = ws_connect(&app.addr, "graphql-transport-ws", &ada).await;
    let watch = format!("subscription($id: ID!) {{ jobProxies(id: $id) {{ {POOL_FIELDS} }} }}");
    ws.send(Message::text(
        json!({ "id": "p", "type": "subscribe", "payload": { "query": watch, "variables": { "id": job } } })
            .to_string(),
    ))
    .await
    .unwrap();
    let first = ws_next(&mut ws).await;
    assert_eq!(
        statuses(&first["payload"]["data"]["jobProxies"]),
        [(0, "HEALTHY".into(), 0), (1, "HEALTHY".into(), 0)],
        "{first}"
    );

    // A runner is briefed with the password, and proxy 0 keeps failing.
    let (_, key) = runner_key(&app, &root).await;
    let mut runner = Connection::open(&runner_config(
        &app,
        domain::runner::RunnerId(Uuid::now_v7()),
        &key,
    ))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let grant = loop {
        match runner.lease(1, 4).await.unwrap() {
            Leased::Granted(grant) => break grant,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => panic!("no lease: {other:?}"),
        }
    };
    let job_id = JobId(Uuid::parse_str(&job).unwrap());
    assert_eq!(grant.job, job_id);
    let brief = runner.brief(job_id).expect("briefed before the grant");
    let password = brief.proxy(ProxyIndex(0)).unwrap().password.clone();
    assert_eq!(password.as_ref().map(|p| p.expose()), Some(PROXY_PASSWORD));
    let first_flow = grant.work[0].flows.start();
    let failovers = (0..3)
        .map(|i| FlowReport::ProxyFailedOver {
            flow: FlowId(first_flow + i),
            from: ProxyIndex(0),
            to: Some(ProxyIndex(1)),
            error: "net::ERR_TUNNEL_CONNECTION_FAILED".into(),
        })
        .collect();
    let answer = runner
        .report(Uuid::now_v7(), job_id, failovers)
        .await
        .unwrap();
    assert!(
        matches!(answer, Answer::Accepted { recorded: 3, .. }),
        "{answer:?}"
    );

    // The subscription sees it disabled, with why and until when.
    let pool = loop {
        let next = ws_next(&mut ws).await;
        assert_eq!(next["type"], "next", "{next}");
        let pool = next["payload"]["data"]["jobProxies"].clone();
        if pool["disabled"] == 1 {
            break pool;
        }
    };
    assert_eq!(
        statuses(&pool),
        [(0, "DISABLED".into(), 3), (1, "HEALTHY".into(), 0)],
        "{pool}"
    );
    assert_eq!(
        pool["proxies"][0]["lastError"],
        "net::ERR_TUNNEL_CONNECTION_FAILED"
    );
    assert!(pool["proxies"][0]["disabledUntil"].is_string(), "{pool}");
    // The same by dataset version, for its owner.
    let r = app
        .gql(&by_version, json!({ "d": proxies_id, "v": 1 }), Some(&ada))
        .await;
    assert_eq!(r["data"]["proxyPool"], pool, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_health_is_watched_live_on_sqlite() {
    proxy_health_is_watched_live(spawn_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_health_is_watched_live_on_postgres() {
    let Some(store) = TestStore::postgres("e2e_proxy_health_watched").await else {
        return;
    };
    proxy_health_is_watched_live(
        spawn_app()
            .store(store)
            .env("TB_DATA_KEY", &"7".repeat(64))
            .await,
    )
    .await;
}

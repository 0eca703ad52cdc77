//! Jobs end to end over GraphQL: created from uploaded dataset versions, a
//! run refused for safe mode, the licence (naming which feature or limit)
//! and the domains' consent (listing them), then run, idempotent (a second run is a CONFLICT), watched through
//! jobProgress as it pauses and stops, listed per owner, and its log
//! downloaded as JSON lines and CSV, authorised like the job.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::datasets::{File, published};
use crate::graphql::{ws_connect, ws_next};
use crate::helpers::{PASSWORD, TestApp, TestStore, code, spawn_app};

pub const ISSUE: &str = "mutation($u: String!, $l: LicenceInput!) { issueLicence(username: $u, licence: $l) { licensed } }";
pub const RUN: &str = "mutation($id: ID!) { runJob(id: $id) { status } }";

pub fn licence(max_instances: u32) -> Value {
    json!({ "maxInstances": max_instances, "humanSurfing": true, "importProxy": false,
        "scheduler": false, "externalClicks": false, "maxTargets": 100, "maxFlowsPerDay": 100000,
        "expiresAt": "2099-01-01T00:00:00Z" })
}

pub const CREATE: &str = "mutation($n: String!, $t: DatasetVersionInput!, $d: DatasetVersionInput!, \
    $s: DatasetVersionInput!) { createJob(name: $n, targets: $t, deviceProfiles: $d, settingsProfile: $s) \
    { id status flows targets platforms { os browser } settings { instances markerHeader } } }";

/// ada's datasets for a job (two targets on shop.example.com, one on
/// blog.example.com, 5 visits each, 1 clicking; Linux Chromium profiles;
/// 4 instances), uploaded over GraphQL: the createJob variables.
pub async fn ada_datasets(app: &TestApp, ada: &str) -> Value {
    let targets = "https://shop.example.com/a,5,1\nhttps://shop.example.com/b,5,1\n\
                   https://blog.example.com/,5,1\n";
    datasets_of(app, ada, targets, 4).await
}

/// Datasets of the token holder's: `targets` as csv rows (`url,flows,clicks`),
/// Linux Chromium profiles, `instances` instances; the createJob variables.
pub async fn datasets_of(app: &TestApp, token: &str, targets: &str, instances: u32) -> Value {
    let targets = File::new(
        "TARGETS",
        "CSV",
        format!("url,flow_target,click_target\n{targets}"),
    );
    let profiles = File::new(
        "DEVICE_PROFILES",
        "CSV",
        "name,os,browser,user_agent,viewport_width,viewport_height\n\
         desk,linux,chromium,Mozilla/5.0 (X11; Linux x86_64) Chrome/126,1920,1080\n",
    );
    let settings = File::new(
        "SETTINGS_PROFILES",
        "CSV",
        format!("name,instances,marker_header\nlaunch,{instances},yes\n"),
    );
    let version = |id: String| json!({ "dataset": id, "version": 1 });
    json!({
        "n": "launch check",
        "t": version(published(app, token, &targets).await),
        "d": version(published(app, token, &profiles).await),
        "s": version(published(app, token, &settings).await),
    })
}

/// GET with a bearer token: (status, body).
pub async fn download(app: &TestApp, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(&app.addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: e2e\r\n{auth}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The job's status as `jobProgress` answers next.
async fn next_status(ws: &mut crate::graphql::Ws) -> String {
    let next = ws_next(ws).await;
    assert_eq!(next["type"], "next", "{next}");
    next["payload"]["data"]["jobProgress"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("{next}"))
        .to_owned()
}

async fn a_run_is_guarded_idempotent_and_watched(store: TestStore) {
    let app = spawn_app().store(store).await;
    let root = app.with_accounts().await;
    let ada = app.token("ada", PASSWORD).await;
    let audrey = app.token("audrey", PASSWORD).await;
    // Datasets need a licence: 8 instances, room for the targets.
    let r = app
        .gql(ISSUE, json!({ "u": "ada", "l": licence(8) }), Some(&root))
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
    let datasets = ada_datasets(&app, &ada).await;
    // Another account's datasets are not hers to use.
    let r = app.gql(CREATE, datasets.clone(), Some(&audrey)).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = app.gql(CREATE, datasets, Some(&ada)).await;
    let created = &r["data"]["createJob"];
    assert_eq!(
        (
            created["status"].as_str(),
            created["flows"].as_u64(),
            created["targets"].as_u64()
        ),
        (Some("READY"), Some(15), Some(3)),
        "{r}"
    );
    assert_eq!(
        created["platforms"],
        json!([{ "os": "LINUX", "browser": "CHROMIUM" }])
    );
    assert_eq!(
        created["settings"],
        json!({ "instances": 4, "markerHeader": true })
    );
    let job = created["id"].as_str().unwrap().to_owned();
    let id = json!({ "id": job });

    let r = app.gql(RUN, id.clone(), Some(&ada)).await;
    assert_eq!(code(&r), "SAFE_MODE", "{r}");
    let off = "mutation($r: String!) { turnSafeModeOff(reason: $r) { safeMode { on } } }";
    let r = app.gql(off, json!({ "r": "jobs e2e" }), Some(&root)).await;
    assert_eq!(r["data"]["turnSafeModeOff"]["safeMode"]["on"], false, "{r}");

    // The licence allows 2 instances; the job asks 4.
    let r = app
        .gql(ISSUE, json!({ "u": "ada", "l": licence(2) }), Some(&root))
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
    let r = app.gql(RUN, id.clone(), Some(&ada)).await;
    assert_eq!(code(&r), "FEATURE_NOT_LICENSED", "{r}");
    assert_eq!(r["errors"][0]["extensions"]["limit"], "maxInstances", "{r}");
    let r = app
        .gql(ISSUE, json!({ "u": "ada", "l": licence(8) }), Some(&root))
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");

    // Neither domain is verified or allow-listed: both are named.
    let r = app.gql(RUN, id.clone(), Some(&ada)).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    assert_eq!(
        r["errors"][0]["extensions"]["domains"],
        json!(["shop.example.com", "blog.example.com"]),
        "{r}"
    );
    let list = "mutation($d: String!, $r: String!) { allowListDomain(domain: $d, reason: $r) }";
    for domain in ["shop.example.com", "example.com"] {
        let r = app
            .gql(list, json!({ "d": domain, "r": "staging" }), Some(&root))
            .await;
        assert_eq!(r["data"]["allowListDomain"], true, "{r}");
    }

    // ada watches it run.
    let mut ws = ws_connect(&app.addr, "graphql-transport-ws", &ada).await;
    let watch = "subscription($id: ID!) { jobProgress(id: $id) { status flows finished targetProgress { target flowTarget clickTarget flowDone } } }";
    ws.send(Message::text(
        json!({ "id": "j", "type": "subscribe", "payload": { "query": watch, "variables": id } })
            .to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_status(&mut ws).await, "READY");
    let r = app.gql(RUN, id.clone(), Some(&ada)).await;
    assert_eq!(r["data"]["runJob"]["status"], "RUNNING", "{r}");
    assert_eq!(next_status(&mut ws).await, "RUNNING");
    let again = app.gql(RUN, id.clone(), Some(&ada)).await;
    assert_eq!(code(&again), "CONFLICT", "{again}");
    assert_eq!(again["errors"][0]["message"], "the job is running already");

    // Others' jobs are not theirs to run or see; auditors read them.
    let r = app.gql(RUN, id.clone(), Some(&audrey)).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = app
        .gql(
            "{ jobs(status: RUNNING) { id owner flows targetProgress { flowTarget clickTarget } } }",
            json!({}),
            Some(&audrey),
        )
        .await;
    assert_eq!(
        r["data"]["jobs"],
        json!([{ "id": job, "owner": "ada", "flows": 15,
                 "targetProgress": [{ "flowTarget": 5, "clickTarget": 1 },
                                    { "flowTarget": 5, "clickTarget": 1 },
                                    { "flowTarget": 5, "clickTarget": 1 }] }]),
        "{r}"
    );

    let pause = "mutation($id: ID!) { pauseJob(id: $id) { status } }";
    let r = app.gql(pause, id.clone(), Some(&ada)).await;
    assert_eq!(r["data"]["pauseJob"]["status"], "PAUSED", "{r}");
    assert_eq!(next_status(&mut ws).await, "PAUSED");
    let stop = "mutation($id: ID!) { stopJob(id: $id, reason: \"enough\") { status } }";
    let r = app.gql(stop, id.clone(), Some(&root)).await;
    assert_eq!(r["data"]["stopJob"]["status"], "STOPPED", "{r}");
    assert_eq!(next_status(&mut ws).await, "STOPPED");

    // The log, as JSON lines and CSV, for those who may read the job.
    let path = format!("/jobs/{job}/log.jsonl");
    let (status, body) = download(&app, &path, Some(&ada)).await;
    assert_eq!(status, 200, "{body}");
    let lines: Vec<Value> = body
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(messages[1].ends_with("started by ada"), "{messages:?}");
    assert!(
        messages[3].ends_with("stopped by root: enough"),
        "{messages:?}"
    );
    let (status, body) = download(&app, &format!("/jobs/{job}/log.csv"), Some(&audrey)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("at,level,flow,runner,message"), "{body}");
    assert!(body.contains("paused by ada"), "{body}");
    assert_eq!(download(&app, &path, None).await.0, 401);
    let stranger = "mutation($u: String!, $p: String!, $r: [RoleName!]!) { createAccount(username: $u, password: $p, roles: $r) }";
    app.gql(
        stranger,
        json!({ "u": "bob", "p": PASSWORD, "r": ["USER"] }),
        Some(&root),
    )
    .await;
    let bob = app.token("bob", PASSWORD).await;
    assert_eq!(download(&app, &path, Some(&bob)).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_guarded_idempotent_and_watched_on_sqlite() {
    a_run_is_guarded_idempotent_and_watched(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_guarded_idempotent_and_watched_on_postgres() {
    let Some(store) = TestStore::postgres("e2e_job_run_guarded").await else {
        return;
    };
    a_run_is_guarded_idempotent_and_watched(store).await;
}

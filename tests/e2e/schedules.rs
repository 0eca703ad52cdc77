//! Schedules end to end over GraphQL: gated by the licence's `scheduler`
//! feature, bad input refused with its reason (a cron field, an unknown
//! time zone, an end before the start, a missing dataset version), then a
//! schedule every 2 seconds of at most 2 runs fires on the gateway's own
//! clock, its jobs created and running, watched through `scheduleChanged`
//! until it ends; deleting it waits a grace period that a restore cancels.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::graphql::{ws_connect, ws_next};
use crate::helpers::{PASSWORD, TestStore, code, spawn_app};
use crate::jobs::{ISSUE, datasets_of, licence};

const CREATE: &str = "mutation($s: ScheduleInput!) { createSchedule(schedule: $s) \
    { id name occurrence state nextRun runs owner } }";
const ONE: &str = "query($id: ID!) { schedule(id: $id) { state runs lastJob lastJobStatus ending refusal deletingAt } }";

/// A schedule input over the createJob variables `job`, with `occurrence`.
fn input(job: &Value, occurrence: Value, timezone: &str) -> Value {
    json!({
        "name": "smoke every 2 s",
        "targets": job["t"], "deviceProfiles": job["d"], "settingsProfile": job["s"],
        "occurrence": occurrence, "timezone": timezone, "maxRuns": 2,
    })
}

async fn schedules_fire_and_end(store: TestStore) {
    let app = spawn_app().store(store).await;
    let root = app.with_accounts().await;
    let ada = app.token("ada", PASSWORD).await;
    let r = app
        .gql(ISSUE, json!({ "u": "ada", "l": licence(8) }), Some(&root))
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
    let job = datasets_of(&app, &ada, "https://shop.example.com/a,3,0\n", 1).await;
    let every = json!({ "everySeconds": 2 });

    // No scheduler in the licence: refused, naming the feature.
    let r = app
        .gql(
            CREATE,
            json!({ "s": input(&job, every.clone(), "Europe/Berlin") }),
            Some(&ada),
        )
        .await;
    assert_eq!(code(&r), "FEATURE_NOT_LICENSED", "{r}");
    assert_eq!(r["errors"][0]["extensions"]["feature"], "scheduler", "{r}");
    let mut with_scheduler = licence(8);
    with_scheduler["scheduler"] = json!(true);
    let r = app
        .gql(
            ISSUE,
            json!({ "u": "ada", "l": with_scheduler }),
            Some(&root),
        )
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");

    // Bad input, each with its reason.
    let r = app
        .gql(
            CREATE,
            json!({ "s": input(&job, json!({ "cron": "0 25 * * *" }), "Europe/Berlin") }),
            Some(&ada),
        )
        .await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("occurrence.cron: cron field 2 (hour) \"25\" is invalid"),
        "{r}"
    );
    let r = app
        .gql(
            CREATE,
            json!({ "s": input(&job, every.clone(), "Mars/Olympus") }),
            Some(&ada),
        )
        .await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown time zone \"Mars/Olympus\""),
        "{r}"
    );
    let mut backwards = input(&job, every.clone(), "UTC");
    backwards["startsAt"] = json!("2030-01-02T00:00:00Z");
    backwards["endsAt"] = json!("2030-01-01T00:00:00Z");
    let r = app.gql(CREATE, json!({ "s": backwards }), Some(&ada)).await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("is before startsAt"),
        "{r}"
    );
    let mut missing = input(&job, every.clone(), "UTC");
    missing["targets"]["version"] = json!(9);
    let r = app.gql(CREATE, json!({ "s": missing }), Some(&ada)).await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("has no version 9"),
        "{r}"
    );

    // Its jobs may run: safe mode off, the domain allow-listed.
    let off = "mutation($r: String!) { turnSafeModeOff(reason: $r) { safeMode { on } } }";
    let r = app
        .gql(off, json!({ "r": "schedules e2e" }), Some(&root))
        .await;
    assert_eq!(r["data"]["turnSafeModeOff"]["safeMode"]["on"], false, "{r}");
    let list = "mutation($d: String!, $r: String!) { allowListDomain(domain: $d, reason: $r) }";
    let r = app
        .gql(
            list,
            json!({ "d": "shop.example.com", "r": "staging" }),
            Some(&root),
        )
        .await;
    assert_eq!(r["data"]["allowListDomain"], true, "{r}");

    let r = app
        .gql(
            CREATE,
            json!({ "s": input(&job, every, "Europe/Berlin") }),
            Some(&ada),
        )
        .await;
    let created = &r["data"]["createSchedule"];
    assert_eq!(created["occurrence"], "every 2 seconds", "{r}");
    assert_eq!(created["owner"], "ada", "{r}");
    let id = created["id"].as_str().unwrap().to_owned();

    // ada watches it fire twice and end.
    let mut ws = ws_connect(&app.addr, "graphql-transport-ws", &ada).await;
    let watch =
        "subscription($id: ID!) { scheduleChanged(id: $id) { state runs lastJobStatus ending } }";
    ws.send(Message::text(
        json!({ "id": "s", "type": "subscribe", "payload": { "query": watch, "variables": { "id": id } } })
            .to_string(),
    ))
    .await
    .unwrap();
    let mut seen = vec![];
    loop {
        let next = ws_next(&mut ws).await;
        assert_eq!(next["type"], "next", "{next}");
        let row = next["payload"]["data"]["scheduleChanged"].clone();
        seen.push(row.clone());
        if row["state"] == "ENDED" && row["lastJobStatus"] == "running" {
            break;
        }
        assert!(seen.len() < 50, "{seen:?}");
    }
    let last = seen.last().unwrap();
    assert_eq!(last["runs"], 2, "{seen:?}");
    assert_eq!(last["ending"], "it fired its 2 runs", "{seen:?}");
    // Its two jobs exist, named after it, and run.
    let r = app
        .gql("{ jobs(status: RUNNING) { name } }", json!({}), Some(&ada))
        .await;
    assert_eq!(
        r["data"]["jobs"],
        json!([{ "name": "smoke every 2 s" }, { "name": "smoke every 2 s" }]),
        "{r}"
    );

    // Deleting waits a day; restoring cancels it.
    let del = "mutation($id: ID!) { deleteSchedule(id: $id) { state deletingAt } }";
    let r = app.gql(del, json!({ "id": id }), Some(&ada)).await;
    assert_eq!(r["data"]["deleteSchedule"]["state"], "DELETING", "{r}");
    assert!(r["data"]["deleteSchedule"]["deletingAt"].is_string(), "{r}");
    let restore = "mutation($id: ID!) { restoreSchedule(id: $id) { state } }";
    let r = app.gql(restore, json!({ "id": id }), Some(&ada)).await;
    assert_eq!(r["data"]["restoreSchedule"]["state"], "ENDED", "{r}");
    // Not audrey's to delete; an auditor reads it.
    let audrey = app.token("audrey", PASSWORD).await;
    let r = app.gql(ONE, json!({ "id": id }), Some(&audrey)).await;
    assert_eq!(r["data"]["schedule"]["runs"], 2, "{r}");
    let pause = "mutation($id: ID!) { pauseSchedule(id: $id) { state } }";
    let r = app.gql(pause, json!({ "id": id }), Some(&audrey)).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");

    // A weekday schedule in words; paused, resumed and changed to hourly.
    let weekdays = input(&job, json!({ "cron": "0 9 * * 1-5" }), "Europe/Berlin");
    let r = app.gql(CREATE, json!({ "s": weekdays }), Some(&ada)).await;
    let created = &r["data"]["createSchedule"];
    assert_eq!(
        created["occurrence"], "every weekday at 09:00 Europe/Berlin",
        "{r}"
    );
    assert_eq!(created["state"], "SCHEDULED", "{r}");
    let weekly = json!({ "id": created["id"] });
    let r = app.gql(pause, weekly.clone(), Some(&ada)).await;
    assert_eq!(r["data"]["pauseSchedule"]["state"], "PAUSED", "{r}");
    let resume = "mutation($id: ID!) { resumeSchedule(id: $id) { state } }";
    let r = app.gql(resume, weekly.clone(), Some(&ada)).await;
    assert_eq!(r["data"]["resumeSchedule"]["state"], "SCHEDULED", "{r}");
    let update = "mutation($id: ID!, $s: ScheduleInput!) { updateSchedule(id: $id, schedule: $s) { occurrence } }";
    let hourly = input(&job, json!({ "everySeconds": 3600 }), "UTC");
    let r = app
        .gql(
            update,
            json!({ "id": created["id"], "s": hourly }),
            Some(&ada),
        )
        .await;
    assert_eq!(
        r["data"]["updateSchedule"]["occurrence"], "every hour",
        "{r}"
    );
    let r = app
        .gql(
            "{ schedules { name occurrence state } }",
            json!({}),
            Some(&ada),
        )
        .await;
    let table = r["data"]["schedules"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(table.len(), 2, "{r}");
    assert!(
        table.contains(
            &json!({ "name": "smoke every 2 s", "occurrence": "every 2 seconds", "state": "ENDED" })
        ),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_and_end_on_sqlite() {
    schedules_fire_and_end(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_and_end_on_postgres() {
    let Some(store) = TestStore::postgres("e2e_schedules").await else {
        return;
    };
    schedules_fire_and_end(store).await;
}

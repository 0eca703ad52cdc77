//! Time travel for auditors: `streamState` and `trafficbuster audit replay`
//! fold a stream with its own decider up to a position or a time, on a
//! real gateway and the real binary, against both stores.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, TestStore, code, run, spawn_app};

const STREAM_STATE: &str = "query($id: String!, $at: String, $last: Int = 20) {
  streamState(streamId: $id, at: $at, lastEvents: $last) {
    streamId kind state eventCount
    lastEvent { position streamVersion recordedAt eventType }
    events { streamVersion eventType } } }";

async fn state(app: &TestApp, token: &str, at: Value, last: i32) -> Value {
    let r = app
        .gql(
            STREAM_STATE,
            json!({ "id": "account-ada", "at": at, "last": last }),
            Some(token),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    r["data"]["streamState"].clone()
}

async fn a_stream_replays_to_a_position_or_a_time(app: &TestApp) {
    app.with_accounts().await;
    let auditor = app.token("audrey", PASSWORD).await;
    let before_login = state(app, &auditor, Value::Null, 20).await;
    let created_at = before_login["lastEvent"]["position"].clone();
    let created_time = before_login["lastEvent"]["recordedAt"].clone();
    let user = app.token("ada", PASSWORD).await;

    // Now: ada has a live session; the hash never shows.
    let now = state(app, &auditor, Value::Null, 1).await;
    assert_eq!(now["kind"], "account/2", "{now}");
    let account = &now["state"]["account"];
    assert_eq!(account["username"], "ada", "{now}");
    assert!(account["session"].is_object(), "logged in: {now}");
    assert_eq!(account["password_hash"], "[redacted]", "{now}");
    assert!(!now.to_string().contains("$argon2"), "{now}");
    let count = now["eventCount"].as_i64().unwrap();
    assert!(count >= 2, "{now}");
    assert_eq!(
        now["events"].as_array().unwrap().len(),
        1,
        "the last one only"
    );
    assert_eq!(now["events"][0]["streamVersion"], count - 1, "{now}");

    // At the creation's position, and at its time: no session yet.
    for at in [created_at.clone(), created_time.clone()] {
        let then = state(app, &auditor, at.clone(), 20).await;
        assert_eq!(then["state"]["account"]["username"], "ada", "{at}: {then}");
        assert!(
            then["state"]["account"]["session"].is_null(),
            "{at}: {then}"
        );
        assert_eq!(then["lastEvent"]["position"], created_at, "{at}: {then}");
        assert_eq!(
            then["events"].as_array().unwrap().len() as i64,
            then["eventCount"].as_i64().unwrap(),
            "{then}"
        );
    }

    // The CLI against the same store says the same.
    let (ok, out, err) = run(&[
        "--store",
        &app.store.url,
        "audit",
        "replay",
        "--stream",
        "account-ada",
        "--at",
        created_at.as_str().unwrap(),
    ])
    .await;
    assert!(ok, "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let then = state(app, &auditor, created_at.clone(), 20).await;
    assert_eq!(printed["state"], then["state"], "{out}");
    assert_eq!(printed["kind"], "account/2", "{out}");
    assert_eq!(printed["at"]["position"], created_at, "{out}");
    assert_eq!(printed["events"][0]["type"], "AccountCreated", "{out}");

    // A view as it stood then, rebuilt aside: ada's account was there,
    // audrey's (made after it) not yet; the live view is untouched.
    let usernames = |printed: &Value| -> Vec<String> {
        let mut names: Vec<String> = printed["tables"]["view_accounts"]["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("{printed}"))
            .iter()
            .map(|r| r["username"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let view_at = |at: Option<&str>| {
        let mut args = vec!["--store", &app.store.url, "audit", "view", "accounts"];
        if let Some(at) = at {
            args.extend(["--at", at]);
        }
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = run(&args).await;
            assert!(ok, "{err}");
            serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
        }
    };
    let then = view_at(created_at.as_str()).await;
    assert_eq!(usernames(&then), ["ada", "root"], "{then}");
    assert!(!then.to_string().contains("$argon2"), "{then}");
    let now = view_at(None).await;
    assert_eq!(usernames(&now), ["ada", "audrey", "root"], "{now}");
    let (ok, _, err) = run(&["--store", &app.store.url, "audit", "view", "nothing"]).await;
    assert!(!ok);
    assert!(err.contains("the views are: "), "{err}");

    // Before the stream existed; a point that is neither; a plain user.
    let r = app
        .gql(
            STREAM_STATE,
            json!({ "id": "account-ada", "at": "0" }),
            Some(&auditor),
        )
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = app
        .gql(
            STREAM_STATE,
            json!({ "id": "account-ada", "at": "soon" }),
            Some(&auditor),
        )
        .await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("at: "),
        "{r}"
    );
    let r = app
        .gql(STREAM_STATE, json!({ "id": "account-ada" }), Some(&user))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let (ok, _, err) = run(&[
        "--store",
        &app.store.url,
        "audit",
        "replay",
        "--stream",
        "account-ada",
        "--at",
        "soon",
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("RFC 3339"), "{err}");
}

async fn on(store: TestStore) {
    let mut app = spawn_app().store(store).await;
    a_stream_replays_to_a_position_or_a_time(&app).await;
    app.terminate().await;
    app.store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replays_to_a_position_or_a_time_on_sqlite() {
    on(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replays_to_a_position_or_a_time_on_postgres() {
    let Some(store) =
        TestStore::postgres("a_stream_replays_to_a_position_or_a_time_on_postgres").await
    else {
        return;
    };
    on(store).await;
}

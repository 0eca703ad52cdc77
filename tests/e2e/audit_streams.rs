//! Resumable streams for auditors, on a real gateway over a real
//! GraphQL WebSocket: `auditEvents(after)` and `streamEvents` catch up from
//! a cursor then go live, each event exactly once across a reconnect;
//! `streamHistory` pages one stream; who may, and bad cursors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use domain::{NewEvent, Payload, StreamId};
use futures_util::SinkExt;
use serde_json::{Value, json};
use store::ExpectedVersion;
use tokio_tungstenite::tungstenite::Message;

use crate::graphql::{Ws, ws_connect, ws_next};
use crate::helpers::{PASSWORD, TestApp, TestStore, code, spawn_app};

const PROTOCOL: &str = "graphql-transport-ws";
const AUDIT_EVENTS: &str =
    "subscription($after: String) { auditEvents(after: $after) { position eventType } }";
const STREAM_EVENTS: &str = "subscription($id: String, $prefix: String, $after: String) {
  streamEvents(streamId: $id, prefix: $prefix, after: $after) {
    position eventId eventType schemaVersion streamId streamVersion recordedAt actor
    correlationId causationId summary payload } }";
const STREAM_HISTORY: &str = "query($id: String!, $first: Int = 50, $after: String) {
  streamHistory(streamId: $id, first: $first, after: $after) {
    events { position eventId eventType schemaVersion streamId streamVersion recordedAt actor
      correlationId causationId summary payload }
    nextCursor } }";
/// Concurrent writers, and the logins each makes.
const WRITERS: usize = 4;
const LOGINS_EACH: usize = 12;
/// Sockets killed and resumed while the writers write.
const RECONNECTS: usize = 5;
/// Events appended first, so that the last resumed subscription has a
/// long way to catch up while the writers write; the events read between
/// kills, all early in that.
const PREFILL: usize = 3000;
const STEP: usize = PREFILL / 10 / RECONNECTS;
/// Far more events than the gateway's live feed buffers (16,384) and the
/// sockets' buffers hold besides.
const BEYOND_THE_FEED: usize = 60_000;
/// Every field of an entry, so that the sockets' buffers fill sooner.
const AUDIT_EVENTS_IN_FULL: &str = "subscription($after: String) {
  auditEvents(after: $after) { position recordedAt actor streamId eventType summary } }";

async fn subscribe(ws: &mut Ws, id: &str, query: &str, variables: Value) {
    let start = json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } });
    ws.send(Message::text(start.to_string())).await.unwrap();
}

/// The next item of subscription `id`'s field `field`; panics on anything else.
async fn next_item(ws: &mut Ws, field: &str) -> Value {
    let msg = ws_next(ws).await;
    assert_eq!(msg["type"], "next", "{msg}");
    let item = &msg["payload"]["data"][field];
    assert!(item.is_object(), "{msg}");
    item.clone()
}

/// The refusal a subscription gets: its error's code and message.
async fn refusal(ws: &mut Ws) -> (String, String) {
    let msg = ws_next(ws).await;
    let error = match msg["type"].as_str() {
        Some("error") => &msg["payload"][0],
        _ => &msg["payload"]["errors"][0],
    };
    (
        error["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .into(),
        error["message"].as_str().unwrap_or_default().into(),
    )
}

/// Appends [`PREFILL`] events straight to the store, in batches.
async fn prefill(app: &TestApp) {
    fill(app, PREFILL).await;
}

/// Appends `count` events straight to the store, in batches of 500.
async fn fill(app: &TestApp, count: usize) {
    let store = app.store.open().await;
    let stream = StreamId::parse("filler-1").unwrap();
    for batch in 0..count.div_ceil(500) {
        let events = (batch * 500..count.min((batch + 1) * 500))
            .map(|n| {
                let payload = Payload::to_json(&json!({ "n": n })).unwrap();
                NewEvent::new("Filled", 1, payload)
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
}

/// Appends one more event and checks that it is the next `ws` shows:
/// nothing shown twice is still queued behind what was expected.
async fn next_is_a_new_event(app: &TestApp, ws: &mut Ws) {
    fill(app, 1).await;
    let newest = full_log(app).await.last().unwrap().clone();
    let item = next_item(ws, "auditEvents").await;
    assert_eq!(
        item["position"],
        newest.as_str(),
        "a repeat after the log's end"
    );
}

/// Every event's position in the log, in global order, read from the store.
async fn full_log(app: &TestApp) -> Vec<String> {
    let events = app.store.events().await;
    events.iter().map(|e| e.position.to_string()).collect()
}

/// Writers log in concurrently; the auditor's subscription from the start
/// is killed mid-stream, and a new one resumes after the last position it
/// saw: together they show the whole log, each event once, in order.
async fn a_reconnect_with_the_last_cursor_loses_and_repeats_nothing(app: &TestApp) {
    let root = app.with_accounts().await;
    for i in 0..WRITERS {
        let r = app
            .gql(
                "mutation($u: String!, $p: String!) { createAccount(username: $u, password: $p, roles: [USER]) }",
                json!({ "u": format!("writer{i}"), "p": PASSWORD }),
                Some(&root),
            )
            .await;
        assert_eq!(r["data"]["createAccount"], format!("writer{i}"), "{r}");
    }
    let auditor = app.token("audrey", PASSWORD).await;
    prefill(app).await;
    let before = full_log(app).await.len();

    let mut first = ws_connect(&app.addr, PROTOCOL, &auditor).await;
    subscribe(&mut first, "a", AUDIT_EVENTS, json!({ "after": "0" })).await;
    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let client = crate::app::Client {
                addr: app.addr.clone(),
            };
            tokio::spawn(async move {
                for _ in 0..LOGINS_EACH {
                    client.token(&format!("writer{i}"), PASSWORD).await;
                }
            })
        })
        .collect();
    let done = {
        let writing = writing.clone();
        tokio::spawn(async move {
            for w in writers {
                w.await.unwrap();
            }
            writing.store(false, Ordering::SeqCst);
        })
    };

    // Read part of the log, kill the socket and resume after the last
    // position seen; again, while the writers are at it, so each catch-up
    // from the store overlaps what the live feed brings.
    let mut seen = Vec::new();
    let mut ws = first;
    let mut reconnects = 0;
    while reconnects < RECONNECTS && (reconnects == 0 || writing.load(Ordering::SeqCst)) {
        let target = seen.len() + STEP;
        while seen.len() < target {
            let item = next_item(&mut ws, "auditEvents").await;
            seen.push(item["position"].as_str().unwrap().to_owned());
        }
        drop(ws);
        assert!(
            writing.load(Ordering::SeqCst),
            "the writers finished before the socket was killed; the test proves nothing"
        );
        let cursor = seen.last().unwrap().clone();
        ws = ws_connect(&app.addr, PROTOCOL, &auditor).await;
        subscribe(&mut ws, "b", AUDIT_EVENTS, json!({ "after": cursor })).await;
        reconnects += 1;
    }
    done.await.unwrap();

    let log = full_log(app).await;
    assert!(log.len() >= before + WRITERS * LOGINS_EACH, "{log:?}");
    while seen.len() < log.len() {
        let item = next_item(&mut ws, "auditEvents").await;
        seen.push(item["position"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen, log,
        "what the two subscriptions showed, against the log"
    );
    next_is_a_new_event(app, &mut ws).await;
}

/// More events than the live feed holds land while the auditor's client
/// reads nothing: its subscription falls behind the feed, catches up from
/// the store, and still shows each event once, in order.
async fn a_subscriber_that_falls_behind_the_feed_misses_nothing(app: &TestApp) {
    app.with_accounts().await;
    let auditor = app.token("audrey", PASSWORD).await;
    let cursor = full_log(app).await.last().unwrap().clone();
    let mut ws = ws_connect(&app.addr, PROTOCOL, &auditor).await;
    subscribe(
        &mut ws,
        "a",
        AUDIT_EVENTS_IN_FULL,
        json!({ "after": cursor }),
    )
    .await;
    // One event through the feed first, so the subscription is live.
    fill(app, 1).await;
    let first = next_item(&mut ws, "auditEvents").await;
    fill(app, BEYOND_THE_FEED).await;

    let log = full_log(app).await;
    let expected = &log[log.iter().position(|p| *p == cursor).unwrap() + 1..];
    let mut seen = vec![first["position"].as_str().unwrap().to_owned()];
    while seen.len() < expected.len() {
        let item = next_item(&mut ws, "auditEvents").await;
        seen.push(item["position"].as_str().unwrap().to_owned());
    }
    assert!(
        seen == expected,
        "the subscription's events differ from the log's"
    );
    next_is_a_new_event(app, &mut ws).await;
    assert!(
        app.process.log().contains("fell behind the live feed"),
        "the subscriber never fell behind; the test proves nothing"
    );
}

/// `streamEvents` by id and by prefix, `streamHistory` page by page: the
/// same envelopes, payloads decoded, hashes never shown.
async fn stream_events_and_history_show_envelopes_without_hashes(app: &TestApp) {
    let root = app.with_accounts().await;
    app.token("ada", PASSWORD).await;
    let auditor = app.token("audrey", PASSWORD).await;

    // History, two at a time.
    let mut history = Vec::new();
    let mut after = Value::Null;
    loop {
        let r = app
            .gql(
                STREAM_HISTORY,
                json!({ "id": "account-ada", "first": 2, "after": after }),
                Some(&auditor),
            )
            .await;
        let page = &r["data"]["streamHistory"];
        let events = page["events"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert!(events.len() <= 2, "{r}");
        history.extend(events.iter().cloned());
        after = page["nextCursor"].clone();
        if after.is_null() {
            break;
        }
    }
    let versions: Vec<i64> = history
        .iter()
        .map(|e| e["streamVersion"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (0..history.len() as i64).collect::<Vec<_>>());
    assert!(history.len() >= 2, "created and logged in: {history:?}");
    let created = &history[0];
    assert_eq!(created["eventType"], "AccountCreated", "{created}");
    assert_eq!(created["streamId"], "account-ada");
    assert_eq!(created["actor"], "root", "{created}");
    assert_eq!(created["schemaVersion"], 1, "{created}");
    assert!(created["correlationId"].is_string(), "{created}");
    assert_eq!(created["payload"]["username"], "ada", "{created}");
    assert_eq!(
        created["payload"]["password_hash"], "[redacted]",
        "{created}"
    );
    let started = history
        .iter()
        .find(|e| e["eventType"] == "SessionStarted")
        .expect("ada's login");
    assert_eq!(
        started["payload"]["tokens"]["refresh_token_hash"], "[redacted]",
        "{started}"
    );
    let everything = serde_json::to_string(&history).unwrap();
    assert!(!everything.contains("$argon2"), "{everything}");

    // Live by id, from the start: the same envelopes, then a new login.
    let mut ws = ws_connect(&app.addr, PROTOCOL, &auditor).await;
    subscribe(
        &mut ws,
        "id",
        STREAM_EVENTS,
        json!({ "id": "account-ada", "after": "0" }),
    )
    .await;
    for expected in &history {
        assert_eq!(&next_item(&mut ws, "streamEvents").await, expected);
    }
    app.token("ada", PASSWORD).await;
    let live = next_item(&mut ws, "streamEvents").await;
    assert_eq!(live["streamId"], "account-ada", "{live}");
    assert_eq!(live["streamVersion"], history.len() as i64, "{live}");

    // By prefix, from the start: every account's events, and only theirs.
    let mut ws = ws_connect(&app.addr, PROTOCOL, &auditor).await;
    subscribe(
        &mut ws,
        "prefix",
        STREAM_EVENTS,
        json!({ "prefix": "account-", "after": "0" }),
    )
    .await;
    let mut streams = std::collections::BTreeSet::new();
    for _ in 0..history.len() + 4 {
        let item = next_item(&mut ws, "streamEvents").await;
        let stream = item["streamId"].as_str().unwrap().to_owned();
        assert!(stream.starts_with("account-"), "{item}");
        streams.insert(stream);
    }
    for name in ["account-root", "account-ada", "account-audrey"] {
        assert!(streams.contains(name), "{streams:?}");
    }

    // Admins may too.
    let r = app
        .gql(
            STREAM_HISTORY,
            json!({ "id": "account-ada", "first": 1 }),
            Some(&root),
        )
        .await;
    assert_eq!(
        r["data"]["streamHistory"]["events"][0]["eventType"], "AccountCreated",
        "{r}"
    );
}

/// Plain users are refused; bad cursors and arguments name their field.
async fn users_are_refused_and_bad_cursors_name_their_field(app: &TestApp) {
    app.with_accounts().await;
    let user = app.token("ada", PASSWORD).await;
    let auditor = app.token("audrey", PASSWORD).await;

    let r = app
        .gql(STREAM_HISTORY, json!({ "id": "account-ada" }), Some(&user))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = app
        .gql(
            STREAM_HISTORY,
            json!({ "id": "account-ada", "after": "soon" }),
            Some(&auditor),
        )
        .await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("after: "),
        "{r}"
    );

    let mut ws = ws_connect(&app.addr, PROTOCOL, &user).await;
    subscribe(
        &mut ws,
        "u1",
        STREAM_EVENTS,
        json!({ "prefix": "account-" }),
    )
    .await;
    assert_eq!(refusal(&mut ws).await.0, "FORBIDDEN");
    let mut ws = ws_connect(&app.addr, PROTOCOL, &user).await;
    subscribe(&mut ws, "u2", AUDIT_EVENTS, json!({})).await;
    assert_eq!(refusal(&mut ws).await.0, "FORBIDDEN");

    let mut ws = ws_connect(&app.addr, PROTOCOL, &auditor).await;
    subscribe(&mut ws, "c1", AUDIT_EVENTS, json!({ "after": "yesterday" })).await;
    let (code, message) = refusal(&mut ws).await;
    assert_eq!(code, "VALIDATION", "{message}");
    assert!(message.starts_with("after: "), "{message}");
    let mut ws = ws_connect(&app.addr, PROTOCOL, &auditor).await;
    subscribe(
        &mut ws,
        "c2",
        STREAM_EVENTS,
        json!({ "id": "account-ada", "prefix": "account-" }),
    )
    .await;
    let (code, message) = refusal(&mut ws).await;
    assert_eq!(code, "VALIDATION", "{message}");
    assert!(message.starts_with("streamId: "), "{message}");
}

mod cases {
    use super::*;

    pub async fn reconnect(store: TestStore) {
        // The writers log in far more often than a person would.
        let mut app = spawn_app()
            .store(store)
            .flags(&[
                "--login-limit-per-address",
                "10000",
                "--login-limit-per-account",
                "10000",
            ])
            .await;
        a_reconnect_with_the_last_cursor_loses_and_repeats_nothing(&app).await;
        app.terminate().await;
        app.store.cleanup().await;
    }

    pub async fn lag(store: TestStore) {
        let mut app = spawn_app().store(store).await;
        a_subscriber_that_falls_behind_the_feed_misses_nothing(&app).await;
        app.terminate().await;
        app.store.cleanup().await;
    }

    pub async fn envelopes(store: TestStore) {
        let mut app = spawn_app().store(store).await;
        stream_events_and_history_show_envelopes_without_hashes(&app).await;
        app.terminate().await;
        app.store.cleanup().await;
    }

    pub async fn refusals(store: TestStore) {
        let mut app = spawn_app().store(store).await;
        users_are_refused_and_bad_cursors_name_their_field(&app).await;
        app.terminate().await;
        app.store.cleanup().await;
    }
}

macro_rules! on_both_backends {
    ($($case:ident => $sqlite:ident, $postgres:ident;)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $sqlite() {
                cases::$case(TestStore::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $postgres() {
                let Some(store) = TestStore::postgres(stringify!($postgres)).await else {
                    return;
                };
                cases::$case(store).await;
            }
        )+
    };
}

on_both_backends! {
    reconnect => a_reconnect_with_the_last_cursor_loses_and_repeats_nothing_on_sqlite,
        a_reconnect_with_the_last_cursor_loses_and_repeats_nothing_on_postgres;
    lag => a_subscriber_that_falls_behind_the_feed_misses_nothing_on_sqlite,
        a_subscriber_that_falls_behind_the_feed_misses_nothing_on_postgres;
    envelopes => stream_events_and_history_show_envelopes_without_hashes_on_sqlite,
        stream_events_and_history_show_envelopes_without_hashes_on_postgres;
    refusals => users_are_refused_and_bad_cursors_name_their_field_on_sqlite,
        users_are_refused_and_bad_cursors_name_their_field_on_postgres;
}

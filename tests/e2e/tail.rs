//! `trafficbuster events tail` prints the log and follows another process's appends live.

use std::time::Duration;

use domain::{NewEvent, Payload, StreamId};
use store::ExpectedVersion;

use crate::helpers::{Process, TestStore, bin};

async fn tail_follows_appends_from_another_process(store: TestStore) {
    let events = store.open().await;
    let append = |stream: &str, ty: &str, n: u64| {
        let events = events.clone();
        let stream = StreamId::parse(stream).unwrap();
        let event = NewEvent::new(
            ty,
            1,
            Payload::to_json(&serde_json::json!({ "n": n })).unwrap(),
        );
        async move {
            events
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await
                .unwrap();
        }
    };
    append("job-1", "JobCreated", 1).await;
    append("account-1", "AccountCreated", 2).await;

    let mut cmd = bin();
    cmd.args([
        "--store", &store.url, "events", "tail", "--from", "start", "--stream", "job-",
    ]);
    let mut tail = Process::spawn(cmd);
    let first: serde_json::Value =
        serde_json::from_str(&tail.next_stdout_line(Duration::from_secs(20)).await).unwrap();
    assert_eq!(first["stream_id"], "job-1");
    assert_eq!(first["event_type"], "JobCreated");
    assert_eq!(first["data"]["n"], 1, "payload printed as JSON: {first}");
    assert!(first["position"]["commit"].as_u64().is_some(), "{first}");

    // Appended by this process while the tail runs in its own.
    for n in 3..6 {
        append("account-2", "AccountCreated", 100).await; // filtered out
        append("job-2", "JobStarted", n).await;
        let line = tail.next_stdout_line(Duration::from_secs(5)).await;
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (event["stream_id"].as_str(), event["data"]["n"].as_u64()),
            (Some("job-2"), Some(n)),
            "{line}"
        );
    }
    let status = tail.terminate().await;
    assert!(status.success(), "tail exits cleanly on SIGTERM: {status}");
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_appends_from_another_process_on_sqlite() {
    tail_follows_appends_from_another_process(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_appends_from_another_process_on_postgres() {
    if let Some(store) =
        TestStore::postgres("tail_follows_appends_from_another_process_on_postgres").await
    {
        tail_follows_appends_from_another_process(store).await;
    }
}

#[tokio::test]
async fn tail_from_end_skips_history_and_limit_stops_it() {
    let store = TestStore::sqlite();
    let events = store.open().await;
    let stream = StreamId::parse("job-9").unwrap();
    let event = |n: u64| NewEvent::new("E", 1, Payload::to_json(&n).unwrap());
    events
        .append(&stream, ExpectedVersion::Any, vec![event(1)])
        .await
        .unwrap();

    let mut cmd = bin();
    cmd.args(["--store", &store.url, "events", "tail", "--limit", "2"]);
    let mut tail = Process::spawn(cmd);
    // Appends after this line are new to the tail; the earlier one is history.
    tail.wait_for_log("following events after position", Duration::from_secs(20))
        .await;
    events
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![event(2), event(3), event(4)],
        )
        .await
        .unwrap();
    let a = tail.next_stdout_line(Duration::from_secs(5)).await;
    let b = tail.next_stdout_line(Duration::from_secs(5)).await;
    assert!(
        a.contains("\"data\":2") && b.contains("\"data\":3"),
        "{a}\n{b}"
    );
    let status = tail.wait(Duration::from_secs(5)).await;
    assert!(status.success());
}

//! The log export for auditors: `GET /audit/export.jsonl` and
//! `trafficbuster audit export` write every event in global order with its
//! envelope, secrets redacted, filtered and resumable by position.

use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp, TestStore, run, spawn_app};
use crate::jobs::download;

/// The body of a chunked response, its chunks joined.
fn dechunked(body: &str) -> String {
    let mut rest = body;
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or_else(|_| panic!("{body}"));
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

async fn export(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let (status, body) = download(app, &format!("/audit/export.jsonl{query}"), Some(token)).await;
    assert_eq!(status, 200, "{body}");
    dechunked(&body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn the_log_exports_in_order_filtered_and_resumable(app: &TestApp) {
    app.with_accounts().await;
    let user = app.token("ada", PASSWORD).await;
    let auditor = app.token("audrey", PASSWORD).await;

    let all = export(app, &auditor, "").await;
    assert!(all.len() > 5, "{all:?}");
    let positions: Vec<domain::Position> = all
        .iter()
        .map(|l| l["position"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let created = all
        .iter()
        .find(|l| l["stream_id"] == "account-ada" && l["event_type"] == "AccountCreated")
        .expect("ada's account");
    assert_eq!(created["data"]["username"], "ada", "{created}");
    assert_eq!(created["data"]["password_hash"], "[redacted]", "{created}");
    assert_eq!(created["actor"], "root", "{created}");
    assert!(
        created["summary"].as_str().unwrap().contains("ada"),
        "{created}"
    );
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("$argon2"), "a hash leaked");

    // Resumed after any line: the rest, exactly.
    let k = all.len() / 2;
    let from = all[k - 1]["position"].as_str().unwrap();
    let rest = export(app, &auditor, &format!("?from={from}")).await;
    assert_eq!(rest[..all.len() - k], all[k..], "resumed after {from}");
    // Up to a position; one stream prefix; one type.
    let upto = export(app, &auditor, &format!("?to={from}")).await;
    assert_eq!(upto, all[..k]);
    let accounts = export(app, &auditor, "?stream=account-&type=AccountCreated").await;
    assert!(accounts.len() >= 3, "{accounts:?}");
    assert!(accounts.iter().all(|l| l["event_type"] == "AccountCreated"
        && l["stream_id"].as_str().unwrap().starts_with("account-")));

    // The CLI writes the same lines.
    let (ok, out, err) = run(&[
        "--store",
        &app.store.url,
        "audit",
        "export",
        "--stream",
        "account-",
        "--type",
        "AccountCreated",
    ])
    .await;
    assert!(ok, "{err}");
    let printed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed, accounts);

    // Who may, and a bad parameter named.
    let (status, _) = download(app, "/audit/export.jsonl", Some(&user)).await;
    assert_eq!(status, 403);
    let (status, _) = download(app, "/audit/export.jsonl", None).await;
    assert_eq!(status, 401);
    let (status, body) = download(app, "/audit/export.jsonl?from=soon", Some(&auditor)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("from: "), "{body}");
    let (ok, _, err) = run(&["--store", &app.store.url, "audit", "export", "--to", "soon"]).await;
    assert!(!ok);
    assert!(err.contains("--to: "), "{err}");
}

async fn on(store: TestStore) {
    let mut app = spawn_app().store(store).await;
    the_log_exports_in_order_filtered_and_resumable(&app).await;
    app.terminate().await;
    app.store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_exports_in_order_filtered_and_resumable_on_sqlite() {
    on(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_exports_in_order_filtered_and_resumable_on_postgres() {
    let Some(store) =
        TestStore::postgres("the_log_exports_in_order_filtered_and_resumable_on_postgres").await
    else {
        return;
    };
    on(store).await;
}

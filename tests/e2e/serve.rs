//! `trafficbuster serve` opens the store, migrates, answers health checks, and stops cleanly.

use std::time::Duration;

use crate::helpers::{Running, TestStore, bin, http_get, run};

async fn serve_answers_health_and_readiness(store: TestStore) {
    let mut cmd = bin();
    cmd.args([
        "--store",
        &store.url,
        "--log-format",
        "json",
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    let mut server = Running::spawn(cmd);
    let line = server
        .stderr_line_containing("gateway listening on", Duration::from_secs(30))
        .await;
    let log: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    let addr = log["message"]
        .as_str()
        .and_then(|m| m.rsplit("http://").next())
        .unwrap()
        .to_owned();

    let (status, body) = http_get(&addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = http_get(&addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ready");
    let (status, _) = http_get(&addr, "/nope").await;
    assert_eq!(status, 404);

    let status = server.terminate().await;
    assert!(status.success(), "serve exits 0 on SIGTERM: {status}");

    // serve applied the migrations, so migrate has nothing left to do.
    let (ok, stdout, stderr) = run(&["--store", &store.url, "migrate"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("schema is up to date (version 1)"),
        "{stdout}"
    );
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_health_and_readiness_on_sqlite() {
    serve_answers_health_and_readiness(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_health_and_readiness_on_postgres() {
    if let Some(store) = TestStore::postgres("serve_answers_health_and_readiness_on_postgres").await
    {
        serve_answers_health_and_readiness(store).await;
    }
}

#[tokio::test]
async fn migrate_applies_once_then_reports_up_to_date() {
    let store = TestStore::sqlite();
    let (ok, first, stderr) = run(&["--store", &store.url, "migrate"]).await;
    assert!(ok, "{stderr}");
    assert!(
        first.contains("applied 0001_events (schema version 1)"),
        "{first}"
    );
    let (ok, second, _) = run(&["--store", &store.url, "migrate"]).await;
    assert!(ok);
    assert!(second.contains("up to date"), "{second}");
}

#[tokio::test]
async fn settings_come_from_env_and_config_file_with_flags_first() {
    let dir = tempfile::tempdir().unwrap();
    let file_db = dir.path().join("from-file.db");
    let env_db = dir.path().join("from-env.db");
    let config = dir.path().join("tb.toml");
    std::fs::write(
        &config,
        format!("store = \"sqlite://{}\"\n", file_db.display()),
    )
    .unwrap();

    let out = bin()
        .args(["--config", config.to_str().unwrap(), "migrate"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(file_db.exists(), "the config file's store was used");

    let out = bin()
        .env("TB_STORE", format!("sqlite://{}", env_db.display()))
        .args(["--config", config.to_str().unwrap(), "migrate"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(env_db.exists(), "TB_STORE beats the config file");
}

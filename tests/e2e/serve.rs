//! `trafficbuster serve` opens the store, migrates, answers health checks, and stops cleanly.

use std::time::Duration;

use crate::helpers::{SECRET, TestStore, bin, http_get, run, spawn_app};

async fn serve_answers_health_and_readiness(store: TestStore, jwt_secret: Option<&str>) {
    let mut app = spawn_app()
        .store(store)
        .jwt_secret(jwt_secret)
        .before_ready()
        .await;
    let addr = app.addr.clone();

    let (status, body) = http_get(&addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    // Ready once every view has caught up with the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let (status, body) = http_get(&addr, "/readyz").await;
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status == 200 {
            break ready;
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(ready["status"], "catching_up", "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["views"]["audit"], "live", "{ready}");
    let (status, _) = http_get(&addr, "/nope").await;
    assert_eq!(status, 404);

    let status = app.terminate().await;
    assert!(status.success(), "serve exits 0 on SIGTERM: {status}");
    let store = app.store;

    if jwt_secret.is_none() {
        // With no secret configured, the embedded set-up made one, private to its owner.
        use std::os::unix::fs::PermissionsExt;
        let path = std::path::Path::new(store.url.trim_start_matches("sqlite://"))
            .with_file_name("jwt-secret");
        let meta = std::fs::metadata(&path).expect("jwt-secret beside the database");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    // serve applied the migrations, so migrate has nothing left to do.
    let (ok, stdout, stderr) = run(&["--store", &store.url, "migrate"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("schema is up to date (version"), "{stdout}");
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_health_and_readiness_on_sqlite() {
    serve_answers_health_and_readiness(TestStore::sqlite(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_health_and_readiness_on_postgres() {
    if let Some(store) = TestStore::postgres("serve_answers_health_and_readiness_on_postgres").await
    {
        serve_answers_health_and_readiness(store, Some(SECRET)).await;
    }
}

#[tokio::test]
async fn serve_on_postgres_without_a_jwt_secret_says_what_to_set() {
    let (ok, _, stderr) = run(&["--store", "postgres://postgres@127.0.0.1:1/x", "serve"]).await;
    assert!(!ok);
    assert!(stderr.contains("set TB_JWT_SECRET"), "{stderr}");
}

#[tokio::test]
async fn migrate_applies_once_then_reports_up_to_date() {
    let store = TestStore::sqlite();
    let (ok, first, stderr) = run(&["--store", &store.url, "migrate"]).await;
    assert!(ok, "{stderr}");
    let names: Vec<&str> = store::migrate::SQLITE.iter().map(|m| m.name).collect();
    let latest = store::migrate::SQLITE.last().map_or(0, |m| m.version);
    assert!(
        first.contains(&format!(
            "applied {} (schema version {latest})",
            names.join(", ")
        )),
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

/// A lasting database error (here: the events table is gone) is not retried
/// forever behind "catching up": the view fails, and readiness names the
/// view, the database's error and what to do about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_a_view_that_cannot_read_the_log_and_why() {
    let Some(store) =
        TestStore::postgres("readiness_names_a_view_that_cannot_read_the_log_and_why").await
    else {
        return;
    };
    let mut app = spawn_app().store(store).await;
    let addr = app.addr.clone();
    let store::Backend::Postgres(pg) = app.store.open_backend().await else {
        unreachable!("a PostgreSQL test store");
    };
    pg.pool()
        .get()
        .await
        .unwrap()
        .batch_execute("ALTER TABLE events RENAME TO events_gone")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = http_get(&addr, "/readyz").await;
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        if ready["status"] == "failed" {
            assert_eq!(status, 503, "{body}");
            break ready;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never said the view failed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.starts_with("view "), "{body}");
    for needle in [
        "\"events\" does not exist",
        "42P01",
        "trafficbuster migrate",
    ] {
        assert!(reason.contains(needle), "{needle:?} not in {body}");
    }
    let failed: Vec<&String> = body["views"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, phase)| phase.as_str().unwrap().starts_with("failed: "))
        .map(|(name, _)| name)
        .collect();
    assert!(!failed.is_empty(), "{body}");
    app.terminate().await;
    app.store.cleanup().await;
}

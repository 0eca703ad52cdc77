//! `trafficbuster bench` measures the store the user named, never a silent substitute.

use crate::helpers::{TestStore, run};

/// Short runs: this checks what is measured, not the figures.
const QUICK: &[&str] = &["--seconds", "0.2", "--replay-events", "200"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_store_measures_the_postgres_store_named_by_store() {
    let Some(store) =
        TestStore::postgres("bench_store_measures_the_postgres_store_named_by_store").await
    else {
        return;
    };
    let mut args = vec!["--store", &store.url, "bench", "store"];
    args.extend_from_slice(QUICK);
    let (ok, stdout, stderr) = run(&args).await;
    assert!(ok, "{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.contains("postgres, postgres://"), "{stdout}");
    assert!(!stdout.contains("sqlite"), "{stdout}");
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_store_measures_beside_the_sqlite_store_named_by_tb_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("real.db");
    let mut cmd = crate::helpers::bin();
    cmd.env("TB_STORE", format!("sqlite://{}", db.display()))
        .args(["bench", "store"])
        .args(QUICK);
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.contains(&format!("sqlite, temporary file {}", dir.path().display())),
        "{stdout}"
    );
    assert!(!db.exists(), "the named store itself is not written to");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "scratch removed"
    );
}

/// More subscribers than one session may hold sockets: the bench spreads
/// them over sessions instead of failing on the per-session cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_gateway_runs_more_subscribers_than_one_session_may_hold() {
    let subscribers = (3 * gateway::ws_limits::MAX_CONNECTIONS_PER_SESSION).to_string();
    let (ok, stdout, stderr) = run(&[
        "bench",
        "gateway",
        "--subscribers",
        &subscribers,
        "--rounds",
        "2",
        "--logins",
        "2",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("subscription fan-out, {subscribers} subscribers")),
        "{stdout}"
    );
}

/// A tiny `bench datasets` run publishes its csv and sends its raw chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_datasets_publishes_a_csv_and_sends_raw_chunks() {
    let (ok, stdout, stderr) = run(&[
        "bench",
        "datasets",
        "--rows",
        "200",
        "--megabytes",
        "2",
        "--connections",
        "2",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("datasets bench: sqlite, temporary file"),
        "{stdout}"
    );
    assert!(
        stdout.contains("200-row csv, start → published"),
        "{stdout}"
    );
    assert!(
        stdout.contains("MB/s (2 MB in 2 chunks, 2 connections"),
        "{stdout}"
    );
}

/// A small fleet finishes a small job and every figure is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_orchestrator_prints_its_figures() {
    let (ok, stdout, stderr) = run(&[
        "bench",
        "orchestrator",
        "--runners",
        "3",
        "--slots",
        "2",
        "--flows",
        "500",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("3 zero-work runners × 2 slots, 500 flows over 5 targets"),
        "{stdout}"
    );
    for figure in [
        "flows/s",
        "job stream events/s",
        "lease round trip p99",
        "peak memory, gateway and runners",
    ] {
        assert!(stdout.contains(figure), "{figure} missing from\n{stdout}");
    }
    assert!(!stdout.contains("note:"), "{stdout}");
}

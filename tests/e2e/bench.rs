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

/// The runner bench in seconds instead of minutes: both sides run at every
/// concurrency, against real Chromium, and every cell of the table is a
/// figure (ratios consistent with them), with the goal beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runner_prints_flows_and_memory_beside_playwright() {
    let Some(chrome) =
        runner_bench_components("bench_runner_prints_flows_and_memory_beside_playwright")
    else {
        return;
    };
    let run = crate::helpers::bin()
        .args(["bench", "runner", "--seconds", "3", "--chrome", &chrome])
        .output();
    // Six short runs, each with a browser start; npm may install
    // playwright-core first.
    let out = tokio::time::timeout(std::time::Duration::from_secs(600), run)
        .await
        .expect("the bench stops by itself")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(
        stdout.contains("goal: ≥ 1.1× Playwright's flows/min and ≤ 1.0× its peak PSS"),
        "{stdout}"
    );
    for concurrency in ["1", "2", "4"] {
        let row = stdout
            .lines()
            .find(|l| l.split('│').next().map(str::trim) == Some(concurrency))
            .unwrap_or_else(|| panic!("no row for {concurrency} at once in\n{stdout}"));
        let cells: Vec<&str> = row.split('│').collect();
        assert_eq!(cells.len(), 3, "{row}");
        for cell in &cells[1..] {
            let words: Vec<&str> = cell.split_whitespace().collect();
            assert_eq!(words.len(), 4, "ours, Playwright, ratio, mark: {row}");
            let number = |w: &str| -> f64 {
                w.trim_end_matches('×')
                    .parse()
                    .unwrap_or_else(|_| panic!("{w:?} in {row}"))
            };
            let (ours, theirs, ratio) = (number(words[0]), number(words[1]), number(words[2]));
            assert!(ours > 0.0 && theirs > 0.0, "{row}");
            assert!((ratio - ours / theirs).abs() < 0.02 * ratio + 0.01, "{row}");
            assert!(["✓", "✗"].contains(&words[3]), "{row}");
        }
    }
    for kind in ["ours ", "Playwright "] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(kind) && l.contains("renderer")),
            "no CPU breakdown for {kind}in\n{stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(kind) && l.contains("click and load")),
            "no step timings for {kind}in\n{stdout}"
        );
    }
}

/// A missing browser is one line that says how to install it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runner_without_chromium_says_how_to_install_it() {
    let (ok, stdout, stderr) = run(&[
        "bench",
        "runner",
        "--seconds",
        "1",
        "--chrome",
        "/nonexistent/chromium",
    ])
    .await;
    assert!(!ok, "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("apt-get install chromium"), "{stderr}");
    assert!(!stdout.contains("flows/min"), "{stdout}");
}

/// A missing Node.js is one line that says how to install it. (Chromium is
/// looked for first; any executable passes that check, and none is started.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runner_without_node_says_how_to_install_it() {
    let (ok, stdout, stderr) = run(&[
        "bench",
        "runner",
        "--seconds",
        "1",
        "--chrome",
        "/bin/true",
        "--node",
        "/nonexistent/node",
    ])
    .await;
    assert!(!ok, "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("apt-get install nodejs npm"), "{stderr}");
}

/// Chromium (CHROME, else Debian's) and node on PATH, or `None` after
/// saying so; under CI a missing one fails the test.
fn runner_bench_components(test: &str) -> Option<String> {
    let chrome = std::env::var("CHROME")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "/usr/bin/chromium".to_owned());
    let node = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("node"))
            .find(|p| p.is_file())
    });
    let missing = match (std::path::Path::new(&chrome).is_file(), node) {
        (false, _) => format!("no Chromium at {chrome} (apt-get install chromium, or set CHROME)"),
        (true, None) => "no node on PATH (apt-get install nodejs npm)".to_owned(),
        (true, Some(_)) => return Some(chrome),
    };
    if store::testing::in_ci() {
        panic!("{test}: {missing}");
    }
    eprintln!("NOT RUN {test}: {missing}");
    None
}

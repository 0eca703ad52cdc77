//! Set-up mistakes get one clear line on stderr and a non-zero exit, never a backtrace.

use crate::helpers::{TestStore, run};

async fn fails_with_one_line(args: &[&str], expect: &[&str]) {
    let (ok, _, stderr) = run(args).await;
    assert!(!ok, "{args:?} should fail");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in expect {
        assert!(
            lines[0].contains(needle),
            "{needle:?} missing from: {stderr}"
        );
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_bad_store_url_says_which_forms_are_accepted() {
    fails_with_one_line(
        &["--store", "mysql://x/y", "migrate"],
        &["mysql://x/y", "sqlite://PATH"],
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_database_is_one_line_without_the_password() {
    fails_with_one_line(
        &[
            "--store",
            "postgres://tb:hunter2@127.0.0.1:1/db?connect_timeout=2",
            "migrate",
        ],
        &["cannot open store", "127.0.0.1:1", "refused"],
    )
    .await;
    let (_, _, stderr) = run(&["--store", "postgres://tb:hunter2@127.0.0.1:1/db", "migrate"]).await;
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn a_bad_listen_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    fails_with_one_line(
        &["--store", &url, "serve", "--listen", "everywhere"],
        &["everywhere", "IP:PORT"],
    )
    .await;
}

#[tokio::test]
async fn a_missing_config_file_is_named() {
    fails_with_one_line(
        &["--config", "/nonexistent/tb.toml", "migrate"],
        &["/nonexistent/tb.toml"],
    )
    .await;
}

#[tokio::test]
async fn a_bad_trusted_proxy_is_named_before_anything_starts() {
    let store = TestStore::sqlite();
    let args = [
        "--store",
        &store.url,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--trusted-proxy",
        "10.0.0.0/8,10.0.0.0/40",
    ];
    fails_with_one_line(&args, &["trusted proxy", "\"10.0.0.0/40\"", "CIDR"]).await;
}

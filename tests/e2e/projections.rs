//! `trafficbuster projections rebuild` replays views from the first event.

use crate::helpers::{TestStore, create_user, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_replays_one_view_or_all_and_names_unknown_ones() {
    let store = TestStore::sqlite();
    create_user(
        &store.url,
        "root",
        "super_admin",
        "a long bootstrap passphrase",
    )
    .await;

    let (ok, stdout, stderr) =
        run(&["--store", &store.url, "projections", "rebuild", "audit"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "rebuilt audit (1 event applied)");

    let (ok, stdout, stderr) = run(&["--store", &store.url, "projections", "rebuild"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(
            "rebuilt event_counts, accounts, sessions, login_failures, audit, metrics"
        ),
        "{stdout}"
    );

    let (ok, _, stderr) = run(&["--store", &store.url, "projections", "rebuild", "audits"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("no view called \"audits\"; the views are: event_counts, accounts"),
        "{stderr}"
    );
}

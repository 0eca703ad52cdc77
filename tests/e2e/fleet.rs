//! Gateways sharing one PostgreSQL store project each view once: the first
//! to start projects every view; a second follows the checkpoints the first
//! commits, so it is ready and its reads see writes made through it. When
//! the first is SIGKILLed, its PostgreSQL session ends with it, and the
//! second takes every view over within seconds.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{PASSWORD, spawn_app};
use crate::helpers::{TestStore, http_get};

async fn readyz(addr: &str) -> Value {
    let (_, body) = http_get(addr, "/readyz").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz: {e}: {body}"))
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

const CREATE: &str = "mutation($u: String!, $p: String!) { createAccount(username: $u, password: $p, roles: [USER]) }";
const ACCOUNTS: &str = "{ accounts(first: 100) { username } }";

/// Waits until `name` is in the accounts view as `app` reads it (views are
/// eventual; `createAccount` does not wait for them).
async fn account_shows(app: &crate::app::TestApp, root: &str, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = app.gql(ACCOUNTS, json!({}), Some(root)).await;
        let listed = r["data"]["accounts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["username"] == name));
        if listed {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not in the accounts view within 5 s: {r}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_view_is_projected_by_one_gateway_and_taken_over_when_it_dies() {
    let Some(store) = TestStore::postgres("e2e_fleet_views").await else {
        return;
    };
    let shared = store.shared();
    let mut first = spawn_app().store(store).await;
    let root = first.with_accounts().await;
    let second = spawn_app().store(shared).await;

    let one = readyz(&first.addr).await;
    let two = readyz(&second.addr).await;
    let views: Vec<String> = {
        let mut v: Vec<String> = one["views"].as_object().unwrap().keys().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&one["projecting"]),
        views,
        "the first projects all: {one}"
    );
    assert_eq!(names(&two["projecting"]), Vec::<String>::new(), "{two}");
    assert_eq!(
        two["status"], "ready",
        "ready by the first's checkpoints: {two}"
    );

    // A write through the follower shows in the view it reads, projected
    // by the first.
    let r = second
        .gql(CREATE, json!({ "u": "bob", "p": PASSWORD }), Some(&root))
        .await;
    assert_eq!(r["data"]["createAccount"], "bob", "{r}");
    account_shows(&second, &root, "bob").await;

    first.process.kill().await;
    let killed = tokio::time::Instant::now();
    loop {
        let two = readyz(&second.addr).await;
        if names(&two["projecting"]) == views {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the second took over only {} of {} views within 10 s: {two}\n{}",
            names(&two["projecting"]).len(),
            views.len(),
            second.process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "every view taken over {:?} after the SIGKILL",
        killed.elapsed()
    );

    // The views move again, projected by the second.
    let r = second
        .gql(CREATE, json!({ "u": "carol", "p": PASSWORD }), Some(&root))
        .await;
    assert_eq!(r["data"]["createAccount"], "carol", "{r}");
    account_shows(&second, &root, "carol").await;
}

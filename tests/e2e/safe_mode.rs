//! SAFE_MODE over GraphQL: on in a fresh install, turned off only by a
//! super-admin with a reason, back on by an admin, every switch audited.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, code, spawn_app};

const SETTINGS: &str = "{ systemSettings { safeMode { on since reason by } } }";
const OFF: &str =
    "mutation($r: String!) { turnSafeModeOff(reason: $r) { safeMode { on since reason by } } }";
const ON: &str =
    "mutation($r: String!) { turnSafeModeOn(reason: $r) { safeMode { on since reason by } } }";

/// Creates `name` with `role` (a `RoleName`) as root.
pub(crate) async fn create_account(app: &TestApp, root: &str, name: &str, role: &str) -> String {
    let r = app
        .gql(
            "mutation($u: String!, $p: String!, $r: [RoleName!]!) { createAccount(username: $u, password: $p, roles: $r) }",
            json!({ "u": name, "p": PASSWORD, "r": [role] }),
            Some(root),
        )
        .await;
    assert_eq!(r["data"]["createAccount"], name, "{r}");
    app.token(name, PASSWORD).await
}

/// The audit summaries of `event_type`, oldest first, once there are
/// `count` of them (the audit view follows the log).
pub(crate) async fn audited(
    app: &TestApp,
    token: &str,
    event_type: &str,
    count: usize,
) -> Vec<String> {
    let page = "query($t: String!) { auditLog(first: 100, eventType: $t) { entries { summary } } }";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.gql(page, json!({ "t": event_type }), Some(token)).await;
        let entries = r["data"]["auditLog"]["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"));
        let mut summaries: Vec<String> = entries
            .iter()
            .map(|e| e["summary"].as_str().unwrap().to_owned())
            .collect();
        if summaries.len() >= count {
            summaries.reverse();
            return summaries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit log never showed {count} {event_type}: {summaries:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_is_on_in_a_fresh_install_and_only_a_super_admin_turns_it_off() {
    let app = spawn_app().await;
    let root = app.with_accounts().await;
    let admin = create_account(&app, &root, "adam", "ADMIN").await;
    let user = app.token("ada", PASSWORD).await;

    let anonymous = app.gql(SETTINGS, json!({}), None).await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED", "{anonymous}");
    let fresh = app.gql(SETTINGS, json!({}), Some(&user)).await;
    assert_eq!(
        fresh["data"]["systemSettings"]["safeMode"],
        json!({ "on": true, "since": null, "reason": "a fresh install starts in safe mode", "by": null }),
        "{fresh}"
    );

    let r = app
        .gql(OFF, json!({ "r": "looked, all fine" }), Some(&admin))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = app
        .gql(OFF, json!({ "r": "let me run" }), Some(&user))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = app.gql(OFF, json!({ "r": "  " }), Some(&root)).await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("reason: "),
        "{r}"
    );
    let still = app.gql(SETTINGS, json!({}), Some(&user)).await;
    assert_eq!(still["data"]["systemSettings"]["safeMode"]["on"], true);

    let off = app
        .gql(
            OFF,
            json!({ "r": "proxies and targets checked" }),
            Some(&root),
        )
        .await;
    let safe_mode = &off["data"]["turnSafeModeOff"]["safeMode"];
    assert_eq!(safe_mode["on"], false, "{off}");
    assert_eq!(safe_mode["by"], "root");
    assert_eq!(safe_mode["reason"], "proxies and targets checked");
    assert!(safe_mode["since"].is_string(), "{off}");
    let seen = app.gql(SETTINGS, json!({}), Some(&user)).await;
    assert_eq!(seen["data"]["systemSettings"]["safeMode"], *safe_mode);

    let r = app
        .gql(ON, json!({ "r": "let me stop it" }), Some(&user))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let on = app
        .gql(ON, json!({ "r": "a runner misbehaves" }), Some(&admin))
        .await;
    assert_eq!(on["data"]["turnSafeModeOn"]["safeMode"]["on"], true, "{on}");
    assert_eq!(on["data"]["turnSafeModeOn"]["safeMode"]["by"], "adam");

    let auditor = app.token("audrey", PASSWORD).await;
    assert_eq!(
        audited(&app, &auditor, "SafeModeTurnedOff", 1).await,
        ["safe mode turned off by root: proxies and targets checked"]
    );
    assert_eq!(
        audited(&app, &auditor, "SafeModeTurnedOn", 1).await,
        ["safe mode turned on by adam: a runner misbehaves"]
    );
}

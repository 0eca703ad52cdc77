//! Password guessing and its limits end to end: a burst of logins cannot
//! take the gateway's memory, password changes are limited like logins,
//! and the client address comes from a trusted proxy's header only.

use std::net::Ipv4Addr;
use std::time::Instant;

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, ROOT_PASSWORD, TestApp, code, create_user, spawn_app};

const LOGIN: &str =
    "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { accessToken } }";

/// The gateway process's peak resident memory, in bytes (VmHWM).
fn peak_resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"));
    kib * 1024
}

/// Loopback address number `n`, from 127.0.1.1 up, one per client.
fn loopback(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8)
}

/// Creates `n` user accounts `burst-<i>` as `root`, a few at a time (the
/// password gate would refuse a burst of hashes as it refuses logins).
async fn create_accounts(app: &TestApp, root: &str, n: usize) {
    let create = "mutation($u: String!, $p: String!) { createAccount(username: $u, password: $p, roles: [USER]) }";
    let names: Vec<String> = (0..n).map(|i| format!("burst-{i}")).collect();
    for chunk in names.chunks(2) {
        let made = futures_util::future::join_all(
            chunk
                .iter()
                .map(|name| app.gql(create, json!({ "u": name, "p": PASSWORD }), Some(root))),
        )
        .await;
        for (name, r) in chunk.iter().zip(made) {
            assert_eq!(r["data"]["createAccount"], name.as_str(), "{r}");
        }
    }
}

/// 400 wrong-password logins at once, over 200 accounts, each from its own
/// address so that no rate limit trips: every one used to start an argon2
/// verification (~19 MiB each) at once, 6.3-6.9 GB resident in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_is_refused_rather_than_taking_all_memory() {
    const ACCOUNTS: usize = 200;
    const LOGINS: usize = 400;
    let app = spawn_app().await;
    create_user(&app.store.url, "root", "super_admin", ROOT_PASSWORD).await;
    let root = app.token("root", ROOT_PASSWORD).await;
    create_accounts(&app, &root, ACCOUNTS).await;

    let started = Instant::now();
    let answers = futures_util::future::join_all((0..LOGINS).map(|i| {
        let body = json!({
            "query": LOGIN,
            "variables": { "u": format!("burst-{}", i % ACCOUNTS), "p": "not the password at all" },
        })
        .to_string();
        let client = &app.client;
        async move { client.post_from(Some(loopback(i)), &[], &body).await }
    }))
    .await;
    let took = started.elapsed();
    let peak = peak_resident_bytes(app.process.pid());

    let mut refused = 0;
    for (status, r) in &answers {
        // The gateway's in-flight limit may refuse first: 503, RATE_LIMITED.
        assert!(
            *status == 200 || (*status == 503 && code(r) == "RATE_LIMITED"),
            "{status} {r}"
        );
        match code(r) {
            "UNAUTHENTICATED" => {}
            "RATE_LIMITED" => {
                refused += 1;
                assert!(
                    r["errors"][0]["extensions"]["retryAfter"].as_u64() >= Some(1),
                    "{r}"
                );
            }
            other => panic!("{other}: {r}"),
        }
    }
    println!(
        "{LOGINS} logins in {took:?}: {refused} refused, peak resident {} MiB",
        peak >> 20
    );
    assert!(refused < LOGINS, "some passwords were checked: {answers:?}");
    assert!(
        peak < 512 << 20,
        "peak resident memory {} MiB (400 argon2 checks at once)",
        peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_password_change_within_a_minute_is_rate_limited() {
    let app = spawn_app().await;
    app.with_accounts().await;
    let ada = app.token("ada", PASSWORD).await;
    let change = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";
    for _ in 0..5 {
        let guess = json!({ "c": "a guess at the password", "n": "the new password, long" });
        let r = app.gql(change, guess, Some(&ada)).await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    }
    // Even the right password waits now.
    let right = json!({ "c": PASSWORD, "n": "the new password, long" });
    let r = app.gql(change, right, Some(&ada)).await;
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    assert!(
        r["errors"][0]["extensions"]["retryAfter"].as_u64() >= Some(1),
        "{r}"
    );
    // And the password stayed as it was.
    app.token("ada", PASSWORD).await;
}

/// A failed login for `name` sent from `from` with `X-Forwarded-For: 203.0.113.7`.
async fn failed_login_forwarded(app: &TestApp, from: Ipv4Addr, name: &str) {
    let body =
        json!({ "query": LOGIN, "variables": { "u": name, "p": "not the password at all" } });
    let (_, r) = app
        .post_from(
            Some(from),
            &[("X-Forwarded-For", "198.51.100.1, 203.0.113.7")],
            &body.to_string(),
        )
        .await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
}

/// The client addresses the store recorded: the `login-attempts-…` streams
/// and the `client_ip` of each LoginFailed.
async fn recorded_addresses(app: &TestApp) -> Vec<String> {
    let mut seen = Vec::new();
    for e in app.store.events().await {
        if let Some(addr) = e.stream_id.as_str().strip_prefix("login-attempts-") {
            seen.push(format!("stream {addr}"));
        }
        if e.event_type == "LoginFailed" {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            seen.push(format!(
                "LoginFailed {}",
                data["client_ip"].as_str().unwrap()
            ));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client_and_anyone_else_is_the_client() {
    let proxy = Ipv4Addr::new(127, 0, 0, 1);
    let stranger = Ipv4Addr::new(127, 0, 0, 9);

    let app = spawn_app()
        .flags(&["--trusted-proxy", "127.0.0.1/32"])
        .await;
    app.with_accounts().await;
    failed_login_forwarded(&app, proxy, "nobody").await;
    failed_login_forwarded(&app, proxy, "ada").await;
    failed_login_forwarded(&app, stranger, "nobody").await;
    assert_eq!(
        recorded_addresses(&app).await,
        [
            "stream 203.0.113.7",
            "LoginFailed 203.0.113.7",
            "stream 127.0.0.9"
        ]
    );

    let app = spawn_app().await;
    app.with_accounts().await;
    failed_login_forwarded(&app, proxy, "nobody").await;
    failed_login_forwarded(&app, proxy, "ada").await;
    assert_eq!(
        recorded_addresses(&app).await,
        ["stream 127.0.0.1", "LoginFailed 127.0.0.1"]
    );
}

/// A login naming no account, `nobody-<n>`, through `app`.
async fn guess(app: &TestApp, n: usize) -> Value {
    let vars = json!({ "u": format!("nobody-{n}"), "p": "a guess" });
    app.gql(LOGIN, vars, None).await
}

/// Gateways sharing a store share an address's failed logins: three through
/// one and three through the other spend a limit of six, and the next
/// attempt is refused by the failures the store records, though neither
/// gateway alone has seen more than three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_limit_holds_across_gateways_sharing_the_store() {
    let Some(store) = crate::helpers::TestStore::postgres("e2e_login_limits_fleet").await else {
        return;
    };
    let shared = store.shared();
    let limit = ["--login-limit-per-address", "6"];
    let first = spawn_app().store(store).flags(&limit).await;
    let second = spawn_app().store(shared).flags(&limit).await;
    for n in 0..3 {
        let r = guess(&first, n).await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    }
    for n in 3..6 {
        let r = guess(&second, n).await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    }
    // The failures reach the view in milliseconds.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let r = guess(&second, 6).await;
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("too many failed logins from this address"),
        "refused by the store's count, not the gateway's own: {r}"
    );
}

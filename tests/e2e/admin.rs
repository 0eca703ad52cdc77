//! `trafficbuster admin create-user` bootstraps accounts against the store.

use crate::helpers::{TestStore, run, run_with_stdin};

const PASSWORD: &str = "a long bootstrap passphrase";

async fn create_user_bootstraps_a_super_admin(store: TestStore) {
    let args = [
        "--store",
        &store.url,
        "admin",
        "create-user",
        "--username",
        "Root",
        "--role",
        "super_admin",
        "--password-stdin",
    ];
    let (ok, stdout, stderr) = run_with_stdin(&args, &format!("{PASSWORD}\n")).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "created account root (super_admin)");

    let events = store.events().await;
    assert_eq!(events.len(), 1);
    let created = &events[0];
    assert_eq!(
        (created.stream_id.as_str(), created.event_type.as_str()),
        ("account-root", "AccountCreated")
    );
    assert_eq!(created.metadata.source.as_deref(), Some("cli"));
    assert!(created.data.contains("$argon2id$"), "{}", created.data);
    for text in [&created.data, &stdout, &stderr] {
        assert!(
            !text.contains(PASSWORD),
            "the clear password leaked: {text}"
        );
    }

    // Once only.
    let (ok, _, stderr) = run_with_stdin(&args, PASSWORD).await;
    assert!(!ok);
    assert!(stderr.contains("account root already exists"), "{stderr}");
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_user_bootstraps_a_super_admin_on_sqlite() {
    create_user_bootstraps_a_super_admin(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_user_bootstraps_a_super_admin_on_postgres() {
    if let Some(store) =
        TestStore::postgres("create_user_bootstraps_a_super_admin_on_postgres").await
    {
        create_user_bootstraps_a_super_admin(store).await;
    }
}

#[tokio::test]
async fn create_user_refuses_bad_input_with_the_reason() {
    let store = TestStore::sqlite();
    let (ok, _, stderr) = run_with_stdin(&strs(&create_args(&store.url, "ada")), "short\n").await;
    assert!(!ok && stderr.contains("at least 12 characters"), "{stderr}");
    let (ok, _, stderr) = run_with_stdin(
        &strs(&create_args(&store.url, "a d a")),
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(
        !ok && stderr.contains("username \"a d a\" must be"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&strs(&create_args(&store.url, "ada"))).await;
    assert!(
        !ok && stderr.contains("no password on standard input"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&[
        "--store",
        &store.url,
        "admin",
        "create-user",
        "--username",
        "ada",
        "--password-stdin",
    ])
    .await;
    assert!(!ok && stderr.contains("--role"), "{stderr}");
    // Nothing was written by any of these.
    let events = store.events().await;
    assert!(events.is_empty(), "{events:?}");
}

fn create_args(url: &str, user: &str) -> Vec<String> {
    [
        "--store",
        url,
        "admin",
        "create-user",
        "--username",
        user,
        "--role",
        "user",
        "--password-stdin",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The binary refuses the username before it reads the password, so the
/// input (larger than a pipe holds) meets a closed pipe: the refusal still
/// comes back, where `run_with_stdin` once panicked on the broken pipe (and
/// now and then did so with short input too).
#[tokio::test]
async fn a_bad_username_is_refused_before_the_password_is_read() {
    let store = TestStore::sqlite();
    let big = "p".repeat(1 << 20);
    let (ok, _, stderr) = run_with_stdin(&strs(&create_args(&store.url, "a d a")), &big).await;
    assert!(
        !ok && stderr.contains("username \"a d a\" must be"),
        "{stderr}"
    );
}

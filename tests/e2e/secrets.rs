//! Passwords, tokens and the signing secret never reach the logs, even at
//! the most verbose level, nor the events.

use serde_json::json;

use crate::helpers::{TestStore, create_user, http_get, spawn_app};

const SECRET: &str = "a-signing-secret-that-must-stay-hidden";
const ROOT_PASSWORD: &str = "root password never logged";
const ADA_PASSWORD: &str = "ada password never logged";
const NEW_PASSWORD: &str = "ada new password never logged";
/// A password typed into the username field.
const PASSWORD_AS_NAME: &str = "password-typed-as-a-username";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_token_or_secret_appears_in_trace_logs() {
    let store = TestStore::sqlite();
    create_user(&store.url, "root", "super_admin", ROOT_PASSWORD).await;
    let mut app = spawn_app()
        .store(store)
        .jwt_secret(Some(SECRET))
        .env("RUST_LOG", "trace")
        .await;

    let root = app.token("root", ROOT_PASSWORD).await;
    let created = app
        .gql(
            "mutation($p: String!) { createAccount(username: \"ada\", password: $p, roles: [USER]) }",
            json!({ "p": ADA_PASSWORD }),
            Some(&root),
        )
        .await;
    assert_eq!(created["data"]["createAccount"], "ada", "{created}");
    let wrong = app.login("ada", "a wrong password never logged").await;
    assert!(wrong["errors"].is_array());
    let misplaced = app.login(PASSWORD_AS_NAME, "anything").await;
    assert!(misplaced["errors"].is_array());
    // A password written into the query text itself, not a variable.
    let inline = app
        .gql(
            "mutation { login(username: \"ada\", password: \"an inline password never logged\") { accessToken } }",
            json!({}),
            None,
        )
        .await;
    assert!(inline["errors"].is_array());
    let login = app.login("ada", ADA_PASSWORD).await;
    let access = login["data"]["login"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let refresh = login["data"]["login"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let renewed = app
        .gql(
            "mutation($t: String!) { refresh(refreshToken: $t) { accessToken refreshToken } }",
            json!({ "t": refresh }),
            None,
        )
        .await;
    let access2 = renewed["data"]["refresh"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let refresh2 = renewed["data"]["refresh"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let changed = app
        .gql(
            "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }",
            json!({ "c": ADA_PASSWORD, "n": NEW_PASSWORD }),
            Some(&access2),
        )
        .await;
    assert_eq!(changed["data"]["changePassword"], true, "{changed}");
    app.gql("{ me { username } }", json!({}), Some(&access))
        .await;

    app.terminate().await;
    let log = app.process.log();
    let requests = log
        .lines()
        .filter(|l| l.contains("\"route\":\"/graphql\""))
        .count();
    assert!(
        requests >= 8,
        "every request is logged ({requests} seen):\n{log}"
    );
    // The secret part of a refresh token is what follows its last dot.
    let secret_of = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    for (what, value) in [
        ("signing secret", SECRET.to_owned()),
        ("root password", ROOT_PASSWORD.to_owned()),
        ("ada's password", ADA_PASSWORD.to_owned()),
        ("ada's new password", NEW_PASSWORD.to_owned()),
        (
            "a wrong password",
            "a wrong password never logged".to_owned(),
        ),
        (
            "an inline password",
            "an inline password never logged".to_owned(),
        ),
        ("an access token", access),
        ("a refreshed access token", access2),
        ("a refresh token", secret_of(&refresh)),
        ("a refreshed refresh token", secret_of(&refresh2)),
        (
            "a password typed as a username",
            PASSWORD_AS_NAME.to_owned(),
        ),
    ] {
        assert!(!log.contains(&value), "{what} appears in the logs");
    }

    // Nor in any event: every login, failed or not, was recorded.
    let events = app.store.events().await;
    for ty in ["LoginFailed", "UnknownAccountLoginFailed", "SessionStarted"] {
        assert!(events.iter().any(|e| e.event_type == ty), "no {ty} event");
    }
    for e in &events {
        for secret in [
            SECRET,
            ROOT_PASSWORD,
            ADA_PASSWORD,
            NEW_PASSWORD,
            "a wrong password never logged",
            "an inline password never logged",
            PASSWORD_AS_NAME,
        ] {
            assert!(
                !e.data.contains(secret),
                "{} holds {secret:?}",
                e.event_type
            );
        }
    }
}

/// A database password given as a URL parameter (`?password=…`) is masked
/// wherever the store URL is printed: trace logs, command output, errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_password_in_a_url_parameter_never_reaches_the_output() {
    const DB_PASSWORD: &str = "a-database-password-never-logged";
    let Some(mut store) =
        TestStore::postgres("a_database_password_in_a_url_parameter_never_reaches_the_output")
            .await
    else {
        return;
    };
    let sep = if store.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}password={DB_PASSWORD}", store.url);

    let (ok, stdout, stderr) = crate::helpers::run(&["--store", &url, "migrate"]).await;
    assert!(ok, "{stderr}");
    let mut seen = format!("{stdout}{stderr}");

    // The gateway serves the same database through the URL with the password.
    store.url = url;
    let mut app = spawn_app()
        .store(store)
        .jwt_secret(Some(SECRET))
        .env("RUST_LOG", "trace")
        .await;
    seen.push_str(&http_get(&app.addr, "/readyz").await.1);
    app.terminate().await;
    seen.push_str(&app.process.log());

    // A URL the driver refuses is reported without the password too.
    let bad = format!("postgres://postgres@127.0.0.1:notaport/x?password={DB_PASSWORD}");
    let (ok, _, stderr) = crate::helpers::run(&["--store", &bad, "migrate"]).await;
    assert!(!ok);
    assert!(stderr.contains("bad store URL"), "{stderr}");
    seen.push_str(&stderr);

    // The URL was printed (masked), and the password never.
    assert!(seen.contains("password=***"), "{seen}");
    assert!(
        !seen.contains(DB_PASSWORD),
        "the database password was printed"
    );
    app.store.cleanup().await;
}

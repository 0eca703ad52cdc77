//! Login, refresh, logout and authentication over a real (SQLite) store.

use std::sync::Arc;

use domain::account::{Account, AccountCommand, Username};
use domain::login_attempts::{self, LoginAttemptEvent};
use domain::{Actor, Context, Role};
use gateway::auth::password;
use gateway::auth::sessions::{AuthError, SessionPolicy, Sessions};
use gateway::{CommandHandler, CommandMeta};
use store::{Direction, EventStore, StreamFrom};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

struct World {
    sessions: Sessions,
    handler: Arc<CommandHandler>,
    store: Arc<dyn EventStore>,
    _dir: tempfile::TempDir,
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store::SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    let store: Arc<dyn EventStore> = Arc::new(store);
    let handler = Arc::new(CommandHandler::new(
        store.clone(),
        Arc::new(domain::event_registry()),
    ));
    let policy = SessionPolicy {
        access_ttl: Duration::minutes(15),
        grace: Duration::minutes(30),
    };
    let sessions = Sessions::new(handler.clone(), &vec![42u8; 32].into(), policy).unwrap();
    let w = World {
        sessions,
        handler,
        store,
        _dir: dir,
    };
    create(&w, "ada", &[Role::User]).await;
    w
}

async fn create(w: &World, name: &str, roles: &[Role]) {
    let username = Username::parse(name).unwrap();
    let command = AccountCommand::Create {
        account_id: Uuid::now_v7(),
        username: username.clone(),
        roles: roles.iter().copied().collect(),
        password_hash: password::hash(PASSWORD.into()).await.unwrap(),
    };
    w.handler
        .handle::<Account>(
            &username.stream().unwrap(),
            command,
            &Context::new(t0(), Actor::System),
            &CommandMeta::default(),
        )
        .await
        .unwrap();
}

async fn login(
    w: &World,
    name: &str,
    pw: &str,
) -> Result<gateway::auth::sessions::IssuedTokens, AuthError> {
    w.sessions
        .login(
            name,
            pw.into(),
            Some("127.0.0.1".into()),
            None,
            &CommandMeta::default(),
            t0(),
        )
        .await
}

#[tokio::test]
async fn the_right_password_gives_tokens_that_authenticate() {
    let w = world().await;
    let tokens = login(&w, "Ada", PASSWORD).await.unwrap();
    let who = w
        .sessions
        .authenticate(&tokens.access_token, t0())
        .await
        .unwrap();
    assert_eq!(
        (who.username.as_str(), who.session_id),
        ("ada", tokens.session_id)
    );
    assert!(who.roles.contains(&Role::User));
}

#[tokio::test]
async fn every_failed_login_says_the_same_thing_and_wrong_passwords_are_recorded() {
    let w = world().await;
    for (name, pw) in [
        ("ada", "wrong password here"),
        ("nobody", PASSWORD),
        ("x", PASSWORD),
    ] {
        let err = login(&w, name, pw).await.unwrap_err();
        assert_eq!(err.to_string(), "wrong username or password", "{name}");
    }
    let stream = Username::parse("ada").unwrap().stream().unwrap();
    let events = w
        .store
        .read_stream(&stream, StreamFrom::Start, Direction::Forward, 10)
        .await
        .unwrap();
    let failed = events
        .iter()
        .find(|e| e.event_type == "LoginFailed")
        .expect("recorded");
    assert!(
        failed.data.contains("wrong_password") && !failed.data.contains("wrong password here"),
        "{}",
        failed.data
    );
}

#[tokio::test]
async fn logins_naming_no_account_are_recorded_by_fingerprint_never_as_typed() {
    let w = world().await;
    // A password typed into the username field, twice; then another name,
    // and one that is not even a valid username.
    let typed = [
        "Tr0ub4dor&3-secret",
        "Tr0ub4dor&3-secret",
        "nobody",
        "no spaces allowed",
    ];
    for name in typed {
        let err = login(&w, name, PASSWORD).await.unwrap_err();
        assert_eq!(err.to_string(), "wrong username or password", "{name}");
    }
    let stream = login_attempts::stream(Some("127.0.0.1")).unwrap();
    let events = w
        .store
        .read_stream(&stream, StreamFrom::Start, Direction::Forward, 10)
        .await
        .unwrap();
    let fingerprints: Vec<String> = events
        .iter()
        .map(|e| {
            assert_eq!(e.event_type, "UnknownAccountLoginFailed");
            for secret in typed.iter().chain([&PASSWORD]) {
                assert!(!e.data.contains(secret), "{secret:?} stored: {}", e.data);
            }
            let LoginAttemptEvent::UnknownAccountLoginFailed(f) =
                domain::event_registry().decode(e).unwrap();
            assert_eq!(f.client_ip.as_deref(), Some("127.0.0.1"));
            f.name_fingerprint.0
        })
        .collect();
    assert_eq!(fingerprints.len(), 4);
    // The same name gives the same fingerprint; others differ.
    assert_eq!(fingerprints[0], fingerprints[1]);
    assert_ne!(fingerprints[0], fingerprints[2]);
    assert_ne!(fingerprints[2], fingerprints[3]);
}

#[tokio::test]
async fn a_second_login_ends_the_first_session() {
    let w = world().await;
    let first = login(&w, "ada", PASSWORD).await.unwrap();
    let second = login(&w, "ada", PASSWORD).await.unwrap();
    assert!(matches!(
        w.sessions.authenticate(&first.access_token, t0()).await,
        Err(AuthError::SessionEnded(_))
    ));
    assert!(
        w.sessions
            .authenticate(&second.access_token, t0())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_refresh_inside_the_grace_period_keeps_the_session_and_rotates_the_token() {
    let w = world().await;
    let first = login(&w, "ada", PASSWORD).await.unwrap();
    // The access token has expired (15 min) but grace runs to 45 min.
    let later = t0() + Duration::minutes(40);
    assert!(matches!(
        w.sessions.authenticate(&first.access_token, later).await,
        Err(AuthError::Token(_))
    ));
    let meta = CommandMeta::default();
    let renewed = w
        .sessions
        .refresh(&first.refresh_token, &meta, later)
        .await
        .unwrap();
    assert_eq!(renewed.session_id, first.session_id);
    assert!(
        w.sessions
            .authenticate(&renewed.access_token, later)
            .await
            .is_ok()
    );
    // The old refresh token was rotated out.
    let err = w
        .sessions
        .refresh(&first.refresh_token, &meta, later)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refresh token"), "{err}");
    for garbage in [
        "",
        "x",
        "not-a-uuid.ada.abc",
        &format!("{}.ada", first.session_id),
    ] {
        let err = w.sessions.refresh(garbage, &meta, later).await.unwrap_err();
        assert!(
            err.to_string().contains("malformed refresh token"),
            "{garbage}: {err}"
        );
    }
}

#[tokio::test]
async fn a_refresh_after_the_grace_period_means_logging_in_again() {
    let w = world().await;
    let first = login(&w, "ada", PASSWORD).await.unwrap();
    let too_late = t0() + Duration::minutes(46);
    let err = w
        .sessions
        .refresh(&first.refresh_token, &CommandMeta::default(), too_late)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::SessionEnded(_)), "{err}");
}

#[tokio::test]
async fn logout_ends_the_session() {
    let w = world().await;
    let tokens = login(&w, "ada", PASSWORD).await.unwrap();
    let who = w
        .sessions
        .authenticate(&tokens.access_token, t0())
        .await
        .unwrap();
    w.sessions
        .logout(&who, &CommandMeta::default(), t0())
        .await
        .unwrap();
    assert!(matches!(
        w.sessions.authenticate(&tokens.access_token, t0()).await,
        Err(AuthError::SessionEnded(_))
    ));
}

#[tokio::test]
async fn a_disabled_account_loses_its_session_at_once() {
    let w = world().await;
    create(&w, "root", &[Role::Admin]).await;
    let tokens = login(&w, "ada", PASSWORD).await.unwrap();
    let admin = w
        .sessions
        .authenticate(
            &login(&w, "root", PASSWORD).await.unwrap().access_token,
            t0(),
        )
        .await
        .unwrap();
    let stream = Username::parse("ada").unwrap().stream().unwrap();
    w.handler
        .handle::<Account>(
            &stream,
            AccountCommand::Disable {
                reason: "left".into(),
            },
            &Context::new(t0(), admin.actor()),
            &CommandMeta::default(),
        )
        .await
        .unwrap();
    assert!(matches!(
        w.sessions.authenticate(&tokens.access_token, t0()).await,
        Err(AuthError::SessionEnded(_))
    ));
    assert_eq!(
        login(&w, "ada", PASSWORD).await.unwrap_err().to_string(),
        "wrong username or password"
    );
}

#[tokio::test]
async fn a_username_with_a_dot_refreshes_like_any_other() {
    let w = world().await;
    create(&w, "ada.l", &[Role::User]).await;
    let first = login(&w, "ada.l", PASSWORD).await.unwrap();
    let renewed = w
        .sessions
        .refresh(&first.refresh_token, &CommandMeta::default(), t0())
        .await
        .unwrap();
    assert_eq!(renewed.session_id, first.session_id);
    let who = w
        .sessions
        .authenticate(&renewed.access_token, t0())
        .await
        .unwrap();
    assert_eq!(who.username.as_str(), "ada.l");
}

#[tokio::test]
async fn failed_logins_count_on_every_gateway_that_shares_the_store() {
    let w = world().await;
    // Another gateway: its own connection to the store, its own handler
    // (and cache), its own sessions; the same account stream.
    let (other_store, _) = store::SqliteStore::open(w._dir.path().join("events.db"))
        .await
        .unwrap();
    let other_handler = Arc::new(CommandHandler::new(
        Arc::new(other_store),
        Arc::new(domain::event_registry()),
    ));
    let other = Sessions::new(
        other_handler,
        &vec![42u8; 32].into(),
        SessionPolicy::default(),
    )
    .unwrap()
    .with_failed_login_limit(5);
    let meta = CommandMeta::default();
    let on_other = |pw: &'static str| {
        other.login("ada", pw.into(), Some("10.0.0.9".into()), None, &meta, t0())
    };
    for _ in 0..3 {
        assert!(matches!(
            login(&w, "ada", "wrong guess").await,
            Err(AuthError::WrongCredentials)
        ));
    }
    for _ in 0..2 {
        assert!(matches!(
            on_other("another guess").await,
            Err(AuthError::WrongCredentials)
        ));
    }
    // Five failures in the minute, three of them through the first gateway:
    // the second refuses even the right password, before checking it.
    match on_other(PASSWORD).await {
        Err(AuthError::RateLimited(limited)) => {
            assert_eq!(limited.scope, "failed logins for this account");
            assert!(limited.retry_after <= std::time::Duration::from_secs(60));
        }
        other => panic!(
            "expected a rate limit, got {:?}",
            other.map(|t| t.session_id)
        ),
    }
    // And so does the first.
    assert!(matches!(
        login(&w, "ada", PASSWORD).await,
        Err(AuthError::RateLimited(_))
    ));
    // A minute later the account may log in again.
    let later = w
        .sessions
        .login(
            "ada",
            PASSWORD.into(),
            None,
            None,
            &CommandMeta::default(),
            t0() + Duration::seconds(61),
        )
        .await;
    assert!(later.is_ok(), "{:?}", later.err());
}

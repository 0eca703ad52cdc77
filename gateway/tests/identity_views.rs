//! The identity views (accounts, sessions, audit, metrics) projected from
//! real logins on real stores, and equal to themselves after a rebuild.

use std::sync::Arc;

use domain::account::{Account, AccountCommand, Username};
use domain::{Actor, Context, Role};
use gateway::auth::password;
use gateway::auth::sessions::{SessionPolicy, Sessions};
use gateway::{CommandHandler, CommandMeta};
use projections::{ProjectionEngine, Row, SqlValue, ViewStore};
use store::testing::eventually;
use store::{EventStore, Filter};
use time::OffsetDateTime;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

async fn query(views: &ViewStore, sql: &str) -> Vec<Row> {
    views.query(sql, vec![]).await.unwrap()
}

async fn metric(views: &ViewStore, name: &str) -> i64 {
    views
        .query(
            "SELECT value FROM view_metrics WHERE name = $1",
            vec![SqlValue::from(name)],
        )
        .await
        .unwrap()
        .first()
        .map_or(0, |r| r.get::<i64>("value").unwrap())
}

async fn dump(views: &ViewStore) -> Vec<Vec<SqlValue>> {
    let mut all = Vec::new();
    for sql in [
        "SELECT * FROM view_accounts ORDER BY username",
        "SELECT * FROM view_sessions ORDER BY session_id",
        "SELECT * FROM view_audit ORDER BY commit_pos, prepare_pos",
        "SELECT * FROM view_metrics ORDER BY name",
        "SELECT * FROM view_event_counts ORDER BY event_type",
    ] {
        all.extend(
            query(views, sql)
                .await
                .into_iter()
                .map(|r| r.values().to_vec()),
        );
    }
    all
}

async fn identity_views_follow_logins_and_rebuild_equal(backend: store::Backend) {
    let store: Arc<dyn EventStore> = backend.event_store();
    let views = ViewStore::open(&backend).await.unwrap();
    let engine = ProjectionEngine::start(store.clone(), views, projections::all_views()).unwrap();
    let handler = Arc::new(CommandHandler::new(
        store.clone(),
        Arc::new(domain::event_registry()),
    ));
    let sessions = Sessions::new(
        handler.clone(),
        &vec![1u8; 32].into(),
        SessionPolicy::default(),
    )
    .unwrap();
    let meta = CommandMeta::default();
    let now = OffsetDateTime::now_utc;

    for (name, role) in [("root", Role::Admin), ("ada", Role::User)] {
        let username = Username::parse(name).unwrap();
        let create = AccountCommand::Create {
            account_id: Uuid::now_v7(),
            username: username.clone(),
            roles: [role].into(),
            password_hash: password::hash(PASSWORD.into()).await.unwrap(),
        };
        handler
            .handle::<Account>(
                &username.stream().unwrap(),
                create,
                &Context::new(now(), Actor::System),
                &meta,
            )
            .await
            .unwrap();
    }
    let ip = Some("127.0.0.9".to_owned());
    let login = |name: &'static str, pw: &'static str| {
        let sessions = &sessions;
        let ip = ip.clone();
        async move {
            sessions
                .login(
                    name,
                    pw.into(),
                    ip,
                    Some("test-agent".into()),
                    &CommandMeta::default(),
                    now(),
                )
                .await
        }
    };
    login("ada", PASSWORD).await.unwrap();
    let ada = login("ada", PASSWORD).await.unwrap(); // supersedes the first
    assert!(login("ada", "not the password").await.is_err());
    assert!(login("nobody-by-this-name", PASSWORD).await.is_err());
    let root_tokens = login("root", PASSWORD).await.unwrap();
    let root = sessions
        .authenticate(&root_tokens.access_token, now())
        .await
        .unwrap();
    handler
        .handle::<Account>(
            &Username::parse("ada").unwrap().stream().unwrap(),
            AccountCommand::RevokeSession {
                session_id: ada.session_id,
            },
            &Context::new(now(), root.actor()),
            &meta,
        )
        .await
        .unwrap();

    let v = engine.views();
    eventually("metrics", || async {
        (
            metric(v, "logins").await,
            metric(v, "failed_logins").await,
            metric(v, "active_sessions").await,
        ) == (3, 2, 1)
    })
    .await;

    let total = store
        .read_all(domain::Position::START, &Filter::all(), 1000)
        .await
        .unwrap()
        .events
        .len();
    eventually("audit", || async {
        query(v, "SELECT * FROM view_audit").await.len() == total
    })
    .await;
    eventually("sessions", || async {
        query(v, "SELECT * FROM view_sessions WHERE ended_at IS NOT NULL")
            .await
            .len()
            == 2
    })
    .await;

    let ended: Vec<String> = query(
        v,
        "SELECT end_reason FROM view_sessions WHERE username = 'ada' ORDER BY started_at",
    )
    .await
    .iter()
    .map(|r| r.get::<String>("end_reason").unwrap())
    .collect();
    assert_eq!(ended, ["superseded by a newer login", "revoked by root"]);
    let live = query(
        v,
        "SELECT username, client_ip, user_agent FROM view_sessions WHERE ended_at IS NULL",
    )
    .await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].get::<String>("username").unwrap(), "root");
    assert_eq!(live[0].get::<String>("client_ip").unwrap(), "127.0.0.9");

    let ada_row = &query(v, "SELECT * FROM view_accounts WHERE username = 'ada'").await[0];
    assert_eq!(ada_row.get::<String>("roles").unwrap(), "user");
    assert_eq!(ada_row.get::<i64>("failed_logins").unwrap(), 1);
    assert!(!ada_row.get::<bool>("disabled").unwrap());
    assert!(
        ada_row
            .get::<Option<i64>>("last_login_at")
            .unwrap()
            .is_some()
    );

    let audit = query(
        v,
        "SELECT actor, event_type, summary FROM view_audit ORDER BY commit_pos, prepare_pos",
    )
    .await;
    for row in &audit {
        let summary = row.get::<String>("summary").unwrap();
        assert!(
            !summary.contains("argon2")
                && !summary.contains(PASSWORD)
                && !summary.contains("nobody-by-this-name"),
            "{summary}"
        );
    }
    assert!(audit.iter().any(|r| {
        r.get::<String>("summary")
            .unwrap()
            .starts_with("failed login naming no account from 127.0.0.9 (name fingerprint ")
    }));
    let revoke = audit
        .iter()
        .find(|r| {
            r.get::<String>("summary")
                .unwrap()
                .contains("revoked by root")
        })
        .expect("the revocation is audited");
    assert_eq!(
        revoke.get::<Option<String>>("actor").unwrap().as_deref(),
        Some("root")
    );
    assert!(
        audit.iter().any(|r| r.get::<String>("summary").unwrap()
            == "account ada created by system with roles user")
    );

    // A rebuilt view equals the live one.
    let live_dump = dump(v).await;
    for view in ["accounts", "sessions", "audit", "metrics", "event_counts"] {
        engine.rebuild(view).await.unwrap();
    }
    engine.wait_until_live().await.unwrap();
    eventually("rebuilt views", || async { dump(v).await == live_dump }).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_views_follow_logins_and_rebuild_equal_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("events.db").display())
        .parse()
        .unwrap();
    let (backend, _) = store::open_backend(&url).await.unwrap();
    identity_views_follow_logins_and_rebuild_equal(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_views_follow_logins_and_rebuild_equal_on_postgres() {
    let Some(pg) = store::testing::TestPostgres::fresh("identity_views_on_postgres").await else {
        return;
    };
    let (backend, _) = store::open_backend(&pg.url.parse().unwrap()).await.unwrap();
    identity_views_follow_logins_and_rebuild_equal(backend).await;
    pg.drop_schema().await;
}

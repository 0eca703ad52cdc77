//! Test harness: a fresh PostgreSQL schema per test, so tests run in
//! parallel; [`TestStore`] and [`each_backend!`](crate::each_backend) to run
//! one test case on each backend.
//!
//! The server is `DATABASE_URL` when set, else the local one at
//! 127.0.0.1:5432 (user `postgres`, database `test`). When it cannot be
//! reached, tests fail under `CI=true` and otherwise skip with a loud line
//! on stderr; they never skip silently.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use domain::{Position, RecordedEvent};

use crate::postgres::PostgresStore;
use crate::{Backend, EventStore, Filter};

/// Every committed event `filter` admits, in global order, page by page.
pub async fn read_everything(store: &dyn EventStore, filter: &Filter) -> Vec<RecordedEvent> {
    const PAGE: usize = 333;
    let mut out = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store
            .read_all(after, filter, PAGE)
            .await
            .unwrap_or_else(|e| panic!("reading every event: {e}"));
        let done = page.events.len() < PAGE && !page.pending;
        out.extend(page.events);
        after = page.next;
        if done {
            return out;
        }
    }
}

/// Polls until `check` holds, for at most 20 s (views and subscribers
/// follow the log asynchronously); panics naming `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A scratch store for one test: a temporary SQLite file, or a fresh
/// PostgreSQL schema. Open it as often as the test needs, as separate
/// processes would.
pub struct TestStore {
    /// Pass it to `trafficbuster --store`.
    pub url: String,
    /// Holds the SQLite file's directory; dropping it deletes the file.
    _dir: Option<tempfile::TempDir>,
    postgres: Option<TestPostgres>,
}

impl TestStore {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        Self {
            url,
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// `None` (after saying so) when PostgreSQL is unreachable outside CI.
    pub async fn postgres(test: &str) -> Option<Self> {
        let pg = TestPostgres::fresh(test).await?;
        Some(Self {
            url: pg.url.clone(),
            _dir: None,
            postgres: Some(pg),
        })
    }

    /// Another handle on the same store, as a second gateway would use it.
    /// It owns nothing: keep `self` alive while it is in use.
    pub fn shared(&self) -> Self {
        Self {
            url: self.url.clone(),
            _dir: None,
            postgres: None,
        }
    }

    /// Opens the store, as the CLI does, applying migrations.
    pub async fn open(&self) -> Arc<dyn EventStore> {
        self.open_backend().await.event_store()
    }

    /// Opens the store, keeping its concrete backend.
    pub async fn open_backend(&self) -> Backend {
        let url = self
            .url
            .parse()
            .unwrap_or_else(|e| panic!("test store URL {}: {e}", self.url));
        crate::open_backend(&url)
            .await
            .unwrap_or_else(|e| panic!("opening test store {}: {e}", self.url))
            .0
    }

    /// Every event in the store, in global order.
    pub async fn events(&self) -> Vec<RecordedEvent> {
        read_everything(&*self.open().await, &Filter::all()).await
    }

    /// Drops the PostgreSQL schema (a SQLite file goes with `self`). A
    /// failing test skips this and leaves its schema for inspection.
    pub async fn cleanup(self) {
        if let Some(pg) = self.postgres {
            pg.drop_schema().await;
        }
    }
}

/// Runs each named `cases::NAME(&TestStore)` on SQLite and on PostgreSQL,
/// as tests `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! each_backend {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let store = $crate::testing::TestStore::sqlite();
                    super::cases::$case(&store).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(store) = $crate::testing::TestStore::postgres(stringify!($case)).await
                    else {
                        return;
                    };
                    super::cases::$case(&store).await;
                    store.cleanup().await;
                }
            )+
        }
    };
}

/// The default test server.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// Is this a CI run, where a missing component must fail the run?
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A schema of its own on the test server.
pub struct TestPostgres {
    /// `DATABASE_URL` plus `schema=…`: pass it to `trafficbuster --store`.
    pub url: String,
    pub schema: String,
    pub config: tokio_postgres::Config,
}

impl TestPostgres {
    /// A fresh schema name, or `None` (after saying so) when PostgreSQL is
    /// unreachable outside CI. Panics under CI when it is unreachable.
    pub async fn fresh(test: &str) -> Option<Self> {
        let base = database_url();
        let config = tokio_postgres::Config::from_str(&base)
            .unwrap_or_else(|e| panic!("DATABASE_URL {base:?} is not a PostgreSQL URL: {e}"));
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                sweep_stale_schemas(&client).await;
            }
            Err(e) => {
                let msg = format!(
                    "PostgreSQL at {} is unreachable ({e}); set DATABASE_URL or start it",
                    crate::url::redact(&base)
                );
                if in_ci() {
                    panic!("{msg}");
                }
                eprintln!("SKIPPED {test}: {msg}");
                return None;
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        // Seconds (for the sweep), then the process and a count within it:
        // unique even for tests that start at the same clock reading.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let schema = format!(
            "tb_test_{}_{:x}_{:x}_{:x}",
            nanos / 1_000_000_000,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000_000,
        );
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(Self {
            url: format!("{base}{sep}schema={schema}"),
            schema,
            config,
        })
    }

    /// Opens the store on this schema (creating it).
    pub async fn open(&self) -> PostgresStore {
        PostgresStore::open(self.config.clone(), &self.schema)
            .await
            .unwrap_or_else(|e| panic!("opening test schema {}: {e}", self.schema))
            .0
    }

    /// Drops the schema. Call at the end of a passing test; a failing test
    /// leaves its schema for inspection, and a later run sweeps it.
    pub async fn drop_schema(self) {
        let store = self.open().await;
        // Dropping a schema locks every object in it and some catalog rows
        // it shares with other tests' drops: PostgreSQL may pick this drop
        // as a deadlock's victim. It is cleanup, so it tries again.
        let mut attempt = 1;
        loop {
            match store.drop_schema().await {
                Ok(()) => return,
                Err(e) if attempt < 5 && e.to_string().contains("deadlock") => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => panic!("dropping test schema {}: {e}", self.schema),
            }
        }
    }
}

/// Drops test schemas left over from runs more than an hour ago.
async fn sweep_stale_schemas(client: &tokio_postgres::Client) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Ok(rows) = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tb\\_test\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let born = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        if now.saturating_sub(born) > 3600 {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await;
        }
    }
}

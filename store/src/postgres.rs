//! The PostgreSQL backend (tokio-postgres + deadpool-postgres).
//!
//! Appends are one call of the `tb_append` function: one round trip, one
//! short transaction. Readers order events by (transaction id, sequence) and
//! take only rows below the snapshot's xmin, which is what makes the global
//! order gap-free under concurrent writers (see the migration's comments).
//! LISTEN/NOTIFY only wakes readers; the read query is the truth, and a poll
//! covers a lost notification.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Pool, PoolError, QueueMode, RecyclingMethod, Runtime,
};
use domain::{BlobHash, EventId, Metadata, NewEvent, Position, RecordedEvent, StreamId};
use futures_util::StreamExt;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use uuid::Uuid;

use crate::error::StoreError;
use crate::event_store::{
    AppendResult, Direction, EventStore, ExpectedVersion, Filter, Head, Page, Presence, Snapshot,
    StreamFrom, StreamRange, SubscribeFrom, from_micros, micros, validate_append,
};
use crate::identifier::valid_identifier;
use crate::migrate::{self, MigrationReport};
use crate::subscription::{Changes, Subscription};

const BACKEND: &str = "postgres";
/// A caught-up subscription reads at least this often, in case a
/// notification was lost (e.g. while the LISTEN connection reconnected).
const POLL: Duration = Duration::from_millis(500);
const POOL_SIZE: usize = 16;
/// The shortest gap between two NOTIFYs from this process.
const NOTIFY_EVERY: Duration = Duration::from_millis(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    config: tokio_postgres::Config,
    schema: String,
    channel: String,
    /// This handle's NOTIFY payload: its own notifications come back to
    /// its LISTEN connection and are ignored, since its appends already
    /// woke its subscriptions.
    origin: String,
    changes: Arc<Changes>,
    /// Wakes the task that sends NOTIFY after local appends, coalescing bursts.
    notify_others: Arc<Notify>,
    listener: Mutex<Option<JoinHandle<()>>>,
    notifier: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.notifier.abort();
        if let Some(l) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            l.abort();
        }
    }
}

impl PostgresStore {
    /// Connects, creating `schema` and applying migrations as needed.
    pub async fn open(
        mut config: tokio_postgres::Config,
        schema: &str,
    ) -> Result<(Self, MigrationReport), StoreError> {
        if !valid_identifier(schema) {
            return Err(StoreError::BadUrl {
                url: schema.into(),
                reason: "invalid schema name".into(),
            });
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.options(format!("-c search_path={schema}"));
        config.application_name("trafficbuster");
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            // The most recently used connection is the warm one: a
            // sequential caller keeps reusing one server process instead of
            // cycling through every connection a burst once opened.
            .queue_mode(QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable {
                backend: BACKEND,
                message: e.to_string(),
            })?;
        let report = apply_migrations(&pool, schema).await?;
        let channel = format!("tb_events_{schema}");
        let origin = Uuid::now_v7().simple().to_string();
        let notify_others = Arc::new(Notify::new());
        let notifier = tokio::spawn(send_notifications(
            pool.clone(),
            format!("NOTIFY \"{channel}\", '{origin}'"),
            notify_others.clone(),
        ));
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                config,
                schema: schema.to_owned(),
                channel,
                origin,
                changes: Arc::new(Changes::new()),
                notify_others,
                listener: Mutex::new(None),
                notifier,
            }),
        };
        Ok((store, report))
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The connection pool (search_path set to [`Self::schema`]), for read
    /// models kept in the same database as the events.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Drops the schema and everything in it. For tests and benchmarks.
    pub async fn drop_schema(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.inner.schema
            ))
            .await
            .map_err(pg_err)
    }

    /// A connection of its own, outside the pool, with the pool's settings:
    /// for session state that must end when this process does (advisory
    /// locks held for as long as the session lives).
    pub async fn session(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.inner.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %describe(&e), "a PostgreSQL session ended");
            }
        });
        Ok(client)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(pool_err)
    }

    /// Starts the LISTEN task once, when the first subscription needs it.
    fn ensure_listening(&self) {
        let mut listener = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if listener.is_none() {
            *listener = Some(tokio::spawn(listen(
                self.inner.config.clone(),
                self.inner.channel.clone(),
                self.inner.origin.clone(),
                self.inner.changes.clone(),
            )));
        }
    }
}

async fn apply_migrations(pool: &Pool, schema: &str) -> Result<MigrationReport, StoreError> {
    let failed = |name: &str, e: tokio_postgres::Error| StoreError::Migration {
        name: name.to_owned(),
        message: describe(&e),
    };
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(pg_err)?;
    // One migrator per schema at a time, however many gateways start at once.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('trafficbuster-migrate-' || $1, 0))",
        &[&schema],
    )
    .await
    .map_err(|e| failed("lock", e))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS tb_schema_migrations (
             version bigint PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());"
    ))
    .await
    .map_err(|e| failed("bookkeeping", e))?;
    let current: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM tb_schema_migrations",
            &[],
        )
        .await
        .map_err(|e| failed("bookkeeping", e))?
        .get(0);
    let mut report = MigrationReport {
        applied: vec![],
        version: current,
    };
    for m in migrate::POSTGRES.iter().filter(|m| m.version > current) {
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| failed(m.name, e))?;
        tx.execute(
            "INSERT INTO tb_schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(|e| failed(m.name, e))?;
        report.applied.push(m.name);
        report.version = m.version;
    }
    tx.commit().await.map_err(|e| failed("commit", e))?;
    Ok(report)
}

/// Sends one NOTIFY per wake-up; wake-ups that arrive meanwhile coalesce.
///
/// A NOTIFY commits a transaction of its own. A wake-up hint needs no
/// durability, so that commit skips the WAL flush: otherwise every append
/// would cost a second fsync.
async fn send_notifications(pool: Pool, notify: String, wake: Arc<Notify>) {
    let notify = format!("BEGIN; SET LOCAL synchronous_commit = off; {notify}; COMMIT");
    loop {
        wake.notified().await;
        let sent = async {
            let client = pool.get().await.map_err(pool_err)?;
            client.batch_execute(&notify).await.map_err(pg_err)
        };
        match sent.await {
            // Appends meanwhile are told in the next NOTIFY: under load this
            // caps NOTIFYs at one per NOTIFY_EVERY instead of one per append.
            Ok(()) => tokio::time::sleep(NOTIFY_EVERY).await,
            Err(e) => {
                // Other processes' subscriptions still poll; nothing is lost.
                tracing::debug!(error = %e, "NOTIFY failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Holds a LISTEN connection, reconnecting as needed, and turns each
/// notification from another handle (any process) into a wake-up for this
/// handle's subscriptions.
async fn listen(
    config: tokio_postgres::Config,
    channel: String,
    origin: String,
    changes: Arc<Changes>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let (client, mut connection) = config.connect(NoTls).await?;
            let (wake, origin) = (changes.clone(), origin.clone());
            let driver = tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(n)) if n.payload() != origin => wake.notify(),
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            });
            client
                .batch_execute(&format!("LISTEN \"{channel}\""))
                .await?;
            // Anything appended while we were not listening: look now.
            changes.notify();
            let ended = driver.await;
            drop(client);
            match ended {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        };
        match attempt.await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::warn!(error = %describe(&e), "LISTEN connection lost; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Worth retrying as it is? Only when the connection was lost or could not
/// be had yet, or the server aborted the transaction to break a conflict
/// (serialization failure, deadlock). Anything else — a missing table, a
/// missing privilege, a wrong password — needs a person to fix it, and
/// retrying it would only hide it. One rule for the store and its views.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(_) if e.is_closed() => true,
        Some(db) => transient_sqlstate(db.code()),
    }
}

/// The SQLSTATEs of [`is_transient`]: class 08 (connection exception),
/// serialization failure, deadlock, and a server that is shutting down,
/// starting up or out of connection slots.
fn transient_sqlstate(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code)
}

/// What to do about a lasting error, when we know.
fn hint(code: &SqlState) -> Option<&'static str> {
    Some(match code.code() {
        "42501" => {
            "grant the store's database user the privileges it needs on its schema (create, read and write TrafficBuster's tables)"
        }
        "42P01" | "42883" | "42703" => {
            "TrafficBuster's tables in this schema are missing or altered: run `trafficbuster migrate` with this store URL, or point it at the right schema"
        }
        "3D000" => "the database does not exist: create it, or fix the store URL",
        "28P01" | "28000" => "check the user and password in the store URL",
        "53100" => "the database server's disk is full: free space",
        "25006" => "the server is read-only (a standby?): point the store at the primary",
        _ => return None,
    })
}

/// tokio-postgres's Display drops the server's message; this keeps it,
/// with the SQLSTATE and, for lasting errors we know, what to do.
/// Public for read models kept in the same database.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            text.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
            if let Some(hint) = hint(db.code()) {
                text.push_str(&format!("; {hint}"));
            }
            text
        }
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// The store's error for a driver error: `Unavailable` when transient,
/// else `Backend`. Public for read models kept in the same database.
pub fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable {
            backend: BACKEND,
            message: describe(&e),
        }
    } else {
        StoreError::Backend {
            backend: BACKEND,
            message: describe(&e),
        }
    }
}

/// Why no connection could be had, with the server's message if it gave one.
fn describe_pool(e: &PoolError) -> String {
    match e {
        PoolError::Backend(pg) => describe(pg),
        other => other.to_string(),
    }
}

/// Is a failure to get a connection worth retrying? A refusal from the
/// server (a wrong password, a missing database) is not.
fn is_transient_pool(e: &PoolError) -> bool {
    match e {
        PoolError::Backend(pg) => is_transient(pg),
        _ => true,
    }
}

/// The store's error for a failure to get a connection (see [`pg_err`]).
pub fn pool_err(e: PoolError) -> StoreError {
    let message = describe_pool(&e);
    if is_transient_pool(&e) {
        StoreError::Unavailable {
            backend: BACKEND,
            message,
        }
    } else {
        StoreError::Backend {
            backend: BACKEND,
            message,
        }
    }
}

fn expected_code(expected: ExpectedVersion) -> i64 {
    match expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => -2,
        ExpectedVersion::StreamExists => -3,
        ExpectedVersion::Exact(v) => v.min(i64::MAX as u64) as i64,
    }
}

fn position(tx: i64, seq: i64) -> Position {
    Position::new(tx as u64, seq as u64)
}

const EVENT_COLUMNS: &str = "tx_id, seq, event_id, stream_id, version, event_type, \
     schema_version, recorded_at, data::text, actor, correlation_id, causation_id, source";

/// Decodes [`EVENT_COLUMNS`] starting at column `at`.
fn event_from_row(row: &Row, at: usize) -> Result<RecordedEvent, StoreError> {
    let corrupt = |e: tokio_postgres::Error| StoreError::Corrupt(format!("events row: {e}"));
    let stream: String = row.try_get(at + 3).map_err(corrupt)?;
    Ok(RecordedEvent {
        position: position(
            row.try_get(at).map_err(corrupt)?,
            row.try_get(at + 1).map_err(corrupt)?,
        ),
        id: EventId(row.try_get(at + 2).map_err(corrupt)?),
        stream_id: StreamId::parse(stream)
            .map_err(|e| StoreError::Corrupt(format!("events row: stream_id: {e}")))?,
        stream_version: row.try_get::<_, i64>(at + 4).map_err(corrupt)? as u64,
        event_type: row.try_get(at + 5).map_err(corrupt)?,
        schema_version: row.try_get::<_, i32>(at + 6).map_err(corrupt)? as u32,
        recorded_at: row.try_get::<_, OffsetDateTime>(at + 7).map_err(corrupt)?,
        data: row.try_get(at + 8).map_err(corrupt)?,
        metadata: Metadata {
            actor: row.try_get(at + 9).map_err(corrupt)?,
            correlation_id: row.try_get(at + 10).map_err(corrupt)?,
            causation_id: row.try_get(at + 11).map_err(corrupt)?,
            source: row.try_get(at + 12).map_err(corrupt)?,
        },
    })
}

/// A LIKE pattern matching strings that start with `prefix`.
fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(&events)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id.0).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let schemas: Vec<i32> = events.iter().map(|e| e.schema_version as i32).collect();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let actors: Vec<Option<&str>> =
            events.iter().map(|e| e.metadata.actor.as_deref()).collect();
        let correlations: Vec<Option<Uuid>> =
            events.iter().map(|e| e.metadata.correlation_id).collect();
        let causations: Vec<Option<Uuid>> =
            events.iter().map(|e| e.metadata.causation_id).collect();
        let sources: Vec<Option<&str>> = events
            .iter()
            .map(|e| e.metadata.source.as_deref())
            .collect();

        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT o_tx, o_seq, o_version FROM tb_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .await
            .map_err(pg_err)?;
        let result = client
            .query_one(
                &stmt,
                &[
                    &stream.as_str(),
                    &expected_code(expected),
                    &ids,
                    &types,
                    &schemas,
                    &data,
                    &actors,
                    &correlations,
                    &causations,
                    &sources,
                ],
            )
            .await;
        let row = result.map_err(|e| append_error(e, stream, expected, &events))?;
        self.inner.changes.notify();
        self.inner.notify_others.notify_one();
        Ok(AppendResult {
            version: row.get::<_, i64>(2) as u64,
            position: position(row.get(0), row.get(1)),
        })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamFrom,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let Some(StreamRange { cmp, order, from }) = StreamRange::of(from, direction) else {
            return Ok(vec![]);
        };
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND version {cmp} $2 \
                 ORDER BY version {order} LIMIT $3"
            ))
            .await
            .map_err(pg_err)?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = client
            .query(&stmt, &[&stream.as_str(), &from, &limit])
            .await
            .map_err(pg_err)?;
        rows.iter().map(|r| event_from_row(r, 0)).collect()
    }

    async fn read_event(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1"
            ))
            .await
            .map_err(pg_err)?;
        let row = client.query_opt(&stmt, &[&id.0]).await.map_err(pg_err)?;
        row.map(|r| event_from_row(&r, 0)).transpose()
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<Page, StoreError> {
        // Rows below the horizon (the oldest running transaction) are final;
        // tb_read_all reads only those and says whether others wait above.
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT horizon, pending, {EVENT_COLUMNS} FROM tb_read_all($1, $2, $3, $4, $5)"
            ))
            .await
            .map_err(pg_err)?;
        let prefixes: Option<Vec<String>> = (!filter.stream_prefixes.is_empty()).then(|| {
            filter
                .stream_prefixes
                .iter()
                .map(|p| like_prefix(p))
                .collect()
        });
        let types: Option<&Vec<String>> =
            (!filter.event_types.is_empty()).then_some(&filter.event_types);
        let limit_sql = limit.min(i32::MAX as usize) as i32;
        let rows = client
            .query(
                &stmt,
                &[
                    &(after.commit as i64),
                    &(after.prepare as i64),
                    &prefixes,
                    &types,
                    &limit_sql,
                ],
            )
            .await
            .map_err(pg_err)?;
        let mut page = Page {
            events: Vec::with_capacity(rows.len()),
            next: after,
            pending: false,
        };
        let Some(first) = rows.first() else {
            return Ok(page);
        };
        let horizon: i64 = first.get(0);
        for row in &rows {
            // A lone row with NULL event columns: nothing matched.
            if row.try_get::<_, Option<i64>>(2).ok().flatten().is_none() {
                continue;
            }
            page.events.push(event_from_row(row, 2)?);
        }
        if page.events.len() >= limit && limit > 0 {
            page.next = page.events.last().map_or(after, |e| e.position);
        } else {
            page.next = after.max(Position::new(horizon as u64, 0));
            page.pending = first.get(1);
        }
        Ok(page)
    }

    async fn head(&self) -> Result<Head, StoreError> {
        // The snapshot itself, not the last event: a transaction still open
        // below the last event's id will commit there later.
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint, \
                 ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x) \
                 FROM pg_current_snapshot() AS s",
            )
            .await
            .map_err(pg_err)?;
        let row = client.query_one(&stmt, &[]).await.map_err(pg_err)?;
        let open: Vec<i64> = row.get(2);
        Ok(Head::snapshot(
            row.get::<_, i64>(0) as u64,
            row.get::<_, i64>(1) as u64,
            open.into_iter().map(|x| x as u64).collect(),
        ))
    }

    fn subscribe_all(&self, from: SubscribeFrom, filter: Filter) -> Subscription {
        self.ensure_listening();
        Subscription::spawn(self.clone(), from, filter, self.inner.changes.watch(), POLL)
    }

    async fn put_blob(&self, bytes: &[u8]) -> Result<BlobHash, StoreError> {
        let hash = BlobHash::of(bytes);
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO blobs (hash, data) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
                &[&&hash.0[..], &bytes],
            )
            .await
            .map_err(pg_err)?;
        Ok(hash)
    }

    async fn get_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT data FROM blobs WHERE hash = $1", &[&&hash.0[..]])
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn put_chunk(&self, upload: Uuid, index: u32, bytes: Vec<u8>) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO upload_chunks (upload_id, idx, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (upload_id, idx) DO UPDATE SET data = excluded.data",
                &[&upload, &i64::from(index), &bytes],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn chunk_indexes(&self, upload: Uuid) -> Result<Vec<u32>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT idx FROM upload_chunks WHERE upload_id = $1 ORDER BY idx",
                &[&upload],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u32).collect())
    }

    async fn read_chunks(&self, upload: Uuid) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT idx, data FROM upload_chunks WHERE upload_id = $1 ORDER BY idx",
                &[&upload],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<_, i64>(0) as u32, r.get(1)))
            .collect())
    }

    async fn delete_chunks(&self, upload: Uuid) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM upload_chunks WHERE upload_id = $1", &[&upload])
            .await
            .map_err(pg_err)
    }

    async fn staged_uploads(&self) -> Result<Vec<Uuid>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT DISTINCT upload_id FROM upload_chunks", &[])
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get::<_, Uuid>(0)).collect())
    }

    async fn touch_presence(&self, presence: Presence) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO runner_presence (runner, holder, seen_at, busy) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (runner) DO UPDATE SET holder = excluded.holder, \
                 seen_at = excluded.seen_at, busy = excluded.busy",
                &[
                    &presence.runner,
                    &presence.holder,
                    &micros(presence.seen_at),
                    &i64::from(presence.busy),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn release_presence(&self, runner: Uuid, holder: Uuid) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let released = client
            .execute(
                "DELETE FROM runner_presence WHERE runner = $1 AND holder = $2",
                &[&runner, &holder],
            )
            .await
            .map_err(pg_err)?;
        Ok(released > 0)
    }

    async fn presences(&self) -> Result<Vec<Presence>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT runner, holder, seen_at, busy FROM runner_presence",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| Presence {
                runner: r.get(0),
                holder: r.get(1),
                seen_at: from_micros(r.get(2)),
                busy: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
            })
            .collect())
    }

    async fn put_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(SAVE_SNAPSHOT).await.map_err(pg_err)?;
        client
            .execute(
                &stmt,
                &[
                    &stream.as_str(),
                    &snapshot.kind,
                    &(snapshot.version as i64),
                    &snapshot.data,
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn get_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT kind, version, data FROM snapshots WHERE stream_id = $1")
            .await
            .map_err(pg_err)?;
        let row = client
            .query_opt(&stmt, &[&stream.as_str()])
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| Snapshot {
            kind: r.get(0),
            version: r.get::<_, i64>(1) as u64,
            data: r.get(2),
        }))
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

/// Replaces the stream's snapshot: any state a handler saw is a true
/// state of the stream, so a slower writer's older one costs only time.
const SAVE_SNAPSHOT: &str = "INSERT INTO snapshots (stream_id, kind, version, data) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (stream_id) DO UPDATE \
     SET kind = excluded.kind, version = excluded.version, data = excluded.data";

fn append_error(
    e: tokio_postgres::Error,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> StoreError {
    let Some(db) = e.as_db_error() else {
        return pg_err(e);
    };
    match db.code().code() {
        "TB001" => StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual: db.detail().and_then(|d| d.parse().ok()),
        },
        "TB002" => StoreError::IdempotencyConflict {
            stream: stream.clone(),
            event_id: events[0].id,
            reason: db.detail().unwrap_or("unknown").to_owned(),
        },
        _ if db.code() == &SqlState::UNIQUE_VIOLATION => StoreError::IdempotencyConflict {
            stream: stream.clone(),
            event_id: events
                .iter()
                .find(|ev| db.detail().is_some_and(|d| d.contains(&ev.id.to_string())))
                .map_or(events[0].id, |ev| ev.id),
            reason: "it is already stored by another append".into(),
        },
        _ => pg_err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_loss_serialization_failures_and_deadlocks_are_transient_nothing_else() {
        for code in [
            "08006", "08001", "40001", "40P01", "57P01", "57P03", "53300",
        ] {
            assert!(transient_sqlstate(&SqlState::from_code(code)), "{code}");
        }
        // Missing privilege, missing table or function, a constraint, a
        // full disk, a read-only server, a wrong password: a person must act.
        for code in [
            "42501", "42P01", "42883", "23505", "53100", "25006", "28P01", "XX000",
        ] {
            assert!(!transient_sqlstate(&SqlState::from_code(code)), "{code}");
        }
    }

    #[test]
    fn lasting_errors_we_know_say_what_to_do() {
        assert!(
            hint(&SqlState::from_code("42501"))
                .unwrap()
                .contains("grant")
        );
        assert!(
            hint(&SqlState::from_code("42P01"))
                .unwrap()
                .contains("trafficbuster migrate")
        );
        assert_eq!(hint(&SqlState::from_code("XX000")), None);
    }
}

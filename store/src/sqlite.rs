//! The embedded backend: one SQLite file in WAL mode, so a new user needs
//! nothing installed.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. One
//! writer connection (SQLite allows one writer at a time anyway) and a small
//! pool of readers, which WAL lets run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::{BlobHash, EventId, Metadata, NewEvent, Position, RecordedEvent, StreamId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::StoreError;
use crate::event_store::{
    AppendResult, Direction, EventStore, ExpectedVersion, Filter, Head, Page, Presence, Snapshot,
    StreamFrom, StreamRange, SubscribeFrom, from_micros, micros, validate_append,
};
use crate::migrate::{self, MigrationReport};
use crate::subscription::{Changes, Subscription};

/// How often a caught-up subscription looks for appends made by other
/// processes, which cannot wake it.
const POLL: Duration = Duration::from_millis(50);
/// Readers kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

const BACKEND: &str = "sqlite";

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    changes: Changes,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<(Self, MigrationReport), StoreError> {
        let path = path.as_ref().to_path_buf();
        blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable {
                    backend: BACKEND,
                    message: format!("cannot create directory {}: {e}", dir.display()),
                })?;
            }
            let mut writer = connect(&path)?;
            let report = apply_migrations(&mut writer)?;
            let store = Self {
                inner: Arc::new(Inner {
                    path,
                    writer: Mutex::new(writer),
                    readers: Mutex::new(Vec::new()),
                    changes: Changes::new(),
                }),
            };
            Ok((store, report))
        })
        .await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => connect(&inner.path)?,
            };
            let result = f(&mut conn);
            let mut idle = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend {
            backend: BACKEND,
            message: format!("store task failed: {e}"),
        })?
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    open_connection(path).map_err(|e| StoreError::Unavailable {
        backend: BACKEND,
        message: e.to_string(),
    })
}

/// Opens a connection to a store file with the pragmas every connection to
/// it needs, the event store's and the views' alike.
pub fn open_connection(path: &Path) -> Result<Connection, ConnectError> {
    let failed = |what, source| ConnectError {
        what,
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(|e| failed("open", e))?;
    // FULL: an acknowledged append survives a power cut, not just a crash.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 10000;
         PRAGMA foreign_keys = ON;",
    )
    .map_err(|e| failed("configure", e))?;
    Ok(conn)
}

/// A store file that could not be opened or configured.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}: {source}", path.display())]
pub struct ConnectError {
    what: &'static str,
    path: PathBuf,
    source: rusqlite::Error,
}

fn apply_migrations(conn: &mut Connection) -> Result<MigrationReport, StoreError> {
    let failed = |name: &str, e: rusqlite::Error| StoreError::Migration {
        name: name.to_owned(),
        message: e.to_string(),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| failed("lock", e))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS tb_schema_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .map_err(|e| failed("bookkeeping", e))?;
    let current: i64 = tx
        .query_row(
            "SELECT coalesce(max(version), 0) FROM tb_schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(|e| failed("bookkeeping", e))?;
    let mut report = MigrationReport {
        applied: vec![],
        version: current,
    };
    for m in migrate::SQLITE.iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql).map_err(|e| failed(m.name, e))?;
        tx.execute(
            "INSERT INTO tb_schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, now_micros()],
        )
        .map_err(|e| failed(m.name, e))?;
        report.applied.push(m.name);
        report.version = m.version;
    }
    tx.commit().map_err(|e| failed("commit", e))?;
    Ok(report)
}

fn now_micros() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Worth retrying as it is? Only when another connection holds the lock
/// (SQLite's form of a conflict). Anything else — a read-only or full
/// disk, a missing table, a corrupt file — needs a person to fix it. One
/// rule for the store and its views.
pub fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

fn db_err(e: rusqlite::Error) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable {
            backend: BACKEND,
            message: e.to_string(),
        }
    } else {
        StoreError::Backend {
            backend: BACKEND,
            message: e.to_string(),
        }
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

const SELECT_EVENT: &str = "SELECT position, event_id, stream_id, version, event_type, schema_version, \
     recorded_at, data, actor, correlation_id, causation_id, source FROM events";

fn uuid_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<Uuid>> {
    let bytes: Option<[u8; 16]> = row.get(idx)?;
    Ok(bytes.map(Uuid::from_bytes))
}

/// Decodes a row selected with [`SELECT_EVENT`].
fn event_from_row(row: &rusqlite::Row<'_>) -> Result<RecordedEvent, StoreError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!("events row: {what}: {e}"))
    };
    let decode = || -> rusqlite::Result<_> {
        Ok((
            row.get::<_, i64>(0)?,
            uuid_col(row, 1)?,
            row.get::<_, String>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, i64>(5)?,
            row.get::<_, i64>(6)?,
            row.get::<_, String>(7)?,
            row.get::<_, Option<String>>(8)?,
            uuid_col(row, 9)?,
            uuid_col(row, 10)?,
            row.get::<_, Option<String>>(11)?,
        ))
    };
    let (position, id, stream, version, ty, schema, at, data, actor, corr, caus, source) =
        decode().map_err(|e| corrupt("columns", &e))?;
    let recorded_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1000)
        .map_err(|e| corrupt("recorded_at", &e))?;
    Ok(RecordedEvent {
        id: EventId(id.ok_or_else(|| corrupt("event_id", &"missing"))?),
        stream_id: StreamId::parse(stream).map_err(|e| corrupt("stream_id", &e))?,
        stream_version: version as u64,
        position: Position::new(position as u64, 0),
        event_type: ty,
        schema_version: schema as u32,
        recorded_at,
        metadata: Metadata {
            actor,
            correlation_id: corr,
            causation_id: caus,
            source,
        },
        data,
    })
}

/// The result of an earlier append of exactly these events, if it happened.
fn earlier_append(
    tx: &rusqlite::Transaction<'_>,
    stream: &StreamId,
    events: &[NewEvent],
) -> Result<Option<AppendResult>, StoreError> {
    let mut find = tx
        .prepare_cached("SELECT stream_id, version, position FROM events WHERE event_id = ?1")
        .map_err(db_err)?;
    let mut lookup = |id: &EventId| -> Result<Option<(String, i64, i64)>, StoreError> {
        find.query_row([id.0.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db_err)
    };
    let Some((first_stream, first_version, _)) = lookup(&events[0].id)? else {
        return Ok(None);
    };
    let mut last = None;
    for (i, e) in events.iter().enumerate() {
        let conflict = |reason: String| StoreError::IdempotencyConflict {
            stream: stream.clone(),
            event_id: e.id,
            reason,
        };
        match lookup(&e.id)? {
            None => return Err(conflict("the rest of the batch is new".into())),
            Some((s, _, _)) if s != stream.as_str() => {
                return Err(conflict(format!("it is in stream {s}")));
            }
            Some((_, v, _)) if v != first_version + i as i64 => {
                return Err(conflict(format!(
                    "it is at version {v}, out of batch order"
                )));
            }
            Some((_, v, p)) => last = Some((v, p)),
        }
    }
    debug_assert_eq!(first_stream, stream.as_str());
    let (version, position) = last.expect("a batch has at least one event");
    Ok(Some(AppendResult {
        version: version as u64,
        position: Position::new(position as u64, 0),
    }))
}

fn append_blocking(
    conn: &mut Connection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendResult, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    if let Some(result) = earlier_append(&tx, stream, events)? {
        return Ok(result);
    }
    let actual: Option<i64> = tx
        .prepare_cached("SELECT max(version) FROM events WHERE stream_id = ?1")
        .and_then(|mut s| s.query_row([stream.as_str()], |r| r.get(0)))
        .map_err(db_err)?;
    let actual = actual.map(|v| v as u64);
    if !expected.admits(actual) {
        return Err(StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        });
    }
    let first = actual.map_or(0, |v| v + 1);
    let recorded_at = now_micros();
    let mut last_position = 0;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, \
                 recorded_at, data, actor, correlation_id, causation_id, source) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .map_err(db_err)?;
        for (i, e) in events.iter().enumerate() {
            let m = &e.metadata;
            insert
                .execute(params![
                    e.id.0.as_bytes(),
                    stream.as_str(),
                    (first + i as u64) as i64,
                    e.event_type,
                    e.schema_version,
                    recorded_at,
                    e.data.as_str(),
                    m.actor,
                    m.correlation_id.map(|u| *u.as_bytes()),
                    m.causation_id.map(|u| *u.as_bytes()),
                    m.source,
                ])
                .map_err(|err| {
                    if is_unique_violation(&err) {
                        StoreError::IdempotencyConflict {
                            stream: stream.clone(),
                            event_id: e.id,
                            reason: "it is already stored by another append".into(),
                        }
                    } else {
                        db_err(err)
                    }
                })?;
            last_position = tx.last_insert_rowid();
        }
    }
    tx.commit().map_err(db_err)?;
    Ok(AppendResult {
        version: first + events.len() as u64 - 1,
        position: Position::new(last_position as u64, 0),
    })
}

fn read_stream_blocking(
    conn: &mut Connection,
    stream: &StreamId,
    from: StreamFrom,
    direction: Direction,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let Some(StreamRange { cmp, order, from }) = StreamRange::of(from, direction) else {
        return Ok(vec![]);
    };
    let sql = format!(
        "{SELECT_EVENT} WHERE stream_id = ?1 AND version {cmp} ?2 ORDER BY version {order} LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut rows = stmt
        .query(params![
            stream.as_str(),
            from,
            limit.min(i64::MAX as usize) as i64
        ])
        .map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        out.push(event_from_row(row)?);
    }
    Ok(out)
}

fn read_all_blocking(
    conn: &mut Connection,
    after: Position,
    filter: &Filter,
    limit: usize,
) -> Result<Page, StoreError> {
    // Rows are stepped lazily inside one statement, so the page reads one
    // snapshot; filtered-out rows cost only their stream id and type.
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT_EVENT} WHERE position > ?1 ORDER BY position"
        ))
        .map_err(db_err)?;
    let mut rows = stmt.query([after.commit as i64]).map_err(db_err)?;
    let mut page = Page {
        events: Vec::with_capacity(limit.min(1024)),
        next: after,
        pending: false,
    };
    while page.events.len() < limit {
        let Some(row) = rows.next().map_err(db_err)? else {
            break;
        };
        let position: i64 = row.get(0).map_err(db_err)?;
        page.next = Position::new(position as u64, 0);
        if !filter.is_all() {
            let stream: &str = row
                .get_ref(2)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(db_err)?;
            let ty: &str = row
                .get_ref(4)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(db_err)?;
            if !filter.admits(stream, ty) {
                continue;
            }
        }
        page.events.push(event_from_row(row)?);
    }
    Ok(page)
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(&events)?;
        let stream = stream.clone();
        let result = self
            .write(move |conn| append_blocking(conn, &stream, expected, &events))
            .await?;
        self.inner.changes.notify();
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamFrom,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.clone();
        self.read(move |conn| read_stream_blocking(conn, &stream, from, direction, limit))
            .await
    }

    async fn read_event(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("{SELECT_EVENT} WHERE event_id = ?1"))
                .map_err(db_err)?;
            let mut rows = stmt.query([id.0.as_bytes()]).map_err(db_err)?;
            match rows.next().map_err(db_err)? {
                Some(row) => Ok(Some(event_from_row(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let filter = filter.clone();
        self.read(move |conn| read_all_blocking(conn, after, &filter, limit))
            .await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        // One writer at a time: commit order is row order, nothing is in flight.
        self.read(|conn| {
            let max: i64 = conn
                .query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| {
                    r.get(0)
                })
                .map_err(db_err)?;
            Ok(Head::at(Position::new(max as u64, 0)))
        })
        .await
    }

    fn subscribe_all(&self, from: SubscribeFrom, filter: Filter) -> Subscription {
        Subscription::spawn(self.clone(), from, filter, self.inner.changes.watch(), POLL)
    }

    async fn put_blob(&self, bytes: &[u8]) -> Result<BlobHash, StoreError> {
        let hash = BlobHash::of(bytes);
        let bytes = bytes.to_vec();
        self.write(move |conn| {
            conn.prepare_cached("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![hash.0, bytes]))
                .map_err(db_err)
        })
        .await?;
        Ok(hash)
    }

    async fn get_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, StoreError> {
        let hash = *hash;
        self.read(move |conn| {
            conn.prepare_cached("SELECT data FROM blobs WHERE hash = ?1")
                .and_then(|mut s| s.query_row([hash.0], |r| r.get(0)).optional())
                .map_err(db_err)
        })
        .await
    }

    async fn put_chunk(&self, upload: Uuid, index: u32, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO upload_chunks (upload_id, idx, data) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (upload_id, idx) DO UPDATE SET data = excluded.data",
            )
            .and_then(|mut s| s.execute(params![upload.as_bytes(), index, bytes]))
            .map_err(db_err)
        })
        .await?;
        Ok(())
    }

    async fn chunk_indexes(&self, upload: Uuid) -> Result<Vec<u32>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT idx FROM upload_chunks WHERE upload_id = ?1 ORDER BY idx")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([upload.as_bytes()], |r| r.get::<_, u32>(0))
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn read_chunks(&self, upload: Uuid) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT idx, data FROM upload_chunks WHERE upload_id = ?1 ORDER BY idx",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([upload.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn delete_chunks(&self, upload: Uuid) -> Result<u64, StoreError> {
        let deleted = self
            .write(move |conn| {
                conn.prepare_cached("DELETE FROM upload_chunks WHERE upload_id = ?1")
                    .and_then(|mut s| s.execute([upload.as_bytes()]))
                    .map_err(db_err)
            })
            .await?;
        Ok(deleted as u64)
    }

    async fn staged_uploads(&self) -> Result<Vec<Uuid>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT DISTINCT upload_id FROM upload_chunks")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, [u8; 16]>(0))
                .map_err(db_err)?;
            rows.map(|r| r.map(Uuid::from_bytes).map_err(db_err))
                .collect()
        })
        .await
    }

    async fn touch_presence(&self, presence: Presence) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO runner_presence (runner, holder, seen_at, busy) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (runner) DO UPDATE SET holder = excluded.holder, \
                 seen_at = excluded.seen_at, busy = excluded.busy",
            )
            .and_then(|mut s| {
                s.execute(params![
                    presence.runner.as_bytes(),
                    presence.holder.as_bytes(),
                    micros(presence.seen_at),
                    presence.busy
                ])
            })
            .map_err(db_err)
        })
        .await?;
        Ok(())
    }

    async fn release_presence(&self, runner: Uuid, holder: Uuid) -> Result<bool, StoreError> {
        let released = self
            .write(move |conn| {
                conn.prepare_cached("DELETE FROM runner_presence WHERE runner = ?1 AND holder = ?2")
                    .and_then(|mut s| s.execute([runner.as_bytes(), holder.as_bytes()]))
                    .map_err(db_err)
            })
            .await?;
        Ok(released > 0)
    }

    async fn presences(&self) -> Result<Vec<Presence>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT runner, holder, seen_at, busy FROM runner_presence")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Presence {
                        runner: Uuid::from_bytes(r.get(0)?),
                        holder: Uuid::from_bytes(r.get(1)?),
                        seen_at: from_micros(r.get(2)?),
                        busy: r.get(3)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn put_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        let stream = stream.to_string();
        self.write(move |conn| {
            conn.prepare_cached(SAVE_SNAPSHOT)
                .and_then(|mut s| {
                    s.execute(params![
                        stream,
                        snapshot.kind,
                        snapshot.version as i64,
                        snapshot.data
                    ])
                })
                .map_err(db_err)
        })
        .await?;
        Ok(())
    }

    async fn get_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let stream = stream.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT kind, version, data FROM snapshots WHERE stream_id = ?1")
                .and_then(|mut s| {
                    s.query_row([stream], |r| {
                        Ok(Snapshot {
                            kind: r.get(0)?,
                            version: r.get::<_, i64>(1)? as u64,
                            data: r.get(2)?,
                        })
                    })
                    .optional()
                })
                .map_err(db_err)
        })
        .await
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

/// Replaces the stream's snapshot: any state a handler saw is a true
/// state of the stream, so a slower writer's older one costs only time.
const SAVE_SNAPSHOT: &str = "INSERT INTO snapshots (stream_id, kind, version, data) \
     VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (stream_id) DO UPDATE \
     SET kind = excluded.kind, version = excluded.version, data = excluded.data";

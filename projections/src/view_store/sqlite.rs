//! Views in the SQLite store's file: one writer connection for commits and
//! resets (SQLite has one writer at a time anyway) and a few readers.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use store::sqlite::is_transient;

use super::{
    ADVANCE_CHECKPOINT, Advance, CHECKPOINTS_DDL, Checkpoint, READ_CHECKPOINT, RESET_CHECKPOINT,
    ResetPlan, checkpoint_from,
};
use crate::error::ViewError;
use crate::row::Row;
use crate::sql::{SqlValue, Statement, sqlite_placeholders};

pub(super) const BACKEND: &str = "sqlite";
/// Readers kept open for reuse.
const MAX_IDLE_READERS: usize = 4;
/// Prepared statements kept per connection: every view's few statements.
const STATEMENT_CACHE: usize = 128;

pub(super) struct SqliteViews {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Self::Null => ToSqlOutput::Owned(Value::Null),
            Self::Int(v) => ToSqlOutput::Owned(Value::Integer(*v)),
            Self::Float(v) => ToSqlOutput::Owned(Value::Real(*v)),
            Self::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Self::Bool(v) => ToSqlOutput::Owned(Value::Integer(i64::from(*v))),
        })
    }
}

impl SqliteViews {
    /// Opens the writer and makes sure the checkpoint table exists.
    pub(super) async fn open(path: PathBuf) -> Result<Arc<Self>, ViewError> {
        blocking(move || {
            let writer = connect(&path)?;
            writer.execute_batch(CHECKPOINTS_DDL).map_err(db_err)?;
            Ok(Arc::new(Self {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }))
        })
        .await
    }

    async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, ViewError> + Send + 'static,
    ) -> Result<T, ViewError> {
        let this = self.clone();
        blocking(move || {
            let mut conn = this.writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
    }

    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, ViewError> + Send + 'static,
    ) -> Result<T, ViewError> {
        let this = self.clone();
        blocking(move || {
            let pooled = this.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => connect(&this.path)?,
            };
            let result = f(&mut conn);
            let mut idle = this.readers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
    }

    pub(super) async fn checkpoint(
        self: &Arc<Self>,
        view: String,
    ) -> Result<Option<Checkpoint>, ViewError> {
        self.read(move |conn| read_checkpoint(conn, &view)).await
    }

    pub(super) async fn commit(
        self: &Arc<Self>,
        advance: Advance,
        statements: Vec<Statement>,
    ) -> Result<(), ViewError> {
        let params = advance.params()?;
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            // The checkpoint first: a batch from a stale belief writes nothing.
            let moved = execute(&tx, ADVANCE_CHECKPOINT, &params).map_err(db_err)?;
            if moved == 0 {
                let found = read_checkpoint(&tx, &advance.view)?;
                return Err(advance.moved(found));
            }
            for (index, statement) in statements.iter().enumerate() {
                execute(&tx, &statement.sql, &statement.params)
                    .map_err(|e| statement_err(&advance.view, index, &statement.sql, e))?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    pub(super) async fn reset(self: &Arc<Self>, plan: ResetPlan) -> Result<(), ViewError> {
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let params = [
                SqlValue::Text(plan.view.to_owned()),
                SqlValue::Int(plan.version.into()),
                SqlValue::micros(time::OffsetDateTime::now_utc()),
            ];
            execute(&tx, RESET_CHECKPOINT, &params).map_err(db_err)?;
            for table in plan.tables {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS {table}"))
                    .map_err(db_err)?;
            }
            for ddl in plan.schema {
                tx.execute_batch(ddl).map_err(|e| ViewError::Schema {
                    view: plan.view.to_owned(),
                    sql: (*ddl).to_owned(),
                    message: e.to_string(),
                })?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    pub(super) async fn query(
        self: &Arc<Self>,
        sql: String,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, ViewError> {
        self.read(move |conn| {
            let failed = |e: rusqlite::Error| match db_err(e) {
                ViewError::Backend { message, .. } => ViewError::Query {
                    sql: sql.clone(),
                    message,
                },
                transient => transient,
            };
            let rewritten = rewrite(&sql)?;
            let mut stmt = conn.prepare_cached(&rewritten).map_err(failed)?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params.iter()))
                .map_err(failed)?;
            let mut out = Vec::new();
            let mut names: Option<Arc<[String]>> = None;
            while let Some(row) = rows.next().map_err(failed)? {
                // Named after the first step: a cached statement re-prepares
                // then if a rebuild changed the table, and not before.
                let columns = names
                    .get_or_insert_with(|| row.as_ref().column_names().map(str::to_owned).collect())
                    .clone();
                let mut values = Vec::with_capacity(columns.len());
                for (i, name) in columns.iter().enumerate() {
                    let value = match row.get_ref(i).map_err(failed)? {
                        ValueRef::Null => SqlValue::Null,
                        ValueRef::Integer(v) => SqlValue::Int(v),
                        ValueRef::Real(v) => SqlValue::Float(v),
                        ValueRef::Text(t) => {
                            SqlValue::Text(String::from_utf8_lossy(t).into_owned())
                        }
                        ValueRef::Blob(_) => {
                            return Err(ViewError::UnsupportedColumn {
                                column: name.clone(),
                                ty: "BLOB".into(),
                            });
                        }
                    };
                    values.push(value);
                }
                out.push(Row::new(columns.clone(), values));
            }
            Ok(out)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ViewError> + Send + 'static,
) -> Result<T, ViewError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ViewError::Backend {
            backend: BACKEND,
            message: format!("view store task failed: {e}"),
        })?
}

/// A connection with the event store's pragmas, and room for every view's
/// prepared statements.
fn connect(path: &std::path::Path) -> Result<Connection, ViewError> {
    let conn = store::sqlite::open_connection(path).map_err(|e| ViewError::Unavailable {
        backend: BACKEND,
        message: e.to_string(),
    })?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn rewrite(sql: &str) -> Result<String, ViewError> {
    sqlite_placeholders(sql).map_err(|reason| ViewError::InvalidSql {
        sql: sql.to_owned(),
        reason,
    })
}

/// Rewrites, prepares (cached) and runs one statement; the rows it changed.
fn execute(conn: &Connection, sql: &str, params: &[SqlValue]) -> Result<usize, ExecError> {
    let rewritten = rewrite(sql).map_err(ExecError::Sql)?;
    let mut stmt = conn.prepare_cached(&rewritten)?;
    Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))?)
}

/// A statement that could not be rewritten or that SQLite refused.
enum ExecError {
    Sql(ViewError),
    Db(rusqlite::Error),
}

impl From<rusqlite::Error> for ExecError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e)
    }
}

fn read_checkpoint(conn: &Connection, view: &str) -> Result<Option<Checkpoint>, ViewError> {
    let rewritten = rewrite(READ_CHECKPOINT)?;
    let row = conn
        .prepare_cached(&rewritten)
        .and_then(|mut s| {
            s.query_row([view], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()
        })
        .map_err(|e| db_err(ExecError::Db(e)))?;
    row.map(|(c, p, v)| checkpoint_from(view, c, p, v))
        .transpose()
}

fn db_err(e: impl Into<ExecError>) -> ViewError {
    match e.into() {
        ExecError::Sql(e) => e,
        ExecError::Db(e) if is_transient(&e) => ViewError::Unavailable {
            backend: BACKEND,
            message: e.to_string(),
        },
        ExecError::Db(e) => ViewError::Backend {
            backend: BACKEND,
            message: e.to_string(),
        },
    }
}

impl From<ExecError> for ViewError {
    fn from(e: ExecError) -> Self {
        db_err(e)
    }
}

/// A view's own statement failed: the view's fault unless SQLite was busy.
fn statement_err(view: &str, index: usize, sql: &str, e: ExecError) -> ViewError {
    let message = match e {
        ExecError::Db(e) if is_transient(&e) => return db_err(e),
        ExecError::Db(e) => e.to_string(),
        ExecError::Sql(e) => e.to_string(),
    };
    ViewError::Statement {
        view: view.to_owned(),
        index,
        sql: sql.to_owned(),
        message,
    }
}

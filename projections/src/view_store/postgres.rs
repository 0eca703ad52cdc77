//! Views in the PostgreSQL store's schema, through the store's own pool
//! (its search_path is the store's schema).
//!
//! Transactions stay short: an open transaction holds back every event
//! reader's horizon (see migrations/postgres/0001_events.sql). A batch's
//! statements are prepared, then sent pipelined, in order, in one round trip.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use deadpool_postgres::{Pool, PoolError};
use store::postgres::{describe, is_transient};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::{
    ADVANCE_CHECKPOINT, Advance, CHECKPOINTS_DDL, Checkpoint, READ_CHECKPOINT, RESET_CHECKPOINT,
    ResetPlan, checkpoint_from,
};
use crate::error::ViewError;
use crate::row::Row;
use crate::sql::{SqlValue, Statement};

pub(super) const BACKEND: &str = "postgres";

#[derive(Clone)]
pub(super) struct PostgresViews {
    pool: Pool,
}

impl PostgresViews {
    /// Makes sure the checkpoint table exists in the store's schema.
    pub(super) async fn open(pool: Pool) -> Result<Self, ViewError> {
        let mut client = pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // One creator per schema at a time, however many gateways start at once.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('trafficbuster-projections-' || current_schema(), 0))",
            &[],
        )
        .await
        .map_err(pg_err)?;
        tx.batch_execute(CHECKPOINTS_DDL).await.map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        drop(client);
        Ok(Self { pool })
    }

    pub(super) async fn checkpoint(&self, view: &str) -> Result<Option<Checkpoint>, ViewError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        read_checkpoint(&client, view).await
    }

    pub(super) async fn commit(
        &self,
        advance: Advance,
        statements: Vec<Statement>,
    ) -> Result<(), ViewError> {
        let checkpoint_params = advance.params()?;
        let mut client = self.pool.get().await.map_err(pool_err)?;
        // Prepared outside the transaction, so it stays as short as can be.
        let advance_stmt = client
            .prepare_cached(ADVANCE_CHECKPOINT)
            .await
            .map_err(pg_err)?;
        let mut prepared: HashMap<&str, tokio_postgres::Statement> = HashMap::new();
        for (index, s) in statements.iter().enumerate() {
            if !prepared.contains_key(s.sql.as_ref()) {
                let stmt = client
                    .prepare_cached(&s.sql)
                    .await
                    .map_err(|e| statement_err(&advance.view, index, s, e))?;
                prepared.insert(s.sql.as_ref(), stmt);
            }
        }
        let mut bound = Vec::with_capacity(statements.len());
        for (index, s) in statements.iter().enumerate() {
            let stmt = &prepared[s.sql.as_ref()];
            let params =
                bind(stmt.params(), &s.params).map_err(|message| ViewError::Statement {
                    view: advance.view.clone(),
                    index,
                    sql: s.sql.to_string(),
                    message,
                })?;
            bound.push((stmt, params));
        }
        let checkpoint_bound =
            bind(advance_stmt.params(), &checkpoint_params).map_err(|message| {
                ViewError::Backend {
                    backend: BACKEND,
                    message,
                }
            })?;

        let tx = client.transaction().await.map_err(pg_err)?;
        // The checkpoint first: it takes the view's row lock, so a second
        // engine waits here, then finds the checkpoint moved and writes nothing.
        let moved = tx
            .execute(&advance_stmt, &as_refs(&checkpoint_bound))
            .await
            .map_err(pg_err)?;
        if moved == 0 {
            let found = read_checkpoint(&tx, &advance.view).await?;
            return Err(advance.moved(found));
        }
        let writes = bound.iter().enumerate().map(|(index, (stmt, params))| {
            let tx = &tx;
            let view = &advance.view;
            let statement = &statements[index];
            Box::pin(async move {
                tx.execute(*stmt, &as_refs(params))
                    .await
                    .map(drop)
                    .map_err(|e| statement_err(view, index, statement, e))
            })
        });
        pipelined(writes.collect()).await?;
        tx.commit().await.map_err(pg_err)
    }

    pub(super) async fn reset(&self, plan: &ResetPlan) -> Result<(), ViewError> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let version = i64::from(plan.version);
        let now = now_micros();
        tx.execute(RESET_CHECKPOINT, &[&plan.view, &version, &now])
            .await
            .map_err(pg_err)?;
        for table in plan.tables {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
                .await
                .map_err(pg_err)?;
        }
        for ddl in plan.schema {
            tx.batch_execute(ddl).await.map_err(|e| ViewError::Schema {
                view: plan.view.to_owned(),
                sql: (*ddl).to_owned(),
                message: describe(&e),
            })?;
        }
        tx.commit().await.map_err(pg_err)?;
        // Prepared reads of the old tables would fail on the new ones.
        self.pool.manager().statement_caches.clear();
        Ok(())
    }

    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[SqlValue],
    ) -> Result<Vec<Row>, ViewError> {
        let failed = |e: tokio_postgres::Error| match pg_err(e) {
            ViewError::Backend { message, .. } => ViewError::Query {
                sql: sql.to_owned(),
                message,
            },
            transient => transient,
        };
        let client = self.pool.get().await.map_err(pool_err)?;
        let mut retried = false;
        let (stmt, rows) = loop {
            let stmt = client.prepare_cached(sql).await.map_err(failed)?;
            let bound = bind(stmt.params(), params).map_err(|message| ViewError::Query {
                sql: sql.to_owned(),
                message,
            })?;
            match client.query(&stmt, &as_refs(&bound)).await {
                Ok(rows) => break (stmt, rows),
                // "cached plan must not change result type": another
                // process rebuilt the view with other columns. Prepare anew.
                Err(e) if !retried && e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) => {
                    client.statement_cache.remove(sql, &[]);
                    retried = true;
                }
                Err(e) => return Err(failed(e)),
            }
        };
        let columns: std::sync::Arc<[String]> =
            stmt.columns().iter().map(|c| c.name().to_owned()).collect();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(columns.len());
            for (i, column) in row.columns().iter().enumerate() {
                values.push(column_value(row, i, column).map_err(|e| match e {
                    ColumnError::Type(ty) => ViewError::UnsupportedColumn {
                        column: column.name().to_owned(),
                        ty,
                    },
                    ColumnError::Decode(e) => failed(e),
                })?);
            }
            out.push(Row::new(columns.clone(), values));
        }
        Ok(out)
    }
}

async fn read_checkpoint(
    client: &impl deadpool_postgres::GenericClient,
    view: &str,
) -> Result<Option<Checkpoint>, ViewError> {
    let row = client
        .query_opt(READ_CHECKPOINT, &[&view])
        .await
        .map_err(pg_err)?;
    row.map(|r| checkpoint_from(view, r.get(0), r.get(1), r.get(2)))
        .transpose()
}

/// Polls every future once, in order, so tokio-postgres sends their
/// requests in that order in one pipeline; then awaits them in order. The
/// first error wins (later statements fail only because the transaction
/// is already aborted).
async fn pipelined<F>(mut futures: Vec<Pin<Box<F>>>) -> Result<(), ViewError>
where
    F: Future<Output = Result<(), ViewError>>,
{
    let mut done = vec![false; futures.len()];
    std::future::poll_fn(|cx| {
        for (f, done) in futures.iter_mut().zip(done.iter_mut()) {
            if let Poll::Ready(result) = f.as_mut().poll(cx) {
                *done = true;
                if let Err(e) = result {
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    })
    .await?;
    for (f, done) in futures.iter_mut().zip(done) {
        if !done {
            f.as_mut().await?;
        }
    }
    Ok(())
}

/// One parameter converted to the type PostgreSQL inferred for it.
enum PgParam {
    I16(Option<i16>),
    I32(Option<i32>),
    I64(Option<i64>),
    F32(Option<f32>),
    F64(Option<f64>),
    Text(Option<String>),
    Bool(Option<bool>),
}

impl PgParam {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Self::I16(v) => v,
            Self::I32(v) => v,
            Self::I64(v) => v,
            Self::F32(v) => v,
            Self::F64(v) => v,
            Self::Text(v) => v,
            Self::Bool(v) => v,
        }
    }
}

fn as_refs(params: &[PgParam]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(PgParam::as_sql).collect()
}

/// Converts `values` to the parameter types of a prepared statement.
fn bind(types: &[Type], values: &[SqlValue]) -> Result<Vec<PgParam>, String> {
    if types.len() != values.len() {
        return Err(format!(
            "the statement has {} placeholders but {} values were bound",
            types.len(),
            values.len()
        ));
    }
    types
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (ty, value))| {
            param(ty, value).ok_or_else(|| {
                format!(
                    "${}: cannot bind {} ({value}) to a parameter of PostgreSQL type {ty}",
                    i + 1,
                    value.kind()
                )
            })
        })
        .collect()
}

fn param(ty: &Type, value: &SqlValue) -> Option<PgParam> {
    use SqlValue as V;
    Some(match *ty {
        Type::INT2 => PgParam::I16(match value {
            V::Null => None,
            V::Int(v) => Some(i16::try_from(*v).ok()?),
            _ => return None,
        }),
        Type::INT4 => PgParam::I32(match value {
            V::Null => None,
            V::Int(v) => Some(i32::try_from(*v).ok()?),
            _ => return None,
        }),
        Type::INT8 => PgParam::I64(match value {
            V::Null => None,
            V::Int(v) => Some(*v),
            _ => return None,
        }),
        Type::FLOAT4 => PgParam::F32(match value {
            V::Null => None,
            V::Int(v) => Some(*v as f32),
            V::Float(v) => Some(*v as f32),
            _ => return None,
        }),
        Type::FLOAT8 => PgParam::F64(match value {
            V::Null => None,
            V::Int(v) => Some(*v as f64),
            V::Float(v) => Some(*v),
            _ => return None,
        }),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => PgParam::Text(match value {
            V::Null => None,
            V::Text(v) => Some(v.clone()),
            _ => return None,
        }),
        Type::BOOL => PgParam::Bool(match value {
            V::Null => None,
            V::Bool(v) => Some(*v),
            _ => return None,
        }),
        _ => return None,
    })
}

enum ColumnError {
    Type(String),
    Decode(tokio_postgres::Error),
}

fn column_value(
    row: &tokio_postgres::Row,
    i: usize,
    column: &tokio_postgres::Column,
) -> Result<SqlValue, ColumnError> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
    ) -> Result<Option<T>, ColumnError> {
        row.try_get::<_, Option<T>>(i).map_err(ColumnError::Decode)
    }
    let value = match *column.type_() {
        Type::INT2 => get::<i16>(row, i)?.map(|v| SqlValue::Int(v.into())),
        Type::INT4 => get::<i32>(row, i)?.map(|v| SqlValue::Int(v.into())),
        Type::INT8 => get::<i64>(row, i)?.map(SqlValue::Int),
        Type::FLOAT4 => get::<f32>(row, i)?.map(|v| SqlValue::Float(v.into())),
        Type::FLOAT8 => get::<f64>(row, i)?.map(SqlValue::Float),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            get::<String>(row, i)?.map(SqlValue::Text)
        }
        Type::BOOL => get::<bool>(row, i)?.map(SqlValue::Bool),
        ref other => return Err(ColumnError::Type(other.to_string())),
    };
    Ok(value.unwrap_or(SqlValue::Null))
}

fn now_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Classified once, by the store's rule.
pub(super) fn pg_err(e: tokio_postgres::Error) -> ViewError {
    store::postgres::pg_err(e).into()
}

/// A view's own statement failed: the view's fault unless it was transient.
fn statement_err(view: &str, index: usize, s: &Statement, e: tokio_postgres::Error) -> ViewError {
    if is_transient(&e) {
        return pg_err(e);
    }
    ViewError::Statement {
        view: view.to_owned(),
        index,
        sql: s.sql.to_string(),
        message: describe(&e),
    }
}

fn pool_err(e: PoolError) -> ViewError {
    store::postgres::pool_err(e).into()
}

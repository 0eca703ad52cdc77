//! View storage: the views' tables and their checkpoints, kept in the event
//! store's own database (the SQLite file, or the PostgreSQL schema).
//!
//! A batch of view writes and its checkpoint commit in one transaction, so
//! after a crash a view is never ahead of or behind its checkpoint. The
//! checkpoint also guards the commit (compare-and-set), so two engines on
//! one database cannot both apply the same events.

mod lease;
mod postgres;
mod sqlite;

pub(crate) use lease::Leases;
pub use lease::ViewLease;

use std::fmt;
use std::sync::Arc;

use domain::Position;
use store::{PostgresStore, SqliteStore, valid_identifier};
use time::OffsetDateTime;

use crate::error::ViewError;
use crate::projection::Projection;
use crate::row::Row;
use crate::sql::{SqlValue, Statement};

/// Where a view stands: every event up to `position` is in it, as the
/// projection's `version` computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: Position,
    pub version: u32,
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "position {} (version {})", self.position, self.version)
    }
}

/// The checkpoints of every view in this database.
const CHECKPOINTS_DDL: &str = "CREATE TABLE IF NOT EXISTS tb_projection_checkpoints (
    view        TEXT PRIMARY KEY,
    commit_pos  BIGINT NOT NULL,
    prepare_pos BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
)";

const READ_CHECKPOINT: &str =
    "SELECT commit_pos, prepare_pos, version FROM tb_projection_checkpoints WHERE view = $1";

/// Moves a checkpoint only from where the committer believes it is.
const ADVANCE_CHECKPOINT: &str = "UPDATE tb_projection_checkpoints \
     SET commit_pos = $1, prepare_pos = $2, updated_at = $3 \
     WHERE view = $4 AND commit_pos = $5 AND prepare_pos = $6 AND version = $7";

/// First in a reset: also takes the row's lock before any table is dropped.
const RESET_CHECKPOINT: &str = "INSERT INTO tb_projection_checkpoints \
     (view, commit_pos, prepare_pos, version, updated_at) VALUES ($1, 0, 0, $2, $3) \
     ON CONFLICT (view) DO UPDATE SET commit_pos = 0, prepare_pos = 0, \
     version = excluded.version, updated_at = excluded.updated_at";

/// The views' storage in the event store's database.
#[derive(Clone)]
pub struct ViewStore {
    inner: Inner,
    /// Where new engines take their leases (none on SQLite).
    leases_on: Option<PostgresStore>,
}

#[derive(Clone)]
enum Inner {
    Sqlite(Arc<sqlite::SqliteViews>),
    Postgres(postgres::PostgresViews),
}

/// What a reset needs of a projection, checked once.
#[derive(Clone)]
pub(crate) struct ResetPlan {
    pub view: &'static str,
    pub version: u32,
    pub tables: &'static [&'static str],
    pub schema: &'static [&'static str],
}

/// A checkpoint advance, as both backends bind it.
pub(crate) struct Advance {
    pub view: String,
    pub from: Checkpoint,
    pub to: Position,
}

impl Advance {
    fn params(&self) -> Result<Vec<SqlValue>, ViewError> {
        Ok(vec![
            bigint(&self.view, self.to.commit)?,
            bigint(&self.view, self.to.prepare)?,
            SqlValue::micros(OffsetDateTime::now_utc()),
            SqlValue::Text(self.view.clone()),
            bigint(&self.view, self.from.position.commit)?,
            bigint(&self.view, self.from.position.prepare)?,
            SqlValue::Int(self.from.version.into()),
        ])
    }

    fn moved(&self, found: Option<Checkpoint>) -> ViewError {
        ViewError::CheckpointMoved {
            view: self.view.clone(),
            expected: self.from.to_string(),
            found: found.map_or_else(|| "absent".to_owned(), |c| c.to_string()),
        }
    }
}

fn bigint(view: &str, v: u64) -> Result<SqlValue, ViewError> {
    SqlValue::try_from(v).map_err(|e| ViewError::CorruptCheckpoint {
        view: view.to_owned(),
        reason: format!("position component {e}"),
    })
}

/// Decodes a checkpoint row's (commit_pos, prepare_pos, version).
fn checkpoint_from(
    view: &str,
    commit: i64,
    prepare: i64,
    version: i64,
) -> Result<Checkpoint, ViewError> {
    let corrupt = |what: &str, v: i64| ViewError::CorruptCheckpoint {
        view: view.to_owned(),
        reason: format!("{what} is {v}"),
    };
    Ok(Checkpoint {
        position: Position::new(
            u64::try_from(commit).map_err(|_| corrupt("commit_pos", commit))?,
            u64::try_from(prepare).map_err(|_| corrupt("prepare_pos", prepare))?,
        ),
        version: u32::try_from(version).map_err(|_| corrupt("version", version))?,
    })
}

impl ViewStore {
    /// View storage in the database of an opened store.
    pub async fn open(backend: &store::Backend) -> Result<Self, ViewError> {
        match backend {
            store::Backend::Sqlite(s) => Self::sqlite(s).await,
            store::Backend::Postgres(s) => Self::postgres(s).await,
        }
    }

    /// View storage in a SQLite store's file (connections of its own).
    pub async fn sqlite(store: &SqliteStore) -> Result<Self, ViewError> {
        let views = sqlite::SqliteViews::open(store.path().to_path_buf()).await?;
        Ok(Self {
            inner: Inner::Sqlite(views),
            leases_on: None,
        })
    }

    /// View storage in a PostgreSQL store's schema (sharing its pool).
    pub async fn postgres(store: &PostgresStore) -> Result<Self, ViewError> {
        let views = postgres::PostgresViews::open(store.pool().clone()).await?;
        Ok(Self {
            inner: Inner::Postgres(views),
            leases_on: Some(store.clone()),
        })
    }

    /// Leases of views for a new engine on this store (see [`lease`]).
    pub(crate) fn leases(&self) -> Leases {
        Leases::new(self.leases_on.clone())
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match &self.inner {
            Inner::Sqlite(_) => sqlite::BACKEND,
            Inner::Postgres(_) => postgres::BACKEND,
        }
    }

    /// The view's checkpoint; `None` until its tables were first created.
    pub async fn checkpoint(&self, view: &str) -> Result<Option<Checkpoint>, ViewError> {
        match &self.inner {
            Inner::Sqlite(s) => s.checkpoint(view.to_owned()).await,
            Inner::Postgres(p) => p.checkpoint(view).await,
        }
    }

    /// Runs `statements` and moves the view's checkpoint from `from` to `to`,
    /// in one transaction. Refuses with [`ViewError::CheckpointMoved`] (and
    /// writes nothing) when the checkpoint is no longer `from`.
    pub async fn commit(
        &self,
        view: &str,
        from: Checkpoint,
        to: Position,
        statements: Vec<Statement>,
    ) -> Result<(), ViewError> {
        let advance = Advance {
            view: view.to_owned(),
            from,
            to,
        };
        match &self.inner {
            Inner::Sqlite(s) => s.commit(advance, statements).await,
            Inner::Postgres(p) => p.commit(advance, statements).await,
        }
    }

    /// Drops the projection's tables, runs its schema and sets its checkpoint
    /// to the start at its current version, in one transaction.
    pub async fn reset(&self, projection: &dyn Projection) -> Result<Checkpoint, ViewError> {
        let plan = ResetPlan {
            view: projection.name(),
            version: projection.version(),
            tables: projection.tables(),
            schema: projection.schema(),
        };
        if !valid_identifier(plan.view) {
            return Err(ViewError::InvalidName {
                what: "view name",
                name: plan.view.to_owned(),
            });
        }
        if let Some(bad) = plan.tables.iter().find(|t| !valid_identifier(t)) {
            return Err(ViewError::InvalidName {
                what: "table name",
                name: (*bad).to_owned(),
            });
        }
        match &self.inner {
            Inner::Sqlite(s) => s.reset(plan.clone()).await?,
            Inner::Postgres(p) => p.reset(&plan).await?,
        }
        Ok(Checkpoint {
            position: Position::START,
            version: plan.version,
        })
    }

    /// Reads views: `sql` with `$1, $2, …` placeholders bound to `params`.
    pub async fn query(&self, sql: &str, params: Vec<SqlValue>) -> Result<Vec<Row>, ViewError> {
        match &self.inner {
            Inner::Sqlite(s) => s.query(sql.to_owned(), params).await,
            Inner::Postgres(p) => p.query(sql, &params).await,
        }
    }
}

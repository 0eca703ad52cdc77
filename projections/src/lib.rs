//! Read models: each view is a fold over events in global order, written
//! once as portable SQL for SQLite and PostgreSQL, committed together with
//! its checkpoint, and rebuildable from the first event.
//!
//! - [`Projection`]: a view's name, tables, and pure `apply` (event → writes);
//! - [`ViewStore`]: the views' tables and checkpoints in the event store's database;
//! - [`ProjectionEngine`]: runs views, reports [`EngineStatus`], rebuilds;
//! - [`EventCounts`]: the first view, events per type.

pub mod engine;
pub mod error;
pub mod event_counts;
pub mod projection;
pub mod row;
mod runner;
pub mod sql;
pub mod status;
pub mod view_store;

pub use engine::ProjectionEngine;
pub use error::{EngineError, ProjectionError, RowError, ViewError};
pub use event_counts::EventCounts;
pub use projection::Projection;
pub use row::{Column, FromSqlValue, Row};
pub use sql::{OutOfRange, SqlValue, Statement};
pub use status::{EngineStatus, FailedEvent, Phase, ProjectionFailure, ProjectionStatus};
pub use view_store::{Checkpoint, ViewStore};

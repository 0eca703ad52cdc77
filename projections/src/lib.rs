//! Read models: each view is a fold over events in global order, written
//! once as portable SQL for SQLite and PostgreSQL, committed together with
//! its checkpoint, and rebuildable from the first event.
//!
//! - [`Projection`]: a view's name, tables, and pure `apply` (event → writes);
//! - [`ViewStore`]: the views' tables and checkpoints in the event store's database;
//! - [`ProjectionEngine`]: runs views, reports [`EngineStatus`], rebuilds;
//! - the views: [`EventCounts`] (events per type), and the identity views
//!   [`AccountsView`], [`SessionsView`], [`AuditView`], [`MetricsView`].

pub mod accounts_view;
pub mod audit_view;
pub mod engine;
pub mod error;
pub mod event_counts;
mod identity;
pub mod metrics_view;
pub mod projection;
pub mod row;
mod runner;
pub mod sessions_view;
pub mod sql;
pub mod status;
pub mod view_store;

pub use accounts_view::AccountsView;
pub use audit_view::AuditView;
pub use engine::ProjectionEngine;
pub use error::{EngineError, ProjectionError, RowError, ViewError};
pub use event_counts::EventCounts;
pub use metrics_view::MetricsView;
pub use projection::Projection;
pub use row::{Column, FromSqlValue, Row};
pub use sessions_view::SessionsView;
pub use sql::{OutOfRange, SqlValue, Statement};
pub use status::{EngineStatus, FailedEvent, Phase, ProjectionFailure, ProjectionStatus};
pub use view_store::{Checkpoint, ViewStore};

use std::sync::Arc;

/// Every view the system runs.
pub fn all_views() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(EventCounts),
        Arc::new(AccountsView),
        Arc::new(SessionsView),
        Arc::new(AuditView),
        Arc::new(MetricsView),
    ]
}

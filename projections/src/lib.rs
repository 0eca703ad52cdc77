//! Read models: each view is a fold over events in global order, written
//! once as portable SQL for SQLite and PostgreSQL, committed together with
//! its checkpoint, and rebuildable from the first event.
//!
//! - [`Projection`]: a view's name, tables, and pure `apply` (event → writes);
//! - [`ViewStore`]: the views' tables and checkpoints in the event store's database;
//! - [`ProjectionEngine`]: runs views, reports [`EngineStatus`], rebuilds;
//! - the views: [`EventCounts`] (events per type), and the identity views
//!   [`AccountsView`], [`SessionsView`], [`AuditView`], [`MetricsView`],
//!   each registering itself for [`all_views`] beside its `impl Projection`.

pub mod accounts_view;
pub mod audit_view;
mod decode;
pub mod engine;
pub mod error;
pub mod event_counts;
pub mod metrics_view;
pub mod projection;
mod projector;
pub mod row;
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
pub use projection::{Projection, RegisteredView};
pub use row::{Column, FromSqlValue, Row};
pub use sessions_view::SessionsView;
pub use sql::{OutOfRange, SqlValue, Statement};
pub use status::{EngineStatus, FailedEvent, Phase, ProjectionFailure, ProjectionStatus};
pub use view_store::{Checkpoint, ViewStore};

use std::sync::Arc;

/// Every view the system runs, in name order: every view registered with
/// [`RegisteredView`], so no hand-kept list can leave one out.
pub fn all_views() -> Vec<Arc<dyn Projection>> {
    let mut views: Vec<Arc<dyn Projection>> = inventory::iter::<RegisteredView>
        .into_iter()
        .map(|view| (view.0)())
        .collect();
    views.sort_by_key(|view| view.name());
    views
}

#[cfg(test)]
mod tests {
    use domain::RecordedEvent;

    use super::*;

    /// A view declared only here.
    struct Probe;

    impl Projection for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn schema(&self) -> &'static [&'static str] {
            &[]
        }
        fn tables(&self) -> &'static [&'static str] {
            &[]
        }
        fn apply(&self, _: &RecordedEvent, _: &mut Vec<Statement>) -> Result<(), ProjectionError> {
            Ok(())
        }
    }

    inventory::submit!(RegisteredView(|| Arc::new(Probe)));

    #[test]
    fn every_registered_view_runs_once_in_name_order() {
        let names: Vec<&str> = all_views().iter().map(|view| view.name()).collect();
        assert_eq!(
            names,
            [
                "accounts",
                "audit",
                "event_counts",
                "metrics",
                "probe",
                "sessions"
            ]
        );
    }
}

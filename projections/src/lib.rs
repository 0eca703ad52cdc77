//! Read models: each view is a fold over events in global order, written
//! once as portable SQL for SQLite and PostgreSQL, committed together with
//! its checkpoint, and rebuildable from the first event.
//!
//! - [`Projection`]: a view's name, tables, and pure `apply` (event → writes);
//! - [`ViewStore`]: the views' tables and checkpoints in the event store's database;
//! - [`ProjectionEngine`]: runs views, reports [`EngineStatus`], rebuilds;
//! - the views: [`EventCounts`] (events per type), and the identity views
//!   [`AccountsView`], [`SessionsView`], [`LoginFailuresView`], [`AuditView`],
//!   [`MetricsView`], and
//!   the consent views [`DomainsView`] and [`ConsentsView`], the dataset
//!   views [`DatasetsView`] and [`UploadsView`], and the fleet's
//!   [`RunnersView`], [`JobsView`] and [`ProxyPoolsView`], and the
//!   schedule table [`SchedulesView`], and the webhooks' deliveries
//!   [`WebhooksView`].

pub mod accounts_view;
pub mod as_of;
pub mod audit_view;
pub mod consents_view;
pub mod datasets_view;
mod decode;
pub mod domains_view;
pub mod engine;
pub mod error;
pub mod event_counts;
pub mod jobs_view;
pub mod login_failures_view;
pub mod metrics_view;
pub mod projection;
mod projector;
pub mod proxy_pools_view;
pub mod row;
pub mod runners_view;
pub mod schedules_view;
pub mod sessions_view;
pub mod sql;
pub mod status;
pub mod uploads_view;
pub mod view_store;
pub mod webhooks_view;

pub use accounts_view::AccountsView;
pub use audit_view::AuditView;
pub use consents_view::ConsentsView;
pub use datasets_view::DatasetsView;
pub use domains_view::DomainsView;
pub use engine::ProjectionEngine;
pub use error::{EngineError, ProjectionError, RowError, ViewError};
pub use event_counts::EventCounts;
pub use jobs_view::JobsView;
pub use login_failures_view::LoginFailuresView;
pub use metrics_view::MetricsView;
pub use projection::Projection;
pub use proxy_pools_view::ProxyPoolsView;
pub use row::{Column, FromSqlValue, Row};
pub use runners_view::RunnersView;
pub use schedules_view::SchedulesView;
pub use sessions_view::SessionsView;
pub use sql::{OutOfRange, SqlValue, Statement};
pub use status::{EngineStatus, FailedEvent, Phase, ProjectionFailure, ProjectionStatus};
pub use uploads_view::UploadsView;
pub use view_store::{Checkpoint, ViewStore};
pub use webhooks_view::WebhooksView;

use std::sync::Arc;

/// Every view the system runs, in the order they start, rebuild and are
/// listed (engine status, `projections rebuild`). A test checks that every
/// `impl Projection` of this crate is here.
pub fn all_views() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(EventCounts),
        Arc::new(AccountsView),
        Arc::new(SessionsView),
        Arc::new(LoginFailuresView),
        Arc::new(AuditView),
        Arc::new(MetricsView),
        Arc::new(DomainsView),
        Arc::new(ConsentsView),
        Arc::new(DatasetsView),
        Arc::new(UploadsView),
        Arc::new(RunnersView),
        Arc::new(JobsView),
        Arc::new(ProxyPoolsView),
        Arc::new(SchedulesView),
        Arc::new(WebhooksView),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The types named by `impl Projection for <Type>` in this crate's sources.
    fn projections_in_sources(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                projections_in_sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                found.extend(text.lines().filter_map(|line| {
                    let rest = line.strip_prefix("impl Projection for ")?;
                    Some(rest.trim_end_matches(" {").to_owned())
                }));
            }
        }
    }

    /// The compiler cannot tell that a view was left out of `all_views`:
    /// it would silently never run. (The list stays hand-kept because its
    /// order is behaviour: the order views start, rebuild and are listed.)
    #[test]
    fn every_view_of_the_crate_is_in_all_views_once() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut defined = Vec::new();
        projections_in_sources(&src, &mut defined);
        let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
        let listed = &lib[lib.find("pub fn all_views").unwrap()..lib.find("#[cfg(test)]").unwrap()];
        for view in &defined {
            assert!(
                listed.contains(&format!("Arc::new({view})")),
                "{view} implements Projection but is not in all_views()"
            );
        }
        let mut names: Vec<&str> = all_views().iter().map(|view| view.name()).collect();
        assert_eq!(names.len(), defined.len(), "{names:?} against {defined:?}");
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), defined.len(), "two views share a name");
    }
}

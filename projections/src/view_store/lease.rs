//! Which engine projects a view when several gateways share one store.
//!
//! On PostgreSQL, the engine whose session holds the view's advisory lock
//! projects it; the others follow its checkpoint. The locks live on one
//! session of the engine's own, outside the pool, so they end when the
//! gateway dies and PostgreSQL closes its connection: another engine takes
//! the view over at its next try. No consensus of our own: PostgreSQL's
//! locks decide. The checkpoint's compare-and-set still guards every commit,
//! so even two engines that both believe they lead cannot apply an event
//! twice. On SQLite every engine projects (one host's file; the same
//! compare-and-set keeps them apart).

use std::sync::Arc;

use store::PostgresStore;
use tokio::sync::Mutex;

use crate::error::ViewError;

/// Takes views' leases for one engine: each engine has its own (a
/// session of its own), so an engine that stops lets its views go.
pub(crate) struct Leases {
    /// None on SQLite: every engine projects.
    store: Option<PostgresStore>,
    /// The session holding this engine's locks; replaced once it closes.
    session: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

/// This engine projects the view for as long as the lease is held.
pub struct ViewLease {
    session: Option<Arc<tokio_postgres::Client>>,
}

impl ViewLease {
    /// False once the session that holds the lock has closed: another
    /// engine may have taken the view.
    pub fn is_held(&self) -> bool {
        self.session.as_ref().is_none_or(|s| !s.is_closed())
    }
}

impl Leases {
    pub(crate) fn new(store: Option<PostgresStore>) -> Self {
        Self {
            store,
            session: Mutex::new(None),
        }
    }

    /// The view's lease, if no other engine holds it.
    pub(crate) async fn try_take(&self, view: &str) -> Result<Option<ViewLease>, ViewError> {
        let Some(store) = &self.store else {
            return Ok(Some(ViewLease { session: None }));
        };
        let mut current = self.session.lock().await;
        let session = match current.as_ref().filter(|s| !s.is_closed()) {
            Some(session) => session.clone(),
            None => {
                let session = Arc::new(store.session().await.map_err(super::postgres::pg_err)?);
                *current = Some(session.clone());
                session
            }
        };
        drop(current);
        // One key per schema and view; taking it again on the same session
        // (a restarted projector) succeeds.
        let key = format!("trafficbuster-view-{}-{view}", store.schema());
        let row = session
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .await
            .map_err(super::postgres::pg_err)?;
        let taken: bool = row.try_get(0).map_err(super::postgres::pg_err)?;
        Ok(taken.then_some(ViewLease {
            session: Some(session),
        }))
    }
}

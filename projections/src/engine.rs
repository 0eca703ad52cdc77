//! The projection engine: runs a set of views, one task each, reports
//! their progress through a `watch` channel, and rebuilds a view on request.

use std::sync::Arc;

use store::{EventStore, valid_identifier};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::error::EngineError;
use crate::projection::Projection;
use crate::projector::{Projector, RETRY_FIRST};
use crate::status::{EngineStatus, Phase, ProjectionStatus};
use crate::view_store::{Leases, ViewStore};

/// Runs projections against one event store and its view storage. Dropping
/// it stops them (at their next pause); [`Self::shutdown`] waits for that.
pub struct ProjectionEngine {
    store: Arc<dyn EventStore>,
    views: ViewStore,
    /// This engine's leases: which views it projects on a shared store.
    leases: Arc<Leases>,
    status: Arc<watch::Sender<EngineStatus>>,
    projectors: Mutex<Vec<Running>>,
}

/// A projection and the task running it.
struct Running {
    projection: Arc<dyn Projection>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ProjectionEngine {
    /// Starts one task per projection. Names must be unique identifiers.
    pub fn start(
        store: Arc<dyn EventStore>,
        views: ViewStore,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Result<Self, EngineError> {
        for (i, p) in projections.iter().enumerate() {
            if !valid_identifier(p.name()) {
                return Err(EngineError::View(crate::ViewError::InvalidName {
                    what: "view name",
                    name: p.name().to_owned(),
                }));
            }
            if projections[..i].iter().any(|q| q.name() == p.name()) {
                return Err(EngineError::DuplicateName(p.name()));
            }
        }
        let status = EngineStatus {
            projections: projections
                .iter()
                .map(|p| ProjectionStatus::new(p.name()))
                .collect(),
        };
        let mut engine = Self {
            store,
            leases: Arc::new(views.leases()),
            views,
            status: Arc::new(watch::channel(status).0),
            projectors: Mutex::new(Vec::new()),
        };
        let running = projections
            .into_iter()
            .enumerate()
            .map(|(index, projection)| engine.spawn(index, projection))
            .collect();
        engine.projectors = Mutex::new(running);
        Ok(engine)
    }

    fn spawn(&self, index: usize, projection: Arc<dyn Projection>) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let projector = Projector {
            projection: projection.clone(),
            store: self.store.clone(),
            views: self.views.clone(),
            leases: self.leases.clone(),
            status: self.status.clone(),
            index,
            stop: stop_rx,
            backoff: RETRY_FIRST,
        };
        Running {
            projection,
            stop,
            task: Some(tokio::spawn(projector.run())),
        }
    }

    /// Every view's progress, updated as it changes.
    pub fn status(&self) -> watch::Receiver<EngineStatus> {
        self.status.subscribe()
    }

    /// The view storage the engine writes to (for reads).
    pub fn views(&self) -> &ViewStore {
        &self.views
    }

    /// Waits until every view has caught up; fails when one stops first.
    pub async fn wait_until_live(&self) -> Result<(), EngineError> {
        let mut rx = self.status.subscribe();
        let status = rx
            .wait_for(|s| {
                s.all_live()
                    || s.first_failure().is_some()
                    || s.projections.iter().any(|p| p.phase == Phase::Stopped)
            })
            .await
            .map_err(|_| EngineError::ShutDown)?;
        if let Some((view, failure)) = status.first_failure() {
            return Err(EngineError::Failed {
                view,
                failure: failure.clone(),
            });
        }
        if status.all_live() {
            Ok(())
        } else {
            Err(EngineError::ShutDown)
        }
    }

    /// Stops the view's projection, drops and recreates its tables, and
    /// replays it from the first event; also the way to restart a view that
    /// failed. Returns once replay has begun: [`Self::wait_until_live`] says
    /// when it has caught up.
    pub async fn rebuild(&self, name: &str) -> Result<(), EngineError> {
        let mut projectors = self.projectors.lock().await;
        let Some(index) = projectors.iter().position(|r| r.projection.name() == name) else {
            return Err(EngineError::UnknownProjection {
                name: name.to_owned(),
                known: projectors
                    .iter()
                    .map(|r| r.projection.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let running = &mut projectors[index];
        running.stop.send_replace(true);
        if let Some(task) = running.task.take() {
            // A task that panicked is as stopped as one that returned.
            let _ = task.await;
        }
        let view = running.projection.name();
        self.status.send_modify(|s| {
            if let Some(p) = s.projections.get_mut(index) {
                *p = ProjectionStatus::new(view);
            }
        });
        tracing::info!(view, "rebuilding the view from the first event");
        let reset = self.views.reset(running.projection.as_ref()).await;
        // Restart either way: after a failed reset it resumes where it was.
        *running = self.spawn(index, running.projection.clone());
        reset.map(drop).map_err(EngineError::View)
    }

    /// Stops every projection and waits for their tasks to end. A batch
    /// being committed finishes first.
    pub async fn shutdown(self) {
        let mut projectors = self.projectors.lock().await;
        for r in projectors.iter() {
            r.stop.send_replace(true);
        }
        for r in projectors.iter_mut() {
            if let Some(task) = r.task.take() {
                let _ = task.await;
            }
        }
    }
}

//! One live feed of the event log per gateway, fanned out in memory to
//! every GraphQL subscription: the store is read once per append, however
//! many subscribers there are. Readers told of an event wait here for a
//! view to show it.

use std::sync::Arc;
use std::time::Duration;

use domain::{Position, RecordedEvent};
use store::{EventStore, Filter, SubscribeFrom};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::state::AppState;

/// Events buffered for subscribers that are momentarily slow. One that
/// falls further behind is told so (and re-checks what it must not miss).
const CAPACITY: usize = 16_384;

pub struct LiveFeed {
    tx: broadcast::Sender<Arc<RecordedEvent>>,
    /// True once the feed has pinned where it starts: from then on, every
    /// event committed is sent.
    started: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl LiveFeed {
    /// Follows the log from its current end.
    pub fn start(store: Arc<dyn EventStore>) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        let (started_tx, started) = watch::channel(false);
        let task = tokio::spawn(follow(store, tx.clone(), started_tx));
        Self { tx, started, task }
    }

    /// Waits until every event committed from now on will be sent; a
    /// reader that catches up from the store before relying on the feed
    /// waits here first, so nothing falls between the two.
    pub async fn started(&self) {
        let mut started = self.started.clone();
        // An error means the feed is gone; there is nothing to wait for.
        let _ = started.wait_for(|s| *s).await;
    }

    /// Stops following the log (the gateway is stopping): subscribers see
    /// the feed end rather than a store that went away underneath it.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Every event appended from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RecordedEvent>> {
        self.tx.subscribe()
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(
    store: Arc<dyn EventStore>,
    tx: broadcast::Sender<Arc<RecordedEvent>>,
    started: watch::Sender<bool>,
) {
    let mut from = SubscribeFrom::End;
    loop {
        // Pin "now" once, so a restart before the first event misses nothing.
        if from == SubscribeFrom::End {
            match store.head().await {
                Ok(head) => {
                    from = SubscribeFrom::Head(head);
                    started.send_replace(true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "live feed cannot find the log's head; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let mut sub = store.subscribe_all(from.clone(), Filter::all());
        while let Some(next) = sub.next().await {
            match next {
                Ok(event) => {
                    let position: Position = event.position;
                    // No receivers is fine: nobody is subscribed right now.
                    let _ = tx.send(Arc::new(event));
                    from = SubscribeFrom::After(position);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "live feed lost the log; following again");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until view `view`'s tables exist (its projection has started):
/// background loops that read a view wait for this before their first
/// look. False if the projections stopped first.
pub async fn view_created(app: &AppState, view: &str) -> bool {
    let mut progress = app.projections.clone();
    while !progress
        .borrow_and_update()
        .get(view)
        .is_some_and(|p| p.phase != projections::Phase::Starting)
    {
        if progress.changed().await.is_err() {
            return false;
        }
    }
    true
}

/// How long a reader waits for a view to show an event it was told of.
const VIEW_PATIENCE: Duration = Duration::from_secs(10);

/// Waits until the view `view` holds every event up to `position`: this
/// gateway's projection says so, or the committed checkpoint does (which
/// holds whichever gateway projects it); false if neither within
/// [`VIEW_PATIENCE`]. Wakes on this gateway's projection progress, and
/// looks again every 100 ms anyway.
pub async fn view_reached(app: &AppState, view: &str, position: Position) -> bool {
    let mut progress = app.projections.clone();
    let deadline = tokio::time::Instant::now() + VIEW_PATIENCE;
    loop {
        let here = progress
            .borrow_and_update()
            .get(view)
            .is_some_and(|p| p.checkpoint >= position);
        if here {
            return true;
        }
        match app.views.checkpoint(view).await {
            Ok(Some(checkpoint)) if checkpoint.position >= position => return true,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, view, "cannot read the view's checkpoint"),
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), progress.changed()).await;
    }
}

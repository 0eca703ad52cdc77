//! One view's projection loop: subscribe from its checkpoint, apply what is
//! available (up to a batch, never waiting for more), commit the writes
//! with the new checkpoint, and report progress.
//!
//! It never skips an event: an event the projection or the database
//! refuses stops the view, after the events before it are committed, and
//! is reported. Trouble reaching the store or the view storage is retried
//! with backoff.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use domain::{Position, RecordedEvent};
use futures_util::FutureExt;
use store::{EventStore, StoreError, SubscribeFrom, Subscription};
use tokio::sync::watch;

use crate::error::ViewError;
use crate::projection::Projection;
use crate::sql::Statement;
use crate::status::{EngineStatus, FailedEvent, Phase, ProjectionFailure, ProjectionStatus};
use crate::view_store::{Checkpoint, Leases, ViewLease, ViewStore};

/// Most events in one commit.
const BATCH_EVENTS: usize = 500;
/// Stop gathering a batch once it has this many writes: keeps PostgreSQL
/// transactions short whatever a projection emits per event.
const BATCH_STATEMENTS: usize = 2000;
/// While committed events wait unreadable behind an open transaction, look
/// again after this long, doubling up to [`LOOK_AGAIN_MAX`].
const LOOK_AGAIN_FIRST: Duration = Duration::from_millis(2);
const LOOK_AGAIN_MAX: Duration = Duration::from_millis(100);
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// While another engine projects the view: how often to read the
/// checkpoint it commits, and to try to take the view over.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);
const TAKE_OVER_EVERY: Duration = Duration::from_secs(1);

/// Why the loop left its normal course.
enum Halt {
    /// Asked to stop.
    Stop,
    /// Cannot go on without a fix or a rebuild.
    Fail(ProjectionFailure),
    /// Start over from the stored checkpoint; `pause` after trouble.
    Restart { reason: String, pause: bool },
}

/// Keeps one view up to date with the log.
pub(crate) struct Projector {
    pub projection: Arc<dyn Projection>,
    pub store: Arc<dyn EventStore>,
    pub views: ViewStore,
    pub leases: Arc<Leases>,
    pub status: Arc<watch::Sender<EngineStatus>>,
    /// Its index in `status.projections`.
    pub index: usize,
    /// `true`, or the sender dropped, means stop.
    pub stop: watch::Receiver<bool>,
    pub backoff: Duration,
}

/// Events applied together, and their writes.
#[derive(Default)]
struct Batch {
    events: Vec<RecordedEvent>,
    statements: Vec<Statement>,
    /// Where each event's statements begin.
    starts: Vec<usize>,
    /// The event the projection could not apply; the batch ends before it.
    refused: Option<ProjectionFailure>,
}

impl Batch {
    /// Applies `event`; false (and the batch ends) when the projection refuses it.
    fn add(&mut self, projection: &dyn Projection, event: RecordedEvent) -> bool {
        let before = self.statements.len();
        match projection.apply(&event, &mut self.statements) {
            Ok(()) => {
                self.starts.push(before);
                self.events.push(event);
                true
            }
            Err(e) => {
                self.statements.truncate(before);
                self.refused = Some(failure_at(&event, e.to_string()));
                false
            }
        }
    }

    fn is_full(&self) -> bool {
        self.events.len() >= BATCH_EVENTS || self.statements.len() >= BATCH_STATEMENTS
    }

    /// The index of the event whose writes include statement `index`.
    fn event_of(&self, index: usize) -> usize {
        self.starts
            .partition_point(|&s| s <= index)
            .saturating_sub(1)
    }

    /// The first `n` events and their writes.
    fn prefix(&self, n: usize) -> Batch {
        let n = n.min(self.events.len());
        let end = self.starts.get(n).copied().unwrap_or(self.statements.len());
        Batch {
            events: self.events[..n].to_vec(),
            statements: self.statements[..end].to_vec(),
            starts: self.starts[..n].to_vec(),
            refused: None,
        }
    }
}

impl Projector {
    pub(crate) async fn run(mut self) {
        let view = self.projection.name();
        loop {
            let halt = match self.follow().await {
                Ok(never) => match never {},
                Err(halt) => halt,
            };
            match halt {
                Halt::Stop => {
                    self.update(|s| s.phase = Phase::Stopped);
                    return;
                }
                Halt::Fail(failure) => {
                    match &failure.event {
                        Some(e) => tracing::error!(
                            view,
                            event_id = %e.id,
                            event_type = %e.event_type,
                            position = %e.position,
                            error = %failure.error,
                            "projection stopped on an event it cannot apply; fix the view, then rebuild it"
                        ),
                        None => tracing::error!(view, error = %failure.error, "projection stopped"),
                    }
                    self.update(|s| {
                        s.phase = Phase::Failed(failure);
                        s.caught_up = false;
                    });
                    return;
                }
                Halt::Restart { reason, pause } => {
                    if !pause {
                        tracing::info!(view, %reason, "projection restarting from its checkpoint");
                        continue;
                    }
                    tracing::warn!(view, %reason, retry_in = ?self.backoff, "projection restarting from its checkpoint");
                    self.update(|s| s.retrying = Some(reason));
                    if self.sleep().await.is_err() {
                        self.update(|s| s.phase = Phase::Stopped);
                        return;
                    }
                }
            }
        }
    }

    /// Follows the store from the view's checkpoint until halted, once
    /// this engine holds the view's lease.
    async fn follow(&mut self) -> Result<Infallible, Halt> {
        let lease = self.lead().await?;
        let mut checkpoint = self.prepare().await?;
        self.update(|s| {
            s.checkpoint = checkpoint.position;
            if s.phase == Phase::Starting {
                s.phase = Phase::CatchingUp;
            }
        });
        let from = if checkpoint.position == Position::START {
            SubscribeFrom::Start
        } else {
            SubscribeFrom::After(checkpoint.position)
        };
        let mut subscription = self.store.subscribe_all(from, self.projection.filter());
        // How far a look found nothing left to apply.
        let mut looked_to = checkpoint.position;
        let mut look_again = LOOK_AGAIN_FIRST;
        loop {
            if self.stopping() {
                return Err(Halt::Stop);
            }
            if !lease.is_held() {
                return Err(restart(
                    "lost the view's lease: its PostgreSQL session closed".to_owned(),
                ));
            }
            let mut item = match available(&mut subscription) {
                Some(item) => item,
                None => {
                    // Idle after applying what came: has it caught up?
                    let (to, pending) = self.look(looked_to.max(checkpoint.position)).await;
                    looked_to = to;
                    tokio::select! {
                        biased;
                        _ = self.stop.changed() => return Err(Halt::Stop),
                        item = subscription.next() => item,
                        // Events wait behind an open transaction; they may
                        // not be ours, so nothing else would wake us.
                        _ = tokio::time::sleep(look_again), if pending => {
                            look_again = (look_again * 2).min(LOOK_AGAIN_MAX);
                            continue;
                        }
                    }
                }
            };
            look_again = LOOK_AGAIN_FIRST;
            // Apply what is available without waiting, up to a batch.
            let mut batch = Batch::default();
            let trouble = loop {
                match item {
                    Some(Ok(event)) => {
                        if !batch.add(self.projection.as_ref(), event) {
                            break None;
                        }
                    }
                    // The subscription retries passing trouble itself: what
                    // reaches us needs a fix (a missing table, a privilege).
                    Some(Err(e)) if !e.is_transient() => {
                        break Some(Halt::Fail(ProjectionFailure {
                            event: None,
                            error: format!("reading the event log failed: {e}"),
                        }));
                    }
                    Some(Err(e)) => break Some(restart(format!("event subscription failed: {e}"))),
                    None => break Some(restart("event subscription ended".to_owned())),
                }
                if batch.is_full() {
                    break None;
                }
                match available(&mut subscription) {
                    Some(next) => item = next,
                    None => break None,
                }
            };
            checkpoint = self.commit(checkpoint, batch).await?;
            if let Some(halt) = trouble {
                return Err(halt);
            }
        }
    }

    /// Waits until this engine may project the view (at once, unless
    /// another gateway on the store projects it), following the checkpoint
    /// the projecting gateway commits meanwhile, so this gateway's readiness
    /// and read-your-writes waits still see the view move.
    async fn lead(&mut self) -> Result<ViewLease, Halt> {
        let view = self.projection.name();
        let mut following = false;
        let mut seen = None;
        loop {
            let leases = self.leases.clone();
            let taken = self
                .retrying(|| {
                    let leases = leases.clone();
                    async move { leases.try_take(view).await }
                })
                .await?
                .map_err(fail)?;
            if let Some(lease) = taken {
                if following {
                    tracing::info!(view, "projecting the view: the gateway that did is gone");
                }
                self.update(|s| s.projecting = true);
                return Ok(lease);
            }
            if !following {
                tracing::info!(
                    view,
                    "another gateway projects the view; following its checkpoint"
                );
                following = true;
                self.update(|s| s.projecting = false);
            }
            let until = tokio::time::Instant::now() + TAKE_OVER_EVERY;
            while tokio::time::Instant::now() < until {
                seen = self.follow_checkpoint(seen).await;
                tokio::select! {
                    biased;
                    _ = self.stop.changed() => return Err(Halt::Stop),
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                }
            }
        }
    }

    /// Reads the checkpoint another engine commits into this engine's
    /// status; looks whether it has caught up when it moved (or never
    /// was). Returns the checkpoint read.
    async fn follow_checkpoint(&mut self, seen: Option<Checkpoint>) -> Option<Checkpoint> {
        let view = self.projection.name();
        let stored = match self.views.checkpoint(view).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(view, error = %e, "cannot read the view's checkpoint");
                return seen;
            }
        };
        let Some(cp) = stored.filter(|cp| cp.version == self.projection.version()) else {
            return stored;
        };
        self.update(|s| {
            s.checkpoint = cp.position;
            if s.phase == Phase::Starting {
                s.phase = Phase::CatchingUp;
            }
        });
        let live = self
            .status
            .borrow()
            .projections
            .get(self.index)
            .is_some_and(|s| s.phase == Phase::Live);
        if seen != Some(cp) || !live {
            self.look(cp.position).await;
        }
        Some(cp)
    }

    /// The view's checkpoint, creating or rebuilding the view first when it
    /// is missing or was built by an older version of the projection.
    async fn prepare(&mut self) -> Result<Checkpoint, Halt> {
        let view = self.projection.name();
        let version = self.projection.version();
        let views = self.views.clone();
        let stored = self
            .retrying(|| {
                let views = views.clone();
                async move { views.checkpoint(view).await }
            })
            .await?
            .map_err(fail)?;
        match stored {
            Some(cp) if cp.version == version => return Ok(cp),
            Some(cp) if cp.version > version => {
                return Err(Halt::Fail(ProjectionFailure {
                    event: None,
                    error: format!(
                        "the view was built by version {} of this projection, newer than this build's {version}; run the newer build, or rebuild the view",
                        cp.version
                    ),
                }));
            }
            Some(cp) => tracing::info!(
                view,
                from = cp.version,
                to = version,
                "projection version changed; rebuilding the view"
            ),
            None => tracing::info!(view, version, "creating the view"),
        }
        let projection = self.projection.clone();
        self.retrying(|| {
            let views = views.clone();
            let projection = projection.clone();
            async move { views.reset(projection.as_ref()).await }
        })
        .await?
        .map_err(fail)
    }

    /// Commits the batch with the checkpoint moved to its last event, then
    /// fails on the event the projection refused, if any. When the database
    /// refuses one event's writes, commits the events before it and fails
    /// on it: nothing is skipped.
    async fn commit(&mut self, from: Checkpoint, batch: Batch) -> Result<Checkpoint, Halt> {
        let checkpoint = match self.try_commit(from, &batch).await? {
            Ok(cp) => cp,
            Err(ViewError::Statement {
                index,
                sql,
                message,
                ..
            }) => {
                let bad = batch.event_of(index);
                let before = batch.prefix(bad);
                self.try_commit(from, &before).await?.map_err(fail)?;
                let error = format!("the database refused its write {sql:?}: {message}");
                return Err(Halt::Fail(match batch.events.get(bad) {
                    Some(event) => failure_at(event, error),
                    None => ProjectionFailure { event: None, error },
                }));
            }
            Err(e) => return Err(fail(e)),
        };
        match batch.refused {
            Some(failure) => Err(Halt::Fail(failure)),
            None => Ok(checkpoint),
        }
    }

    /// Commits `batch` (nothing when it has no events), retrying transient
    /// trouble; Ok(Err) when the view storage refused it for good.
    async fn try_commit(
        &mut self,
        from: Checkpoint,
        batch: &Batch,
    ) -> Result<Result<Checkpoint, ViewError>, Halt> {
        let Some(last) = batch.events.last() else {
            return Ok(Ok(from));
        };
        let to = Checkpoint {
            position: last.position,
            version: from.version,
        };
        let view = self.projection.name();
        let views = self.views.clone();
        let committed = self
            .retrying(|| {
                let views = views.clone();
                let statements = batch.statements.clone();
                async move { views.commit(view, from, to.position, statements).await }
            })
            .await?;
        if committed.is_ok() {
            // Progress: the next trouble starts the backoff afresh.
            self.backoff = RETRY_FIRST;
            let count = batch.events.len() as u64;
            let at = last.recorded_at;
            self.update(|s| {
                s.checkpoint = to.position;
                s.applied += count;
                s.last_event_at = Some(at);
                s.retrying = None;
            });
        }
        Ok(committed.map(|()| to))
    }

    /// Looks whether any committed event is left to apply after `after`.
    /// Returns how far the look found nothing (`after` when it found
    /// something), and whether committed events wait unreadable behind an
    /// open transaction (PostgreSQL), which is not caught up yet either.
    ///
    /// Comparing the checkpoint with the store's head cannot tell: with a
    /// filter the checkpoint stops at the last matching event, and on
    /// PostgreSQL the head is the read horizon, past every event.
    async fn look(&mut self, after: Position) -> (Position, bool) {
        let filter = self.projection.filter();
        match self.store.read_all(after, &filter, 1).await {
            Ok(page) if page.events.is_empty() && !page.pending => {
                self.update(|s| {
                    s.caught_up = true;
                    if s.phase == Phase::CatchingUp {
                        s.phase = Phase::Live;
                    }
                });
                (page.next.max(after), false)
            }
            Ok(page) if page.events.is_empty() => {
                self.update(|s| s.caught_up = false);
                (page.next.max(after), true)
            }
            Ok(_) => {
                self.update(|s| s.caught_up = false);
                (after, false)
            }
            Err(e) => {
                tracing::debug!(view = self.projection.name(), error = %e, "cannot tell whether the view has caught up");
                (after, false)
            }
        }
    }

    /// Runs `attempt` until it succeeds or fails for good (Ok(Err)), pausing
    /// with backoff after transient trouble. A moved checkpoint restarts.
    /// A first-try success leaves the backoff alone, so a subscription that
    /// keeps failing after it restarts still backs off.
    async fn retrying<T, F, Fut>(&mut self, mut attempt: F) -> Result<Result<T, ViewError>, Halt>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ViewError>>,
    {
        let mut recovered = false;
        loop {
            match attempt().await {
                Ok(value) => {
                    if recovered {
                        self.backoff = RETRY_FIRST;
                        self.update(|s| s.retrying = None);
                    }
                    return Ok(Ok(value));
                }
                Err(e) if e.is_transient() => {
                    let view = self.projection.name();
                    tracing::warn!(view, error = %e, retry_in = ?self.backoff, "view storage trouble; retrying");
                    let reason = e.to_string();
                    self.update(|s| s.retrying = Some(reason));
                    self.sleep().await.map_err(|()| Halt::Stop)?;
                    recovered = true;
                }
                Err(e @ ViewError::CheckpointMoved { .. }) => {
                    return Err(Halt::Restart {
                        reason: e.to_string(),
                        pause: false,
                    });
                }
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    /// Sleeps the current backoff (then doubles it); Err when asked to stop.
    async fn sleep(&mut self) -> Result<(), ()> {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        tokio::select! {
            biased;
            _ = self.stop.changed() => Err(()),
            _ = tokio::time::sleep(pause) => Ok(()),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    fn update(&self, f: impl FnOnce(&mut ProjectionStatus)) {
        self.status.send_modify(|s| {
            if let Some(p) = s.projections.get_mut(self.index) {
                f(p);
            }
        });
    }
}

/// The subscription's next item if it is there already; `None` when it
/// would have to wait. Outside tokio's cooperative budget, which would
/// otherwise cut every batch at 128 events.
fn available(subscription: &mut Subscription) -> Option<Option<Result<RecordedEvent, StoreError>>> {
    tokio::task::unconstrained(subscription.next()).now_or_never()
}

/// Start over from the checkpoint after a pause.
fn restart(reason: String) -> Halt {
    Halt::Restart {
        reason,
        pause: true,
    }
}

fn fail(e: ViewError) -> Halt {
    Halt::Fail(ProjectionFailure {
        event: None,
        error: e.to_string(),
    })
}

fn failure_at(event: &RecordedEvent, error: String) -> ProjectionFailure {
    ProjectionFailure {
        event: Some(FailedEvent {
            id: event.id,
            event_type: event.event_type.clone(),
            position: event.position,
        }),
        error,
    }
}

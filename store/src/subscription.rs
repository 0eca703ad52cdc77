//! Catch-up-then-live subscriptions, written once for every backend.
//!
//! A subscription is a loop over `read_all` pages from a checkpoint. When it
//! has caught up it waits for a wake-up (an append in this process, a
//! backend notification from another process) or a poll interval. Wake-ups
//! are hints only: the read is the truth, so a lost wake-up costs latency,
//! never an event.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use domain::{Position, RecordedEvent};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::StoreError;
use crate::event_store::{EventStore, Filter, Head, SubscribeFrom};

/// Events read per page while catching up.
const PAGE: usize = 1000;
/// Events buffered between the reading task and the consumer.
const BUFFER: usize = 4096;
/// While committed events wait behind an open transaction, look again after
/// this long, doubling up to [`PENDING_MAX`].
const PENDING_FIRST: Duration = Duration::from_micros(500);
const PENDING_MAX: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Bumped after every local append; backends may bump it on remote news too.
#[derive(Debug)]
pub(crate) struct Changes(watch::Sender<u64>);

impl Changes {
    pub(crate) fn new() -> Self {
        Self(watch::channel(0).0)
    }

    pub(crate) fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Matching events in global order, each exactly once. Ends only when
/// dropped or on an error that retrying cannot fix.
pub struct Subscription {
    rx: mpsc::Receiver<Result<RecordedEvent, StoreError>>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// Starts the reading task for `store`.
    pub(crate) fn spawn<S: EventStore + Clone>(
        store: S,
        from: SubscribeFrom,
        filter: Filter,
        changes: watch::Receiver<u64>,
        poll: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(BUFFER);
        let task = tokio::spawn(run(store, from, filter, changes, poll, tx));
        Self { rx, task }
    }

    /// The next event; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent, StoreError>> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Subscription {
    type Item = Result<RecordedEvent, StoreError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

async fn run<S: EventStore>(
    store: S,
    from: SubscribeFrom,
    filter: Filter,
    mut changes: watch::Receiver<u64>,
    poll: Duration,
    tx: mpsc::Sender<Result<RecordedEvent, StoreError>>,
) {
    let mut retry = Duration::from_millis(50);
    // From a head, read on after its horizon and pass over what it saw.
    let head = loop {
        let head = match &from {
            SubscribeFrom::Start => Ok(Head::at(Position::START)),
            SubscribeFrom::After(p) => Ok(Head::at(*p)),
            SubscribeFrom::Head(head) => Ok(head.clone()),
            SubscribeFrom::End => store.head().await,
        };
        match head {
            Ok(head) => break head,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "subscription cannot find the store's head yet; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    };
    let mut after = head.after;
    let mut pending_wait = PENDING_FIRST;
    loop {
        // Mark what we have seen before reading, so a change that lands
        // during the read wakes the wait below at once.
        changes.borrow_and_update();
        let page = match store.read_all(after, &filter, PAGE).await {
            Ok(page) => {
                retry = Duration::from_millis(50);
                page
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, %after, "subscription read failed; retrying from its checkpoint");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let full = page.events.len() == PAGE;
        if !page.events.is_empty() {
            pending_wait = PENDING_FIRST;
        }
        for event in page.events {
            if head.saw(event.position) {
                continue;
            }
            if tx.send(Ok(event)).await.is_err() {
                return; // the consumer has gone
            }
        }
        after = after.max(page.next);
        if full {
            continue;
        }
        if page.pending {
            // Committed events wait behind an open transaction: its end (a
            // wake-up) or a short, growing pause lets us look again.
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(pending_wait) => {}
            }
            pending_wait = (pending_wait * 2).min(PENDING_MAX);
            continue;
        }
        pending_wait = PENDING_FIRST;
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The store is gone; keep polling in case this was a clone.
                    tokio::time::sleep(poll).await;
                }
            }
            _ = tokio::time::sleep(poll) => {}
            _ = tx.closed() => return,
        }
    }
}

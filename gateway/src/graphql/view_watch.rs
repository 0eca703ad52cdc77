//! Subscriptions that follow a view: the current answer at once, then a
//! fresh one each time an event the view folds has reached it, at most one
//! per `every` (events between are coalesced, never the last one lost), and
//! only when the answer changed. Runs under the subscriber's session, so it
//! ends when the session does.

use std::future::Future;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use store::Filter;
use tokio::sync::mpsc;

use crate::auth::sessions::Principal;
use crate::graphql::session_watch::{Seen, under_session};
use crate::live::view_reached;
use crate::state::AppState;

/// Follows `view` (the events `filter` admits), answering with `read`.
pub fn view_changes<T, F, Fut>(
    app: AppState,
    principal: Principal,
    filter: Filter,
    view: &'static str,
    every: Duration,
    read: F,
) -> impl Stream<Item = async_graphql::Result<T>>
where
    T: PartialEq + Clone + Send + Sync + 'static,
    F: Fn(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = async_graphql::Result<T>> + Send,
{
    let (tx, rx) = mpsc::channel::<async_graphql::Result<T>>(16);
    tokio::spawn(async move {
        let mut seen = Box::pin(under_session(app.clone(), principal, Some(filter), None));
        let mut last: Option<T> = None;
        let answer = |value: async_graphql::Result<T>, last: &mut Option<T>| {
            let fresh = match &value {
                Ok(v) if last.as_ref() == Some(v) => false,
                Ok(v) => {
                    *last = Some(v.clone());
                    true
                }
                Err(_) => true,
            };
            fresh.then_some(value)
        };
        if let Some(first) = answer(read(app.clone()).await, &mut last)
            && tx.send(first).await.is_err()
        {
            return;
        }
        let mut next_at = tokio::time::Instant::now();
        loop {
            // A subscriber gone stops the watch at once, not at the next event.
            let next = tokio::select! {
                next = seen.next() => next,
                () = tx.closed() => return,
            };
            let mut position = match next {
                Some(Seen::Event(e)) => e.position,
                Some(Seen::Refreshed(_)) => continue,
                Some(Seen::Ended(_)) | None => return,
            };
            let mut ended = false;
            // Coalesce what else arrives before the next answer is due.
            while tokio::time::Instant::now() < next_at {
                match tokio::time::timeout_at(next_at, seen.next()).await {
                    Err(_) => break,
                    Ok(Some(Seen::Event(e))) => position = e.position,
                    Ok(Some(Seen::Refreshed(_))) => {}
                    Ok(Some(Seen::Ended(_)) | None) => {
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                return;
            }
            // Read anyway if the view is slow: a stale answer now beats none.
            let _ = view_reached(&app, view, position).await;
            next_at = tokio::time::Instant::now() + every;
            if let Some(value) = answer(read(app.clone()).await, &mut last)
                && tx.send(value).await.is_err()
            {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

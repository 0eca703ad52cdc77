//! The session watch every subscription runs under: when the session ends
//! (logout, a newer login, revocation, expiry, a disabled account) the
//! subscription is told (`sessionEvents` gets a final `SessionEnded { reason }`)
//! and completes, so a UI logs out at once. One live feed per gateway
//! (`crate::live`) is fanned out to every watch; a watch resumed from a
//! cursor reads its events from the store instead (catch-up, then live,
//! each exactly once), and the feed only for its session's news.

use std::sync::Arc;

use domain::account::{Account, AccountEvent, SessionId};
use domain::{Position, RecordedEvent, StreamId};
use futures_util::Stream;
use store::{Filter, StoreError, SubscribeFrom, Subscription};
use tokio::sync::{broadcast, mpsc};

use crate::auth::sessions::Principal;
use crate::graphql::session::{SessionEnded, SessionRefreshed};
use crate::state::AppState;

/// What a subscription under a session is shown.
pub enum Seen {
    /// An event of the log that its filter admits.
    Event(Arc<RecordedEvent>),
    /// The session was refreshed.
    Refreshed(SessionRefreshed),
    /// The session ended: the last item.
    Ended(SessionEnded),
}

/// Follows the log under `principal`'s session: the events `filter` admits
/// (none without one), the session's refreshes, and its end, which ends
/// the stream. With `after`, the events start just after that position
/// (older ones first), else from now.
pub fn under_session(
    app: AppState,
    principal: Principal,
    filter: Option<Filter>,
    after: Option<Position>,
) -> impl Stream<Item = Seen> {
    let (tx, rx) = mpsc::channel::<Seen>(256);
    tokio::spawn(async move {
        let Ok(stream) = principal.username.stream() else {
            return;
        };
        let resumed = match (&filter, after) {
            (Some(filter), Some(after)) => Some(
                app.store
                    .subscribe_all(SubscribeFrom::After(after), filter.clone()),
            ),
            _ => None,
        };
        let watch = Watch {
            app,
            stream,
            sid: principal.session_id,
            filter,
            feed_shows_events: resumed.is_none(),
            tx,
        };
        watch.run(resumed).await;
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// One subscription's session watch.
struct Watch {
    app: AppState,
    /// The account's stream, where the session's news arrives.
    stream: StreamId,
    sid: SessionId,
    filter: Option<Filter>,
    /// False when the events come from the watch's own store subscription.
    feed_shows_events: bool,
    tx: mpsc::Sender<Seen>,
}

/// Where the next thing a watch looks at came from.
enum Next {
    Feed(Result<Arc<RecordedEvent>, broadcast::error::RecvError>),
    Resumed(Option<Result<RecordedEvent, StoreError>>),
}

impl Watch {
    async fn run(self, mut resumed: Option<Subscription>) {
        // Listen first, then look: an end in between is seen either way.
        let mut feed = self.app.live.subscribe();
        if !self.still_live().await {
            return self.end().await;
        }
        loop {
            let next = tokio::select! {
                _ = self.tx.closed() => return,
                event = feed.recv() => Next::Feed(event),
                event = next_resumed(&mut resumed) => Next::Resumed(event),
            };
            let carry_on = match next {
                Next::Feed(Ok(event)) => self.pass_on(event).await,
                Next::Feed(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    self.after_lag(missed).await
                }
                Next::Feed(Err(broadcast::error::RecvError::Closed)) => false,
                Next::Resumed(Some(Ok(event))) => self.send(Seen::Event(Arc::new(event))).await,
                Next::Resumed(Some(Err(e))) => {
                    // The client resumes from the last position it saw.
                    tracing::warn!(error = %e, "a resumed subscription lost the log; ending it");
                    false
                }
                Next::Resumed(None) => false,
            };
            if !carry_on {
                return;
            }
        }
    }

    /// Shows `event` for what it means here; false once the watch is over.
    async fn pass_on(&self, event: Arc<RecordedEvent>) -> bool {
        let news = (event.stream_id == self.stream)
            .then(|| {
                self.app
                    .handler
                    .registry()
                    .decode::<AccountEvent>(&event)
                    .ok()
            })
            .flatten();
        let admitted = self.feed_shows_events
            && self
                .filter
                .as_ref()
                .is_some_and(|f| f.admits(event.stream_id.as_str(), &event.event_type));
        match news {
            Some(AccountEvent::SessionRefreshed(r)) if r.session_id == self.sid => {
                let refreshed = SessionRefreshed {
                    session_id: self.sid.0,
                    access_expires_at: r.tokens.expires_at,
                    refresh_until: r.tokens.refresh_until,
                };
                if !self.send(Seen::Refreshed(refreshed)).await {
                    return false;
                }
            }
            Some(AccountEvent::SessionEnded(x)) if x.session_id == self.sid => {
                // The ending event itself, to a feed that shows it, then the end.
                if admitted {
                    self.send(Seen::Event(event)).await;
                }
                self.send(self.ended(x.reason.to_string())).await;
                return false;
            }
            _ => {}
        }
        !admitted || self.send(Seen::Event(event)).await
    }

    /// Too slow for the feed: the session's end must not be missed, so ask
    /// the store. Other events are lost, so a feed of them ends here (the
    /// client resubscribes from its last cursor); a resumed watch has lost
    /// nothing. False once the watch is over.
    async fn after_lag(&self, missed: u64) -> bool {
        tracing::warn!(missed, "a subscriber fell behind the live feed");
        if !self.still_live().await {
            self.end().await;
            return false;
        }
        self.filter.is_none() || !self.feed_shows_events
    }

    async fn still_live(&self) -> bool {
        session_is_live(&self.app, &self.stream, self.sid).await
    }

    /// Sends the session's end, with the reason the account's stream gives.
    async fn end(&self) {
        let reason = end_reason(&self.app, &self.stream, self.sid).await;
        self.send(self.ended(reason)).await;
    }

    fn ended(&self, reason: String) -> Seen {
        Seen::Ended(SessionEnded {
            session_id: self.sid.0,
            reason,
        })
    }

    /// False when the client has gone.
    async fn send(&self, seen: Seen) -> bool {
        self.tx.send(seen).await.is_ok()
    }
}

/// The next event of a resumed watch; never, for a watch on the feed.
async fn next_resumed(
    resumed: &mut Option<Subscription>,
) -> Option<Result<RecordedEvent, StoreError>> {
    match resumed {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

/// Is `sid` the account's live session (and the account enabled)?
async fn session_is_live(app: &AppState, stream: &StreamId, sid: SessionId) -> bool {
    match app.handler.load::<Account>(stream).await {
        Ok((_, state)) => state.live(sid).is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "subscription cannot read its account; closing it");
            false
        }
    }
}

/// Why `sid` ended, from the account's recent events (it may have ended
/// just before the subscription began watching).
async fn end_reason(app: &AppState, stream: &StreamId, sid: SessionId) -> String {
    let recent = app
        .store
        .read_stream(
            stream,
            store::StreamFrom::End,
            store::Direction::Backward,
            100,
        )
        .await
        .unwrap_or_default();
    let registry = app.handler.registry();
    recent
        .iter()
        .filter_map(|e| registry.decode::<AccountEvent>(e).ok())
        .find_map(|e| match e {
            AccountEvent::SessionEnded(x) if x.session_id == sid => Some(x.reason.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "the session is no longer live".into())
}

//! The session watch every subscription runs under: when the session ends
//! (logout, a newer login, revocation, expiry, a disabled account) the
//! subscription is told (`sessionEvents` gets a final `SessionEnded { reason }`)
//! and completes, so a UI logs out at once. One live feed per gateway
//! (`crate::live`) is fanned out to every watch. A watch resumed from a
//! cursor first catches up from the store, then joins the feed; one that
//! falls behind the feed catches up the same way: each event exactly once.

use std::sync::Arc;
use std::time::Duration;

use domain::account::{Account, AccountEvent, SessionId};
use domain::{Position, RecordedEvent, StreamId};
use futures_util::Stream;
use store::Filter;
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
        let watch = Watch {
            app,
            stream,
            sid: principal.session_id,
            filter,
            tx,
        };
        watch.run(after).await;
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
    tx: mpsc::Sender<Seen>,
}

/// Events read per page while catching up.
const CATCH_UP_PAGE: usize = 1000;
/// While committed events wait behind an open transaction, look again
/// after this long, doubling up to [`PENDING_MAX`].
const PENDING_FIRST: Duration = Duration::from_millis(1);
const PENDING_MAX: Duration = Duration::from_millis(20);
/// Transient read failures a catch-up rides out before it ends the watch.
const READ_RETRIES: u32 = 5;

impl Watch {
    /// `after`: where the client's view of the log ends, if it has one.
    async fn run(self, after: Option<Position>) {
        // Listen first, then look: an end, or an event, in between is seen
        // either way.
        let mut feed = self.app.live.subscribe();
        if !self.still_live().await {
            return self.end().await;
        }
        // Every event up to here has been shown (if admitted) or passed over.
        let mut considered = after;
        if let Some(from) = considered {
            self.app.live.started().await;
            match self.catch_up(from).await {
                Some(reached) => considered = Some(reached),
                None => return,
            }
        }
        loop {
            let event = tokio::select! {
                _ = self.tx.closed() => return,
                event = feed.recv() => event,
            };
            let carry_on = match event {
                Ok(event) => {
                    let new = considered.is_none_or(|c| event.position > c);
                    if new {
                        considered = Some(event.position);
                    }
                    self.pass_on(event, new).await
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    match self.after_lag(missed, considered).await {
                        Lag::Over => false,
                        Lag::Lost => true,
                        Lag::CaughtUp(reached) => {
                            considered = Some(reached);
                            true
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => false,
            };
            if !carry_on {
                return;
            }
        }
    }

    /// Shows the admitted events after `after` from the store, oldest
    /// first, until a read finds nothing more that is committed: what
    /// commits later reaches the feed, which the watch already listens to.
    /// Where it got to; `None` once the watch is over.
    async fn catch_up(&self, mut after: Position) -> Option<Position> {
        let filter = self.filter.as_ref()?;
        let mut pending_wait = PENDING_FIRST;
        let mut retries = 0;
        loop {
            let page = match self.app.store.read_all(after, filter, CATCH_UP_PAGE).await {
                Ok(page) => page,
                Err(e) if e.is_transient() && retries < READ_RETRIES => {
                    retries += 1;
                    tracing::warn!(error = %e, %after, "a subscription's catch-up read failed; retrying");
                    tokio::time::sleep(PENDING_MAX * retries).await;
                    continue;
                }
                Err(e) => {
                    // The client resumes from the last position it saw.
                    tracing::warn!(error = %e, %after, "a subscription cannot catch up; ending it");
                    return None;
                }
            };
            let full = page.events.len() == CATCH_UP_PAGE;
            for event in page.events {
                if !self.send(Seen::Event(Arc::new(event))).await {
                    return None;
                }
            }
            after = after.max(page.next);
            if full {
                continue;
            }
            if !page.pending {
                return Some(after);
            }
            // Committed events wait behind an open transaction.
            tokio::time::sleep(pending_wait).await;
            pending_wait = (pending_wait * 2).min(PENDING_MAX);
        }
    }

    /// Shows `event` for what it means here (`new`: not already shown by a
    /// catch-up); false once the watch is over.
    async fn pass_on(&self, event: Arc<RecordedEvent>, new: bool) -> bool {
        let news = (event.stream_id == self.stream)
            .then(|| {
                self.app
                    .handler
                    .registry()
                    .decode::<AccountEvent>(&event)
                    .ok()
            })
            .flatten();
        let admitted = new
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
    /// the store. A watch that knows where it was catches up from there;
    /// one that has seen nothing yet cannot say what it lost, so a feed of
    /// events ends here (the client resubscribes).
    async fn after_lag(&self, missed: u64, considered: Option<Position>) -> Lag {
        tracing::warn!(missed, "a subscriber fell behind the live feed");
        if !self.still_live().await {
            self.end().await;
            return Lag::Over;
        }
        match (&self.filter, considered) {
            (None, _) => Lag::Lost,
            (Some(_), Some(from)) => self.catch_up(from).await.map_or(Lag::Over, Lag::CaughtUp),
            (Some(_), None) => Lag::Over,
        }
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

/// What became of a watch that fell behind the feed.
enum Lag {
    /// The watch is over.
    Over,
    /// Events were lost, but the watch shows none (only session news).
    Lost,
    /// The store filled the gap up to here.
    CaughtUp(Position),
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

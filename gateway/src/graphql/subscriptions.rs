//! Live updates. Every subscription runs under its session: when the
//! session ends (logout, a newer login, revocation, expiry, a disabled
//! account) `sessionEvents` receives a final `SessionEnded { reason }` and
//! every subscription of that session completes, so a UI logs out at once.

use async_graphql::{Context, SimpleObject, Subscription, Union};
use domain::RecordedEvent;
use domain::account::{Account, AccountEvent};
use futures_util::Stream;
use store::Filter;
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::auth::sessions::Principal;
use crate::graphql::identity::AuditEntry;
use crate::graphql::{app, principal, principal_with};
use crate::state::AppState;

#[derive(SimpleObject, Clone)]
pub struct SessionRefreshed {
    pub session_id: Uuid,
    pub access_expires_at: OffsetDateTime,
    pub refresh_until: OffsetDateTime,
}

#[derive(SimpleObject, Clone)]
pub struct SessionEnded {
    pub session_id: Uuid,
    pub reason: String,
}

#[derive(Union, Clone)]
pub enum SessionEvent {
    SessionRefreshed(SessionRefreshed),
    SessionEnded(SessionEnded),
}

#[derive(Default)]
pub struct IdentitySubscription;

#[Subscription]
impl IdentitySubscription {
    /// The current session's changes; the last one is `SessionEnded`.
    async fn session_events(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = SessionEvent>> {
        let p = principal(ctx)?.clone();
        Ok(guarded(
            app(ctx).clone(),
            p,
            None,
            |_| None::<SessionEvent>,
            Some,
            Some,
        ))
    }

    /// New audit entries as they happen (auditors and admins).
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = AuditEntry>> {
        let p = principal_with(
            ctx,
            &[
                domain::Role::Auditor,
                domain::Role::Admin,
                domain::Role::SuperAdmin,
            ],
            "watching the audit log",
        )?
        .clone();
        Ok(guarded(
            app(ctx).clone(),
            p,
            Some(Filter::all()),
            |e: &RecordedEvent| {
                Some(AuditEntry {
                    position: e.position.to_string(),
                    recorded_at: e.recorded_at,
                    actor: e.metadata.actor.clone(),
                    stream_id: e.stream_id.to_string(),
                    event_type: e.event_type.clone(),
                    summary: projections::audit_view::summarize(e),
                })
            },
            |_| None,
            |_| None,
        ))
    }
}

/// Is `sid` the account's live session (and the account enabled)?
async fn session_is_live(
    app: &AppState,
    stream: &domain::StreamId,
    sid: domain::account::SessionId,
) -> bool {
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
async fn end_reason(
    app: &AppState,
    stream: &domain::StreamId,
    sid: domain::account::SessionId,
) -> String {
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

/// Runs a subscription under `principal`'s session: `inner` events (if
/// any) are mapped by `on_event`; the session's own refreshes and its end
/// are mapped by `on_refreshed` and `on_ended`, and the end completes it.
fn guarded<T: Send + 'static>(
    app: AppState,
    principal: Principal,
    inner: Option<Filter>,
    on_event: impl Fn(&RecordedEvent) -> Option<T> + Send + Sync + 'static,
    on_refreshed: impl Fn(SessionEvent) -> Option<T> + Send + Sync + 'static,
    on_ended: impl Fn(SessionEvent) -> Option<T> + Send + Sync + 'static,
) -> impl Stream<Item = T> {
    let (tx, rx) = mpsc::channel::<T>(256);
    tokio::spawn(async move {
        let Ok(stream) = principal.username.stream() else {
            return;
        };
        let sid = principal.session_id;
        let ended = |reason: String| {
            SessionEvent::SessionEnded(SessionEnded {
                session_id: sid.0,
                reason,
            })
        };
        // Listen first, then look: an end in between is seen either way.
        let mut feed = app.live.subscribe();
        if !session_is_live(&app, &stream, sid).await {
            if let Some(item) = on_ended(ended(end_reason(&app, &stream, sid).await)) {
                let _ = tx.send(item).await;
            }
            return;
        }
        let registry = app.handler.registry();
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                event = feed.recv() => event,
            };
            let event = match event {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Too slow for the feed: the session's end must not be
                    // missed, so ask the store; other events are lost, so
                    // a feed of them ends here (the client resubscribes).
                    tracing::warn!(missed, "a subscriber fell behind the live feed");
                    if !session_is_live(&app, &stream, sid).await {
                        if let Some(item) = on_ended(ended(end_reason(&app, &stream, sid).await)) {
                            let _ = tx.send(item).await;
                        }
                        return;
                    }
                    if inner.is_some() {
                        return;
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if event.stream_id == stream {
                match registry.decode::<AccountEvent>(&event) {
                    Ok(AccountEvent::SessionRefreshed(r)) if r.session_id == sid => {
                        let item = SessionEvent::SessionRefreshed(SessionRefreshed {
                            session_id: sid.0,
                            access_expires_at: r.tokens.expires_at,
                            refresh_until: r.tokens.refresh_until,
                        });
                        if let Some(item) = on_refreshed(item)
                            && tx.send(item).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(AccountEvent::SessionEnded(x)) if x.session_id == sid => {
                        // Show the ending event itself to a feed that wants it.
                        if inner
                            .as_ref()
                            .is_some_and(|f| f.admits(event.stream_id.as_str(), &event.event_type))
                            && let Some(item) = on_event(&event)
                        {
                            let _ = tx.send(item).await;
                        }
                        if let Some(item) = on_ended(ended(x.reason.to_string())) {
                            let _ = tx.send(item).await;
                        }
                        return;
                    }
                    _ => {}
                }
            }
            if inner
                .as_ref()
                .is_some_and(|f| f.admits(event.stream_id.as_str(), &event.event_type))
                && let Some(item) = on_event(&event)
                && tx.send(item).await.is_err()
            {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

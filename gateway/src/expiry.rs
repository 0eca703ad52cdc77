//! Ends what outlived its time, as events, so that views and live
//! subscriptions learn of it: sessions past their grace period, and
//! uploads left unfinished past their expiry, whose staged chunks go with
//! them. Safe on many gateways at once: expiring what has ended is a no-op.

use std::sync::LazyLock;
use std::time::Duration;

use domain::account::{Account, AccountCommand, SessionId, Username};
use domain::upload::{Upload, UploadCommand, UploadId};
use domain::{Actor, Context};
use projections::{SqlValue, sessions_view, uploads_view};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::command_handler::CommandMeta;
use crate::state::AppState;

/// How often to look for expired sessions.
pub const EVERY: Duration = Duration::from_secs(15);

/// Live sessions past their grace period.
static OVERDUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT session_id, username FROM {} WHERE ended_at IS NULL AND refresh_until < $1",
        sessions_view::TABLE
    )
});

/// Open uploads past their expiry.
static ABANDONED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT upload_id FROM {} WHERE status = 'open' AND expires_at <= $1",
        uploads_view::TABLE
    )
});

/// An upload's status, as the view last saw it.
static STATUS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT status FROM {} WHERE upload_id = $1",
        uploads_view::TABLE
    )
});

fn system_meta() -> CommandMeta {
    CommandMeta {
        source: Some("gateway".into()),
        ..CommandMeta::default()
    }
}

/// Expires every overdue session once; returns how many it ended.
pub async fn sweep_sessions(app: &AppState, now: OffsetDateTime) -> usize {
    let rows = match app.views.query(&OVERDUE, vec![SqlValue::micros(now)]).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "expiry sweep cannot read sessions");
            return 0;
        }
    };
    let mut ended = 0;
    for row in rows {
        let (Ok(sid), Ok(user)) = (
            row.get::<String>("session_id"),
            row.get::<String>("username"),
        ) else {
            continue;
        };
        let (Ok(sid), Ok(user)) = (sid.parse::<Uuid>(), Username::parse(&user)) else {
            continue;
        };
        let Ok(stream) = user.stream() else { continue };
        let meta = system_meta();
        let command = AccountCommand::ExpireSession {
            session_id: SessionId(sid),
        };
        match app
            .handler
            .handle::<Account>(&stream, command, &Context::new(now, Actor::System), &meta)
            .await
        {
            Ok(done) if !done.events.is_empty() => ended += 1,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, session = %sid, "cannot expire session"),
        }
    }
    ended
}

/// Expires every abandoned upload once and deletes its chunks; returns
/// how many it expired.
pub async fn sweep_uploads(app: &AppState, now: OffsetDateTime) -> usize {
    let rows = match app
        .views
        .query(&ABANDONED, vec![SqlValue::micros(now)])
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "expiry sweep cannot read uploads");
            return 0;
        }
    };
    let mut expired = 0;
    for row in rows {
        let Some(id) = row
            .get::<String>("upload_id")
            .ok()
            .and_then(|id| id.parse::<UploadId>().ok())
        else {
            continue;
        };
        let ctx = Context::new(now, Actor::System);
        match app
            .handler
            .handle::<Upload>(&id.stream(), UploadCommand::Expire, &ctx, &system_meta())
            .await
        {
            Ok(done) if !done.events.is_empty() => expired += 1,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, upload = %id, "cannot expire upload");
                continue;
            }
        }
        if let Err(e) = app.store.delete_chunks(id.0).await {
            tracing::warn!(error = %e, upload = %id, "cannot delete an expired upload's chunks");
        }
    }
    reclaim_ended(app).await;
    expired
}

/// Deletes the chunks of uploads that have ended: a chunk accepted just
/// before its upload finished lands after the finish deleted the rest,
/// and a failed delete leaves them all. An upload the view does not know
/// yet is left alone (it may have just started).
async fn reclaim_ended(app: &AppState) {
    let staged = match app.store.staged_uploads().await {
        Ok(staged) => staged,
        Err(e) => {
            tracing::warn!(error = %e, "expiry sweep cannot list staged uploads");
            return;
        }
    };
    for id in staged {
        let status = app
            .views
            .query(&STATUS, vec![SqlValue::Text(id.to_string())])
            .await
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r.get::<String>("status").ok()));
        if status.is_some_and(|s| s != "open")
            && let Err(e) = app.store.delete_chunks(id).await
        {
            tracing::warn!(error = %e, upload = %id, "cannot reclaim an ended upload's chunks");
        }
    }
}

/// Sweeps forever: sessions every [`EVERY`], uploads as often, or at
/// their lifetime when that is shorter.
pub async fn run(app: AppState) {
    let uploads_every = app.upload_ttl.try_into().map_or(EVERY, |ttl: Duration| {
        ttl.clamp(Duration::from_millis(100), EVERY)
    });
    tokio::join!(
        every(EVERY, || async {
            let n = sweep_sessions(&app, OffsetDateTime::now_utc()).await;
            if n > 0 {
                tracing::info!(sessions = n, "expired idle sessions");
            }
        }),
        every(uploads_every, || async {
            let n = sweep_uploads(&app, OffsetDateTime::now_utc()).await;
            if n > 0 {
                tracing::info!(uploads = n, "expired abandoned uploads");
            }
        }),
    );
}

/// Runs `sweep` every `period`, forever.
async fn every<F, Fut>(period: Duration, mut sweep: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // The first sweep waits a period: the views are still being created.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tick.tick().await;
        sweep().await;
    }
}

//! Ends sessions that outlived their grace period, as events, so that
//! views and live subscriptions learn of it. Safe on many gateways at once:
//! expiring an ended session is a no-op.

use std::sync::LazyLock;
use std::time::Duration;

use domain::account::{Account, AccountCommand, SessionId, Username};
use domain::{Actor, Context};
use projections::{SqlValue, sessions_view};
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

/// Expires every overdue session once; returns how many it ended.
pub async fn sweep(app: &AppState, now: OffsetDateTime) -> usize {
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
        let meta = CommandMeta {
            source: Some("gateway".into()),
            ..CommandMeta::default()
        };
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

/// Sweeps forever, every [`EVERY`].
pub async fn run(app: AppState) {
    // The first sweep waits a period: the views are still being created.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
    loop {
        tick.tick().await;
        let n = sweep(&app, OffsetDateTime::now_utc()).await;
        if n > 0 {
            tracing::info!(sessions = n, "expired idle sessions");
        }
    }
}

//! Runners' presence across gateways. The connection that hears from a
//! runner records when, in the store beside the log (heartbeats are not
//! events); any gateway's sweep marks a runner offline, through its
//! decider, once no gateway has heard from it for the silence limit. So a
//! runner whose gateway died without a word (killed, its machine gone)
//! and that never came back does not stay online for ever; one that
//! reconnected to another gateway is heard there, and left alone.
//!
//! No lock and no leader: two gateways sweeping at once both decide on
//! the runner's stream, and optimistic concurrency lets one append
//! `RunnerWentOffline`; the other finds it offline already. A runner
//! swept in the instant it reconnected elsewhere is registered again by
//! that gateway at its next heartbeat (see `work::heartbeat`).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Instant;

use domain::runner::{OfflineReason, Runner, RunnerCommand, RunnerId};
use domain::{Actor, Context};
use projections::runners_view;
use store::Presence;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::command_handler::CommandMeta;
use crate::state::AppState;

/// What one connection last recorded of its runner's presence.
pub(crate) struct Heard {
    /// This connection, as the store knows it.
    pub holder: Uuid,
    recorded: Instant,
    busy: u32,
}

impl Heard {
    /// Records that the connection `holder` now holds `runner`, heard now.
    pub async fn first(app: &AppState, runner: RunnerId) -> Self {
        let heard = Self {
            holder: Uuid::now_v7(),
            recorded: Instant::now(),
            busy: 0,
        };
        heard.record(app, runner).await;
        heard
    }

    /// The runner said something (with how busy it is, in a heartbeat).
    /// Recorded when it says something new, or when half a heartbeat
    /// period passed since the last record, so a busy runner costs a few
    /// writes a minute, not one per message.
    pub async fn again(&mut self, app: &AppState, runner: RunnerId, busy: Option<u32>) {
        let changed = busy.is_some_and(|b| b != self.busy);
        if !changed && self.recorded.elapsed() < app.runner_terms.heartbeat_every / 2 {
            return;
        }
        if let Some(busy) = busy {
            self.busy = busy;
        }
        self.recorded = Instant::now();
        self.record(app, runner).await;
    }

    async fn record(&self, app: &AppState, runner: RunnerId) {
        let presence = Presence {
            runner: runner.0,
            holder: self.holder,
            seen_at: OffsetDateTime::now_utc(),
            busy: self.busy,
        };
        if let Err(e) = app.store.touch_presence(presence).await {
            // Its liveness reads older elsewhere; the next message tries again.
            tracing::warn!(%runner, error = %e, "runner presence not recorded");
        }
    }

    /// The connection ends: is it still the one holding the runner (no
    /// newer connection, here or on another gateway, took it over)?
    /// `None` when the store cannot say.
    pub async fn release(&self, app: &AppState, runner: RunnerId) -> Option<bool> {
        match app.store.release_presence(runner.0, self.holder).await {
            Ok(held) => Some(held),
            Err(e) => {
                tracing::warn!(%runner, error = %e, "runner presence not released");
                None
            }
        }
    }
}

/// Every runner's presence, by runner.
pub async fn all(app: &AppState) -> HashMap<RunnerId, Presence> {
    match app.store.presences().await {
        Ok(rows) => rows.into_iter().map(|p| (RunnerId(p.runner), p)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read runners' presence");
            HashMap::new()
        }
    }
}

/// Runners the view has online, and since when it has them so.
static ONLINE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT runner, changed_at FROM {} WHERE online AND NOT deregistered",
        runners_view::TABLE
    )
});

fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Marks offline every online runner no gateway has heard from for the
/// silence limit; how many it marked. A runner without a presence row
/// (its gateway let go of it but could not record it offline, or a store
/// from before presence was kept) counts from its last change, and from
/// no earlier than `watching_since`, so that runners connected to a
/// gateway that starts with this one get a full silence to be heard.
pub async fn mark_silent_offline(app: &AppState, watching_since: OffsetDateTime) -> usize {
    let silence =
        time::Duration::try_from(app.runner_terms.silence()).unwrap_or(time::Duration::seconds(15));
    let online = match app.views.query(&ONLINE, vec![]).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the online runners");
            return 0;
        }
    };
    if online.is_empty() {
        return 0;
    }
    let heard = all(app).await;
    let now = OffsetDateTime::now_utc();
    let mut marked = 0;
    for row in online {
        let (Ok(id), Ok(changed)) = (row.get::<String>("runner"), row.get::<i64>("changed_at"))
        else {
            continue;
        };
        let Ok(runner) = Uuid::parse_str(&id).map(RunnerId) else {
            continue;
        };
        let last = match heard.get(&runner) {
            Some(p) => p.seen_at,
            None => from_micros(changed).max(watching_since),
        };
        if now - last <= silence {
            continue;
        }
        let Ok(stream) = runner.stream() else {
            continue;
        };
        let meta = CommandMeta {
            source: Some("gateway".into()),
            ..CommandMeta::default()
        };
        let command = RunnerCommand::GoOffline {
            reason: OfflineReason::Silent,
        };
        let ctx = Context::new(now, Actor::System);
        match app
            .handler
            .handle::<Runner>(&stream, command, &ctx, &meta)
            .await
        {
            Ok(handled) if !handled.events.is_empty() => {
                tracing::info!(%runner, last_heard = %last, "runner silent on every gateway: offline");
                marked += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%runner, error = %e, "silent runner not marked offline"),
        }
    }
    marked
}

/// Sweeps silent runners every heartbeat period, forever.
pub async fn sweep(app: AppState) {
    let every = app
        .runner_terms
        .heartbeat_every
        .max(std::time::Duration::from_millis(100));
    let watching_since = OffsetDateTime::now_utc();
    if !crate::live::view_created(&app, runners_view::NAME).await {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        mark_silent_offline(&app, watching_since).await;
    }
}

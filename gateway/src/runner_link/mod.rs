//! The runner socket, `GET /runner`: runners on any machine connect here,
//! authenticate with their key and speak docs/runner-protocol.md.
//!
//! - [`connection`]: one runner's connection, from hello to close;
//! - [`work`]: its leases, reports and hand-backs on jobs;
//! - [`artifacts`]: failed flows' artifacts, uploaded in parts;
//! - [`fleet`]: the runners connected to this gateway, and the notices
//!   passed on to them;
//! - [`presence`]: when each runner was last heard from, on any gateway,
//!   and the sweep that marks the silent ones offline;
//! - [`targets`]: the targets lease grants carry;
//! - [`brief`]: a job's brief, what a runner needs once per job;
//! - [`proxy_health`]: proxies disabled as they keep failing, and
//!   re-enabled on trial.

pub mod artifacts;
pub mod brief;
pub mod connection;
pub mod fleet;
pub mod local_key;
pub mod presence;
pub mod proxy_health;
pub mod targets;
pub mod work;

use std::time::Duration;

use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use domain::runner_protocol::MAX_FRAME_BYTES;

use crate::state::AppState;

/// The time terms a gateway sets its runners in the welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerTerms {
    /// How often a runner heartbeats; three missed and it is offline.
    pub heartbeat_every: Duration,
    /// How long a lease lasts without a heartbeat renewing it.
    pub lease_ttl: Duration,
}

impl Default for RunnerTerms {
    fn default() -> Self {
        Self {
            heartbeat_every: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
        }
    }
}

impl RunnerTerms {
    /// How long a runner may stay silent: three heartbeats missed.
    pub fn silence(&self) -> Duration {
        self.heartbeat_every * 3
    }

    /// The lease time as the job's decider takes it.
    pub fn lease_ttl(&self) -> time::Duration {
        time::Duration::try_from(self.lease_ttl).unwrap_or(time::Duration::seconds(30))
    }
}

/// Upgrades to the runner socket, refusing frames over the protocol's limit.
pub async fn endpoint(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| connection::serve(state, socket))
}

/// The gateway's background work for runners: notices passed on to the
/// runners connected here, and the sweeps of expired leases, of runners
/// silent on every gateway, and of proxies to re-enable on trial.
pub fn background(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(fleet::relay(state.fleet.clone(), state.live.subscribe())),
        tokio::spawn(work::sweep(state.clone())),
        tokio::spawn(presence::sweep(state.clone())),
        tokio::spawn(proxy_health::sweep(state.clone())),
    ]
}

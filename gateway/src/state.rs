//! What every request shares: the store, the command handler, sessions,
//! login limits and the proxies trusted to name clients, the views and the
//! projections' progress.

use std::sync::Arc;

use projections::{EngineStatus, ViewStore};
use store::EventStore;
use tokio::sync::watch;

use crate::auth::rate_limit::LoginLimiter;
use crate::auth::sessions::Sessions;
use crate::client_addr::TrustedProxies;
use crate::command_handler::CommandHandler;
use crate::live::LiveFeed;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub handler: Arc<CommandHandler>,
    pub sessions: Arc<Sessions>,
    pub limiter: Arc<LoginLimiter>,
    pub trusted_proxies: Arc<TrustedProxies>,
    pub views: ViewStore,
    pub projections: watch::Receiver<EngineStatus>,
    pub metrics: Arc<Metrics>,
    /// The log as it grows, shared by every subscription.
    pub live: Arc<LiveFeed>,
}

//! What every request shares: the store, the command handler, sessions,
//! login limits and the proxies trusted to name clients, the views and the
//! projections' progress, the GraphQL schema, the open WebSockets and the
//! domain verifier. The
//! router's one state; GraphQL resolvers find it in each request's data.

use std::sync::Arc;

use projections::{EngineStatus, ViewStore};
use store::EventStore;
use tokio::sync::watch;

use crate::auth::rate_limit::LoginLimiter;
use crate::auth::sessions::Sessions;
use crate::client_addr::TrustedProxies;
use crate::command_handler::CommandHandler;
use crate::graphql::ApiSchema;
use crate::live::LiveFeed;
use crate::metrics::Metrics;
use crate::runner_link::RunnerTerms;
use crate::runner_link::fleet::Fleet;
use crate::verification::Verifier;
use crate::ws_limits::SessionConnections;

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
    /// The API. It holds no state of its own, so no cycle: each request
    /// carries this state in its data.
    pub schema: ApiSchema,
    /// Open GraphQL WebSockets per session, to bound them.
    pub ws_connections: Arc<SessionConnections>,
    /// The runners connected to this gateway, and the terms they are given.
    pub fleet: Arc<Fleet>,
    pub runner_terms: RunnerTerms,
    /// Checks that domains publish their claims' tokens.
    pub verifier: Arc<Verifier>,
}

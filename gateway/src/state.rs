//! What every request shares: the store, the command handler, sessions,
//! login limits and the proxies trusted to name clients, the views and the
//! projections' progress, the GraphQL schema, the open WebSockets, the
//! domain verifier, the data key, how long uploads stay open, and dataset
//! versions' rows. The router's one state; GraphQL resolvers find it in
//! each request's data.

use std::sync::Arc;

use datasets::DataKey;
use projections::{EngineStatus, ViewStore};
use store::EventStore;
use tokio::sync::{Semaphore, watch};

use crate::auth::rate_limit::LoginLimiter;
use crate::auth::sessions::Sessions;
use crate::client_addr::TrustedProxies;
use crate::command_handler::CommandHandler;
use crate::graphql::ApiSchema;
use crate::live::LiveFeed;
use crate::metrics::Metrics;
use crate::rows_cache::RowsCache;
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
    /// Seals proxy passwords; without one, proxies with credentials are refused.
    pub data_key: Option<Arc<DataKey>>,
    /// How long an upload stays open for its chunks and its finish.
    pub upload_ttl: time::Duration,
    /// Dataset versions' rows, decoded once.
    pub rows: Arc<RowsCache>,
    /// Bounds the large request bodies (chunk uploads) buffered at once.
    pub large_bodies: Arc<Semaphore>,
    /// The runners connected to this gateway, and the terms they are given.
    pub fleet: Arc<Fleet>,
    pub runner_terms: RunnerTerms,
    /// Checks that domains publish their claims' tokens; its resolver and
    /// guard serve webhooks' POSTs too.
    pub verifier: Arc<Verifier>,
    /// When webhook deliveries are tried again.
    pub webhook_retries: crate::webhooks::Retries,
}

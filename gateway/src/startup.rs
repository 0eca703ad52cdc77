//! Wiring: the state, the router, and the server loop with its background
//! work (projections, session expiry, the consent guard, runners) and
//! graceful shutdown.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_graphql::Data;
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLProtocol, GraphQLResponse};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use datasets::DataKey;
use projections::{ProjectionEngine, ViewStore};
use secrecy::SecretSlice;
use tokio::net::TcpListener;

use crate::auth::rate_limit::{LoginLimiter, LoginLimits};
use crate::auth::sessions::{SessionPolicy, Sessions};
use crate::auth::tokens::TokenError;
use crate::client_addr::TrustedProxies;
use crate::command_handler::CommandHandler;
use crate::graphql::{self, RequestAuth};
use crate::http_limits::{self, HttpLimits};
use crate::metrics::{Metered, Metrics};
use crate::request_body::{self, MAX_BODY_BYTES};
use crate::rows_cache::RowsCache;
use crate::runner_link::{self, RunnerTerms};
use crate::state::AppState;
use crate::verification::{VerificationSettings, Verifier};
use crate::ws_limits;
use crate::{
    audit_export, consent_guard, expiry, graphiql, health, job_artifacts, job_log, metrics,
    scheduler,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("token signing: {0}")]
    Token(#[from] TokenError),
    #[error("views: {0}")]
    Views(#[from] projections::ViewError),
    #[error("projections: {0}")]
    Engine(#[from] projections::EngineError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Verification(#[from] crate::verification::SetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How the gateway is set up.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Signs access tokens; every gateway of a deployment needs the same.
    pub jwt_secret: SecretSlice<u8>,
    pub session_policy: SessionPolicy,
    pub login_limits: LoginLimits,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
    /// Seals proxy passwords in dataset blobs; every gateway of a
    /// deployment needs the same. Without one, proxies with credentials
    /// are refused (the rest works).
    pub data_key: Option<Arc<DataKey>>,
    /// How long an upload takes chunks before it expires and they go.
    pub upload_ttl: time::Duration,
    /// How domains are verified (DNS, the SSRF guard, how long it counts).
    pub verification: VerificationSettings,
}

/// How long an upload stays open by default: a day.
pub const DEFAULT_UPLOAD_TTL: time::Duration = time::Duration::DAY;

/// Every route the gateway serves.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/graphql", get(graphql_ws).post(graphql_http))
        .route("/graphiql", get(graphiql::page))
        .route("/graphiql/{file}", get(graphiql::file))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::endpoint))
        .route("/runner", get(runner_link::endpoint))
        .route("/jobs/{id}/{file}", get(job_log::download))
        .route("/jobs/{id}/artifacts/{blob}", get(job_artifacts::download))
        .route("/audit/export.jsonl", get(audit_export::download))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    // Inside the metrics layer, so refusals are counted too.
    http_limits::apply(routes, HttpLimits::default())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// The bearer token of an `Authorization` value, or of a `connection_init` payload.
fn bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

async fn authenticate(
    app: &AppState,
    token: Option<&str>,
    client_ip: Option<IpAddr>,
    user_agent: Option<String>,
) -> RequestAuth {
    let mut auth = RequestAuth {
        client_ip,
        user_agent,
        ..RequestAuth::default()
    };
    if let Some(token) = token {
        match app.sessions.authenticate(token, graphql::now()).await {
            Ok(p) => auth.principal = Some(p),
            Err(e) => auth.rejected = Some(e.to_string()),
        }
    }
    auth
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

async fn graphql_http(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    // A body, not an extractor: its limit depends on who sends what (see
    // `request_body`), so the caller is known before it is read.
    body: Body,
) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    let client = state.trusted_proxies.client_ip(addr.ip(), &headers);
    let auth = authenticate(&state, token, Some(client), user_agent(&headers)).await;
    let read = match request_body::read(body, auth.principal.is_some(), &state.large_bodies).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let request: async_graphql::Request = match serde_json::from_slice(&read.bytes) {
        Ok(r) => r,
        Err(e) => {
            let message =
                format!("the request body is not a GraphQL request (JSON with a `query`): {e}");
            let body = serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": "VALIDATION" } }] });
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    if !request_body::fits(&read, &request) {
        return request_body::too_large();
    }
    drop(read.bytes);
    let operation = operation_type(&request);
    let started = std::time::Instant::now();
    let mut response = state
        .schema
        .execute(request.data(auth).data(state.clone()))
        .await;
    drop(read.large);
    state.metrics.observe_graphql(
        operation,
        response.errors.is_empty(),
        started.elapsed().as_secs_f64(),
    );
    // Errors from parsing and validation (syntax, unknown fields, depth,
    // complexity) carry no code of their own: they are the client's to fix.
    for e in &mut response.errors {
        let ext = e.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", graphql::error::Code::Validation.as_str());
        }
    }
    GraphQLResponse::from(response).into_response()
}

/// `query`, `mutation`, `subscription`, or `invalid`: a bounded label.
fn operation_type(request: &async_graphql::Request) -> &'static str {
    use async_graphql::parser::types::OperationType;
    let Ok(doc) = async_graphql::parser::parse_query(&request.query) else {
        return "invalid";
    };
    let ty = match &request.operation_name {
        Some(name) => doc
            .operations
            .iter()
            .find(|(n, _)| n.is_some_and(|n| n.as_str() == name))
            .map(|(_, op)| op.node.ty),
        None => doc.operations.iter().next().map(|(_, op)| op.node.ty),
    };
    match ty {
        Some(OperationType::Query) => "query",
        Some(OperationType::Mutation) => "mutation",
        Some(OperationType::Subscription) => "subscription",
        None => "invalid",
    }
}

async fn graphql_ws(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let agent = user_agent(&headers);
    let client = state.trusted_proxies.client_ip(addr.ip(), &headers);
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(ws_limits::MAX_MESSAGE_BYTES)
        .max_frame_size(ws_limits::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let schema = state.schema.clone();
            ws_limits::serve(socket, schema, protocol, move |payload| async move {
                // {"authorization": "Bearer …"}, {"Authorization": …} or {"token": "…"}.
                let token = ["authorization", "Authorization"]
                    .iter()
                    .find_map(|k| payload.get(*k).and_then(|v| v.as_str()).and_then(bearer))
                    .or_else(|| payload.get("token").and_then(|v| v.as_str()))
                    .map(str::to_owned);
                let auth = authenticate(&state, token.as_deref(), Some(client), agent).await;
                if let Some(why) = &auth.rejected {
                    return Err(async_graphql::Error::new(why.clone()));
                }
                let mut data = Data::default();
                if let Some(principal) = &auth.principal {
                    data.insert(state.ws_connections.open(principal.session_id)?);
                }
                data.insert(auth);
                data.insert(state);
                Ok(data)
            })
        })
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    state: AppState,
    engine: ProjectionEngine,
}

impl Gateway {
    /// Opens views, starts the projections, and binds `addr` (port 0 picks one).
    pub async fn start(
        addr: SocketAddr,
        backend: &store::Backend,
        config: GatewayConfig,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new()?);
        let verifier = Arc::new(Verifier::new(config.verification)?);
        let store: Arc<dyn store::EventStore> =
            Arc::new(Metered::new(backend.event_store(), metrics.clone()));
        let views = ViewStore::open(backend).await?;
        let engine =
            ProjectionEngine::start(store.clone(), views.clone(), projections::all_views())?;
        let handler = Arc::new(CommandHandler::new(
            store.clone(),
            Arc::new(domain::event_registry()),
        ));
        let sessions = Arc::new(
            Sessions::new(handler.clone(), &config.jwt_secret, config.session_policy)?
                .with_failed_login_limit(config.login_limits.per_account),
        );
        let app = AppState {
            store: store.clone(),
            handler,
            sessions,
            limiter: Arc::new(LoginLimiter::new(config.login_limits)),
            trusted_proxies: Arc::new(config.trusted_proxies),
            views,
            projections: engine.status(),
            metrics,
            live: Arc::new(crate::live::LiveFeed::start(store.clone())),
            schema: graphql::schema(),
            ws_connections: Arc::default(),
            data_key: config.data_key,
            upload_ttl: config.upload_ttl,
            rows: Arc::new(RowsCache::default()),
            large_bodies: request_body::large_bodies(),
            fleet: Arc::default(),
            runner_terms: RunnerTerms::default(),
            verifier,
            webhook_retries: crate::webhooks::Retries::default(),
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(Self {
            listener,
            state: app,
            engine,
        })
    }

    /// Sets the runners' heartbeat and lease times (default: 5 s and 30 s).
    pub fn with_runner_terms(mut self, terms: RunnerTerms) -> Self {
        self.state.runner_terms = terms;
        self
    }

    /// Sets when webhook deliveries are tried again (default: 30 s,
    /// doubling to an hour, for a day).
    pub fn with_webhook_retries(mut self, retries: crate::webhooks::Retries) -> Self {
        self.state.webhook_retries = retries;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// What the gateway serves from, for callers in the same process
    /// (tests and benches set up data through the gateway's own paths).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests
    /// and stops the projections.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let sweeper = tokio::spawn(expiry::run(self.state.clone()));
        let guard = tokio::spawn(consent_guard::run(self.state.clone()));
        let scheduler = tokio::spawn(scheduler::run(
            self.state.clone(),
            Arc::new(scheduler::SystemClock),
        ));
        let webhooks = tokio::spawn(crate::webhooks::run(self.state.clone()));
        let live = self.state.live.clone();
        let runner_work = runner_link::background(&self.state);
        let served = axum::serve(
            self.listener,
            router(self.state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        sweeper.abort();
        guard.abort();
        scheduler.abort();
        webhooks.abort();
        for task in runner_work {
            task.abort();
        }
        live.stop();
        self.engine.shutdown().await;
        served
    }
}

//! Prometheus metrics at `GET /metrics`: HTTP and GraphQL requests (counts
//! and latency histograms), events appended by type, and each view's
//! progress and lag; counters are per gateway, sum them across a fleet.
//! Beside them, totals of the whole log read from the views at each scrape
//! (logins, failed logins, live sessions, events by type, flows by outcome,
//! clicks, leases and lease expiries): the same on
//! every gateway, so take one, not the sum.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use domain::{BlobHash, EventId, NewEvent, Position, RecordedEvent, StreamId};
use projections::{EngineStatus, Phase, ViewStore, event_counts, metrics_view};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use store::{
    AppendResult, Direction, EventStore, ExpectedVersion, Filter, Head, Page, Presence, Snapshot,
    StoreError, StreamFrom, SubscribeFrom, Subscription,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::state::AppState;

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    graphql_requests: IntCounterVec,
    graphql_seconds: HistogramVec,
    events_appended: IntCounterVec,
    view_applied: IntGaugeVec,
    view_live: IntGaugeVec,
    view_lag: GaugeVec,
    logins: IntGauge,
    failed_logins: IntGauge,
    active_sessions: IntGauge,
    events_recorded: IntGaugeVec,
    flows_recorded: IntGaugeVec,
    clicks_recorded: IntGauge,
    leases_recorded: IntGauge,
    lease_expiries_recorded: IntGauge,
}

/// The `metrics` view's totals, by name.
static READ_TOTALS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT name, value FROM {}", metrics_view::TABLE));

/// The `event_counts` view: events in the log by type.
static READ_EVENT_COUNTS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT event_type, count FROM {}", event_counts::TABLE));

/// The jobs view's totals over every job: (name, value) as the other
/// totals are read.
static READ_JOB_TOTALS: LazyLock<String> = LazyLock::new(|| {
    let sum = |column: &str| {
        format!(
            "SELECT '{column}' AS name, CAST(COALESCE(SUM({column}), 0) AS BIGINT) AS value FROM {}",
            projections::jobs_view::JOBS
        )
    };
    [sum("succeeded"), sum("failed"), sum("clicked")].join(" UNION ALL ")
});

/// Totals of the whole log as the views hold them, read for one scrape.
#[derive(Debug, Default)]
pub struct LogTotals {
    /// (name, value) of the `metrics` view.
    pub totals: Vec<(String, i64)>,
    /// (event type, count) of the `event_counts` view.
    pub event_counts: Vec<(String, i64)>,
    /// (`succeeded`, `failed` or `clicked`, flows) of the `jobs` view.
    pub jobs: Vec<(String, i64)>,
}

impl LogTotals {
    /// Reads both views; a view that cannot be read is left out (and
    /// logged) rather than failing the scrape.
    pub async fn read(views: &ViewStore) -> Self {
        Self {
            totals: read_pairs(views, &READ_TOTALS).await,
            event_counts: read_pairs(views, &READ_EVENT_COUNTS).await,
            jobs: read_pairs(views, &READ_JOB_TOTALS).await,
        }
    }
}

/// Rows of (text, integer), as both views' reads select them.
async fn read_pairs(views: &ViewStore, sql: &str) -> Vec<(String, i64)> {
    let rows = match views.query(sql, Vec::new()).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, sql, "metrics cannot read a view");
            return Vec::new();
        }
    };
    rows.iter()
        .filter_map(|row| match (row.get::<String>(0), row.get::<i64>(1)) {
            (Ok(name), Ok(n)) => Some((name, n)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, sql, "metrics cannot read a view row");
                None
            }
        })
        .collect()
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("tb".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        let graphql_requests = IntCounterVec::new(
            Opts::new(
                "graphql_requests_total",
                "GraphQL operations by type and outcome",
            ),
            &["operation", "outcome"],
        )?;
        let graphql_seconds = HistogramVec::new(
            HistogramOpts::new(
                "graphql_request_duration_seconds",
                "GraphQL operation latency by type",
            )
            .buckets(BUCKETS.to_vec()),
            &["operation"],
        )?;
        let events_appended = IntCounterVec::new(
            Opts::new(
                "events_appended_total",
                "Events appended by this gateway, by type",
            ),
            &["event_type"],
        )?;
        let view_applied = IntGaugeVec::new(
            Opts::new(
                "projection_events_applied",
                "Events a view applied since it (re)started",
            ),
            &["view"],
        )?;
        let view_live = IntGaugeVec::new(
            Opts::new(
                "projection_live",
                "1 when a view has caught up and follows the log",
            ),
            &["view"],
        )?;
        let view_lag = GaugeVec::new(
            Opts::new(
                "projection_lag_seconds",
                "0 when a view has caught up; else the age of the newest event it has applied",
            ),
            &["view"],
        )?;
        for c in [&http_requests, &graphql_requests, &events_appended] {
            registry.register(Box::new(c.clone()))?;
        }
        for h in [&http_seconds, &graphql_seconds] {
            registry.register(Box::new(h.clone()))?;
        }
        for g in [&view_applied, &view_live] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(view_lag.clone()))?;
        let logins = IntGauge::new(
            "logins_recorded",
            "Logins in the event log, through every gateway",
        )?;
        let failed_logins = IntGauge::new(
            "failed_logins_recorded",
            "Failed logins in the event log (wrong passwords, disabled accounts, unknown names)",
        )?;
        let active_sessions = IntGauge::new(
            "active_sessions",
            "Sessions started and not yet ended, per the event log",
        )?;
        let events_recorded = IntGaugeVec::new(
            Opts::new(
                "events_recorded",
                "Events in the log by type, appended by any process",
            ),
            &["event_type"],
        )?;
        for g in [&logins, &failed_logins, &active_sessions] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(events_recorded.clone()))?;
        let flows_recorded = IntGaugeVec::new(
            Opts::new(
                "flows_recorded",
                "Flows finished in every job, by outcome (succeeded, failed)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(flows_recorded.clone()))?;
        let clicks_recorded = IntGauge::new(
            "clicks_recorded",
            "Finished flows that clicked, in every job",
        )?;
        let leases_recorded = IntGauge::new(
            "leases_recorded",
            "Leases of flows granted to runners, in every job",
        )?;
        let lease_expiries_recorded = IntGauge::new(
            "lease_expiries_recorded",
            "Leases that expired with their runner silent, in every job",
        )?;
        for g in [&clicks_recorded, &leases_recorded, &lease_expiries_recorded] {
            registry.register(Box::new(g.clone()))?;
        }
        Ok(Self {
            registry,
            http_requests,
            http_seconds,
            graphql_requests,
            graphql_seconds,
            events_appended,
            view_applied,
            view_live,
            view_lag,
            logins,
            failed_logins,
            active_sessions,
            events_recorded,
            flows_recorded,
            clicks_recorded,
            leases_recorded,
            lease_expiries_recorded,
        })
    }

    pub fn observe_graphql(&self, operation: &str, ok: bool, seconds: f64) {
        let outcome = if ok { "ok" } else { "error" };
        self.graphql_requests
            .with_label_values(&[operation, outcome])
            .inc();
        self.graphql_seconds
            .with_label_values(&[operation])
            .observe(seconds);
    }

    /// The text exposition, with the views' state and the log's totals as
    /// read now.
    pub fn render(&self, views: &EngineStatus, log: &LogTotals) -> String {
        let now = OffsetDateTime::now_utc();
        for (name, value) in &log.totals {
            let gauge = match name.as_str() {
                metrics_view::LOGINS => &self.logins,
                metrics_view::FAILED_LOGINS => &self.failed_logins,
                metrics_view::ACTIVE_SESSIONS => &self.active_sessions,
                _ => continue,
            };
            gauge.set(*value);
        }
        for (event_type, count) in &log.event_counts {
            self.events_recorded
                .with_label_values(&[event_type.as_str()])
                .set(*count);
            match event_type.as_str() {
                "FlowsLeased" => self.leases_recorded.set(*count),
                "LeaseExpired" => self.lease_expiries_recorded.set(*count),
                _ => {}
            }
        }
        for (name, value) in &log.jobs {
            match name.as_str() {
                "clicked" => self.clicks_recorded.set(*value),
                outcome => self
                    .flows_recorded
                    .with_label_values(&[outcome])
                    .set(*value),
            }
        }
        for p in &views.projections {
            self.view_applied
                .with_label_values(&[p.name])
                .set(p.applied as i64);
            let live = p.phase == Phase::Live && p.caught_up;
            self.view_live
                .with_label_values(&[p.name])
                .set(i64::from(live));
            let lag = if live {
                0.0
            } else {
                p.last_event_at
                    .map_or(0.0, |at| (now - at).as_seconds_f64().max(0.0))
            };
            self.view_lag.with_label_values(&[p.name]).set(lag);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `GET /metrics`.
pub async fn endpoint(State(state): State<AppState>) -> Response {
    let log = LogTotals::read(&state.views).await;
    let status = state.projections.borrow().clone();
    let body = state.metrics.render(&status, &log);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Middleware: counts, times and logs every HTTP request by its route
/// pattern (never the raw path, which clients control). Bodies, query text
/// and headers are never logged: any of them may carry a password or token.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    tracing::info!(
        target: "trafficbuster::http",
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .inc();
    m.http_seconds
        .with_label_values(&[route.as_str(), method.as_str()])
        .observe(elapsed.as_secs_f64());
    response
}

/// An event store that counts what is appended through it.
pub struct Metered {
    inner: Arc<dyn EventStore>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn EventStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl EventStore for Metered {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let types: Vec<String> = events.iter().map(|e| e.event_type.clone()).collect();
        let result = self.inner.append(stream, expected, events).await?;
        for t in &types {
            self.metrics
                .events_appended
                .with_label_values(&[t.as_str()])
                .inc();
        }
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamFrom,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, from, direction, limit).await
    }

    async fn read_event(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.read_event(id).await
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.inner.read_all(after, filter, limit).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.inner.head().await
    }

    fn subscribe_all(&self, from: SubscribeFrom, filter: Filter) -> Subscription {
        self.inner.subscribe_all(from, filter)
    }

    async fn put_blob(&self, bytes: &[u8]) -> Result<BlobHash, StoreError> {
        self.inner.put_blob(bytes).await
    }

    async fn get_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_blob(hash).await
    }

    async fn put_chunk(&self, upload: Uuid, index: u32, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put_chunk(upload, index, bytes).await
    }

    async fn chunk_indexes(&self, upload: Uuid) -> Result<Vec<u32>, StoreError> {
        self.inner.chunk_indexes(upload).await
    }

    async fn read_chunks(&self, upload: Uuid) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        self.inner.read_chunks(upload).await
    }

    async fn delete_chunks(&self, upload: Uuid) -> Result<u64, StoreError> {
        self.inner.delete_chunks(upload).await
    }

    async fn staged_uploads(&self) -> Result<Vec<Uuid>, StoreError> {
        self.inner.staged_uploads().await
    }

    async fn touch_presence(&self, presence: Presence) -> Result<(), StoreError> {
        self.inner.touch_presence(presence).await
    }

    async fn release_presence(&self, runner: Uuid, holder: Uuid) -> Result<bool, StoreError> {
        self.inner.release_presence(runner, holder).await
    }

    async fn presences(&self) -> Result<Vec<Presence>, StoreError> {
        self.inner.presences().await
    }

    async fn put_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.put_snapshot(stream, snapshot).await
    }

    async fn get_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.get_snapshot(stream).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

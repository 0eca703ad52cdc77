//! `/healthz` (the process answers) and `/readyz` (it can do its work: the
//! store answers).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use store::EventStore;

/// How long readiness waits for the store before calling it down.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(store): State<Arc<dyn EventStore>>) -> (StatusCode, Json<Value>) {
    let backend = store.backend();
    match tokio::time::timeout(STORE_CHECK_TIMEOUT, store.head()).await {
        Ok(Ok(head)) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "store": backend, "head": head.to_string() })),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "store": backend, "reason": e.to_string() })),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "store": backend,
                "reason": format!("store did not answer within {STORE_CHECK_TIMEOUT:?}"),
            })),
        ),
    }
}

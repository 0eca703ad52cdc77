//! `/healthz` (the process answers) and `/readyz` (it can do its work: the
//! store answers and every view has caught up with the log).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use projections::Phase;
use serde_json::{Value, json};

use crate::state::AppState;

/// How long readiness waits for the store before calling it down.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = &state.store;
    let backend = store.backend();
    let head = match tokio::time::timeout(STORE_CHECK_TIMEOUT, store.head()).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store check failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "store": backend, "reason": e.to_string() })),
            );
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "unavailable",
                    "store": backend,
                    "reason": format!("store did not answer within {STORE_CHECK_TIMEOUT:?}"),
                })),
            );
        }
    };
    let status = state.projections.borrow().clone();
    let views: serde_json::Map<String, Value> = status
        .projections
        .iter()
        .map(|p| {
            let phase = match (&p.phase, &p.retrying) {
                (Phase::Failed(f), _) => format!("failed: {f}"),
                (_, Some(why)) => format!("retrying: {why}"),
                (Phase::Starting, None) => "starting".to_owned(),
                (Phase::CatchingUp, None) => "catching_up".to_owned(),
                (Phase::Live, None) => "live".to_owned(),
                (Phase::Stopped, None) => "stopped".to_owned(),
            };
            (p.name.to_owned(), Value::String(phase))
        })
        .collect();
    // With several gateways on one store, each view is projected by one.
    let projecting: Vec<&str> = status
        .projections
        .iter()
        .filter(|p| p.projecting)
        .map(|p| p.name)
        .collect();
    let mut body = json!({
        "status": "catching_up",
        "store": backend,
        "head": head.to_string(),
        "views": views,
        "projecting": projecting,
    });
    if status.all_live() {
        body["status"] = json!("ready");
        return (StatusCode::OK, Json(body));
    }
    // A failed view will not recover by itself: say which, and why, first.
    if let Some((view, failure)) = status.first_failure() {
        body["status"] = json!("failed");
        body["reason"] = json!(format!("view {view} failed: {failure}"));
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

//! `/healthz` (the process answers) and `/readyz` (it can do its work: the
//! store answers and every view has caught up with the log).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use projections::Phase;
use serde_json::{Value, json};

use crate::startup::Shared;

/// How long readiness waits for the store before calling it down.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(shared): State<Shared>) -> (StatusCode, Json<Value>) {
    let store = &shared.app.store;
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
    let status = shared.app.projections.borrow().clone();
    let views: serde_json::Map<String, Value> = status
        .projections
        .iter()
        .map(|p| {
            let phase = match &p.phase {
                Phase::Starting => "starting".to_owned(),
                Phase::CatchingUp => "catching_up".to_owned(),
                Phase::Live => "live".to_owned(),
                Phase::Failed(f) => format!("failed: {}", f.error),
                Phase::Stopped => "stopped".to_owned(),
            };
            (p.name.to_owned(), Value::String(phase))
        })
        .collect();
    let ready = status.all_live();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": if ready { "ready" } else { "catching_up" },
            "store": backend,
            "head": head.to_string(),
            "views": views,
        })),
    )
}

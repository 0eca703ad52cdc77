//! One module per CLI command.

pub mod admin;
pub mod audit;
pub mod demo;
pub mod migrate;
pub mod projections;
pub mod runner;
pub mod serve;
pub mod tail;

use std::sync::Arc;

use anyhow::Context;
use store::{EventStore, MigrationReport, StoreUrl};

/// Opens the configured store (applying migrations) with a one-line error.
pub async fn open_store(url: &StoreUrl) -> anyhow::Result<(Arc<dyn EventStore>, MigrationReport)> {
    store::open(url)
        .await
        .with_context(|| format!("cannot open store {url}"))
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

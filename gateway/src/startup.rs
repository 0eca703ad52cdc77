//! Wiring: the router and the server loop with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use store::EventStore;
use tokio::net::TcpListener;

use crate::health;

/// Every route the gateway serves.
pub fn router(store: Arc<dyn EventStore>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(store)
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    store: Arc<dyn EventStore>,
}

impl Gateway {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, store: Arc<dyn EventStore>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, store })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, router(self.store))
            .with_graceful_shutdown(shutdown)
            .await
    }
}

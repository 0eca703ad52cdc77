//! How long one HTTP request may take and how many may be in flight. Past
//! either limit the gateway answers 503 at once, saying which, instead of
//! queueing without bound or holding a stuck request forever.
//!
//! A WebSocket is not cut by the timeout: its upgrade response returns at
//! once, and the socket then lives in its own task, outside this middleware.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::graphql::error::Code;

/// Longest a request may take. The slowest honest request, a login (an
/// Argon2 hash), takes well under a second; 30 s leaves room for a loaded
/// machine and still frees a stuck request's slot.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Most requests handled at once. With bodies of at most 256 KiB this bounds
/// buffered request bodies to 64 MiB, plus the few larger chunk uploads
/// `request_body` lets through; a 2-core machine has long been saturated
/// before 256 requests are really running.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 256;

/// What a client is told to wait before retrying an overloaded gateway.
const RETRY_AFTER_SECS: u64 = 1;

/// The limits; `router()` uses the defaults, tests smaller ones.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub timeout: Duration,
    pub in_flight: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            timeout: REQUEST_TIMEOUT,
            in_flight: MAX_REQUESTS_IN_FLIGHT,
        }
    }
}

struct Limiter {
    limits: HttpLimits,
    slots: Arc<Semaphore>,
}

/// `router` with every request under `limits`.
pub fn apply<S: Clone + Send + Sync + 'static>(router: Router<S>, limits: HttpLimits) -> Router<S> {
    let limiter = Arc::new(Limiter {
        limits,
        slots: Arc::new(Semaphore::new(limits.in_flight)),
    });
    router.layer(axum::middleware::from_fn_with_state(limiter, limit))
}

async fn limit(State(limiter): State<Arc<Limiter>>, request: Request, next: Next) -> Response {
    // The slot is held while the handler runs, and no longer: a response
    // body still streaming, or an upgraded WebSocket, holds none.
    let Ok(_slot) = limiter.slots.clone().try_acquire_owned() else {
        return overloaded(limiter.limits.in_flight);
    };
    match tokio::time::timeout(limiter.limits.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => timed_out(limiter.limits.timeout),
    }
}

fn overloaded(in_flight: usize) -> Response {
    let message = format!(
        "the gateway is handling its limit of {in_flight} requests; retry after {RETRY_AFTER_SECS} s"
    );
    let body = json!({ "errors": [{ "message": message, "extensions": {
        "code": Code::RateLimited.as_str(), "retryAfter": RETRY_AFTER_SECS } }] });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

fn timed_out(after: Duration) -> Response {
    let message = format!(
        "the gateway stopped this request after {} ms; a mutation may or may not have taken effect, so check before retrying it",
        after.as_millis()
    );
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": Code::Internal.as_str() } }] });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    /// Serves `router` under `limits` (through `apply`, as `router()` does) on loopback.
    async fn serve(router: Router, limits: HttpLimits) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, apply(router, limits)).await });
        addr
    }

    /// A GET: (status, lower-cased head, body).
    async fn get_path(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn a_request_slower_than_the_timeout_gets_503_saying_so() {
        let router = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "too late"
                }),
            )
            .route("/fast", get(|| async { "ok" }));
        let limits = HttpLimits {
            timeout: Duration::from_millis(100),
            in_flight: 8,
        };
        let addr = serve(router, limits).await;
        let started = std::time::Instant::now();
        let (status, _, body) = get_path(addr, "/slow").await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("stopped this request after 100 ms"), "{body}");
        assert_eq!(get_path(addr, "/fast").await.0, 200);
    }

    #[tokio::test]
    async fn past_the_in_flight_limit_requests_get_503_with_retry_after_until_a_slot_frees() {
        let release = Arc::new(Notify::new());
        let entered = Arc::new(Notify::new());
        let (r, e) = (release.clone(), entered.clone());
        let router = Router::new().route(
            "/wait",
            get(move || {
                let (r, e) = (r.clone(), e.clone());
                async move {
                    e.notify_one();
                    r.notified().await;
                    "released"
                }
            }),
        );
        let limits = HttpLimits {
            timeout: Duration::from_secs(10),
            in_flight: 1,
        };
        let addr = serve(router, limits).await;
        let first = tokio::spawn(get_path(addr, "/wait"));
        entered.notified().await;

        let (status, head, body) =
            tokio::time::timeout(Duration::from_secs(5), get_path(addr, "/wait"))
                .await
                .expect("refused at once, not queued");
        assert_eq!(status, 503, "{body}");
        assert!(head.contains("retry-after: 1"), "{head}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("limit of 1 requests"),
            "{body}"
        );

        release.notify_one();
        assert_eq!(first.await.unwrap().0, 200);
        let third = tokio::spawn(get_path(addr, "/wait"));
        entered.notified().await;
        release.notify_one();
        assert_eq!(third.await.unwrap().0, 200, "the slot was freed");
    }

    #[tokio::test]
    async fn a_websocket_outlives_the_request_timeout_and_holds_no_slot() {
        let router = Router::new().route(
            "/ws",
            get(|upgrade: axum::extract::WebSocketUpgrade| async move {
                upgrade.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        if socket.send(message).await.is_err() {
                            return;
                        }
                    }
                })
            }),
        );
        let limits = HttpLimits {
            timeout: Duration::from_millis(100),
            in_flight: 1,
        };
        let addr = serve(router, limits).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        ws.send(Message::text("still here")).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text("still here"));
        // The one slot is free while the socket is open.
        let (mut second, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        second.send(Message::text("me too")).await.unwrap();
        assert_eq!(
            second.next().await.unwrap().unwrap(),
            Message::text("me too")
        );
    }
}

//! A tiny site on loopback that records every request it gets (path, host,
//! headers), so tests assert on what really arrived.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

/// One request as the site saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Extra pages: path → HTML.
    pages: Arc<Mutex<HashMap<String, String>>>,
}

pub struct Site {
    pub addr: SocketAddr,
    shared: Shared,
}

impl Site {
    pub async fn start() -> Site {
        let shared = Shared {
            seen: Arc::default(),
            pages: Arc::default(),
        };
        let app = Router::new().fallback(serve).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Site { addr, shared }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://HOST:PORT` for this site under `host`.
    pub fn origin(&self, host: &str) -> String {
        format!("http://{host}:{}", self.port())
    }

    pub fn page(&self, path: &str, html: impl Into<String>) {
        self.shared
            .pages
            .lock()
            .unwrap()
            .insert(path.to_owned(), html.into());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn seen_path(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

async fn serve(State(shared): State<Shared>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    shared.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers: request.headers().clone(),
    });
    let html = |body: String| {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Body::from(body))
            .unwrap()
    };
    if let Some(page) = shared.pages.lock().unwrap().get(&path).cloned() {
        return html(page);
    }
    match path.as_str() {
        "/set-cookie" => Response::builder()
            .header(header::CONTENT_TYPE, "text/html")
            .header(header::SET_COOKIE, "flow=one; Path=/")
            .body(Body::from("<p>cookie set</p>"))
            .unwrap(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(20)).await;
            html("<p>slow</p>".into())
        }
        "/pixel.png" => Response::builder()
            .header(header::CONTENT_TYPE, "image/gif")
            // A 1×1 transparent GIF.
            .body(Body::from(&b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"[..]))
            .unwrap(),
        p if p.starts_with("/missing") => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("not here"))
            .unwrap(),
        _ => html(format!("<!doctype html><title>{path}</title><p>page {path}</p>")),
    }
}

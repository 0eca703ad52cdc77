//! GraphiQL, served from the binary: the page at `/graphiql` and its files
//! under `/graphiql/…`. It must never load anything from another host: on
//! a machine without internet a CDN page is blank, and every use would tell
//! a third party. `gateway/assets/graphiql/README.md` says where the files
//! come from and how to update them.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Only same-origin scripts, styles and connections (the WebSocket
/// included); fonts come inlined in GraphiQL's CSS as data: URLs.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     font-src 'self' data:; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Versioned names never change content: cache them for a year.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Our own files change with the gateway: revalidate.
const REVALIDATE: &str = "no-cache";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    cache: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:expr, $cache:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            cache: $cache,
            body: include_bytes!(concat!("../assets/graphiql/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("graphiql-3.9.0.min.js", JS, IMMUTABLE),
    asset!("graphiql-3.9.0.min.css", CSS, IMMUTABLE),
    asset!("react-18.3.1.production.min.js", JS, IMMUTABLE),
    asset!("react-dom-18.3.1.production.min.js", JS, IMMUTABLE),
    asset!("start.js", JS, REVALIDATE),
    asset!("page.css", CSS, REVALIDATE),
];

static PAGE: &str = include_str!("../assets/graphiql/index.html");

/// `/graphiql`: the page, under a strict Content-Security-Policy.
pub async fn page() -> Response {
    let mut response = respond("text/html; charset=utf-8", REVALIDATE, PAGE.as_bytes());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `/graphiql/{file}`: one of the page's files.
pub async fn file(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => respond(a.content_type, a.cache, a.body),
        None => (
            StatusCode::NOT_FOUND,
            format!("GraphiQL has no file {name:?}"),
        )
            .into_response(),
    }
}

fn respond(content_type: &'static str, cache: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

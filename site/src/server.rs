//! The site's one handler: records the request, picks the host by its Host
//! header, and answers from the chosen routes, the tracker, the images and
//! the pages. Nothing a client sends can make it panic.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::Reply;
use crate::Shared;
use crate::pages::{self, Links, Page};
use crate::record::{Beacon, SeenRequest, StrayBeacon, Visit};

const TRACKER: &str = include_str!("tracker.js");
/// Beacons are small; a batch of scrolls is a few KB.
const MAX_BEACON: usize = 64 * 1024;
const SESSION_COOKIE: &str = "tb_session";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(site): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let seen = SeenRequest {
        seq: 0,
        at: site.started.elapsed(),
        host: host_of(&parts),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        status: None,
    };
    let seen = site.record(|s| {
        let seen = SeenRequest {
            seq: s.next_request,
            ..seen
        };
        s.next_request += 1;
        s.seen.requests.push(seen.clone());
        seen
    });
    let response = answer(&site, &parts, body, &seen).await;
    let status = response.status().as_u16();
    site.record(|s| {
        let requests = &mut s.seen.requests;
        if let Ok(i) = requests.binary_search_by_key(&seen.seq, |r| r.seq) {
            requests[i].status = Some(status);
        }
    });
    response
}

/// The Host header's name (or an absolute URI's), lower case, without port.
fn host_of(parts: &Parts) -> String {
    let raw = parts
        .uri
        .host()
        .map(str::to_owned)
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let name = if let Some(v6) = raw.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        raw.rsplit_once(':').map_or(raw.as_str(), |(name, _)| name)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn answer(site: &Shared, parts: &Parts, body: Body, seen: &SeenRequest) -> Response {
    if seen.host.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "send a Host header naming one of the site's hosts",
        );
    }
    if !site.hosts.contains(&seen.host) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this site does not serve {}; it serves {}",
                seen.host,
                site.hosts.join(", ")
            ),
        );
    }
    let path = parts.uri.path();
    let route = site.lock().routes.get(path).cloned();
    match route {
        Some(Reply::File { content_type, body }) => {
            return ([(CONTENT_TYPE, content_type)], body).into_response();
        }
        Some(Reply::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return text(
                status,
                format!("{code}, as this site was told to answer {path}"),
            );
        }
        Some(Reply::Slow(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    match (&parts.method, path) {
        (&Method::POST, "/tb/beacon") => beacon(site, body, seen).await,
        (&Method::GET, "/tb/tracker.js") => (
            [
                (CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (CACHE_CONTROL, "no-cache"),
            ],
            TRACKER,
        )
            .into_response(),
        (&Method::GET, _) => {
            if let Some(n) = path
                .strip_prefix("/img/")
                .and_then(|f| f.strip_suffix(".bmp"))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n < pages::IMAGES)
            {
                return (
                    [(CONTENT_TYPE, "image/bmp"), (CACHE_CONTROL, "max-age=3600")],
                    pages::image(n),
                )
                    .into_response();
            }
            match Page::from_path(path) {
                Some(page) => page_view(site, parts, page, seen),
                None => text(StatusCode::NOT_FOUND, format!("no page at {path}")),
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not served at {path}", parts.method),
        ),
    }
}

/// A page, as a new page view of its browser session.
fn page_view(site: &Shared, parts: &Parts, page: Page, seen: &SeenRequest) -> Response {
    let cookie = session_cookie(parts);
    let (view, session, fresh) = site.record(|s| {
        s.next_view += 1;
        let view = format!("v{}", s.next_view);
        let (session, fresh) = match &cookie {
            Some(session) => (session.clone(), false),
            None => {
                s.next_session += 1;
                (format!("s{}", s.next_session), true)
            }
        };
        s.seen.visits.push(Visit {
            view: view.clone(),
            host: seen.host.clone(),
            path: parts.uri.path().to_owned(),
            session: session.clone(),
            request: SeenRequest {
                status: Some(200),
                ..seen.clone()
            },
            client: None,
            scrolls: Vec::new(),
            clicks: Vec::new(),
            left: None,
            last_beacon_at: None,
        });
        (view, session, fresh)
    });
    let others: Vec<String> = site
        .hosts
        .iter()
        .filter(|h| **h != seen.host)
        .map(|h| format!("http://{h}:{}/", site.port))
        .collect();
    let html = pages::html(
        page,
        &view,
        &Links {
            host: &seen.host,
            others: &others,
        },
    );
    let mut response = (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response();
    if fresh {
        let cookie = format!("{SESSION_COOKIE}={session}; Path=/; SameSite=Lax; HttpOnly");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(SET_COOKIE, value);
        }
    }
    response
}

fn session_cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

/// A tracker's report, joined to its page view.
async fn beacon(site: &Shared, body: Body, seen: &SeenRequest) -> Response {
    let stray = |body: String, why: String, status: StatusCode| {
        site.record(|s| {
            s.seen.stray_beacons.push(StrayBeacon {
                at: site.started.elapsed(),
                host: seen.host.clone(),
                body,
                why: why.clone(),
            })
        });
        text(status, why)
    };
    let bytes = match to_bytes(body, MAX_BEACON).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return stray(
                String::new(),
                format!("a beacon of at most {MAX_BEACON} bytes: {e}"),
                StatusCode::PAYLOAD_TOO_LARGE,
            );
        }
    };
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let beacon: Beacon = match serde_json::from_str(&raw) {
        Ok(beacon) => beacon,
        Err(e) => return stray(raw, format!("not a beacon: {e}"), StatusCode::BAD_REQUEST),
    };
    let at = site.started.elapsed();
    let view = beacon.view().to_owned();
    let applied = site.record(|s| {
        let visit = s.seen.visits.iter_mut().rev().find(|v| v.view == view);
        visit.map(|visit| beacon.apply(visit, at)).is_some()
    });
    if applied {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let why = format!("no page view {view:?} was served here");
        stray(raw, why, StatusCode::NOT_FOUND)
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

//! A small web site on loopback that records what it sees, so tests (and
//! the demo, and the runner bench) can check what a browser really did:
//! [`start`] serves the same multi-page site under several host names
//! (chosen by the Host header; the browser maps the names to 127.0.0.1),
//! with internal and external links, images and a tracker script, and keeps
//! every request and every tracker beacon in memory ([`RunningSite::seen`]).
//! Chosen paths can be made to answer a file, an error or slowly
//! ([`Reply`]), e.g. the domain-verification token or a 503.
//!
//! Paths: `/` and `/page/1` … `/page/6` (full pages, ~50 KB with images),
//! `/short` (fits a viewport), `/no-links`, `/img/N.bmp`, `/tb/tracker.js`,
//! `POST /tb/beacon`.
//!
//! [`dns::DnsServer`] resolves the site's names to loopback for whoever
//! cannot be given host mappings (the gateway's domain verification).

pub mod dns;
mod pages;
mod record;
mod server;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use pages::ARTICLES;
pub use record::{
    ClickSeen, ClientInfo, LeftSeen, MARKER_HEADER, ScrollSeen, Seen, SeenRequest, StrayBeacon,
    Visit,
};

/// How a chosen path answers, on every host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This body, with this content type, status 200.
    File { content_type: String, body: String },
    /// This status, with a short text body.
    Status(u16),
    /// Wait this long, then answer as the site would.
    Slow(Duration),
}

impl Reply {
    /// A plain-text file (such as a verification token).
    pub fn text(body: impl Into<String>) -> Self {
        Reply::File {
            content_type: "text/plain; charset=utf-8".to_owned(),
            body: body.into(),
        }
    }
}

/// What to serve.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// The host names answered (others get 421); links from one host's
    /// pages lead to each other one.
    pub hosts: Vec<String>,
    /// Paths (without query) answered otherwise than the site would.
    pub routes: BTreeMap<String, Reply>,
    /// The address to listen on; the port is chosen by the OS.
    pub ip: IpAddr,
}

impl SiteOptions {
    /// A site answering under `hosts`, on 127.0.0.1.
    pub fn new<S: Into<String>>(hosts: impl IntoIterator<Item = S>) -> Self {
        Self {
            hosts: hosts.into_iter().map(Into::into).collect(),
            routes: BTreeMap::new(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Answers `path` with `reply`.
    pub fn route(mut self, path: impl Into<String>, reply: Reply) -> Self {
        self.routes.insert(path.into(), reply);
        self
    }
}

/// The site could not start.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("give the site at least one host name")]
    NoHosts,
    #[error("{0:?} is not a host name (letters, digits, '-' and '.', no port)")]
    BadHost(String),
    #[error("a route's path must start with '/': {0:?}")]
    BadRoute(String),
    #[error("could not listen on {ip}: {source}")]
    Bind {
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A site being served; stops when dropped.
pub struct RunningSite {
    addr: SocketAddr,
    hosts: Vec<String>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// What the server and the [`RunningSite`] share.
pub(crate) struct Shared {
    pub(crate) started: Instant,
    pub(crate) port: u16,
    pub(crate) hosts: Vec<String>,
    pub(crate) state: Mutex<State>,
    /// Bumped on every record, for [`RunningSite::wait_until`].
    pub(crate) changes: watch::Sender<u64>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) seen: Seen,
    pub(crate) routes: BTreeMap<String, Reply>,
    pub(crate) next_request: u64,
    pub(crate) next_view: u64,
    pub(crate) next_session: u64,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panicked holder cannot leave the records half-written in a way
        // that matters to a test; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and wakes whoever waits on it.
    pub(crate) fn record<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let out = change(&mut self.lock());
        self.changes.send_modify(|n| *n += 1);
        out
    }
}

/// Starts serving `options` on a port the OS picks.
pub async fn start(options: SiteOptions) -> Result<RunningSite, SiteError> {
    if options.hosts.is_empty() {
        return Err(SiteError::NoHosts);
    }
    let mut hosts = Vec::with_capacity(options.hosts.len());
    for host in &options.hosts {
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(SiteError::BadHost(host.clone()));
        }
        hosts.push(host.to_ascii_lowercase());
    }
    if let Some(path) = options.routes.keys().find(|p| !p.starts_with('/')) {
        return Err(SiteError::BadRoute(path.clone()));
    }
    let listener = tokio::net::TcpListener::bind((options.ip, 0))
        .await
        .and_then(|l| l.local_addr().map(|a| (l, a)));
    let (listener, addr) = listener.map_err(|source| SiteError::Bind {
        ip: options.ip,
        source,
    })?;
    let shared = Arc::new(Shared {
        started: Instant::now(),
        port: addr.port(),
        hosts: hosts.clone(),
        state: Mutex::new(State {
            routes: options.routes,
            ..State::default()
        }),
        changes: watch::Sender::new(0),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let app = server::router(shared.clone());
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            eprintln!("the recording site stopped serving: {e}");
        }
    });
    Ok(RunningSite {
        addr,
        hosts,
        shared,
        stop: Some(stop),
        task: Some(task),
    })
}

/// The site's recording did not reach the awaited state in time.
#[derive(Debug, thiserror::Error)]
#[error("the site did not see what was awaited within {0:?}")]
pub struct TimedOut(pub Duration);

impl RunningSite {
    /// Where it listens (on its IP, not under a host name).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The host names it answers, lower case, in the order given.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// `http://host:port/path` (`path` starts with '/').
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port())
    }

    /// Chromium's `--host-resolver-rules` value that sends every host name
    /// of the site to its address.
    pub fn host_resolver_rules(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        self.hosts
            .iter()
            .map(|h| format!("MAP {h} {ip}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// From now on, answers `path` (without query) with `reply`.
    pub fn set_route(&self, path: &str, reply: Reply) {
        self.shared.lock().routes.insert(path.to_owned(), reply);
    }

    /// From now on, answers `path` as the site does.
    pub fn clear_route(&self, path: &str) {
        self.shared.lock().routes.remove(path);
    }

    /// A copy of everything seen so far.
    pub fn seen(&self) -> Seen {
        self.shared.lock().seen.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.lock().seen.requests.clone()
    }

    /// Requests so far whose Host was `host`.
    pub fn requests_to(&self, host: &str) -> Vec<SeenRequest> {
        let state = self.shared.lock();
        state.seen.requests_to(host).into_iter().cloned().collect()
    }

    /// Page views so far, with what their trackers reported.
    pub fn visits(&self) -> Vec<Visit> {
        self.shared.lock().seen.visits.clone()
    }

    /// Page views so far under `host`.
    pub fn visits_to(&self, host: &str) -> Vec<Visit> {
        let state = self.shared.lock();
        state.seen.visits_to(host).into_iter().cloned().collect()
    }

    /// Forgets everything seen so far (routes stay).
    pub fn clear(&self) {
        self.shared.record(|s| s.seen = Seen::default());
    }

    /// Waits until `check` finds what it looks for in what the site has
    /// seen, checking again on every new record.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Seen) -> Option<T>,
    ) -> Result<T, TimedOut> {
        let mut changes = self.shared.changes.subscribe();
        let found = tokio::time::timeout(timeout, async {
            loop {
                changes.mark_unchanged();
                if let Some(found) = check(&self.shared.lock().seen) {
                    return found;
                }
                // The sender lives in `self`, so this never ends in error.
                let _ = changes.changed().await;
            }
        });
        found.await.map_err(|_| TimedOut(timeout))
    }

    /// Stops serving and waits (up to 5 s) for open connections to close.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RunningSite {
    fn drop(&mut self) {
        // Stop accepting and close idle connections; requests under way
        // finish on their own.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

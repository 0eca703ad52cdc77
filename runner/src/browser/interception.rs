//! The browser's one network gate: DevTools' Fetch domain enabled on the
//! *browser* target pauses every request of every page, frame and worker
//! of every context before it leaves Chromium. Each is tied to its flow
//! (by the frame that made it) and checked against that flow's allowed
//! hosts: allowed ones go on (with the marker header when the flow asked
//! for it), the rest fail as `BlockedByClient` and are recorded. A request
//! that cannot be tied to a flow goes on only if every live flow allows its
//! host. Proxy credentials are answered here too. There is no switch to
//! turn any of this off.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::fetch::{
    AuthChallengeResponse, AuthChallengeResponseResponse, AuthChallengeSource,
    ContinueRequestParams, ContinueWithAuthParams, EnableParams, EventAuthRequired,
    EventRequestPaused, FailRequestParams, HeaderEntry, RequestPattern, RequestStage,
};
use chromiumoxide::cdp::browser_protocol::network::ErrorReason;
use chromiumoxide::cdp::browser_protocol::target::{EventTargetCreated, EventTargetDestroyed};
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};

use super::consent::{AllowedHosts, BlockReason, BlockedRequest};
use super::error::LaunchError;

/// The marker header site owners filter this traffic out with.
pub const MARKER_HEADER: &str = "X-TrafficBuster-Job";

/// Blocked requests kept per flow; more are counted, not kept.
const MAX_BLOCKED: usize = 200;
/// How long a request from a frame not yet known waits for its target's
/// announcement before the stricter unattributed rule applies.
const ATTRIBUTION_WAIT: Duration = Duration::from_millis(250);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What one flow's context may do on the network.
pub(crate) struct ContextPolicy {
    pub allowed: AllowedHosts,
    /// The job id to send in the marker header, when the flow asked for it.
    pub marker: Option<String>,
    pub proxy_auth: Option<ProxyAuth>,
    blocked: Mutex<BlockedLog>,
    /// The proxy challenged again after being given the credentials.
    proxy_rejected: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct BlockedLog {
    kept: Vec<BlockedRequest>,
    total: u64,
}

/// Credentials for a context's proxy, answered when it challenges.
pub(crate) struct ProxyAuth {
    /// `host:port` of the proxy, as the challenge's origin names it.
    pub address: String,
    pub username: String,
    pub password: SecretString,
}

impl ContextPolicy {
    pub fn new(
        allowed: AllowedHosts,
        marker: Option<String>,
        proxy_auth: Option<ProxyAuth>,
    ) -> Self {
        ContextPolicy {
            allowed,
            marker,
            proxy_auth,
            blocked: Mutex::default(),
            proxy_rejected: Default::default(),
        }
    }

    /// Did the flow's proxy refuse its credentials?
    pub fn proxy_rejected(&self) -> bool {
        self.proxy_rejected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn record(&self, blocked: BlockedRequest) {
        let mut log = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        log.total += 1;
        if log.kept.len() < MAX_BLOCKED && !log.kept.contains(&blocked) {
            log.kept.push(blocked);
        }
    }

    /// The distinct requests blocked so far, and how many were blocked in all.
    pub fn blocked(&self) -> (Vec<BlockedRequest>, u64) {
        let log = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        (log.kept.clone(), log.total)
    }
}

/// Which flow each context and frame belongs to.
#[derive(Default)]
pub(crate) struct Guard {
    state: Mutex<GuardState>,
    /// Requests whose proxy challenge got credentials once already.
    auth_tried: Mutex<HashSet<String>>,
}

#[derive(Default)]
struct GuardState {
    contexts: HashMap<String, Arc<ContextPolicy>>,
    /// Target and frame ids → context id.
    frames: HashMap<String, String>,
}

/// What to do with one paused request.
enum Verdict {
    Continue { marker: Option<String> },
    Fail,
}

impl Guard {
    pub fn register(&self, context: &str, policy: Arc<ContextPolicy>) {
        self.lock().contexts.insert(context.to_owned(), policy);
    }

    pub fn unregister(&self, context: &str) {
        let mut state = self.lock();
        state.contexts.remove(context);
        state.frames.retain(|_, c| c != context);
    }

    /// Flow contexts open now.
    pub fn contexts(&self) -> usize {
        self.lock().contexts.len()
    }

    /// A frame (or target) seen in a context.
    pub fn note_frame(&self, frame: &str, context: &str) {
        self.lock()
            .frames
            .insert(frame.to_owned(), context.to_owned());
    }

    fn forget_frame(&self, frame: &str) {
        self.lock().frames.remove(frame);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn policy_of(&self, frame: &str) -> Option<Arc<ContextPolicy>> {
        let state = self.lock();
        let context = state.frames.get(frame)?;
        state.contexts.get(context).cloned()
    }

    /// The frame's flow, waiting a moment for a frame not yet announced
    /// (a new iframe's first request can come before its target).
    async fn attribute(&self, frame: &str) -> Option<Arc<ContextPolicy>> {
        if frame.is_empty() {
            return None;
        }
        let deadline = tokio::time::Instant::now() + ATTRIBUTION_WAIT;
        loop {
            if let Some(policy) = self.policy_of(frame) {
                return Some(policy);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn judge(&self, frame: &str, url: &str) -> Verdict {
        if let Some(policy) = self.attribute(frame).await {
            return match policy.allowed.check(url) {
                Ok(()) => Verdict::Continue {
                    marker: policy.marker.clone(),
                },
                Err(blocked) => {
                    policy.record(blocked);
                    Verdict::Fail
                }
            };
        }
        // Not tied to a flow: allowed only when no live flow would object.
        let live: Vec<Arc<ContextPolicy>> = self.lock().contexts.values().cloned().collect();
        let objecting: Vec<&Arc<ContextPolicy>> = live
            .iter()
            .filter(|p| p.allowed.check(url).is_err())
            .collect();
        if live.is_empty() || !objecting.is_empty() {
            let host = url::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            for policy in objecting {
                policy.record(BlockedRequest {
                    host: host.clone(),
                    reason: BlockReason::Unattributed,
                });
            }
            return Verdict::Fail;
        }
        Verdict::Continue { marker: None }
    }

    /// Credentials for a proxy challenge: the frame's flow's proxy, else the
    /// live flow whose proxy is the one challenging.
    fn proxy_credentials(&self, frame: &str, origin: &str) -> Option<(String, SecretString)> {
        let address = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/');
        let state = self.lock();
        let by_frame = state
            .frames
            .get(frame)
            .and_then(|c| state.contexts.get(c))
            .and_then(|p| p.proxy_auth.as_ref())
            .filter(|a| a.address == address);
        let auth = by_frame.or_else(|| {
            state
                .contexts
                .values()
                .filter_map(|p| p.proxy_auth.as_ref())
                .find(|a| a.address == address)
        })?;
        Some((auth.username.clone(), auth.password.clone()))
    }
}

/// Starts the gate on a freshly connected browser: listens for targets,
/// paused requests and auth challenges, then enables Fetch for all of them.
/// Returns the task that serves them (it ends when the connection does).
pub(crate) async fn start(
    browser: Arc<chromiumoxide::Browser>,
    guard: Arc<Guard>,
) -> Result<tokio::task::JoinHandle<()>, LaunchError> {
    let setup = |e: String| LaunchError::Setup {
        command: "Fetch.enable",
        reason: e,
    };
    let listen = async {
        Ok::<_, chromiumoxide::error::CdpError>((
            browser.event_listener::<EventTargetCreated>().await?,
            browser.event_listener::<EventTargetDestroyed>().await?,
            browser.event_listener::<EventRequestPaused>().await?,
            browser.event_listener::<EventAuthRequired>().await?,
        ))
    };
    let (mut created, mut destroyed, mut paused, mut auth) =
        tokio::time::timeout(COMMAND_TIMEOUT, listen)
            .await
            .map_err(|_| setup("no answer".into()))?
            .map_err(|e| setup(e.to_string()))?;
    let enable = EnableParams::builder()
        .pattern(
            RequestPattern::builder()
                .url_pattern("*")
                .request_stage(RequestStage::Request)
                .build(),
        )
        .handle_auth_requests(true)
        .build();
    tokio::time::timeout(COMMAND_TIMEOUT, browser.execute(enable))
        .await
        .map_err(|_| setup("no answer".into()))?
        .map_err(|e| setup(e.to_string()))?;

    Ok(tokio::spawn(async move {
        loop {
            // Targets first, so a request is judged after its target's news.
            tokio::select! {
                biased;
                Some(ev) = created.next() => {
                    if let Some(context) = &ev.target_info.browser_context_id {
                        guard.note_frame(ev.target_info.target_id.as_ref(), context.as_ref());
                    }
                }
                Some(ev) = destroyed.next() => guard.forget_frame(ev.target_id.as_ref()),
                Some(ev) = paused.next() => {
                    tokio::spawn(on_paused(browser.clone(), guard.clone(), ev));
                }
                Some(ev) = auth.next() => {
                    tokio::spawn(on_auth(browser.clone(), guard.clone(), ev));
                }
                else => break,
            }
        }
    }))
}

async fn on_paused(
    browser: Arc<chromiumoxide::Browser>,
    guard: Arc<Guard>,
    ev: Arc<EventRequestPaused>,
) {
    let verdict = guard.judge(ev.frame_id.as_ref(), &ev.request.url).await;
    let sent = match verdict {
        Verdict::Fail => {
            let fail = FailRequestParams::new(ev.request_id.clone(), ErrorReason::BlockedByClient);
            tokio::time::timeout(COMMAND_TIMEOUT, browser.execute(fail))
                .await
                .map(|r| r.map(drop))
        }
        Verdict::Continue { marker } => {
            let mut go = ContinueRequestParams::new(ev.request_id.clone());
            if let Some(job) = marker {
                go.headers = Some(with_marker(&ev.request.headers.0, &job));
            }
            tokio::time::timeout(COMMAND_TIMEOUT, browser.execute(go))
                .await
                .map(|r| r.map(drop))
        }
    };
    match sent {
        Ok(Ok(())) => {}
        // The page or browser went away meanwhile: nothing left to answer.
        Ok(Err(e)) => tracing::debug!(error = %e, "a paused request could not be answered"),
        Err(_) => tracing::warn!("Chromium did not answer a paused request's verdict in time"),
    }
}

/// The request's headers plus the marker (replacing one the page set).
fn with_marker(headers: &serde_json::Value, job: &str) -> Vec<HeaderEntry> {
    let mut entries: Vec<HeaderEntry> = headers
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| !name.eq_ignore_ascii_case(MARKER_HEADER))
        .map(|(name, value)| HeaderEntry {
            name: name.clone(),
            value: value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned),
        })
        .collect();
    entries.push(HeaderEntry {
        name: MARKER_HEADER.to_owned(),
        value: job.to_owned(),
    });
    entries
}

async fn on_auth(
    browser: Arc<chromiumoxide::Browser>,
    guard: Arc<Guard>,
    ev: Arc<EventAuthRequired>,
) {
    let challenge = &ev.auth_challenge;
    let request = ev.request_id.as_ref();
    let offered_before = guard
        .auth_tried
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(request);
    // A second challenge on a request that already carried the proxy's
    // credentials is the proxy refusing them, whatever it calls itself
    // (tinyproxy answers a wrong password with 401 and WWW-Authenticate).
    if offered_before && let Some(policy) = guard.policy_of(ev.frame_id.as_ref()) {
        policy
            .proxy_rejected
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let credentials = match challenge.source {
        Some(AuthChallengeSource::Proxy) if !offered_before => {
            guard.proxy_credentials(ev.frame_id.as_ref(), &challenge.origin)
        }
        // A site's own login is none of the runner's business, and refused
        // credentials are not offered twice.
        _ => None,
    };
    let response = match credentials {
        Some((username, password)) => {
            let mut tried = guard.auth_tried.lock().unwrap_or_else(|e| e.into_inner());
            if tried.len() > 10_000 {
                tried.clear();
            }
            tried.insert(request.to_owned());
            AuthChallengeResponse {
                response: AuthChallengeResponseResponse::ProvideCredentials,
                username: Some(username),
                password: Some(password.expose_secret().to_owned()),
            }
        }
        None => AuthChallengeResponse::new(AuthChallengeResponseResponse::CancelAuth),
    };
    let answer = ContinueWithAuthParams::new(ev.request_id.clone(), response);
    if !matches!(
        tokio::time::timeout(COMMAND_TIMEOUT, browser.execute(answer)).await,
        Ok(Ok(_))
    ) {
        tracing::debug!("an auth challenge could not be answered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> Arc<ContextPolicy> {
        Arc::new(ContextPolicy::new(AllowedHosts::new(hosts), None, None))
    }

    #[tokio::test]
    async fn a_request_is_judged_by_its_own_flows_hosts() {
        let guard = Guard::default();
        let a = policy(&["a.test"]);
        guard.register("ctx-a", a.clone());
        guard.register("ctx-b", policy(&["b.test"]));
        guard.note_frame("frame-a", "ctx-a");
        assert!(matches!(
            guard.judge("frame-a", "http://a.test/").await,
            Verdict::Continue { .. }
        ));
        assert!(matches!(
            guard.judge("frame-a", "http://b.test/").await,
            Verdict::Fail
        ));
        let (blocked, total) = a.blocked();
        assert_eq!(total, 1);
        assert_eq!(blocked[0].host, "b.test");
        assert_eq!(blocked[0].reason, BlockReason::NotConsented);
    }

    #[tokio::test]
    async fn an_unattributed_request_goes_on_only_if_every_flow_allows_it() {
        let guard = Guard::default();
        assert!(matches!(
            guard.judge("", "http://a.test/").await,
            Verdict::Fail
        ));
        guard.register("ctx-a", policy(&["a.test", "shared.test"]));
        guard.register("ctx-b", policy(&["shared.test"]));
        assert!(matches!(
            guard.judge("", "http://shared.test/x").await,
            Verdict::Continue { marker: None }
        ));
        assert!(matches!(
            guard.judge("unknown-frame", "http://a.test/").await,
            Verdict::Fail
        ));
    }

    #[test]
    fn the_marker_header_replaces_one_the_page_set() {
        let headers = serde_json::json!({"Accept": "*/*", "x-trafficbuster-job": "forged"});
        let entries = with_marker(&headers, "job-1");
        let markers: Vec<_> = entries
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(MARKER_HEADER))
            .collect();
        assert_eq!(markers.len(), 1);
        assert_eq!(markers[0].value, "job-1");
        assert!(entries.iter().any(|h| h.name == "Accept"));
    }

    #[test]
    fn proxy_credentials_go_to_the_proxy_that_challenges() {
        let guard = Guard::default();
        let auth = ProxyAuth {
            address: "127.0.0.1:8888".into(),
            username: "u".into(),
            password: SecretString::from("p"),
        };
        guard.register(
            "ctx",
            Arc::new(ContextPolicy::new(
                AllowedHosts::default(),
                None,
                Some(auth),
            )),
        );
        let (user, _) = guard
            .proxy_credentials("", "http://127.0.0.1:8888")
            .unwrap();
        assert_eq!(user, "u");
        assert!(
            guard
                .proxy_credentials("", "http://127.0.0.1:9999")
                .is_none()
        );
    }
}

//! The browser executor: runs one flow as a session in its own browser
//! context, as its job's brief and the behaviour planner say — device
//! emulation, a proxy with failover, the referrer, scrolling, pages and the
//! click — and tells what happened as the flow's report. Consent is the
//! browser's own gate (every request checked against the brief's domains);
//! this layer only chooses what to try.
//!
//! Each page reports its Web Vitals, read as the flow leaves it; a failed
//! flow keeps its screenshot, console errors and request log as artifacts,
//! with the proxies' credentials blanked out.
//!
//! A flow never reports success without a browser: a browser that cannot
//! launch or dies fails the flow with that reason.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datasets::{
    Dns, HumanSurfing, ProxyScheme as StoredScheme, SettingsProfile, Span as StoredSpan, Target,
    TrafficType,
};
use domain::artifact::ArtifactKind;
use domain::domain_name::DomainName;
use domain::flow::{
    Click, FlowFailure, FlowFinished, FlowOutcome, LogLevel, PageLoad, ProxyIndex, SkipReason,
};
use domain::job_brief::{self, JobBrief, ProxySwitching};
use domain::runner_protocol::Traffic;
use domain::web_vitals::PageVitals;
use secrecy::SecretString;
use url::Url;

use crate::behaviour::{self, Exit, LinkKind, Observation, Step};
use crate::browser::{
    AllowedHosts, Browser, CapacityModel, FlowContext, FlowError, FlowPage, FlowSpec, LaunchError,
    LaunchOptions, Link, Navigation, ProxyEndpoint, WebVitals,
};
use crate::worker::{Artifact, Executor, Finished, Order, Progress};

/// Longest a flow may take beyond its planned session (loads, the click's
/// landing page) before it fails as timed out, unless set.
pub const OVERRUN: Duration = Duration::from_secs(60);
/// Time left a timed-out flow to keep its screenshot, console errors and
/// request log before it is cut off regardless.
const ARTIFACTS_GRACE: Duration = Duration::from_secs(15);

/// Runs flows in Chromium: one warm browser per distinct DNS mapping.
pub struct BrowserExecutor {
    shared: Arc<Shared>,
    /// How long a flow may take beyond its planned session.
    overrun: Duration,
}

struct Shared {
    launch: LaunchOptions,
    /// The most flows at once, as configured.
    configured: u32,
    /// What memory allows now (re-measured as flows run).
    capacity: AtomicU32,
    model: Mutex<CapacityModel>,
    browsers: tokio::sync::Mutex<BTreeMap<BTreeMap<String, IpAddr>, Arc<Browser>>>,
    /// The proxy each job's `on_failure` flows keep until it fails.
    kept_proxy: Mutex<BTreeMap<domain::job::JobId, ProxyIndex>>,
    /// When memory was last measured.
    measured_at: Mutex<Option<Instant>>,
}

/// Memory is measured at most this often: a measure reads the /proc
/// entries of every process on the machine.
const REMEASURE_EVERY: Duration = Duration::from_secs(2);

impl BrowserExecutor {
    /// Launches the runner's browser (the system-DNS one) to prove it runs:
    /// a runner that cannot start its browser must not register.
    pub async fn start(launch: LaunchOptions, configured: u32) -> Result<Self, LaunchError> {
        let first = Browser::launch(launch.clone()).await?;
        let shared = Arc::new(Shared {
            launch,
            configured,
            capacity: AtomicU32::new(configured.max(1)),
            model: Mutex::new(CapacityModel::new(
                crate::browser::capacity::PRIOR_PER_CONTEXT,
            )),
            browsers: tokio::sync::Mutex::new(BTreeMap::from([(BTreeMap::new(), Arc::new(first))])),
            kept_proxy: Mutex::default(),
            measured_at: Mutex::default(),
        });
        shared.remeasure().await;
        Ok(Self {
            shared,
            overrun: OVERRUN,
        })
    }

    /// How long a flow may take beyond its planned session (loads, the
    /// click's landing page) before it fails as timed out (default 60 s).
    pub fn with_overrun(mut self, overrun: Duration) -> Self {
        self.overrun = overrun;
        self
    }

    /// The browser's version, as a runner registers it.
    pub async fn version(&self) -> Option<String> {
        let browsers = self.shared.browsers.lock().await;
        browsers.values().next().and_then(|b| b.version())
    }
}

impl Shared {
    /// Re-measures memory and the slots it allows, unless it did lately.
    async fn remeasure(&self) {
        {
            let mut at = self.measured_at.lock().unwrap_or_else(|p| p.into_inner());
            if at.is_some_and(|t| t.elapsed() < REMEASURE_EVERY) {
                return;
            }
            *at = Some(Instant::now());
        }
        let browsers: Vec<Arc<Browser>> = self.browsers.lock().await.values().cloned().collect();
        // Reading /proc blocks: off the runtime's threads.
        let measured = tokio::task::spawn_blocking(move || {
            let available = crate::browser::capacity::available_memory().unwrap_or(u64::MAX);
            let samples: Vec<_> = browsers.iter().filter_map(|b| b.memory().ok()).collect();
            (available, samples)
        })
        .await;
        let Ok((available, samples)) = measured else {
            return;
        };
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let mut open = 0;
        for sample in samples {
            open += sample.contexts;
            model.observe(sample);
        }
        let slots = model.slots(self.configured, available, open);
        self.capacity.store(slots.max(1), Ordering::Relaxed);
    }

    /// The browser for a DNS mapping, launched when first needed.
    async fn browser(&self, hosts: BTreeMap<String, IpAddr>) -> Result<Arc<Browser>, LaunchError> {
        let mut browsers = self.browsers.lock().await;
        if let Some(b) = browsers.get(&hosts) {
            return Ok(b.clone());
        }
        // Within the memory budget: a mapping set nobody uses now makes way.
        if browsers.len() >= 2 {
            let idle = browsers
                .iter()
                .find(|(k, b)| !k.is_empty() && Arc::strong_count(b) == 1)
                .map(|(k, _)| k.clone());
            if let Some(k) = idle {
                browsers.remove(&k);
            }
        }
        let mut options = self.launch.clone();
        options.host_rules = hosts.clone();
        let browser = Arc::new(Browser::launch(options).await?);
        browsers.insert(hosts, browser.clone());
        Ok(browser)
    }
}

impl Executor for BrowserExecutor {
    fn capacity(&self) -> u32 {
        self.shared.capacity.load(Ordering::Relaxed)
    }

    fn run(
        &self,
        order: Order,
        progress: Progress,
    ) -> impl std::future::Future<Output = Finished> + Send + 'static {
        let shared = self.shared.clone();
        let overrun = self.overrun;
        async move {
            let began = Instant::now();
            let mut session = Session {
                shared: shared.clone(),
                overrun,
                order,
                progress,
                pages: Vec::new(),
                clicks: Vec::new(),
                proxy: None,
                artifacts: Vec::new(),
            };
            let (outcome, rest) = session.run().await;
            shared.remeasure().await;
            Finished {
                report: FlowFinished {
                    flow: session.order.flow,
                    outcome,
                    duration_ms: began.elapsed().as_millis() as u64,
                    proxy: session.proxy,
                    pages: session.pages,
                    clicks: session.clicks,
                    artifacts: Vec::new(),
                },
                rest,
                artifacts: session.artifacts,
            }
        }
    }
}

/// One flow underway.
struct Session {
    shared: Arc<Shared>,
    overrun: Duration,
    order: Order,
    progress: Progress,
    pages: Vec<PageLoad>,
    clicks: Vec<Click>,
    proxy: Option<ProxyIndex>,
    /// What the flow kept for debugging, if it failed.
    artifacts: Vec<Artifact>,
}

impl Session {
    /// Runs the flow: its outcome, and the rest its slot takes after it.
    async fn run(&mut self) -> (FlowOutcome, Duration) {
        let Some(brief) = self.order.terms.brief() else {
            return (
                failed(FlowFailure::Other {
                    detail: "the gateway sent no job brief (it speaks runner protocol 1): upgrade the gateway".into(),
                }),
                Duration::ZERO,
            );
        };
        let settings = settings_of(&brief);
        let target = match target_of(&self.order.url, &self.order.traffic) {
            Ok(t) => t,
            Err(why) => return (failed(FlowFailure::Other { detail: why }), Duration::ZERO),
        };
        let plan = match behaviour::plan(&settings, &target, self.order.click, seed(&self.order)) {
            Ok(plan) => plan,
            Err(e) => {
                return (
                    failed(FlowFailure::Other {
                        detail: e.to_string(),
                    }),
                    Duration::ZERO,
                );
            }
        };
        let rest = plan.delay_before_next_flow;
        let budget = plan.dwell + self.overrun;
        let deadline = tokio::time::Instant::now() + budget;
        // The session times itself out once its page is open, to keep what
        // a timed-out flow saw; this bounds the rest, artifacts included.
        let backstop = budget + ARTIFACTS_GRACE;
        let outcome =
            match tokio::time::timeout(backstop, self.session(&brief, plan, deadline)).await {
                Ok(Ok(())) => FlowOutcome::Succeeded,
                Ok(Err(failure)) => failed(failure),
                Err(_) => failed(FlowFailure::Timeout),
            };
        (outcome, rest)
    }

    async fn session(
        &mut self,
        brief: &JobBrief,
        plan: behaviour::SessionPlan,
        deadline: tokio::time::Instant,
    ) -> Result<(), FlowFailure> {
        let profile = self
            .order
            .profile
            .and_then(|row| brief.profile(row))
            .or_else(|| brief.profiles.first())
            .ok_or_else(|| FlowFailure::Other {
                detail: "the job's brief has no device profile this runner serves".into(),
            })?;
        let hosts: BTreeMap<String, IpAddr> = brief
            .hosts
            .iter()
            .map(|m| (m.host.to_string(), m.address))
            .collect();
        let browser = self
            .shared
            .browser(hosts)
            .await
            .map_err(|e| FlowFailure::Browser {
                detail: e.to_string(),
            })?;
        let allowed = AllowedHosts::new(
            brief
                .domains
                .iter()
                .chain(&self.order.terms.external_click_domains)
                .map(|d| d.to_string()),
        );
        let marker = brief
            .behaviour
            .marker_header
            .then(|| self.order.job.to_string());
        let referrer = plan.referrer.as_ref().map(Url::to_string);

        // Open the context and load the target, failing over between proxies.
        let mut tried = Vec::new();
        let (context, first) = loop {
            let proxy = self.pick_proxy(brief, &tried);
            if !brief.proxies.is_empty() && proxy.is_none() {
                return Err(FlowFailure::Proxy {
                    detail: match tried.last() {
                        Some(_) => "every usable proxy of the job failed".into(),
                        None => "every proxy of the job is disabled".into(),
                    },
                });
            }
            let spec = FlowSpec {
                allowed_hosts: allowed.clone(),
                device: device_of(profile),
                proxy: proxy.and_then(|p| brief.proxy(p)).map(endpoint_of),
                marker: marker.clone(),
            };
            self.proxy = proxy;
            let context = browser
                .new_context(spec)
                .await
                .map_err(|e| flow_failure(&e))?;
            if tried.is_empty() {
                self.progress.started(proxy);
            }
            match context
                .page()
                .navigate(&self.order.url, referrer.as_deref())
                .await
            {
                Ok(nav) => break (context, nav),
                Err(FlowError::Proxy(e)) => {
                    let from = proxy.unwrap_or(ProxyIndex(0));
                    tried.push(from);
                    let next = self.pick_proxy(brief, &tried);
                    self.progress.failed_over(from, next, e.to_string());
                    self.forget_kept(from);
                    let _ = context.close().await;
                }
                Err(e) => {
                    let failure = flow_failure(&e);
                    self.keep_failure(brief, &context, &failure).await;
                    let _ = context.close().await;
                    return Err(failure);
                }
            }
        };
        if let Some(p) = self.proxy {
            self.keep(brief, p);
        }
        let result = tokio::time::timeout_at(deadline, self.pages_of(&context, plan, first))
            .await
            .unwrap_or(Err(FlowFailure::Timeout));
        match &result {
            Ok(()) => self.measure(context.page()).await,
            Err(e) => self.keep_failure(brief, &context, e).await,
        }
        let _ = context.close().await;
        result
    }

    /// Reads each page as planned, from the loaded target on.
    async fn pages_of(
        &mut self,
        context: &FlowContext,
        plan: behaviour::SessionPlan,
        first: Navigation,
    ) -> Result<(), FlowFailure> {
        let page = context.page();
        let started = Instant::now();
        self.loaded(&first)?;
        for page_plan in &plan.pages {
            let mut script = page_plan.script();
            loop {
                let m = page.metrics().await.map_err(|e| flow_failure(&e))?;
                let now = Observation {
                    elapsed: started.elapsed(),
                    page_height: m.scroll_height.max(0.0) as u32,
                    viewport_height: m.viewport_height.max(0.0) as u32,
                    scroll_y: m.scroll_y.max(0.0) as u32,
                };
                match script.next(&now) {
                    Step::Scroll { to, duration } => {
                        let dy = f64::from(to) - m.scroll_y;
                        page.scroll_by(dy, duration)
                            .await
                            .map_err(|e| flow_failure(&e))?;
                    }
                    Step::Pause(d) => tokio::time::sleep(d).await,
                    Step::Exit(Exit::Close) => return Ok(()),
                    Step::Exit(Exit::NextPage) => {
                        self.measure(page).await;
                        let (link, _) = find_link(page, |l| l.internal, &self.order).await?;
                        let Some(link) = link else {
                            self.progress.log(
                                LogLevel::Info,
                                "no visible internal link to a next page; the session ends here",
                            );
                            return Ok(());
                        };
                        match page.click(&link).await {
                            Ok(Some(nav)) => self.loaded(&nav)?,
                            Ok(None) => {}
                            Err(e) => return Err(flow_failure(&e)),
                        }
                        break;
                    }
                    Step::Exit(Exit::Click(kind)) => {
                        self.measure(page).await;
                        self.click(page, kind).await?;
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// The flow's click: a visible link of `kind`, external ones only to
    /// consented domains; what could not be clicked is recorded as skipped.
    async fn click(&mut self, page: &FlowPage, kind: LinkKind) -> Result<(), FlowFailure> {
        // The consented domains as of the flow's grant, not the brief's:
        // every grant carries the owner's consents afresh, so a consent
        // revoked mid-run stops clicks from the next grant on.
        let external = &self.order.terms.external_click_domains;
        let consented = |l: &Link| {
            !l.internal
                && DomainName::parse(&l.host).is_ok_and(|d| external.iter().any(|c| c.covers(&d)))
        };
        let (link, others) = match kind {
            LinkKind::Internal => find_link(page, |l| l.internal, &self.order).await?,
            LinkKind::External => find_link(page, consented, &self.order).await?,
        };
        if link.is_none()
            && kind == LinkKind::External
            && let Some(other) = others.iter().find(|l| !l.internal)
        {
            // External links there are, but none to a consented domain.
            self.clicks.push(Click::Skipped {
                domain: DomainName::parse(&other.host).ok(),
                reason: if external.is_empty() {
                    SkipReason::ExternalClicksOff
                } else {
                    SkipReason::NotConsented
                },
            });
            self.progress.log(
                LogLevel::Info,
                format!(
                    "external click to {} skipped: no consent for that domain",
                    other.host
                ),
            );
            return Ok(());
        }
        let Some(link) = link else {
            self.clicks.push(Click::Skipped {
                domain: None,
                reason: SkipReason::NoLink,
            });
            return Ok(());
        };
        match page.click(&link).await {
            Ok(None) => {
                self.clicks.push(Click::Skipped {
                    domain: DomainName::parse(&link.host).ok(),
                    reason: SkipReason::Failed,
                });
                self.progress.log(
                    LogLevel::Warn,
                    format!("a click on a link to {} started no navigation", link.host),
                );
                Ok(())
            }
            Ok(Some(nav)) => {
                self.clicks.push(if link.internal {
                    Click::Internal
                } else {
                    match DomainName::parse(&link.host) {
                        Ok(domain) => Click::External { domain },
                        Err(_) => Click::Skipped {
                            domain: None,
                            reason: SkipReason::Failed,
                        },
                    }
                });
                self.loaded(&nav)?;
                Ok(())
            }
            Err(FlowError::Blocked(b)) => {
                self.clicks.push(Click::Skipped {
                    domain: DomainName::parse(&b.host).ok(),
                    reason: SkipReason::NotConsented,
                });
                Ok(())
            }
            Err(e) => {
                self.clicks.push(Click::Skipped {
                    domain: None,
                    reason: SkipReason::Failed,
                });
                self.progress
                    .log(LogLevel::Warn, format!("click failed: {e}"));
                Ok(())
            }
        }
    }

    /// Records a page load; an error status fails the flow.
    fn loaded(&mut self, nav: &Navigation) -> Result<(), FlowFailure> {
        if self.pages.len() >= domain::flow::MAX_PAGES_PER_FLOW {
            return Ok(());
        }
        self.pages.push(PageLoad {
            ms: nav.load_ms.clamp(0.0, f64::from(u32::MAX)) as u32,
            status: nav.status,
            vitals: PageVitals {
                ttfb_ms: whole(nav.ttfb_ms, 1.0),
                ..PageVitals::default()
            },
        });
        match nav.status {
            Some(status) if status >= 400 => Err(FlowFailure::HttpStatus { status }),
            _ => Ok(()),
        }
    }

    /// The next proxy to try, per the job's switching policy, skipping
    /// disabled ones and those tried already.
    fn pick_proxy(&self, brief: &JobBrief, tried: &[ProxyIndex]) -> Option<ProxyIndex> {
        let usable: Vec<ProxyIndex> = brief
            .proxies
            .iter()
            .filter(|p| !p.disabled && !tried.contains(&p.row))
            .map(|p| p.row)
            .collect();
        if usable.is_empty() {
            return None;
        }
        if brief.behaviour.proxy_switching == ProxySwitching::OnFailure {
            let kept = self
                .shared
                .kept_proxy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&self.order.job)
                .copied();
            if let Some(k) = kept.filter(|k| usable.contains(k)) {
                return Some(k);
            }
        }
        // Per flow (and per session, which is one flow): spread by flow id.
        let start = (self.order.flow.0 as usize) % usable.len();
        Some(usable[start])
    }

    fn keep(&self, brief: &JobBrief, proxy: ProxyIndex) {
        if brief.behaviour.proxy_switching == ProxySwitching::OnFailure {
            self.shared
                .kept_proxy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.order.job, proxy);
        }
    }

    fn forget_kept(&self, proxy: ProxyIndex) {
        let mut kept = self
            .shared
            .kept_proxy
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if kept.get(&self.order.job) == Some(&proxy) {
            kept.remove(&self.order.job);
        }
    }

    /// Reads the Web Vitals of the page the flow is on (the last one it
    /// loaded) as it leaves it: paints, shifts and interactions so far. A
    /// page that cannot say keeps what its load told.
    async fn measure(&mut self, page: &FlowPage) {
        let Some(last) = self.pages.last_mut() else {
            return;
        };
        if let Ok(v) = page.vitals().await {
            last.vitals = page_vitals(&v, last.vitals);
        }
    }

    /// A failed flow's debugging record: its screenshot, console errors
    /// and request log as artifacts (the proxies' credentials blanked out),
    /// and a line in the job log with the console errors' count and the
    /// requests that failed.
    async fn keep_failure(
        &mut self,
        brief: &JobBrief,
        context: &FlowContext,
        failure: &FlowFailure,
    ) {
        let mut artifacts = context.page().failure_artifacts().await;
        let secrets: Vec<&str> = brief
            .proxies
            .iter()
            .flat_map(|p| {
                [
                    p.username.as_deref(),
                    p.password.as_ref().map(|s| s.expose()),
                ]
            })
            .flatten()
            .collect();
        artifacts.redact(&secrets);
        let failed: Vec<String> = artifacts
            .requests
            .iter()
            .filter(|r| r.status.is_none_or(|s| s >= 400))
            .take(5)
            .map(|r| {
                format!(
                    "{} {}",
                    r.status.map_or("-".into(), |s| s.to_string()),
                    r.url
                )
            })
            .collect();
        self.progress.log(
            LogLevel::Warn,
            format!(
                "flow failed ({failure}); console errors: {}; failed requests: {}",
                artifacts.console_errors.len(),
                if failed.is_empty() {
                    "none".into()
                } else {
                    failed.join(", ")
                }
            ),
        );
        let mut kept = Vec::new();
        if let Some(png) = artifacts.screenshot_png.take() {
            kept.push((ArtifactKind::Screenshot, png));
        }
        if !artifacts.console_errors.is_empty() {
            kept.push((ArtifactKind::ConsoleErrors, json(&artifacts.console_errors)));
        }
        if !artifacts.requests.is_empty() {
            kept.push((ArtifactKind::RequestLog, json(&artifacts.requests)));
        }
        for (kind, bytes) in kept {
            if bytes.len() > domain::artifact::MAX_ARTIFACT_BYTES {
                self.progress.log(
                    LogLevel::Info,
                    format!(
                        "the flow's {kind} ({} bytes) is over the artifacts' limit; not kept",
                        bytes.len()
                    ),
                );
                continue;
            }
            self.artifacts.push(Artifact { kind, bytes });
        }
    }
}

/// A page's vitals as a report carries them: whole ms, CLS in
/// thousandths; what the page did not measure stays as `known` had it.
fn page_vitals(v: &WebVitals, known: PageVitals) -> PageVitals {
    PageVitals {
        ttfb_ms: whole(v.ttfb_ms, 1.0).or(known.ttfb_ms),
        fcp_ms: whole(v.fcp_ms, 1.0).or(known.fcp_ms),
        lcp_ms: whole(v.lcp_ms, 1.0).or(known.lcp_ms),
        cls_milli: whole(v.cls, 1000.0).or(known.cls_milli),
        inp_ms: whole(v.inp_ms, 1.0).or(known.inp_ms),
    }
}

/// `value × scale`, rounded, if it is a measure at all.
fn whole(value: Option<f64>, scale: f64) -> Option<u32> {
    value
        .map(|v| v * scale)
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v.round().min(f64::from(u32::MAX)) as u32)
}

/// An artifact's JSON; a list of plain records always serializes.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn failed(reason: FlowFailure) -> FlowOutcome {
    FlowOutcome::Failed { reason }
}

/// How a browser error reads as a flow's failure.
fn flow_failure(e: &FlowError) -> FlowFailure {
    let detail = e.to_string().chars().take(300).collect();
    match e {
        FlowError::Proxy(_) => FlowFailure::Proxy { detail },
        FlowError::Net { .. } => FlowFailure::Network { detail },
        FlowError::Timeout { .. } => FlowFailure::Timeout,
        // Its reason alone: the failure already says "browser failed".
        FlowError::Browser(reason) => FlowFailure::Browser {
            detail: reason.chars().take(300).collect(),
        },
        FlowError::Blocked(_) | FlowError::Page { .. } | FlowError::Invalid(_) => {
            FlowFailure::Other { detail }
        }
    }
}

/// Screens of a page a flow looks through for a link to click.
const LINK_SEARCH_SCREENS: usize = 8;

/// A visible link that `fits`, scrolling through the page (down, then from
/// the top) as a reader looking for one would; with the other links seen.
async fn find_link(
    page: &FlowPage,
    fits: impl Fn(&Link) -> bool,
    order: &Order,
) -> Result<(Option<Link>, Vec<Link>), FlowFailure> {
    let mut seen = Vec::new();
    for _ in 0..LINK_SEARCH_SCREENS {
        let links = page.visible_links().await.map_err(|e| flow_failure(&e))?;
        if let Some(link) = pick(&links, &fits, order) {
            return Ok((Some(link), seen));
        }
        seen.extend(links);
        let m = page.metrics().await.map_err(|e| flow_failure(&e))?;
        let dy = if m.scroll_y + m.viewport_height >= m.scroll_height - 1.0 {
            -m.scroll_y
        } else {
            m.viewport_height * 0.8
        };
        if dy.abs() < 1.0 {
            break;
        }
        page.scroll_by(dy, Duration::from_millis(400))
            .await
            .map_err(|e| flow_failure(&e))?;
    }
    Ok((None, seen))
}

/// One of `links` that `fits`, chosen by the flow (the same flow picks the same).
fn pick(links: &[Link], fits: &impl Fn(&Link) -> bool, order: &Order) -> Option<Link> {
    let fitting: Vec<&Link> = links.iter().filter(|l| fits(l)).collect();
    if fitting.is_empty() {
        return None;
    }
    Some(fitting[(seed(order) as usize) % fitting.len()].clone())
}

/// The flow's seed: its job and flow id, so a flow leased again behaves the same.
fn seed(order: &Order) -> u64 {
    let mut h = DefaultHasher::new();
    (order.job, order.flow.0).hash(&mut h);
    h.finish()
}

/// The brief's behaviour as the planner reads a settings profile.
fn settings_of(brief: &JobBrief) -> SettingsProfile {
    let b = &brief.behaviour;
    let span = |s: job_brief::Span| StoredSpan {
        min: s.min,
        max: s.max,
    };
    SettingsProfile {
        name: String::new(),
        session_duration: span(b.session_duration_s),
        pages_per_session: span(b.pages_per_session),
        delay_between_flows: span(b.delay_between_flows_s),
        human_surfing: HumanSurfing {
            random_scrolling: b.random_scrolling,
            clicks: b.clicks,
            external_click_share: b.external_click_share,
            click_delay_ms: span(b.click_delay_ms),
        },
        instances: b.instances,
        proxy_switching: match b.proxy_switching {
            ProxySwitching::PerFlow => datasets::ProxySwitching::PerFlow,
            ProxySwitching::StickySession => datasets::ProxySwitching::StickySession,
            ProxySwitching::OnFailure => datasets::ProxySwitching::OnFailure,
        },
        dns: Dns::System,
        marker_header: b.marker_header,
    }
}

/// The flow's target as the planner reads one.
fn target_of(url: &str, traffic: &Traffic) -> Result<Target, String> {
    let url = Url::parse(url).map_err(|e| format!("the target URL {url:?} is not a URL: {e}"))?;
    let (traffic_type, source, keyword) = match traffic {
        Traffic::Direct => (TrafficType::Direct, None, None),
        Traffic::Referral { source } => (TrafficType::Referral, Some(source.clone()), None),
        Traffic::Organic { engine, keyword } => (
            TrafficType::Organic,
            Some(engine.clone()),
            Some(keyword.clone()),
        ),
    };
    Ok(Target {
        url,
        traffic_type,
        source,
        keyword,
        flow_target: 1,
        click_target: 0,
    })
}

/// The brief's device profile as the browser emulates one.
fn device_of(p: &job_brief::DeviceProfile) -> datasets::DeviceProfile {
    use domain::runner::{Browser as B, Os as O};
    datasets::DeviceProfile {
        name: p.name.clone(),
        os: match p.platform.os {
            O::Linux => datasets::Os::Linux,
            O::Windows => datasets::Os::Windows,
            O::Macos => datasets::Os::Macos,
            O::Android => datasets::Os::Android,
            O::Ios => datasets::Os::Ios,
        },
        browser: match p.platform.browser {
            B::Chromium => datasets::Browser::Chromium,
            B::Chrome => datasets::Browser::Chrome,
            B::Edge => datasets::Browser::Edge,
        },
        user_agent: p.user_agent.clone(),
        viewport: datasets::Viewport {
            width: p.viewport.width,
            height: p.viewport.height,
        },
        device_scale_factor: p.device_scale_factor,
        touch: p.touch,
        locale: p.locale.clone(),
        timezone: p.timezone.clone(),
    }
}

fn endpoint_of(p: &job_brief::Proxy) -> ProxyEndpoint {
    ProxyEndpoint {
        scheme: match p.scheme {
            job_brief::ProxyScheme::Http => StoredScheme::Http,
            job_brief::ProxyScheme::Https => StoredScheme::Https,
            job_brief::ProxyScheme::Socks5 => StoredScheme::Socks5,
        },
        host: p.host.clone(),
        port: p.port,
        username: p.username.clone(),
        password: p
            .password
            .as_ref()
            .map(|s| SecretString::from(s.expose().to_owned())),
    }
}

//! The page operations a flow's behaviour is made of: navigate with a
//! referrer, measure the page, scroll with real wheel input, find the links
//! in view, click one with real mouse events, read Web Vitals, and keep
//! artifacts when it fails. Every DevTools call has its own timeout and
//! fails with the browser's reason if the browser dies meanwhile.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chromiumoxide::cdp::browser_protocol::input::{
    DispatchMouseEventParams, DispatchMouseEventType, MouseButton,
};
use chromiumoxide::cdp::browser_protocol::network::{
    EventResponseReceived, LoaderId, ResourceType,
};
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, EventFrameStartedLoading, EventLifecycleEvent, NavigateParams,
};
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::listeners::EventStream;
use chromiumoxide::page::ScreenshotParams;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::artifacts::{FailureArtifacts, PageLog};
use super::error::FlowError;
use super::instance::Instance;
use super::interception::ContextPolicy;
use super::launch::Timeouts;
use super::proxy_error::{self, ProxyError};
use super::vitals::{self, WebVitals};

/// How a navigation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Navigation {
    /// The document's URL after redirects.
    pub url: String,
    /// The document's HTTP status (`None` for a same-document navigation).
    pub status: Option<u16>,
    /// Request start to the response's headers, from the network's timing.
    pub ttfb_ms: Option<f64>,
    /// From the navigation's start to the load event.
    pub load_ms: f64,
}

/// The page's size and where it is scrolled to, in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PageMetrics {
    pub scroll_height: f64,
    pub scroll_y: f64,
    pub viewport_width: f64,
    pub viewport_height: f64,
}

/// A link visible in the viewport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Absolute URL.
    pub href: String,
    pub host: String,
    /// Same host as the page it is on.
    pub internal: bool,
    /// The link's centre in the viewport, where a click lands.
    pub x: f64,
    pub y: f64,
    pub text: String,
}

/// One tab of a flow.
pub struct FlowPage {
    pub(crate) page: chromiumoxide::Page,
    pub(crate) instance: Arc<Instance>,
    pub(crate) policy: Arc<ContextPolicy>,
    /// `host:port` of the flow's proxy, to tell its failures from the site's.
    pub(crate) proxy: Option<String>,
    pub(crate) log: Arc<Mutex<PageLog>>,
    pub(crate) follower: JoinHandle<()>,
    pub(crate) timeouts: Timeouts,
}

/// The links a visitor could click, measured once the page's scrolling has
/// come to rest: the scroll position unchanged over two animation frames
/// (as a browser automation's "stable" check), or 1.5 s at most.
const VISIBLE_LINKS: &str = r#"new Promise(resolve => {
  const measure = () => {
    const vw = innerWidth, vh = innerHeight, links = [];
    for (const a of document.querySelectorAll('a[href]')) {
      if (!/^https?:/i.test(a.href)) continue;
      const r = a.getBoundingClientRect();
      if (r.width < 1 || r.height < 1 || r.bottom <= 0 || r.right <= 0 || r.top >= vh || r.left >= vw) continue;
      const x = Math.min(Math.max(r.left + r.width / 2, 0), vw - 1);
      const y = Math.min(Math.max(r.top + r.height / 2, 0), vh - 1);
      const hit = document.elementFromPoint(x, y);
      if (!hit || (hit !== a && !a.contains(hit))) continue;
      const style = getComputedStyle(a);
      if (style.visibility === 'hidden' || Number(style.opacity) === 0) continue;
      links.push({ href: a.href, host: new URL(a.href).hostname, x, y,
                   text: (a.innerText || '').trim().slice(0, 200) });
    }
    return { host: location.hostname, links };
  };
  let done = false, last = scrollY, still = 0;
  const finish = () => { if (!done) { done = true; resolve(measure()); } };
  const frame = () => {
    if (done) return;
    if (scrollY === last) { if (++still >= 2) return finish(); } else { still = 0; last = scrollY; }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  setTimeout(finish, 1500);
})"#;

const METRICS: &str = r#"({
  scroll_height: Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0),
  scroll_y: scrollY, viewport_width: innerWidth, viewport_height: innerHeight })"#;

/// Grace for a click to start a navigation before it counts as none.
const CLICK_NAVIGATION_GRACE: Duration = Duration::from_secs(3);
/// One wheel step every this often while scrolling.
const WHEEL_STEP: Duration = Duration::from_millis(40);

impl FlowPage {
    async fn call<T, E: std::fmt::Display>(
        &self,
        what: &'static str,
        after: Duration,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, FlowError> {
        self.instance.guarded(what, after, fut).await
    }

    /// Evaluates `expression` in the page and returns its value.
    pub async fn evaluate<T: DeserializeOwned>(&self, expression: &str) -> Result<T, FlowError> {
        let params = EvaluateParams::builder()
            .expression(expression)
            .return_by_value(true)
            .await_promise(true)
            .build()
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        let answer = self
            .call(
                "Runtime.evaluate",
                self.timeouts.command,
                self.page.execute(params),
            )
            .await?;
        if let Some(exception) = &answer.result.exception_details {
            let text = exception
                .exception
                .as_ref()
                .and_then(|e| e.description.clone())
                .unwrap_or_else(|| exception.text.clone());
            return Err(FlowError::page("page script", text));
        }
        let value = answer
            .result
            .result
            .value
            .clone()
            .unwrap_or(serde_json::Value::Null);
        serde_json::from_value(value).map_err(|e| FlowError::page("page script result", e))
    }

    /// Loads `url` as a top-level navigation sent with `referrer`, and waits
    /// for its load event. A URL the flow may not reach is refused here,
    /// before anything is sent.
    pub async fn navigate(
        &self,
        url: &str,
        referrer: Option<&str>,
    ) -> Result<Navigation, FlowError> {
        if let Err(blocked) = self.policy.allowed.check(url) {
            self.policy.record(blocked.clone());
            return Err(FlowError::Blocked(blocked));
        }
        // Listen before navigating, or a fast page's events are missed.
        let mut lifecycle = self.listen::<EventLifecycleEvent>().await?;
        let mut responses = self.listen::<EventResponseReceived>().await?;
        let started = Instant::now();
        let mut params = NavigateParams::new(url);
        params.referrer = referrer.map(str::to_owned);
        let answer = self
            .call(
                "Page.navigate",
                self.timeouts.navigation,
                self.page.execute(params),
            )
            .await?;
        if let Some(error) = answer
            .result
            .error_text
            .as_deref()
            .filter(|e| !e.is_empty())
        {
            return Err(self.failed_navigation(url, error));
        }
        let Some(loader) = answer.result.loader_id.clone() else {
            return Ok(Navigation {
                url: url.to_owned(),
                status: None,
                ttfb_ms: None,
                load_ms: started.elapsed().as_secs_f64() * 1000.0,
            });
        };
        let frame = answer.result.frame_id.as_ref().to_owned();
        let remaining = self.timeouts.navigation.saturating_sub(started.elapsed());
        let document = self
            .call(
                "load event",
                remaining,
                wait_for_load(&frame, Some(loader), &mut lifecycle, &mut responses),
            )
            .await?;
        self.finish_navigation(url, document, started)
    }

    fn finish_navigation(
        &self,
        url: &str,
        document: Option<Arc<EventResponseReceived>>,
        started: Instant,
    ) -> Result<Navigation, FlowError> {
        let status = document
            .as_ref()
            .and_then(|d| u16::try_from(d.response.status).ok());
        // A 401 after the proxy was given credentials is the proxy's refusal.
        let refused = status == Some(401) && self.policy.proxy_rejected();
        let failure = proxy_error::classify(None, if refused { Some(407) } else { status });
        if let (Some(proxy), Some(failure)) = (&self.proxy, failure) {
            return Err(FlowError::Proxy(ProxyError {
                proxy: proxy.clone(),
                failure,
                detail: format!("HTTP {}", status.unwrap_or_default()),
            }));
        }
        Ok(Navigation {
            url: document
                .as_ref()
                .map_or_else(|| url.to_owned(), |d| d.response.url.clone()),
            status,
            ttfb_ms: document
                .as_ref()
                .and_then(|d| d.response.timing.as_ref())
                .map(|t| t.receive_headers_end - t.send_start.max(0.0)),
            load_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    fn failed_navigation(&self, url: &str, error: &str) -> FlowError {
        if let Some(proxy) = &self.proxy
            && let Some(failure) = proxy_error::classify(Some(error), None)
        {
            return FlowError::Proxy(ProxyError {
                proxy: proxy.clone(),
                failure,
                detail: error.to_owned(),
            });
        }
        if error.contains("ERR_BLOCKED_BY_CLIENT")
            && let Err(blocked) = self.policy.allowed.check(url)
        {
            return FlowError::Blocked(blocked);
        }
        FlowError::Net {
            url: url.to_owned(),
            error: error.to_owned(),
        }
    }

    async fn listen<T: chromiumoxide::cdp::IntoEventKind + Unpin + std::fmt::Debug>(
        &self,
    ) -> Result<chromiumoxide::listeners::EventStream<T>, FlowError> {
        self.call(
            "event subscription",
            self.timeouts.command,
            self.page.event_listener::<T>(),
        )
        .await
    }

    /// The page's height, viewport and scroll position.
    pub async fn metrics(&self) -> Result<PageMetrics, FlowError> {
        self.evaluate(METRICS).await
    }

    /// Scrolls by `dy` CSS pixels (negative: up) over `over`, as mouse-wheel
    /// input at the viewport's centre; the page's own height bounds it.
    /// Returns where the page ended up.
    pub async fn scroll_by(&self, dy: f64, over: Duration) -> Result<PageMetrics, FlowError> {
        let before = self.metrics().await?;
        let steps = (over.as_millis() / WHEEL_STEP.as_millis()).max(1) as u32;
        let (x, y) = (before.viewport_width / 2.0, before.viewport_height / 2.0);
        let step = dy / f64::from(steps);
        let pause = over / steps;
        for i in 0..steps {
            let mut wheel = DispatchMouseEventParams::new(DispatchMouseEventType::MouseWheel, x, y);
            wheel.delta_x = Some(0.0);
            wheel.delta_y = Some(step);
            self.call(
                "Input.dispatchMouseEvent",
                self.timeouts.command,
                self.page.execute(wheel),
            )
            .await?;
            if i + 1 < steps {
                tokio::time::sleep(pause).await;
            }
        }
        self.metrics().await
    }

    /// The links a visitor could click once scrolling rests: http(s) links
    /// inside the viewport, not hidden and not covered by something else.
    pub async fn visible_links(&self) -> Result<Vec<Link>, FlowError> {
        #[derive(Deserialize)]
        struct Seen {
            host: String,
            links: Vec<RawLink>,
        }
        #[derive(Deserialize)]
        struct RawLink {
            href: String,
            host: String,
            x: f64,
            y: f64,
            text: String,
        }
        let seen: Seen = self.evaluate(VISIBLE_LINKS).await?;
        Ok(seen
            .links
            .into_iter()
            .map(|l| Link {
                internal: l.host.eq_ignore_ascii_case(&seen.host),
                href: l.href,
                host: l.host,
                x: l.x,
                y: l.y,
                text: l.text,
            })
            .collect())
    }

    /// Clicks `link` with real mouse events at its position and waits for
    /// the navigation it starts (`None` if it starts none). A link the flow
    /// may not follow is refused without clicking. A link that would open a
    /// new tab is followed in this one.
    pub async fn click(&self, link: &Link) -> Result<Option<Navigation>, FlowError> {
        if let Err(blocked) = self.policy.allowed.check(&link.href) {
            self.policy.record(blocked.clone());
            return Err(FlowError::Blocked(blocked));
        }
        // One round trip: keep the link in this tab, and read where input
        // lands: on a phone the layout is zoomed out to fit the screen, so
        // layout pixels are scaled in the visual viewport.
        let keep_in_tab = format!(
            "(() => {{ const e = document.elementFromPoint({x}, {y}); const a = e && e.closest('a'); \
             if (a) a.removeAttribute('target'); const v = window.visualViewport; \
             return v ? [v.scale, v.offsetLeft, v.offsetTop] : [1, 0, 0]; }})()",
            x = link.x,
            y = link.y
        );
        let (scale, left, top): (f64, f64, f64) = self.evaluate(&keep_in_tab).await?;
        let (x, y) = ((link.x - left) * scale, (link.y - top) * scale);
        let mut starts = self.listen::<EventFrameStartedLoading>().await?;
        let mut lifecycle = self.listen::<EventLifecycleEvent>().await?;
        let mut responses = self.listen::<EventResponseReceived>().await?;
        let main_frame = self.page.target_id().as_ref().to_owned();
        let started = Instant::now();
        for (kind, buttons) in [
            (DispatchMouseEventType::MouseMoved, 0),
            (DispatchMouseEventType::MousePressed, 1),
            (DispatchMouseEventType::MouseReleased, 0),
        ] {
            let mut event = DispatchMouseEventParams::new(kind.clone(), x, y);
            if kind != DispatchMouseEventType::MouseMoved {
                event.button = Some(MouseButton::Left);
                event.click_count = Some(1);
            }
            event.buttons = Some(buttons);
            self.call(
                "Input.dispatchMouseEvent",
                self.timeouts.command,
                self.page.execute(event),
            )
            .await?;
        }
        let began = async {
            loop {
                match starts.next().await {
                    Some(ev) if ev.frame_id.as_ref() == main_frame => {
                        return Ok::<bool, String>(true);
                    }
                    Some(_) => continue,
                    None => return Ok(false),
                }
            }
        };
        match tokio::time::timeout(CLICK_NAVIGATION_GRACE, began).await {
            Ok(Ok(true)) => {}
            _ => return Ok(None),
        }
        let document = self
            .call(
                "load event",
                self.timeouts.navigation,
                wait_for_load(&main_frame, None, &mut lifecycle, &mut responses),
            )
            .await?;
        if document.is_none() {
            // The document never answered: the gate refused it, or the net did.
            if let Err(blocked) = self.policy.allowed.check(&link.href) {
                return Err(FlowError::Blocked(blocked));
            }
        }
        self.finish_navigation(&link.href, document, started)
            .map(Some)
    }

    /// The current document's Web Vitals.
    pub async fn vitals(&self) -> Result<WebVitals, FlowError> {
        self.evaluate(vitals::READ).await
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>, FlowError> {
        let params = ScreenshotParams::builder()
            .format(CaptureScreenshotFormat::Png)
            .build();
        self.call(
            "Page.captureScreenshot",
            self.timeouts.command,
            self.page.screenshot(params),
        )
        .await
    }

    /// What to keep of a failed flow: a screenshot if the page can still
    /// give one, its console errors and its request log.
    pub async fn failure_artifacts(&self) -> FailureArtifacts {
        let (console_errors, requests) = {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            (log.console_errors(), log.requests())
        };
        FailureArtifacts {
            screenshot_png: self.screenshot().await.ok(),
            console_errors,
            requests,
        }
    }

    /// The requests made so far (a HAR-like log).
    pub fn request_log(&self) -> Vec<super::artifacts::RequestRecord> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests()
    }

    /// The console errors so far.
    pub fn console_errors(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .console_errors()
    }
}

/// Waits for the load of the document `loader` in `frame` (the next
/// document committed there when `None`), and returns its response if it
/// had one (an error page has none).
async fn wait_for_load(
    frame: &str,
    mut loader: Option<LoaderId>,
    lifecycle: &mut EventStream<EventLifecycleEvent>,
    responses: &mut EventStream<EventResponseReceived>,
) -> Result<Option<Arc<EventResponseReceived>>, String> {
    let mut documents: Vec<Arc<EventResponseReceived>> = Vec::new();
    loop {
        tokio::select! {
            // Responses first: a document's response comes before its load,
            // and both may be waiting by the time we look.
            biased;
            Some(ev) = responses.next() => {
                if ev.r#type == ResourceType::Document
                    && ev.frame_id.as_ref().is_some_and(|f| f.as_ref() == frame)
                {
                    documents.push(ev);
                }
            }
            Some(ev) = lifecycle.next() => {
                if ev.frame_id.as_ref() != frame {
                    continue;
                }
                if ev.name == "init" && loader.is_none() {
                    loader = Some(ev.loader_id.clone());
                }
                if ev.name == "load" && loader.as_ref() == Some(&ev.loader_id) {
                    return Ok(documents.into_iter().rev().find(|d| d.loader_id == ev.loader_id));
                }
            }
            else => return Err("the page's events ended".to_owned()),
        }
    }
}

impl Drop for FlowPage {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

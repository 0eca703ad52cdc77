//! Our side of the runner bench: the standard flow on the runner's own
//! Chromium driver (`runner::browser`), as many at once as the spec says,
//! new flows starting until its seconds are up. The same steps as
//! `bench/playwright-flow.mjs`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use datasets::{Browser as BrowserKind, DeviceProfile, Os, Viewport};
use runner::browser::{AllowedHosts, Browser, FlowError, FlowPage, FlowSpec, LaunchOptions};
use tokio::sync::Mutex;

use super::{Outcome, Spec};

const SCROLLS: usize = 3;
const SCROLL_BY: f64 = 200.0;
const AFTER_SCROLL: Duration = Duration::from_millis(200);
const KEPT_ERRORS: usize = 5;

pub async fn run(spec: &Spec) -> anyhow::Result<Outcome> {
    let browser = Browser::launch(LaunchOptions {
        chrome: Some(spec.chrome.clone()),
        host_rules: spec.hosts.clone(),
        ..LaunchOptions::default()
    })
    .await
    .context("cannot start Chromium")?;
    let flow = Arc::new(FlowSpec {
        allowed_hosts: AllowedHosts::new(spec.hosts.keys()),
        device: device_profile(spec),
        proxy: None,
        marker: None,
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(spec.seconds);
    let tally = Arc::new(Mutex::new((Outcome::default(), BTreeSet::new())));
    let mut workers = Vec::new();
    for _ in 0..spec.concurrency {
        let (browser, flow, tally, url) = (
            browser.clone(),
            flow.clone(),
            tally.clone(),
            spec.url.clone(),
        );
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let result = one_flow(&browser, &flow, &url).await;
                let mut tally = tally.lock().await;
                match result {
                    Ok(steps) => {
                        tally.0.flows += 1;
                        for (step, ms) in steps.0 {
                            *tally.0.step_ms.entry(step).or_default() += ms;
                        }
                    }
                    Err(e) => {
                        tally.0.failed += 1;
                        if tally.1.len() < KEPT_ERRORS {
                            tally.1.insert(e.to_string());
                        }
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.context("a flow worker panicked")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (mut outcome, errors) = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("a worker still holds the tally"))?
        .into_inner();
    outcome.seconds = seconds;
    outcome.errors = errors.into_iter().collect();
    Ok(outcome)
}

/// One standard flow in a context of its own, closed whatever happened;
/// the milliseconds each step took.
async fn one_flow(browser: &Browser, flow: &FlowSpec, url: &str) -> Result<Steps, FlowError> {
    let mut steps = Steps::default();
    let context = steps
        .time("open", browser.new_context(flow.clone()))
        .await?;
    let done = run_steps(context.page(), url, &mut steps).await;
    let closed = steps.time("close", context.close()).await;
    done.and(closed).map(|()| steps)
}

async fn run_steps(page: &FlowPage, url: &str, steps: &mut Steps) -> Result<(), FlowError> {
    steps.time("load", page.navigate(url, None)).await?;
    // Each scroll is followed by its pause, so the page has settled
    // (wheel scrolling is animated) before a link is chosen by position.
    let scrolls = async {
        for _ in 0..SCROLLS {
            page.scroll_by(SCROLL_BY, Duration::ZERO).await?;
            tokio::time::sleep(AFTER_SCROLL).await;
        }
        Ok::<(), FlowError>(())
    };
    steps.time("scrolls", scrolls).await?;
    let links = steps.time("find link", page.visible_links()).await?;
    let link = links
        .iter()
        .find(|l| l.internal)
        .ok_or_else(|| FlowError::Invalid("no internal link in view".into()))?;
    match steps.time("click and load", page.click(link)).await? {
        Some(_) => Ok(()),
        None => Err(FlowError::Invalid(format!(
            "the click on {} started no navigation",
            link.href
        ))),
    }
}

/// Milliseconds per step of one flow, by the names the Playwright script uses.
#[derive(Default)]
struct Steps(BTreeMap<String, f64>);

impl Steps {
    async fn time<T>(&mut self, step: &str, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = work.await;
        *self.0.entry(step.to_owned()).or_default() += started.elapsed().as_secs_f64() * 1000.0;
        out
    }
}

fn device_profile(spec: &Spec) -> DeviceProfile {
    let device = &spec.device;
    DeviceProfile {
        name: "bench desktop".to_owned(),
        os: Os::Linux,
        browser: BrowserKind::Chromium,
        user_agent: device.user_agent.clone(),
        viewport: Viewport {
            width: device.width,
            height: device.height,
        },
        device_scale_factor: device.scale,
        touch: false,
        locale: device.locale.clone(),
        timezone: device.timezone.clone(),
    }
}

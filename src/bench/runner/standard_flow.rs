//! Our side of the runner bench: the standard flow on the runner's own
//! Chromium driver (`runner::browser`), as many at once as the spec says,
//! new flows starting until its seconds are up. The same steps as
//! `bench/playwright-flow.mjs`.

use std::collections::BTreeSet;
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
                    Ok(()) => tally.0.flows += 1,
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

/// One standard flow in a context of its own, closed whatever happened.
async fn one_flow(browser: &Browser, flow: &FlowSpec, url: &str) -> Result<(), FlowError> {
    let context = browser.new_context(flow.clone()).await?;
    let steps = steps(context.page(), url).await;
    let closed = context.close().await;
    steps.and(closed)
}

async fn steps(page: &FlowPage, url: &str) -> Result<(), FlowError> {
    page.navigate(url, None).await?;
    // Each scroll is followed by its pause, so the page has settled
    // (wheel scrolling is animated) before a link is chosen by position.
    for _ in 0..SCROLLS {
        page.scroll_by(SCROLL_BY, Duration::ZERO).await?;
        tokio::time::sleep(AFTER_SCROLL).await;
    }
    let links = page.visible_links().await?;
    let link = links
        .iter()
        .find(|l| l.internal)
        .ok_or_else(|| FlowError::Invalid("no internal link in view".into()))?;
    match page.click(link).await? {
        Some(_) => Ok(()),
        None => Err(FlowError::Invalid(format!(
            "the click on {} started no navigation",
            link.href
        ))),
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

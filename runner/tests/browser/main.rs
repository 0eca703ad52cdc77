//! The Chromium driver against real Chromium, real tinyproxy and a real
//! site on loopback. Most tests share one browser (2-core machine); the
//! crash tests start their own. Without Chromium (or tinyproxy) a test
//! fails under CI=true and otherwise skips with a loud line.

mod site;
mod tinyproxy;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use datasets::ProxyScheme;
use datasets::{Browser as BrowserKind, DeviceProfile, Os, Viewport};
use runner::browser::capacity::{self, CapacityModel};
use runner::browser::{
    AllowedHosts, BlockReason, Browser, FlowError, FlowSpec, LaunchError, LaunchOptions,
    ProxyEndpoint, ProxyFailure, executable, parse_errors,
};
use secrecy::SecretString;
use site::Site;
use tinyproxy::Tinyproxy;

const PHONE_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.91 Mobile Safari/537.36";
const DESKTOP_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const HOSTS: [&str; 4] = [
    "allowed.test",
    "sub.allowed.test",
    "forbidden.test",
    "other.test",
];

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Is `component` there? Under CI its absence fails the test.
fn present(test: &str, component: &str, found: Result<(), String>) -> bool {
    match found {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("{test}: {component} is required under CI: {why}"),
        Err(why) => {
            eprintln!("SKIPPED {test}: {component} is missing: {why}");
            false
        }
    }
}

fn chromium(test: &str) -> bool {
    present(
        test,
        "Chromium",
        executable::find_chrome(None)
            .map(drop)
            .map_err(|e| e.to_string()),
    )
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // Counts DevTools messages the client drops unparsed.
        use tracing_subscriber::layer::SubscriberExt;
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(runner::browser::parse_error_layer()),
        );
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn options() -> LaunchOptions {
    LaunchOptions {
        host_rules: HOSTS
            .iter()
            .map(|h| ((*h).to_owned(), "127.0.0.1".parse().unwrap()))
            .collect::<BTreeMap<_, _>>(),
        ..LaunchOptions::default()
    }
}

/// The browser most tests share, launched once on the shared runtime.
async fn shared() -> Browser {
    static SHARED: tokio::sync::OnceCell<Browser> = tokio::sync::OnceCell::const_new();
    SHARED
        .get_or_init(|| async { Browser::launch(options()).await.expect("Chromium starts") })
        .await
        .clone()
}

fn phone() -> DeviceProfile {
    DeviceProfile {
        name: "phone".into(),
        os: Os::Android,
        browser: BrowserKind::Chrome,
        user_agent: PHONE_UA.into(),
        viewport: Viewport {
            width: 412,
            height: 915,
        },
        device_scale_factor: 2.625,
        touch: true,
        locale: "fr-FR".into(),
        timezone: "Asia/Tokyo".into(),
    }
}

fn desktop() -> DeviceProfile {
    DeviceProfile {
        name: "desktop".into(),
        os: Os::Windows,
        browser: BrowserKind::Chrome,
        user_agent: DESKTOP_UA.into(),
        viewport: Viewport {
            width: 1280,
            height: 800,
        },
        device_scale_factor: 1.0,
        touch: false,
        locale: "en-US".into(),
        timezone: "UTC".into(),
    }
}

fn spec(allowed: &[&str], device: DeviceProfile) -> FlowSpec {
    FlowSpec {
        allowed_hosts: AllowedHosts::new(allowed),
        device,
        proxy: None,
        marker: None,
    }
}

fn no_parse_errors() {
    assert_eq!(
        parse_errors(),
        0,
        "DevTools messages were dropped unparsed (see stderr)"
    );
}

#[test]
fn the_page_sees_the_emulated_device() {
    if !chromium("the_page_sees_the_emulated_device") {
        return;
    }
    runtime().block_on(async {
        let browser = shared().await;
        let site = Site::start().await;
        // A mobile page says how wide it is, or gets a 980 px layout, as on a real phone.
        site.page(
            "/device",
            "<meta name='viewport' content='width=device-width'><p>device</p>",
        );
        let context = browser
            .new_context(spec(&["127.0.0.1"], phone()))
            .await
            .unwrap();
        let page = context.page();
        let nav = page
            .navigate(&format!("{}/device", site.origin("127.0.0.1")), None)
            .await
            .unwrap();
        assert_eq!(nav.status, Some(200));
        let seen: serde_json::Value = page
            .evaluate(
                "({ ua: navigator.userAgent, width: innerWidth, height: innerHeight,
                    dpr: devicePixelRatio, touch: navigator.maxTouchPoints,
                    ontouch: 'ontouchstart' in window,
                    tz: Intl.DateTimeFormat().resolvedOptions().timeZone,
                    lang: navigator.language, platform: navigator.platform,
                    mobile: navigator.userAgentData ? navigator.userAgentData.mobile : null })",
            )
            .await
            .unwrap();
        assert_eq!(seen["ua"], PHONE_UA);
        assert_eq!(seen["width"], 412);
        assert_eq!(seen["height"], 915);
        assert_eq!(seen["dpr"], 2.625);
        assert_eq!(seen["touch"], 5);
        assert_eq!(seen["ontouch"], true);
        assert_eq!(seen["tz"], "Asia/Tokyo");
        assert_eq!(seen["lang"], "fr-FR");
        assert_eq!(seen["platform"], "Linux armv8l");
        assert_eq!(seen["mobile"], true);
        let request = &site.seen_path("/device")[0];
        assert_eq!(request.header("user-agent"), Some(PHONE_UA));
        assert!(
            request
                .header("accept-language")
                .unwrap()
                .starts_with("fr-FR")
        );

        // Another flow, another device, in the same browser.
        let other = browser
            .new_context(spec(&["127.0.0.1"], desktop()))
            .await
            .unwrap();
        other
            .page()
            .navigate(&format!("{}/desktop", site.origin("127.0.0.1")), None)
            .await
            .unwrap();
        let width: u32 = other.page().evaluate("innerWidth").await.unwrap();
        let touch: u32 = other
            .page()
            .evaluate("navigator.maxTouchPoints")
            .await
            .unwrap();
        assert_eq!((width, touch), (1280, 0));
        context.close().await.unwrap();
        other.close().await.unwrap();
        no_parse_errors();
    });
}

#[test]
fn two_contexts_do_not_share_cookies() {
    if !chromium("two_contexts_do_not_share_cookies") {
        return;
    }
    runtime().block_on(async {
        let browser = shared().await;
        let site = Site::start().await;
        let origin = site.origin("127.0.0.1");
        let a = browser
            .new_context(spec(&["127.0.0.1"], desktop()))
            .await
            .unwrap();
        let b = browser
            .new_context(spec(&["127.0.0.1"], desktop()))
            .await
            .unwrap();
        a.page()
            .navigate(&format!("{origin}/set-cookie"), None)
            .await
            .unwrap();
        a.page()
            .navigate(&format!("{origin}/again-a"), None)
            .await
            .unwrap();
        b.page()
            .navigate(&format!("{origin}/again-b"), None)
            .await
            .unwrap();
        let cookie_a: String = a.page().evaluate("document.cookie").await.unwrap();
        let cookie_b: String = b.page().evaluate("document.cookie").await.unwrap();
        assert_eq!(cookie_a, "flow=one");
        assert_eq!(cookie_b, "");
        assert_eq!(
            site.seen_path("/again-a")[0].header("cookie"),
            Some("flow=one")
        );
        assert_eq!(site.seen_path("/again-b")[0].header("cookie"), None);
        a.close().await.unwrap();
        b.close().await.unwrap();
        no_parse_errors();
    });
}

#[test]
fn a_host_not_allowed_never_sees_a_request_and_the_block_is_reported() {
    if !chromium("a_host_not_allowed_never_sees_a_request_and_the_block_is_reported") {
        return;
    }
    runtime().block_on(async {
        let browser = shared().await;
        let good = Site::start().await;
        let bad = Site::start().await;
        let forbidden = bad.origin("forbidden.test");
        let sub = good.origin("sub.allowed.test");
        let ws = forbidden.replace("http://", "ws://");
        let good_ws = good.origin("allowed.test").replace("http://", "ws://");
        good.page(
            "/probe",
            format!(
                "<!doctype html><p>probe</p>
                 <img src='{forbidden}/pixel.png'><img src='{sub}/pixel.png'>
                 <iframe src='{forbidden}/frame'></iframe>
                 <script>fetch('{forbidden}/api', {{mode: 'no-cors'}}).catch(() => {{}});
                         navigator.sendBeacon('{forbidden}/beacon', 'x');
                         try {{ new WebSocket('{ws}/socket'); }} catch (e) {{ console.error(e.message); }}
                         new WebSocket('{good_ws}/socket');</script>
                 <a href='{forbidden}/leave' style='font-size:40px'>leave</a>"
            ),
        );
        let context = browser
            .new_context(spec(&["allowed.test"], desktop()))
            .await
            .unwrap();
        let page = context.page();
        let nav = page
            .navigate(&format!("{}/probe", good.origin("allowed.test")), None)
            .await
            .unwrap();
        assert_eq!(nav.status, Some(200));
        // A subdomain of an allowed domain is allowed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while good.seen_path("/pixel.png").is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            good.seen_path("/pixel.png")[0].header("host"),
            Some(format!("sub.allowed.test:{}", good.port()).as_str())
        );

        // A direct navigation and a click are refused before anything is sent.
        let direct = page.navigate(&format!("{forbidden}/direct"), None).await;
        assert!(
            matches!(&direct, Err(FlowError::Blocked(b)) if b.host == "forbidden.test"),
            "{direct:?}"
        );
        let links = page.visible_links().await.unwrap();
        let leave = links
            .iter()
            .find(|l| l.href.ends_with("/leave"))
            .expect("the link is in view");
        assert!(!leave.internal);
        assert!(matches!(
            page.click(leave).await,
            Err(FlowError::Blocked(_))
        ));

        // Everything the page tried has had its chance: the allowed socket
        // arrived and the refused one was reported.
        let deadline = Instant::now() + Duration::from_secs(5);
        while (good.seen_path("/socket").is_empty()
            || !page
                .console_errors()
                .iter()
                .any(|e| e.contains("consented domains")))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            bad.seen().len(),
            0,
            "the forbidden host got {:?}",
            bad.seen()
        );
        // WebSockets: the allowed one connects, the other is refused in the page.
        assert_eq!(good.seen_path("/socket").len(), 1);
        assert!(
            page.console_errors()
                .iter()
                .any(|e| e.contains("consented domains")),
            "{:?}",
            page.console_errors()
        );
        let (blocked, total) = context.blocked();
        assert!(total >= 4, "{blocked:?} ({total})");
        assert!(
            blocked
                .iter()
                .all(|b| b.host == "forbidden.test" && b.reason == BlockReason::NotConsented),
            "{blocked:?}"
        );
        let log = page.request_log();
        assert!(
            log.iter().any(|r| r.url.starts_with(&forbidden)
                && r.error.as_deref() == Some("net::ERR_BLOCKED_BY_CLIENT")),
            "{log:?}"
        );
        context.close().await.unwrap();
        no_parse_errors();
    });
}

#[test]
fn the_marker_header_reaches_the_site_only_when_asked() {
    if !chromium("the_marker_header_reaches_the_site_only_when_asked") {
        return;
    }
    runtime().block_on(async {
        let browser = shared().await;
        let site = Site::start().await;
        let origin = site.origin("127.0.0.1");
        site.page("/marked", "<p>marked</p><img src='/pixel.png'>");
        let mut marked = spec(&["127.0.0.1"], desktop());
        marked.marker = Some("job-42".into());
        let context = browser.new_context(marked).await.unwrap();
        context
            .page()
            .navigate(&format!("{origin}/marked"), None)
            .await
            .unwrap();
        let plain = browser
            .new_context(spec(&["127.0.0.1"], desktop()))
            .await
            .unwrap();
        plain
            .page()
            .navigate(&format!("{origin}/plain"), None)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while site.seen_path("/pixel.png").is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            site.seen_path("/marked")[0].header("x-trafficbuster-job"),
            Some("job-42")
        );
        assert_eq!(
            site.seen_path("/pixel.png")[0].header("x-trafficbuster-job"),
            Some("job-42")
        );
        assert_eq!(
            site.seen_path("/plain")[0].header("x-trafficbuster-job"),
            None
        );
        context.close().await.unwrap();
        plain.close().await.unwrap();
        no_parse_errors();
    });
}

#[test]
fn a_flow_scrolls_finds_links_clicks_and_measures_its_pages() {
    if !chromium("a_flow_scrolls_finds_links_clicks_and_measures_its_pages") {
        return;
    }
    runtime().block_on(async {
        let browser = shared().await;
        let site = Site::start().await;
        let origin = site.origin("allowed.test");
        let other = site.origin("other.test");
        site.page(
            "/long",
            format!(
                "<!doctype html><body style='margin:0'>
                 <h1>A long page</h1><a href='/next' style='font-size:30px'>next</a>
                 <a href='{other}/x' style='font-size:30px'>elsewhere</a>
                 <div style='height:3000px'></div><a href='/deep'>deep</a>
                 <div style='height:1000px'></div></body>"
            ),
        );
        let context = browser
            .new_context(spec(&["allowed.test", "other.test"], desktop()))
            .await
            .unwrap();
        let page = context.page();
        page.navigate(
            &format!("{origin}/long"),
            Some("http://search.example/?q=shop"),
        )
        .await
        .unwrap();
        let top = page.metrics().await.unwrap();
        assert!(top.scroll_height >= 4000.0, "{top:?}");
        assert_eq!(
            (top.viewport_width, top.viewport_height, top.scroll_y),
            (1280.0, 800.0, 0.0)
        );

        let links = page.visible_links().await.unwrap();
        let next = links
            .iter()
            .find(|l| l.href.ends_with("/next"))
            .unwrap()
            .clone();
        assert!(next.internal);
        assert!(links.iter().any(|l| l.host == "other.test" && !l.internal));
        assert!(
            !links.iter().any(|l| l.href.ends_with("/deep")),
            "below the fold"
        );

        let down = page
            .scroll_by(2600.0, Duration::from_millis(400))
            .await
            .unwrap();
        // Wheel scrolling animates: let it settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let settled = page.metrics().await.unwrap();
        assert!(settled.scroll_y > 1500.0, "{down:?} {settled:?}");
        let links = page.visible_links().await.unwrap();
        assert!(links.iter().any(|l| l.href.ends_with("/deep")), "{links:?}");
        page.scroll_by(-100_000.0, Duration::from_millis(200))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            page.metrics().await.unwrap().scroll_y,
            0.0,
            "bounded by the page"
        );

        let vitals = page.vitals().await.unwrap();
        assert!(
            vitals.ttfb_ms.is_some() && vitals.fcp_ms.is_some(),
            "{vitals:?}"
        );
        assert_eq!(vitals.cls, Some(0.0));

        let clicked = page
            .click(&next)
            .await
            .unwrap()
            .expect("the click navigates");
        assert_eq!(clicked.status, Some(200));
        assert!(clicked.url.ends_with("/next"));
        let request = &site.seen_path("/next")[0];
        assert_eq!(
            request.header("referer"),
            Some(format!("{origin}/long").as_str())
        );
        // The first page was sent with the search engine as its referrer
        // (origin only, as Chromium's default policy sends cross-site).
        assert_eq!(
            site.seen_path("/long")[0].header("referer"),
            Some("http://search.example/")
        );
        context.close().await.unwrap();
        no_parse_errors();
    });
}

#[test]
fn a_failed_flow_keeps_a_screenshot_console_errors_and_the_request_log() {
    if !chromium("a_failed_flow_keeps_a_screenshot_console_errors_and_the_request_log") {
        return;
    }
    runtime().block_on(async {
        let browser = shared().await;
        let site = Site::start().await;
        site.page(
            "/broken",
            "<p>broken</p><img src='/missing.png'><script>console.error('boom', 42)</script>",
        );
        let context = browser
            .new_context(spec(&["127.0.0.1"], desktop()))
            .await
            .unwrap();
        let page = context.page();
        page.navigate(&format!("{}/broken", site.origin("127.0.0.1")), None)
            .await
            .unwrap();
        // The log follows the page's events as they come: wait for the image's end.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !page
            .request_log()
            .iter()
            .any(|r| r.url.ends_with("/missing.png") && r.bytes.is_some())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let artifacts = page.failure_artifacts().await;
        assert!(
            artifacts.console_errors.iter().any(|e| e == "boom 42"),
            "{:?}",
            artifacts.console_errors
        );
        let missing = artifacts
            .requests
            .iter()
            .find(|r| r.url.ends_with("/missing.png"))
            .expect("the image is in the log");
        assert_eq!(missing.status, Some(404));
        assert!(
            missing.duration_ms.is_some() && missing.bytes.is_some(),
            "{missing:?}"
        );
        let document = artifacts
            .requests
            .iter()
            .find(|r| r.url.ends_with("/broken"))
            .unwrap();
        assert_eq!(
            (document.status, document.resource_type.as_str()),
            (Some(200), "Document")
        );
        let png = artifacts.screenshot_png.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        context.close().await.unwrap();
        no_parse_errors();
    });
}

/// A brief for `job` on `allowed.test` (no proxies, no clicks, a one-second
/// session of one page, the desktop profile).
fn brief(job: domain::job::JobId) -> domain::job_brief::JobBrief {
    use domain::job_brief::{Behaviour, DeviceProfile, JobBrief, ProxySwitching, Span, Viewport};
    let span = |min, max| Span { min, max };
    JobBrief {
        job,
        behaviour: Behaviour {
            session_duration_s: span(1, 1),
            pages_per_session: span(1, 1),
            delay_between_flows_s: span(0, 0),
            random_scrolling: false,
            clicks: false,
            external_click_share: 0.0,
            click_delay_ms: span(100, 200),
            instances: 1,
            proxy_switching: ProxySwitching::PerFlow,
            marker_header: false,
        },
        profiles: vec![DeviceProfile {
            row: 0,
            name: "desktop".into(),
            platform: domain::runner::Platform {
                os: domain::runner::Os::Linux,
                browser: domain::runner::Browser::Chromium,
            },
            user_agent: DESKTOP_UA.into(),
            viewport: Viewport {
                width: 1280,
                height: 800,
            },
            device_scale_factor: 1.0,
            touch: false,
            locale: "en-GB".into(),
            timezone: "Europe/London".into(),
        }],
        proxies: vec![],
        hosts: vec![],
        domains: vec![domain::DomainName::parse("allowed.test").unwrap()],
        external_click_domains: vec![],
    }
}

#[test]
fn the_executor_reports_a_pages_vitals_and_keeps_a_failed_flows_artifacts() {
    if !chromium("the_executor_reports_a_pages_vitals_and_keeps_a_failed_flows_artifacts") {
        return;
    }
    use domain::artifact::ArtifactKind;
    use domain::flow::{FlowFailure, FlowId, FlowOutcome};
    use runner::browser_executor::BrowserExecutor;
    use runner::worker::{Executor, JobTerms, Order, Progress};
    runtime().block_on(async {
        let site = Site::start().await;
        let origin = site.origin("allowed.test");
        site.page("/painted", "<h1>Painted</h1><p>Some text to paint.</p>");
        let executor = BrowserExecutor::start(options(), 1).await.unwrap();
        let job = domain::job::JobId(uuid::Uuid::now_v7());
        let terms = std::sync::Arc::new(JobTerms::new(false, vec![], Some(brief(job).into())));
        let order = |flow: u64, path: &str| Order {
            job,
            flow: FlowId(flow),
            target: 0,
            url: format!("{origin}{path}"),
            click: false,
            traffic: domain::runner_protocol::Traffic::Direct,
            profile: Some(0),
            terms: terms.clone(),
        };

        let (progress, _) = Progress::detached(job, FlowId(0));
        let done = executor.run(order(0, "/painted"), progress).await;
        assert_eq!(done.report.outcome, FlowOutcome::Succeeded, "{:?}", done.report);
        assert!(done.artifacts.is_empty(), "a flow that succeeded keeps nothing");
        let vitals = done.report.pages[0].vitals;
        assert!(
            vitals.ttfb_ms.is_some() && vitals.fcp_ms.is_some(),
            "{vitals:?}"
        );
        assert_eq!(vitals.cls_milli, Some(0), "{vitals:?}");

        // A page the site does not have: 404, and the flow fails.
        let (progress, mut reports) = Progress::detached(job, FlowId(1));
        let done = executor.run(order(1, "/missing-page"), progress).await;
        assert_eq!(
            done.report.outcome,
            FlowOutcome::Failed {
                reason: FlowFailure::HttpStatus { status: 404 }
            }
        );
        let kinds: Vec<ArtifactKind> = done.artifacts.iter().map(|a| a.kind).collect();
        assert!(
            kinds.contains(&ArtifactKind::Screenshot) && kinds.contains(&ArtifactKind::RequestLog),
            "{kinds:?}"
        );
        for a in &done.artifacts {
            assert!(a.kind.fits(&a.bytes), "{:?} is what its kind says", a.kind);
        }
        let log = done
            .artifacts
            .iter()
            .find(|a| a.kind == ArtifactKind::RequestLog)
            .unwrap();
        let requests: Vec<serde_json::Value> = serde_json::from_slice(&log.bytes).unwrap();
        assert!(
            requests
                .iter()
                .any(|r| r["url"].as_str().unwrap().ends_with("/missing-page") && r["status"] == 404),
            "{requests:?}"
        );
        let lines = reports.taken();
        assert!(
            lines.iter().any(|r| matches!(r, domain::flow::FlowReport::Log { message, .. } if message.starts_with("flow failed (HTTP 404)"))),
            "{lines:?}"
        );
        no_parse_errors();
    });
}

#[test]
fn a_flow_that_runs_out_of_time_fails_as_timed_out_and_keeps_what_it_saw() {
    if !chromium("a_flow_that_runs_out_of_time_fails_as_timed_out_and_keeps_what_it_saw") {
        return;
    }
    use domain::artifact::ArtifactKind;
    use domain::flow::{FlowFailure, FlowId, FlowOutcome};
    use runner::browser_executor::BrowserExecutor;
    use runner::worker::{Executor, JobTerms, Order, Progress};
    runtime().block_on(async {
        let site = Site::start().await;
        let origin = site.origin("allowed.test");
        // The second page's image never comes (in time): its load hangs.
        site.page(
            "/first",
            "<a href=\"/stuck\" style=\"display:block;font-size:48px\">the next page</a>",
        );
        site.page("/stuck", "<p>stuck</p><img src=\"/slow\">");
        let overrun = Duration::from_secs(2);
        let executor = BrowserExecutor::start(options(), 1)
            .await
            .unwrap()
            .with_overrun(overrun);
        let job = domain::job::JobId(uuid::Uuid::now_v7());
        let mut two_pages = brief(job);
        two_pages.behaviour.pages_per_session = domain::job_brief::Span { min: 2, max: 2 };
        let terms = std::sync::Arc::new(JobTerms::new(false, vec![], Some(two_pages.into())));
        let order = Order {
            job,
            flow: FlowId(0),
            target: 0,
            url: format!("{origin}/first"),
            click: false,
            traffic: domain::runner_protocol::Traffic::Direct,
            profile: Some(0),
            terms,
        };
        let (progress, _) = Progress::detached(job, FlowId(0));
        let started = std::time::Instant::now();
        let done = executor.run(order, progress).await;
        assert_eq!(
            done.report.outcome,
            FlowOutcome::Failed {
                reason: FlowFailure::Timeout
            },
            "{:?}",
            done.report
        );
        // Its one-second session and the overrun, then the artifacts; not
        // the image's 20 s.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        assert!(
            !site.seen_path("/stuck").is_empty(),
            "the flow reached the second page"
        );
        let kinds: Vec<ArtifactKind> = done.artifacts.iter().map(|a| a.kind).collect();
        assert!(
            kinds.contains(&ArtifactKind::Screenshot) && kinds.contains(&ArtifactKind::RequestLog),
            "{kinds:?}"
        );
        let log = done
            .artifacts
            .iter()
            .find(|a| a.kind == ArtifactKind::RequestLog)
            .unwrap();
        let requests: Vec<serde_json::Value> = serde_json::from_slice(&log.bytes).unwrap();
        assert!(
            requests
                .iter()
                .any(|r| r["url"].as_str().unwrap().ends_with("/slow") && r["status"].is_null()),
            "the hanging request is in the log, unanswered: {requests:?}"
        );
        no_parse_errors();
    });
}

/// Where a flow reaches `proxy`, with `credentials` if given.
fn endpoint(proxy: &Tinyproxy, credentials: Option<(&str, &str)>) -> ProxyEndpoint {
    ProxyEndpoint {
        scheme: ProxyScheme::Http,
        host: "127.0.0.1".into(),
        port: proxy.port,
        username: credentials.map(|(u, _)| u.to_owned()),
        password: credentials.map(|(_, p)| SecretString::from(p)),
    }
}

#[test]
fn real_proxies_carry_flows_with_and_without_credentials() {
    let test = "real_proxies_carry_flows_with_and_without_credentials";
    if !chromium(test) || !present(test, "tinyproxy", tinyproxy::installed()) {
        return;
    }
    runtime().block_on(async {
        let browser = shared().await;
        let site = Site::start().await;
        let open = Tinyproxy::start(None, &[]);
        let guarded = Tinyproxy::start(Some(("flow", "s3cret")), &[]);

        for (proxy, credentials, path) in [
            (&open, None, "/via-open"),
            (&guarded, Some(("flow", "s3cret")), "/via-auth"),
        ] {
            let mut flow = spec(&["127.0.0.1"], desktop());
            flow.proxy = Some(endpoint(proxy, credentials));
            let context = browser.new_context(flow).await.unwrap();
            let nav = context
                .page()
                .navigate(&format!("{}{path}", site.origin("127.0.0.1")), None)
                .await
                .unwrap();
            assert_eq!(nav.status, Some(200), "{path}");
            let via = site.seen_path(path)[0]
                .header("via")
                .unwrap_or_default()
                .to_owned();
            assert!(
                via.contains("tinyproxy"),
                "{path} came without the proxy: via {via:?}"
            );
            let log = proxy.log();
            assert!(
                log.contains("Established connection to host \"127.0.0.1\""),
                "{path}: {log}"
            );
            context.close().await.unwrap();
        }

        // Wrong credentials: a typed authentication failure, and no visit.
        let mut flow = spec(&["127.0.0.1"], desktop());
        flow.proxy = Some(endpoint(&guarded, Some(("flow", "wrong"))));
        let context = browser.new_context(flow).await.unwrap();
        let refused = context
            .page()
            .navigate(
                &format!("{}/wrong-password", site.origin("127.0.0.1")),
                None,
            )
            .await;
        match refused {
            Err(FlowError::Proxy(e)) => {
                assert_eq!(e.failure, ProxyFailure::AuthRejected);
                assert_eq!(e.proxy, format!("127.0.0.1:{}", guarded.port));
                assert!(
                    !e.to_string().contains("wrong"),
                    "no password in errors: {e}"
                );
            }
            other => panic!("expected a proxy authentication error, got {other:?}"),
        }
        assert!(site.seen_path("/wrong-password").is_empty());
        context.close().await.unwrap();
        no_parse_errors();
    });
}

#[test]
fn a_dead_proxy_is_a_typed_proxy_error() {
    if !chromium("a_dead_proxy_is_a_typed_proxy_error") {
        return;
    }
    runtime().block_on(async {
        let browser = shared().await;
        let site = Site::start().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut flow = spec(&["127.0.0.1"], desktop());
        flow.proxy = Some(ProxyEndpoint {
            scheme: ProxyScheme::Http,
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
        });
        let context = browser.new_context(flow).await.unwrap();
        let result = context
            .page()
            .navigate(&format!("{}/never", site.origin("127.0.0.1")), None)
            .await;
        match result {
            Err(FlowError::Proxy(e)) => {
                assert_eq!(e.failure, ProxyFailure::ConnectionRefused, "{e}");
                assert_eq!(e.proxy, format!("127.0.0.1:{port}"));
            }
            other => panic!("expected a proxy error, got {other:?}"),
        }
        assert!(site.seen().is_empty());
        context.close().await.unwrap();
        no_parse_errors();
    });
}

fn group_alive(pgid: u32) -> bool {
    !capacity::group_members(pgid).unwrap().is_empty()
}

/// Any process of the browser whose profile is `profile`, in its group or
/// not (Chromium's crash handler leaves the group).
fn any_process_of(profile: &std::path::Path) -> bool {
    !capacity::processes_mentioning(&profile.display().to_string())
        .unwrap()
        .is_empty()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_or_hung_chromium_fails_its_flows_is_relaunched_and_none_outlives_the_browser() {
    if !chromium(
        "a_killed_or_hung_chromium_fails_its_flows_is_relaunched_and_none_outlives_the_browser",
    ) {
        return;
    }
    runtime().block_on(async {
        let browser = Browser::launch(options()).await.unwrap();
        let site = Site::start().await;
        let origin = site.origin("127.0.0.1");

        // Capacity from measurement, on this browser alone.
        let mut model = CapacityModel::default();
        let idle = browser.memory().unwrap();
        assert_eq!(idle.contexts, 0);
        assert!(idle.pss_bytes > 10 << 20, "{idle:?}");
        model.observe(idle);
        let mut open = Vec::new();
        for i in 0..2 {
            let context = browser
                .new_context(spec(&["127.0.0.1"], desktop()))
                .await
                .unwrap();
            context
                .page()
                .navigate(&format!("{origin}/m{i}"), None)
                .await
                .unwrap();
            open.push(context);
        }
        let busy = browser.memory().unwrap();
        assert_eq!(busy.contexts, 2);
        assert!(busy.pss_bytes > idle.pss_bytes, "{idle:?} → {busy:?}");
        model.observe(busy);
        let per_context = model.per_context();
        assert!((1 << 20..1 << 30).contains(&per_context), "{per_context}");
        let available = capacity::available_memory().unwrap();
        let slots = model.slots(1_000_000, available, 2);
        assert_eq!(u64::from(slots), available / per_context + 2);
        assert_eq!(model.slots(3, available, 2), 3.min(slots));
        for context in open.drain(..) {
            context.close().await.unwrap();
        }

        // SIGKILL Chromium in the middle of a navigation.
        let first = browser.pid().unwrap();
        let context = browser
            .new_context(spec(&["127.0.0.1"], desktop()))
            .await
            .unwrap();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            std::process::Command::new("kill")
                .args(["-9", &first.to_string()])
                .status()
                .unwrap();
        });
        let started = Instant::now();
        let result = context
            .page()
            .navigate(&format!("{origin}/slow"), None)
            .await;
        killer.await.unwrap();
        match &result {
            // Why it died, not merely that its connection closed.
            Err(FlowError::Browser(reason)) => assert!(
                reason.contains(&format!("(pid {first}) was killed by signal 9")),
                "{reason}"
            ),
            other => panic!("expected a browser failure, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "failed fast");
        assert!(matches!(
            context.page().metrics().await,
            Err(FlowError::Browser(_))
        ));
        drop(context);

        let relaunched = tokio::task::spawn_blocking({
            let browser = browser.clone();
            move || {
                wait_until("a relaunch", Duration::from_secs(30), || {
                    browser.relaunches() == 1 && browser.pid().is_some_and(|p| p != first)
                });
            }
        });
        relaunched.await.unwrap();
        wait_until("the old group gone", Duration::from_secs(10), || {
            !group_alive(first)
        });
        let second = browser.pid().unwrap();
        // A hung Chromium (stopped, so it answers nothing) is found by the
        // watchdog's pings, killed and replaced too.
        std::process::Command::new("kill")
            .args(["-STOP", &second.to_string()])
            .status()
            .unwrap();
        let hung = tokio::task::spawn_blocking({
            let browser = browser.clone();
            move || {
                wait_until("a relaunch after a hang", Duration::from_secs(40), || {
                    browser.relaunches() == 2 && browser.pid().is_some_and(|p| p != second)
                });
                browser.last_death().unwrap_or_default()
            }
        });
        let reason = hung.await.unwrap();
        assert!(reason.contains("stopped answering"), "{reason}");
        wait_until("the hung group gone", Duration::from_secs(10), || {
            !group_alive(second)
        });
        let third = browser.pid().unwrap();
        let profile = browser.profile_dir().unwrap();
        assert!(any_process_of(&profile));
        let fresh = browser
            .new_context(spec(&["127.0.0.1"], desktop()))
            .await
            .unwrap();
        let nav = fresh
            .page()
            .navigate(&format!("{origin}/after"), None)
            .await
            .unwrap();
        assert_eq!(nav.status, Some(200));
        fresh.close().await.unwrap();

        assert!(group_alive(third));
        drop(browser);
        wait_until(
            "no Chromium after the browser drops",
            Duration::from_secs(10),
            || !group_alive(third) && !any_process_of(&profile),
        );
        no_parse_errors();
    });
}

/// Not a test: the process the SIGKILL test starts and kills.
#[test]
#[ignore = "a helper process for a_runner_killed_with_sigkill_leaves_no_chromium"]
fn child_holds_a_browser() {
    if std::env::var_os("TB_BROWSER_CHILD").is_none() {
        return;
    }
    runtime().block_on(async {
        let browser = Browser::launch(options()).await.unwrap();
        let context = browser
            .new_context(spec(&["127.0.0.1"], desktop()))
            .await
            .unwrap();
        println!(
            "CHROMIUM_PGID={} {}",
            browser.pid().unwrap(),
            browser.profile_dir().unwrap().display()
        );
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(context);
    });
}

#[test]
fn a_runner_killed_with_sigkill_leaves_no_chromium() {
    if !chromium("a_runner_killed_with_sigkill_leaves_no_chromium") {
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_holds_a_browser",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TB_BROWSER_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (pgid, profile): (u32, PathBuf) = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            // The harness prints "test … ... " before the child's own line.
            let (_, rest) = line.split_once("CHROMIUM_PGID=")?;
            let (pgid, profile) = rest.trim().split_once(' ')?;
            Some((pgid.parse().ok()?, PathBuf::from(profile)))
        })
        .expect("the child started a browser");
    assert!(
        capacity::group_members(pgid).unwrap().len() >= 2,
        "Chromium and its helpers run in its group"
    );
    assert!(any_process_of(&profile));
    child.kill().unwrap(); // SIGKILL: no destructor runs in the child.
    child.wait().unwrap();
    wait_until(
        "no Chromium after the runner's SIGKILL",
        Duration::from_secs(10),
        || !group_alive(pgid) && !any_process_of(&profile),
    );
}

#[test]
fn a_missing_chromium_is_one_line_saying_how_to_install_it() {
    let result = runtime().block_on(Browser::launch(LaunchOptions {
        chrome: Some("/nonexistent/chromium".into()),
        ..LaunchOptions::default()
    }));
    match result {
        Err(e @ LaunchError::NotFound { .. }) => {
            let line = e.to_string();
            assert!(line.contains("apt-get install chromium"), "{line}");
            assert!(!line.contains('\n'));
        }
        Err(other) => panic!("expected NotFound, got {other}"),
        Ok(_) => panic!("a browser that does not exist was launched"),
    }
}

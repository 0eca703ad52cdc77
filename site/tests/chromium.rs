//! The site's tracker runs in a real Chromium: a headless page load
//! reaches the site under a mapped host name, loads the images and the
//! tracker, and the tracker's beacon tells the site what the browser is.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use site::{SiteOptions, start};
use tokio::process::Command;

/// The browser to run: `CHROME`, else Debian's Chromium. Missing, the test
/// fails under CI and says so loudly elsewhere.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "no Chromium at {} (install it: apt-get install chromium, or set CHROME)",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("NOT RUN: {why}");
    None
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

#[tokio::test]
async fn a_headless_page_load_runs_the_tracker_and_the_site_sees_the_browser() {
    let Some(chromium) = chromium() else { return };
    let site = start(SiteOptions::new(["shop.test", "partner.test"]))
        .await
        .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(chromium);
    command
        .arg("--headless")
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .arg("--no-default-browser-check")
        .arg("--disable-background-networking")
        .arg("--disable-component-update")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!(
            "--host-resolver-rules={}",
            site.host_resolver_rules()
        ))
        .arg("--window-size=1024,700")
        // Lets the page's timers and beacons run before the DOM is dumped.
        .arg("--virtual-time-budget=4000")
        .arg("--dump-dom")
        .arg(site.url("shop.test", "/page/3"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if is_root() {
        command.arg("--no-sandbox");
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("Chromium finished within 60 s")
        .expect("Chromium started");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains("data-tb-view=\"v1\""),
        "the tracker did not run; DOM:\n{dom}"
    );

    let visit = site
        .wait_until(Duration::from_secs(10), |s| {
            s.visits.iter().find(|v| v.client.is_some()).cloned()
        })
        .await
        .expect("the tracker's page-view beacon reached the site");
    let client = visit.client.as_ref().unwrap();
    assert_eq!(
        (visit.host.as_str(), visit.path.as_str()),
        ("shop.test", "/page/3")
    );
    assert_eq!(Some(client.user_agent.as_str()), visit.request.user_agent());
    assert!(
        client.user_agent.contains("Chrome"),
        "{}",
        client.user_agent
    );
    assert!(
        client.viewport_width > 0 && client.viewport_height > 0,
        "{client:?}"
    );
    assert!(
        client.page_height > client.viewport_height,
        "the page cannot scroll: {client:?}"
    );
    assert!(client.device_pixel_ratio > 0.0 && !client.timezone.is_empty());
    assert_eq!(client.url, site.url("shop.test", "/page/3"));

    let requests = site.requests_to("shop.test");
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert!(paths.contains(&"/tb/tracker.js"), "{paths:?}");
    let images = paths.iter().filter(|p| p.starts_with("/img/")).count();
    assert_eq!(images, 4, "{paths:?}");
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/tb/beacon" && r.status == Some(204)),
        "{paths:?}"
    );
    assert!(site.requests_to("partner.test").is_empty());
    assert!(site.seen().stray_beacons.is_empty());
}

/// A bare DevTools-protocol connection to a browser: enough to send a few
/// commands and read their answers (events in between are skipped).
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Cdp {
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        use futures_util::{SinkExt, StreamExt};
        self.next += 1;
        let id = self.next;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 20 s"))
                .expect("the browser closed the connection")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == json!(id) {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }
}

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Where a headless Chromium with `--remote-debugging-port=0` listens: it
/// writes the port and path into its profile once it is ready.
async fn devtools_url(profile: &std::path::Path) -> String {
    let file = profile.join("DevToolsActivePort");
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return format!("ws://127.0.0.1:{port}{path}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Chromium did not open its DevTools port within 15 s");
}

#[tokio::test]
async fn real_input_in_chromium_reaches_the_site_as_scrolls_a_trusted_click_and_a_leave() {
    let Some(chromium) = chromium() else { return };
    let site = start(SiteOptions::new(["shop.test", "partner.test"]))
        .await
        .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(chromium);
    command
        .arg("--headless")
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .arg("--no-default-browser-check")
        .arg("--disable-background-networking")
        .arg("--disable-component-update")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!(
            "--host-resolver-rules={}",
            site.host_resolver_rules()
        ))
        .arg("--window-size=1024,700")
        .arg("--remote-debugging-port=0")
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if is_root() {
        command.arg("--no-sandbox");
    }
    let mut browser = command.spawn().expect("Chromium started");
    let (ws, _) = tokio_tungstenite::connect_async(devtools_url(profile.path()).await)
        .await
        .unwrap();
    let mut cdp = Cdp { ws, next: 0 };
    let page = site.url("shop.test", "/page/2");
    let target = cdp
        .call(None, "Target.createTarget", json!({"url": page}))
        .await;
    let attached = cdp
        .call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    let session = attached["sessionId"].as_str().unwrap().to_owned();
    let s = Some(session.as_str());

    site.wait_until(Duration::from_secs(15), |seen| {
        seen.visits.iter().find(|v| v.client.is_some()).map(|_| ())
    })
    .await
    .expect("the page loaded and its tracker reported");

    for delta in [400, 650, -300] {
        cdp.call(
            s,
            "Input.dispatchMouseEvent",
            json!({"type": "mouseWheel", "x": 300, "y": 300, "deltaX": 0, "deltaY": delta}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    let link = cdp
        .call(
            s,
            "Runtime.evaluate",
            json!({"returnByValue": true, "expression": "(() => {
                const a = [...document.querySelectorAll('a')].find(a => a.href.includes('partner.test'));
                a.scrollIntoView({block: 'center'});
                const r = a.getBoundingClientRect();
                return {x: r.x + r.width / 2, y: r.y + r.height / 2};
            })()"}),
        )
        .await;
    let (x, y) = (&link["result"]["value"]["x"], &link["result"]["value"]["y"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for kind in ["mousePressed", "mouseReleased"] {
        cdp.call(
            s,
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
        )
        .await;
    }

    let (shop, landing) = site
        .wait_until(Duration::from_secs(15), |seen| {
            let shop = seen.visits_to("shop.test").first().copied()?.clone();
            let landing = seen.visits_to("partner.test").first().copied()?.clone();
            (shop.left.is_some() && landing.client.is_some()).then_some((shop, landing))
        })
        .await
        .expect("the click left the page for the partner site");
    let _ = cdp.call(None, "Browser.close", json!({})).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), browser.wait()).await;

    let ys: Vec<f64> = shop.scrolls.iter().map(|e| e.y).collect();
    assert!(ys.len() >= 3, "scrolls seen: {ys:?}");
    assert!(
        ys.windows(2).any(|w| w[1] < w[0]),
        "no scroll back up in {ys:?}"
    );
    assert!(shop.scrolls.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
    let click = shop.clicks.last().expect("a click");
    assert!(click.trusted, "{click:?}");
    assert_eq!(
        click.href.as_deref(),
        Some(site.url("partner.test", "/").as_str())
    );
    let left = shop.left.as_ref().unwrap();
    // Leaving fires pagehide, then visibilitychange; the last report counts.
    assert!(
        ["pagehide", "hidden"].contains(&left.reason.as_str()),
        "{left:?}"
    );
    let time_on_page = shop.time_on_page().unwrap();
    assert!(time_on_page > Duration::from_secs(1), "{time_on_page:?}");
    // Across origins Chromium sends only the origin (strict-origin-when-cross-origin).
    assert_eq!(
        landing.request.referer(),
        Some(site.url("shop.test", "/").as_str())
    );
    assert!(landing.session != shop.session || landing.host != shop.host);
}

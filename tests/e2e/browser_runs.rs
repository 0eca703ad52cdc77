//! Browser runs end to end: `trafficbuster serve` with its in-process
//! runner drives Debian's Chromium against the recording site on loopback,
//! under three host names (the verified target, a consented external
//! domain, an unconsented one). The assertions are on what the site saw,
//! not on the runner's own claims.

use std::time::Duration;

use serde_json::{Value, json};
use site::{Reply, SiteOptions, Visit};

use crate::datasets::{File, published};
use crate::helpers::{PASSWORD, TestApp, spawn_app};
use crate::jobs::{CREATE, ISSUE, RUN};
use crate::recovery::standing;

pub const TARGET: &str = "shop.example.com";
const PARTNER: &str = "partner.example.net";
const STRANGER: &str = "other.example.org";
const DESKTOP_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36 tb-desk";
const PHONE_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36 tb-phone";

/// Is Chromium here? Under CI it must be: a missing browser fails loudly.
pub fn chromium_present() -> bool {
    match runner::browser::executable::find_chrome(None) {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI=true and no browser for the browser runs: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: no browser: {e}");
            false
        }
    }
}

/// A gateway with its in-process runner, online.
pub async fn gateway_with_runner() -> TestApp {
    let app = spawn_app().with_runner().await;
    let root = app.with_accounts().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = app
            .gql("{ runners { name online } }", json!({}), Some(&root))
            .await;
        let online = r["data"]["runners"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["online"] == true));
        if online {
            return app;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the in-process runner never came online: {r}\n{}",
            app.process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn ok(app: &TestApp, token: &str, query: &str, vars: Value) -> Value {
    let r = app.gql(query, vars, Some(token)).await;
    assert!(r["errors"].is_null(), "{query}: {r}");
    r["data"].clone()
}

/// A GET on the gateway as `token`: (status, content type, body bytes).
async fn download(app: &TestApp, path: &str, token: &str) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(&app.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (
        head[9..12].parse().unwrap(),
        content_type,
        raw[end + 4..].to_vec(),
    )
}

fn landing(visit: &Visit) -> bool {
    visit.host == TARGET && visit.path == "/"
}

/// ada, licensed for browser runs with proxies and external clicks, may
/// send traffic to [`TARGET`] (allow-listed) and clicks to the partner
/// domain (consented), with safe mode off; her token.
pub async fn consented(app: &TestApp) -> String {
    let root = app.token("root", crate::app::ROOT_PASSWORD).await;
    let licence = json!({ "maxInstances": 4, "humanSurfing": true, "importProxy": true,
        "scheduler": false, "externalClicks": true, "maxTargets": 10, "maxFlowsPerDay": 1000,
        "expiresAt": "2099-01-01T00:00:00Z" });
    ok(app, &root, ISSUE, json!({ "u": "ada", "l": licence })).await;
    let ada = app.token("ada", PASSWORD).await;
    ok(
        app,
        &root,
        "mutation($d: String!) { allowListDomain(domain: $d, reason: \"browser e2e site\") }",
        json!({ "d": TARGET }),
    )
    .await;
    ok(
        app,
        &ada,
        "mutation($d: String!, $r: String!) { grantExternalClicks(domain: $d, reason: $r) }",
        json!({ "d": PARTNER, "r": "our partner" }),
    )
    .await;
    ok(
        app,
        &root,
        "mutation { turnSafeModeOff(reason: \"browser e2e\") { safeMode { on } } }",
        json!({}),
    )
    .await;
    ada
}

/// A settings profile of one row, from (column, value) pairs.
pub fn settings_profile(columns: &[(&str, &str)]) -> File {
    let (names, values): (Vec<&str>, Vec<&str>) = columns.iter().copied().unzip();
    File::new(
        "SETTINGS_PROFILES",
        "CSV",
        format!("name,{}\ne2e,{}\n", names.join(","), values.join(",")),
    )
}

/// A desktop device profile: one row.
pub fn desktop_profile() -> File {
    File::new(
        "DEVICE_PROFILES",
        "CSV",
        format!(
            "name,os,browser,user_agent,viewport_width,viewport_height\n\
             desk,linux,chromium,\"{DESKTOP_UA}\",1280,800\n"
        ),
    )
}

/// Waits (`within` at most) for the job to end: its status.
pub async fn ended(app: &TestApp, token: &str, job: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, _, _) = standing(app, token, job).await;
        if ["DONE", "FAILED", "STOPPED"].contains(&status.as_str()) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not end within {within:?}: {status}\n{}",
            app.process.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The job's log messages, oldest first (up to 500).
pub async fn log_messages(app: &TestApp, token: &str, job: &str) -> Vec<String> {
    let log = ok(
        app,
        token,
        "query($id: ID!) { job(id: $id) { log(first: 500) { message } } }",
        json!({ "id": job }),
    )
    .await;
    log["job"]["log"]
        .as_array()
        .unwrap_or_else(|| panic!("{log}"))
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_visits_as_configured_and_clicks_only_consented_external_links() {
    if !chromium_present() {
        return;
    }
    let site = site::start(SiteOptions::new([TARGET, PARTNER, STRANGER]))
        .await
        .unwrap();
    let port = site.port();
    let app = gateway_with_runner().await;
    let ada = consented(&app).await;
    // 6 visits, 4 of them clicking; every click external (to the one
    // consented domain: the page also links to the unconsented one).
    let targets = File::new(
        "TARGETS",
        "CSV",
        format!(
            "url,flow_target,click_target,traffic_type,source\n\
             http://{TARGET}:{port}/,6,4,referral,http://news.example.com/story\n"
        ),
    );
    let profiles = File::new(
        "DEVICE_PROFILES",
        "CSV",
        format!(
            "name,os,browser,user_agent,viewport_width,viewport_height,device_scale_factor,touch,locale,timezone\n\
             desk,linux,chromium,\"{DESKTOP_UA}\",1280,800,1,no,en-GB,Europe/London\n\
             phone,android,chromium,\"{PHONE_UA}\",412,915,2.625,yes,de-DE,Europe/Berlin\n"
        ),
    );
    let settings = File::new(
        "SETTINGS_PROFILES",
        "CSV",
        format!(
            "name,instances,marker_header,session_duration_min,session_duration_max,\
             pages_per_session_min,pages_per_session_max,delay_between_flows,random_scrolling,\
             clicks,external_click_share,click_delay_ms_min,click_delay_ms_max,dns_mode,dns_hosts\n\
             e2e,2,yes,3,5,1,2,0,yes,yes,1,100,300,custom,\
             {TARGET}=127.0.0.1;{PARTNER}=127.0.0.1;{STRANGER}=127.0.0.1\n"
        ),
    );
    let version = |id: String| json!({ "dataset": id, "version": 1 });
    let vars = json!({
        "n": "browser run",
        "t": version(published(&app, &ada, &targets).await),
        "d": version(published(&app, &ada, &profiles).await),
        "s": version(published(&app, &ada, &settings).await),
    });
    let job = ok(&app, &ada, CREATE, vars).await["createJob"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&app, &ada, RUN, json!({ "id": job })).await;

    ended(&app, &ada, &job, Duration::from_secs(120)).await;
    let (status, finished, succeeded) = standing(&app, &ada, &job).await;
    let log = ok(
        &app,
        &ada,
        "query($id: ID!) { job(id: $id) { clicked log { message } } }",
        json!({ "id": job }),
    )
    .await;
    assert_eq!(
        (status.as_str(), finished, succeeded),
        ("DONE", 6, 6),
        "job log: {log}"
    );
    assert_eq!(log["job"]["clicked"], 4, "{log}");

    // What the site saw.
    let seen = site.seen();
    // Each flow is a fresh browser context: one session on the target,
    // whose first page is the landing.
    let sessions: Vec<Vec<&Visit>> = seen
        .sessions()
        .into_iter()
        .filter(|s| s[0].host == TARGET)
        .collect();
    assert_eq!(sessions.len(), 6, "one session per flow");
    let landings: Vec<&Visit> = sessions.iter().map(|s| s[0]).collect();
    for s in &sessions {
        assert!(landing(s[0]), "a session starts at the target URL");
        assert!(s.len() <= 2, "at most 2 pages a session: {}", s.len());
    }
    for v in &landings {
        let r = &v.request;
        assert_eq!(r.marker(), Some(job.as_str()), "the marker header");
        let ua = r.user_agent().unwrap_or_default();
        assert!(ua == DESKTOP_UA || ua == PHONE_UA, "user agent {ua}");
        // Across sites Chromium sends the referrer's origin only.
        assert_eq!(r.referer(), Some("http://news.example.com/"), "{r:?}");
        let client = v.client.as_ref().expect("the tracker ran");
        if ua == PHONE_UA {
            // A phone lays a page out wider than its screen (no viewport
            // meta on the site's pages), as a real one does: the screen tells.
            assert_eq!(
                (client.screen_width, client.device_pixel_ratio),
                (412, 2.625),
                "{client:?}"
            );
            assert!(client.touch_events && client.max_touch_points > 0);
            assert_eq!(client.timezone, "Europe/Berlin");
        } else {
            assert_eq!(
                (client.viewport_width, client.device_pixel_ratio),
                (1280, 1.0)
            );
            assert!(!client.touch_events);
            assert_eq!(client.timezone, "Europe/London");
        }
    }
    assert!(
        landings.iter().any(|v| !v.scrolls.is_empty()),
        "random scrolling reached the site"
    );
    for r in seen.requests_to(TARGET) {
        assert_eq!(
            r.marker(),
            Some(job.as_str()),
            "every request marked: {r:?}"
        );
    }
    let partner_pages: Vec<&Visit> = seen.visits_to(PARTNER);
    assert_eq!(
        partner_pages.len(),
        4,
        "each clicking flow reached the partner"
    );
    assert!(
        seen.requests_to(STRANGER).is_empty(),
        "the unconsented domain saw nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_target_links_its_screenshot_and_a_painted_pages_vitals_reach_the_job() {
    if !chromium_present() {
        return;
    }
    let site = site::start(SiteOptions::new([TARGET]).route("/down", Reply::Status(500)))
        .await
        .unwrap();
    let port = site.port();
    let app = gateway_with_runner().await;
    let ada = consented(&app).await;
    let root = app.token("root", crate::app::ROOT_PASSWORD).await;
    // Two visits of a page that paints, one of a page that fails.
    let targets = File::new(
        "TARGETS",
        "CSV",
        format!(
            "url,flow_target,click_target,traffic_type\n\
             http://{TARGET}:{port}/,2,0,direct\n\
             http://{TARGET}:{port}/down,1,0,direct\n"
        ),
    );
    let profiles = File::new(
        "DEVICE_PROFILES",
        "CSV",
        format!(
            "name,os,browser,user_agent,viewport_width,viewport_height,device_scale_factor,touch,locale,timezone\n\
             desk,linux,chromium,\"{DESKTOP_UA}\",1280,800,1,no,en-GB,Europe/London\n"
        ),
    );
    let settings = File::new(
        "SETTINGS_PROFILES",
        "CSV",
        format!(
            "name,instances,marker_header,session_duration_min,session_duration_max,\
             pages_per_session_min,pages_per_session_max,delay_between_flows,random_scrolling,\
             clicks,external_click_share,click_delay_ms_min,click_delay_ms_max,dns_mode,dns_hosts\n\
             e2e,2,yes,1,2,1,1,0,no,no,0,100,300,custom,{TARGET}=127.0.0.1\n"
        ),
    );
    let version = |id: String| json!({ "dataset": id, "version": 1 });
    let vars = json!({
        "n": "evidence",
        "t": version(published(&app, &ada, &targets).await),
        "d": version(published(&app, &ada, &profiles).await),
        "s": version(published(&app, &ada, &settings).await),
    });
    let job = ok(&app, &ada, CREATE, vars).await["createJob"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&app, &ada, RUN, json!({ "id": job })).await;
    ended(&app, &ada, &job, Duration::from_secs(120)).await;

    let pct = "{ pages p50 p95 }";
    let query = format!(
        "query($id: ID!) {{ job(id: $id) {{ finished succeeded failed \
         targetProgress {{ target vitals {{ ttfbMs {pct} fcpMs {pct} lcpMs {pct} cls {pct} inpMs {pct} }} }} \
         log {{ flow message artifacts {{ kind blob bytes url }} }} }} }}"
    );
    let j = ok(&app, &ada, &query, json!({ "id": job })).await["job"].clone();
    assert_eq!(
        (&j["finished"], &j["succeeded"], &j["failed"]),
        (&json!(3), &json!(2), &json!(1)),
        "{j}"
    );

    // The painted page's vitals, per target: both visits measured.
    let painted = &j["targetProgress"][0]["vitals"];
    for vital in ["ttfbMs", "fcpMs", "cls"] {
        let v = &painted[vital];
        assert_eq!(v["pages"], 2, "{vital}: {painted}");
        let (p50, p95) = (v["p50"].as_f64().unwrap(), v["p95"].as_f64().unwrap());
        assert!(p50 <= p95, "{vital}: {v}");
    }
    assert!(painted["fcpMs"]["p50"].as_f64().unwrap() > 0.0, "{painted}");
    assert!(
        painted["inpMs"].is_null(),
        "no interaction, no INP: {painted}"
    );

    // The failed flow's log line links its artifacts; the screenshot is a PNG.
    let lines = j["log"].as_array().unwrap();
    let failed = lines
        .iter()
        .find(|l| !l["artifacts"].as_array().unwrap().is_empty())
        .unwrap_or_else(|| panic!("no log line with artifacts: {j}"));
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .ends_with("failed: HTTP 500"),
        "{failed}"
    );
    let kinds: Vec<&str> = failed["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"SCREENSHOT") && kinds.contains(&"REQUEST_LOG"),
        "{failed}"
    );
    let shot = failed["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "SCREENSHOT")
        .unwrap();
    let url = shot["url"].as_str().unwrap();
    let (status, content_type, png) = download(&app, url, &ada).await;
    assert_eq!((status, content_type.as_str()), (200, "image/png"), "{url}");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert_eq!(png.len() as u64, shot["bytes"].as_u64().unwrap());
    let log = failed["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "REQUEST_LOG")
        .unwrap();
    let (status, _, body) = download(&app, log["url"].as_str().unwrap(), &ada).await;
    let requests: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert!(
        status == 200
            && requests
                .iter()
                .any(|r| r["url"].as_str().unwrap().ends_with("/down") && r["status"] == 500),
        "{requests:?}"
    );
    // Another account sees no such job, nor its artifacts.
    ok(
        &app,
        &root,
        "mutation($u: String!, $p: String!, $r: [RoleName!]!) { createAccount(username: $u, password: $p, roles: $r) }",
        json!({ "u": "bob", "p": PASSWORD, "r": ["USER"] }),
    )
    .await;
    let bob = app.token("bob", PASSWORD).await;
    assert_eq!(download(&app, url, &bob).await.0, 404);
}

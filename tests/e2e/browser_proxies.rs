//! Browser runs through real proxies: two tinyproxy processes of the
//! test's own (one asking for a password) and a dead one first in the
//! job's pool. The flows arrive through the live proxies (their own logs
//! and the site's Via header say so), the dead one's failures fail over
//! and are reported, and the UI's proxy view sees it disabled, live.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use site::SiteOptions;
use tokio_tungstenite::tungstenite::Message;

use crate::browser_runs::{
    TARGET, chromium_present, consented, desktop_profile, ended, gateway_with_runner, log_messages,
    ok, settings_profile,
};
use crate::datasets::{File, published};
use crate::graphql::{ws_connect, ws_next};
use crate::jobs::RUN;
use crate::tinyproxy::{self, Tinyproxy};

const CREATE: &str = "mutation($n: String!, $t: DatasetVersionInput!, $d: DatasetVersionInput!, \
    $s: DatasetVersionInput!, $p: DatasetVersionInput) { createJob(name: $n, targets: $t, \
    deviceProfiles: $d, settingsProfile: $s, proxies: $p) { id } }";
const POOL: &str = "dataset version disabled proxies { row region status failures lastError }";
const PROXY_USER: &str = "flow";
const PROXY_PASSWORD: &str = "e2e-tinyproxy-pw-9041";
const FLOWS: usize = 9;

fn tinyproxy_present() -> bool {
    match tinyproxy::installed() {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI=true and no tinyproxy for the proxied browser runs: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            false
        }
    }
}

/// The request lines in a tinyproxy log for `url`.
fn requests_for(log: &str, url: &str) -> usize {
    let line = format!("GET {url} HTTP/1.1");
    log.lines().filter(|l| l.ends_with(&line)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flows_go_through_live_proxies_and_a_dead_one_fails_over_and_is_disabled_live() {
    if !chromium_present() || !tinyproxy_present() {
        return;
    }
    let site = site::start(SiteOptions::new([TARGET])).await.unwrap();
    let landing = site.url(TARGET, "/");
    let upstream = [("example.com", site.addr())];
    let open = Tinyproxy::start(None, &upstream);
    let guarded = Tinyproxy::start(Some((PROXY_USER, PROXY_PASSWORD)), &upstream);
    // A port nobody listens on: connections to it are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = gateway_with_runner().await;
    let ada = consented(&app).await;

    let targets = File::new(
        "TARGETS",
        "CSV",
        format!("url,flow_target,click_target,traffic_type\n{landing},{FLOWS},0,direct\n"),
    );
    // Per flow, flows 0, 3 and 6 start at the dead proxy: three failures.
    let settings = settings_profile(&[
        ("instances", "2"),
        ("session_duration", "1"),
        ("pages_per_session", "1"),
        ("delay_between_flows", "0"),
        ("random_scrolling", "no"),
        ("clicks", "no"),
        ("proxy_switching", "per_flow"),
        ("dns_mode", "custom"),
        ("dns_hosts", &format!("{TARGET}=127.0.0.1")),
    ]);
    let proxies = File::new(
        "PROXIES",
        "CSV",
        format!(
            "host,port,username,password,region\n\
             127.0.0.1,{dead},,,gb\n\
             127.0.0.1,{},,,de\n\
             127.0.0.1,{},{PROXY_USER},{PROXY_PASSWORD},fr\n",
            open.port, guarded.port
        ),
    );
    let version = |id: String| json!({ "dataset": id, "version": 1 });
    let vars = json!({
        "n": "proxied browser run",
        "t": version(published(&app, &ada, &targets).await),
        "d": version(published(&app, &ada, &desktop_profile()).await),
        "s": version(published(&app, &ada, &settings).await),
        "p": version(published(&app, &ada, &proxies).await),
    });
    let job = ok(&app, &ada, CREATE, vars).await["createJob"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The UI watches the job's proxies from before it runs.
    let mut ws = ws_connect(&app.addr, "graphql-transport-ws", &ada).await;
    let watch = format!("subscription($id: ID!) {{ jobProxies(id: $id) {{ {POOL} }} }}");
    ws.send(Message::text(
        json!({ "id": "p", "type": "subscribe", "payload": { "query": watch, "variables": { "id": job } } })
            .to_string(),
    ))
    .await
    .unwrap();
    let first = ws_next(&mut ws).await;
    assert_eq!(
        first["payload"]["data"]["jobProxies"]["disabled"], 0,
        "{first}"
    );
    ok(&app, &ada, RUN, json!({ "id": job })).await;

    let pool = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let next = ws_next(&mut ws).await;
            assert_eq!(next["type"], "next", "{next}");
            let pool = next["payload"]["data"]["jobProxies"].clone();
            if pool["disabled"] == 1 {
                break pool;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the dead proxy was never disabled\n{}", app.process.log()));
    let dead_row = &pool["proxies"][0];
    assert_eq!(
        (
            &dead_row["region"],
            &dead_row["status"],
            &dead_row["failures"]
        ),
        (&json!("gb"), &json!("DISABLED"), &json!(3)),
        "{pool}"
    );
    assert!(
        dead_row["lastError"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("127.0.0.1:{dead}"))),
        "the error names the proxy: {pool}"
    );
    for live in [&pool["proxies"][1], &pool["proxies"][2]] {
        assert_eq!(live["status"], "HEALTHY", "{pool}");
    }
    assert!(!pool.to_string().contains(PROXY_PASSWORD));

    assert_eq!(
        ended(&app, &ada, &job, Duration::from_secs(120)).await,
        "DONE"
    );
    let figures = ok(
        &app,
        &ada,
        "query($id: ID!) { job(id: $id) { finished succeeded failed } }",
        json!({ "id": job }),
    )
    .await;
    assert_eq!(
        figures["job"],
        json!({ "finished": FLOWS, "succeeded": FLOWS, "failed": 0 }),
        "{}",
        log_messages(&app, &ada, &job).await.join("\n")
    );

    // The failovers are in the job's log, each naming the dead proxy.
    let log = log_messages(&app, &ada, &job).await;
    let failovers: Vec<&String> = log.iter().filter(|m| m.contains("failed over")).collect();
    assert_eq!(failovers.len(), 3, "{log:#?}");
    for line in &failovers {
        assert!(
            line.contains("proxy #0 failed over to proxy #")
                && line.contains(&format!("127.0.0.1:{dead}")),
            "{line}"
        );
    }

    // What the proxies and the site saw: every landing came through one of
    // the live proxies, none straight from the browser.
    let (open_log, guarded_log) = (open.log(), guarded.log());
    let (via_open, via_guarded) = (
        requests_for(&open_log, &landing),
        requests_for(&guarded_log, &landing),
    );
    // A fresh context asks the guarded proxy without credentials first,
    // and again with them once it answers 407: two lines per landing.
    assert_eq!(
        (via_open + via_guarded / 2, via_guarded % 2),
        (FLOWS, 0),
        "open:\n{open_log}\nguarded:\n{guarded_log}"
    );
    assert!(via_open > 0 && via_guarded > 0, "{via_open} {via_guarded}");
    let landings = site.visits_to(TARGET);
    assert_eq!(landings.len(), FLOWS, "one page per flow");
    for request in site.requests_to(TARGET) {
        let via = request.header("via").unwrap_or_default();
        assert!(
            via.contains("tinyproxy"),
            "came without a proxy: {request:?}"
        );
        assert_eq!(request.marker(), Some(job.as_str()), "{request:?}");
    }
    // The password went to the proxy only, never to the site.
    assert!(
        site.requests()
            .iter()
            .all(|r| r.header("proxy-authorization").is_none())
    );
}

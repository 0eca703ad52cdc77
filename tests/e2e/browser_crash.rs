//! A browser killed under a running job: the test SIGKILLs the in-process
//! runner's Chromium while its flows run. The watchdog relaunches it, the
//! flows it held end failed with the reason, the job still finishes every
//! flow exactly once, and when the gateway exits no Chromium is left.

use std::time::Duration;

use serde_json::json;
use site::SiteOptions;

use crate::browser_runs::{
    TARGET, chromium_present, consented, desktop_profile, ended, gateway_with_runner, log_messages,
    ok, settings_profile,
};
use crate::chromium::{browsers_of, flows_browser};
use crate::datasets::{File, published};
use crate::jobs::{CREATE, RUN};
use crate::recovery::flow_accounting;

const FLOWS: u64 = 8;

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chromium_killed_mid_job_is_relaunched_the_job_finishes_and_none_outlives_the_gateway() {
    if !chromium_present() {
        return;
    }
    let site = site::start(SiteOptions::new([TARGET])).await.unwrap();
    let mut app = gateway_with_runner().await;
    let ada = consented(&app).await;
    let targets = File::new(
        "TARGETS",
        "CSV",
        format!(
            "url,flow_target,click_target,traffic_type\n{},{FLOWS},0,direct\n",
            site.url(TARGET, "/")
        ),
    );
    let settings = settings_profile(&[
        ("instances", "2"),
        ("session_duration", "3"),
        ("pages_per_session", "1"),
        ("delay_between_flows", "0"),
        ("random_scrolling", "yes"),
        ("clicks", "no"),
        ("dns_mode", "custom"),
        ("dns_hosts", &format!("{TARGET}=127.0.0.1")),
    ]);
    let version = |id: String| json!({ "dataset": id, "version": 1 });
    let vars = json!({
        "n": "crash run",
        "t": version(published(&app, &ada, &targets).await),
        "d": version(published(&app, &ada, &desktop_profile()).await),
        "s": version(published(&app, &ada, &settings).await),
    });
    let job = ok(&app, &ada, CREATE, vars).await["createJob"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&app, &ada, RUN, json!({ "id": job })).await;

    // Two flows on their pages: kill their browser, the one with the job's
    // host mappings, with SIGKILL (no chance to say goodbye).
    site.wait_until(Duration::from_secs(60), |seen| {
        (seen.visits_to(TARGET).len() >= 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", app.process.log()));
    let serve = app.process.pid();
    let killed = flows_browser(serve);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &killed.pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    app.process
        .wait_for_log("Chromium relaunched", Duration::from_secs(30))
        .await;
    wait_until(
        "the killed browser's helpers gone",
        Duration::from_secs(10),
        || running(killed.profile()).is_empty(),
    )
    .await;

    assert_eq!(
        ended(&app, &ada, &job, Duration::from_secs(120)).await,
        "DONE"
    );
    let figures = ok(
        &app,
        &ada,
        "query($id: ID!) { job(id: $id) { finished succeeded failed \
         targetProgress { flowDone flowTarget } } }",
        json!({ "id": job }),
    )
    .await;
    let log = log_messages(&app, &ada, &job).await;
    let j = &figures["job"];
    assert_eq!(
        j["targetProgress"],
        json!([{ "flowDone": FLOWS, "flowTarget": FLOWS }]),
        "{figures}"
    );
    assert_eq!(j["finished"], FLOWS, "{figures}");
    let (succeeded, failed) = (
        j["succeeded"].as_u64().unwrap(),
        j["failed"].as_u64().unwrap(),
    );
    assert_eq!(succeeded + failed, FLOWS, "{figures}");
    // The flows running in the killed browser failed, saying why; no other did.
    let killed_pid = format!("(pid {}) was killed by signal 9", killed.pid);
    let crashed: Vec<&String> = log
        .iter()
        .filter(|m| m.contains("failed: browser failed:"))
        .collect();
    assert!(
        (1..=2).contains(&crashed.len()) && crashed.len() as u64 == failed,
        "{figures}\n{log:#?}"
    );
    for line in crashed {
        assert!(line.contains(&killed_pid), "{line}");
    }
    // Each flow counted once, and each successful one was a visit.
    assert_eq!(flow_accounting(&app.store, &job).await, (0, FLOWS, 0));
    assert!(site.visits_to(TARGET).len() as u64 >= succeeded);

    // A new browser took the killed one's place; when the gateway exits,
    // every Chromium it ran goes with it.
    let relaunched = flows_browser(serve);
    assert_ne!(relaunched.pid, killed.pid);
    let browsers = browsers_of(serve);
    assert!(browsers.len() >= 2, "the system-DNS one too: {browsers:?}");
    let profiles: Vec<String> = browsers.iter().map(|b| b.profile().to_owned()).collect();
    assert!(
        profiles.iter().all(|p| !running(p).is_empty()),
        "{profiles:?}"
    );
    let exit = app.terminate().await;
    assert!(exit.success(), "{exit:?}\n{}", app.process.log());
    wait_until(
        "no Chromium after the gateway exits",
        Duration::from_secs(10),
        || profiles.iter().all(|p| running(p).is_empty()),
    )
    .await;
}

/// Live processes of the browser whose profile is `profile`.
fn running(profile: &str) -> Vec<u32> {
    runner::browser::capacity::processes_mentioning(profile).unwrap()
}

//! Pause, resume and stop of a job running in real Chromium, judged by
//! what the site sees: a second after a pause or a stop no request of the
//! job arrives any more and the flows' pages are closed; a resume brings
//! the visits back; the counts stay whole.

use std::time::Duration;

use serde_json::{Value, json};
use site::{RunningSite, SiteOptions};

use crate::browser_runs::{
    TARGET, chromium_present, consented, desktop_profile, gateway_with_runner, ok, settings_profile,
};
use crate::chromium::flows_browser;
use crate::datasets::{File, published};
use crate::helpers::TestApp;
use crate::jobs::{CREATE, RUN};
use crate::recovery::{flow_accounting, standing};

const FLOWS: u64 = 10;
/// What pause and stop are given to take effect.
const WITHIN: Duration = Duration::from_secs(1);
/// How long the site is then watched for stray requests.
const QUIET: Duration = Duration::from_secs(2);

async fn set(app: &TestApp, ada: &str, mutation: &str, job: &str) -> Value {
    let query = format!("mutation($id: ID!) {{ {mutation}(id: $id) {{ status }} }}");
    ok(app, ada, &query, json!({ "id": job })).await[mutation]["status"].clone()
}

/// Waits until the site has seen `n` page views in all.
async fn visits(site: &RunningSite, app: &TestApp, n: usize) {
    site.wait_until(Duration::from_secs(60), |seen| {
        (seen.visits_to(TARGET).len() >= n).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{n} visits: {e}\n{}", app.process.log()));
}

/// After `WITHIN`, the site sees nothing more for `QUIET`, and the flows'
/// browser has no page of the site open.
async fn goes_quiet(site: &RunningSite, app: &TestApp, what: &str) {
    tokio::time::sleep(WITHIN).await;
    let before = site.requests().len();
    tokio::time::sleep(QUIET).await;
    let after = site.requests();
    assert_eq!(
        after.len(),
        before,
        "requests more than {WITHIN:?} after the {what}: {:#?}",
        &after[before..]
    );
    let port = format!(":{}/", site.port());
    let open: Vec<String> = flows_browser(app.process.pid())
        .open_pages()
        .await
        .into_iter()
        .filter(|url| url.contains(&port))
        .collect();
    assert!(
        open.is_empty(),
        "pages left open after the {what}: {open:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_and_stop_take_effect_in_the_browser_within_a_second() {
    if !chromium_present() {
        return;
    }
    let site = site::start(SiteOptions::new([TARGET])).await.unwrap();
    let app = gateway_with_runner().await;
    let ada = consented(&app).await;
    let targets = File::new(
        "TARGETS",
        "CSV",
        format!(
            "url,flow_target,click_target,traffic_type\n{},{FLOWS},0,direct\n",
            site.url(TARGET, "/")
        ),
    );
    // Sessions long enough to be cut short, scrolling all the while (the
    // site hears every scroll from its tracker).
    let settings = settings_profile(&[
        ("instances", "2"),
        ("session_duration", "4"),
        ("pages_per_session", "1"),
        ("delay_between_flows", "0"),
        ("random_scrolling", "yes"),
        ("clicks", "no"),
        ("dns_mode", "custom"),
        ("dns_hosts", &format!("{TARGET}=127.0.0.1")),
    ]);
    let version = |id: String| json!({ "dataset": id, "version": 1 });
    let vars = json!({
        "n": "paused run",
        "t": version(published(&app, &ada, &targets).await),
        "d": version(published(&app, &ada, &desktop_profile()).await),
        "s": version(published(&app, &ada, &settings).await),
    });
    let job = ok(&app, &ada, CREATE, vars).await["createJob"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&app, &ada, RUN, json!({ "id": job })).await;

    // Pause with two flows on their pages.
    visits(&site, &app, 2).await;
    assert_eq!(set(&app, &ada, "pauseJob", &job).await, "PAUSED");
    goes_quiet(&site, &app, "pause").await;
    let (status, paused_at, _) = standing(&app, &ada, &job).await;
    assert_eq!(status, "PAUSED");

    // Resumed, flows visit and finish again.
    let seen = site.visits_to(TARGET).len();
    assert_eq!(set(&app, &ada, "resumeJob", &job).await, "RUNNING");
    visits(&site, &app, seen + 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while standing(&app, &ada, &job).await.1 <= paused_at {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no flow finished after the resume\n{}",
            app.process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop with a flow on its page.
    let seen = site.visits_to(TARGET).len();
    visits(&site, &app, seen + 1).await;
    assert_eq!(set(&app, &ada, "stopJob", &job).await, "STOPPED");
    goes_quiet(&site, &app, "stop").await;
    let figures = ok(
        &app,
        &ada,
        "query($id: ID!) { job(id: $id) { status finished succeeded failed inProgress \
         targetProgress { flowDone flowTarget } } }",
        json!({ "id": job }),
    )
    .await;
    let j = &figures["job"];
    let finished = j["finished"].as_u64().unwrap();
    assert_eq!(j["status"], "STOPPED", "{figures}");
    assert!(
        paused_at < finished && finished < FLOWS,
        "stopped part way: {figures}"
    );
    assert_eq!(
        j["succeeded"].as_u64().unwrap() + j["failed"].as_u64().unwrap(),
        finished,
        "{figures}"
    );
    assert_eq!(
        j["targetProgress"],
        json!([{ "flowDone": finished, "flowTarget": FLOWS }]),
        "{figures}"
    );
    assert_eq!(j["inProgress"], 0, "{figures}");
    assert_eq!(
        flow_accounting(&app.store, &job).await,
        (0, finished, 0),
        "each flow counted once"
    );
}

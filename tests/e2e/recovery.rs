//! Recovery, end to end, with fleets of runners (the runner's work loop on
//! a zero-work executor) against real `trafficbuster serve` processes:
//!
//! - a gateway SIGKILLed mid-job and restarted: its runners reconnect, the
//!   job carries on to DONE, no flow is lost or counted twice, and the
//!   views equal a rebuild from the first event;
//! - two gateways on one PostgreSQL, runners on both: no flow is leased
//!   while a lease holds it (one whose grant was lost with a dying gateway
//!   expires first), every flow counts once, and when one gateway dies its
//!   runners carry on through the other.
//!
//! - a gateway SIGKILLed while runners are connected: the one that never
//!   comes back is recorded offline by the restarted gateway, however it
//!   left its presence; the one that reconnects is online.
//!
//! (A runner killed mid-lease is `gateway/tests/job_work.rs`.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::flow::{FlowRange, FlowReport, FlowSet};
use domain::job::{FlowsHandedBack, JobEvent, LeaseExpired as JobLeaseExpired};
use domain::runner::RunnerId;
use domain::runner_key::RunnerKey;
use projections::{SqlValue, ViewStore};
use runner::Connection;
use runner::state_dir::StateDir;
use runner::worker::{self, Totals, WorkerOptions};
use runner::zero_work_executor::ZeroWorkExecutor;
use serde_json::json;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::helpers::{PASSWORD, ROOT_PASSWORD, TestApp, TestStore, run, spawn_app};
use crate::jobs::{CREATE, ISSUE, RUN, datasets_of, licence};
use crate::runners::{runner_config, runner_key};

/// Short runner terms, so silence and expiry take seconds, not minutes.
pub const TERMS: &[&str] = &["--runner-heartbeat-ms", "200", "--lease-ttl-ms", "2000"];
/// Targets × flows of the recovery jobs.
const TARGETS: usize = 20;
const FLOWS_PER_TARGET: u64 = 100;
const FLOWS: u64 = TARGETS as u64 * FLOWS_PER_TARGET;

/// ada's job of [`FLOWS`] flows, RUNNING, and a runner key: (root, ada, job id, key).
async fn running_job(app: &TestApp) -> (String, String, String, RunnerKey) {
    let mut rows = String::new();
    for t in 0..TARGETS {
        rows.push_str(&format!(
            "https://shop.example.com/p/{t},{FLOWS_PER_TARGET},10\n"
        ));
    }
    running_job_of(app, &rows, 8).await
}

/// ada's job of `rows` (csv `url,flows,clicks` on shop.example.com) with
/// `instances` instances, RUNNING, and a runner key: (root, ada, job id, key).
pub async fn running_job_of(
    app: &TestApp,
    rows: &str,
    instances: u32,
) -> (String, String, String, RunnerKey) {
    let root = app.with_accounts().await;
    let r = app
        .gql(ISSUE, json!({ "u": "ada", "l": licence(8) }), Some(&root))
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
    let ada = app.token("ada", PASSWORD).await;
    let vars = datasets_of(app, &ada, rows, instances).await;
    let r = app.gql(CREATE, vars, Some(&ada)).await;
    let job = r["data"]["createJob"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let off = "mutation { turnSafeModeOff(reason: \"recovery e2e\") { safeMode { on } } }";
    app.gql(off, json!({}), Some(&root)).await;
    let list = "mutation { allowListDomain(domain: \"shop.example.com\", reason: \"e2e\") }";
    app.gql(list, json!({}), Some(&root)).await;
    let r = app.gql(RUN, json!({ "id": job }), Some(&ada)).await;
    assert_eq!(r["data"]["runJob"]["status"], "RUNNING", "{r}");
    let (_, key) = runner_key(app, &root).await;
    (root, ada, job, key)
}

/// A fleet of zero-work runners that fail over among `gateways`, each
/// starting at its own index; a flow takes 4 ms, so a job lasts long
/// enough to be interrupted.
fn fleet(
    app: &TestApp,
    key: &RunnerKey,
    runners: usize,
    gateways: &[Arc<Mutex<Vec<String>>>],
) -> Vec<JoinHandle<Totals>> {
    // The runners' state directories, gone when the last runner ends.
    let states = Arc::new(tempfile::tempdir().unwrap());
    (0..runners)
        .map(|i| {
            let state = StateDir::open(&states.path().join(i.to_string())).unwrap();
            let config = runner_config(app, state.id(), key);
            let options = WorkerOptions {
                queued_per_slot: 19,
                idle_exit: Some(Duration::from_secs(6)),
                gateways: gateways[i % gateways.len()].clone(),
                ..WorkerOptions::default()
            };
            let executor = ZeroWorkExecutor {
                capacity: 2,
                work: Duration::from_millis(4),
            };
            let states = states.clone();
            tokio::spawn(async move {
                let stop = std::future::pending();
                let executor = Arc::new(executor);
                let totals =
                    worker::run(state, config, options, executor, stop, Duration::ZERO).await;
                drop(states);
                totals
            })
        })
        .collect()
}

pub fn runner_url(app: &TestApp) -> String {
    format!("ws://{}/runner", app.addr)
}

/// The job's (status, finished, succeeded) as `job(id)` answers.
pub async fn standing(app: &TestApp, token: &str, job: &str) -> (String, u64, u64) {
    let r = app
        .gql(
            "query($id: ID!) { job(id: $id) { status finished succeeded } }",
            json!({ "id": job }),
            Some(token),
        )
        .await;
    let j = &r["data"]["job"];
    (
        j["status"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned(),
        j["finished"].as_u64().unwrap(),
        j["succeeded"].as_u64().unwrap(),
    )
}

/// Waits until the job has finished at least `flows` flows.
async fn finished_at_least(app: &TestApp, token: &str, job: &str, flows: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while standing(app, token, job).await.1 < flows {
        assert!(tokio::time::Instant::now() < deadline, "the job stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every flow of the job, from its stream: (flows leased while another
/// lease held them, flows finished, flows finished twice or more). A flow
/// goes back to the pool only when its lease expires or is handed back.
pub async fn flow_accounting(store: &TestStore, job: &str) -> (u64, u64, u64) {
    let stream = format!("job-{job}");
    let registry = domain::event_registry();
    let (mut held, mut doubly_leased) = (FlowSet::new(), FlowSet::new());
    let (mut finished, mut finished_again) = (FlowSet::new(), FlowSet::new());
    for e in store.events().await {
        if e.stream_id.as_str() != stream {
            continue;
        }
        match registry.decode::<JobEvent>(&e).unwrap() {
            JobEvent::FlowsLeased(l) => {
                for r in l.flows {
                    doubly_leased.extend(held.overlap(r).collect::<Vec<_>>());
                    held.insert(r);
                }
            }
            JobEvent::LeaseExpired(JobLeaseExpired { flows, .. })
            | JobEvent::FlowsHandedBack(FlowsHandedBack { flows, .. }) => {
                for r in flows {
                    held.remove(r);
                }
            }
            // Every lease taken back at once.
            JobEvent::JobHalted(_) => held = FlowSet::new(),
            JobEvent::FlowsReported(batch) => {
                for report in batch.reports {
                    if let FlowReport::Finished(f) = report {
                        let one = FlowRange::one(f.flow);
                        if finished.contains(f.flow) {
                            finished_again.insert(one);
                        }
                        finished.insert(one);
                        held.remove(one);
                    }
                }
            }
            _ => {}
        }
    }
    (doubly_leased.len(), finished.len(), finished_again.len())
}

/// The fleet views' rows, for comparing with a rebuild.
async fn fleet_views(views: &ViewStore) -> Vec<Vec<SqlValue>> {
    let mut all = Vec::new();
    for sql in [
        "SELECT job, status, finished, succeeded, failed, clicked, pages FROM view_jobs ORDER BY job",
        "SELECT job, target, flows_done, clicks_done FROM view_job_targets ORDER BY job, target",
        "SELECT job, commit_pos, prepare_pos, line, message FROM view_job_log ORDER BY job, commit_pos, prepare_pos, line",
        "SELECT owner, day, flows FROM view_job_days ORDER BY owner, day",
        "SELECT runner, name, online, draining, deregistered FROM view_runners ORDER BY runner",
    ] {
        let rows = views.query(sql, vec![]).await.unwrap();
        all.extend(rows.into_iter().map(|r| r.values().to_vec()));
    }
    all
}

async fn totals(fleet: Vec<JoinHandle<Totals>>) -> (u64, u64, u64) {
    let (mut recorded, mut duplicates, mut reconnects) = (0, 0, 0);
    for runner in fleet {
        let t = runner.await.unwrap();
        recorded += t.recorded;
        duplicates += t.duplicates;
        reconnects += t.reconnects;
    }
    (recorded, duplicates, reconnects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_mid_job_and_restarted_loses_and_doubles_nothing() {
    let mut app = spawn_app().flags(TERMS).await;
    let (_, ada, job, key) = running_job(&app).await;
    let gateways = Arc::new(Mutex::new(vec![runner_url(&app)]));
    let runners = fleet(&app, &key, 4, std::slice::from_ref(&gateways));
    finished_at_least(&app, &ada, &job, FLOWS / 4).await;
    app.process.kill().await;
    let store = std::mem::replace(&mut app.store, TestStore::sqlite());
    let app = spawn_app().store(store).flags(TERMS).await;
    *gateways.lock().unwrap() = vec![runner_url(&app)];
    let (recorded, duplicates, reconnects) = totals(runners).await;
    assert!(reconnects >= 4, "every runner reconnected: {reconnects}");
    // A batch recorded just before the kill, its answer lost, is answered
    // as duplicates when sent again: the store below is the count.
    assert!(
        recorded <= FLOWS && recorded + duplicates >= FLOWS,
        "{recorded} + {duplicates}"
    );
    let ada = app.token("ada", PASSWORD).await;
    assert_eq!(
        standing(&app, &ada, &job).await,
        ("DONE".to_owned(), FLOWS, FLOWS)
    );
    let accounting = flow_accounting(&app.store, &job).await;
    assert_eq!(
        accounting,
        (0, FLOWS, 0),
        "(leased twice at once, finished, finished twice)"
    );

    // The views equal a rebuild from the first event.
    let views = ViewStore::open(&app.store.open_backend().await)
        .await
        .unwrap();
    let live = fleet_views(&views).await;
    let mut app = app;
    app.terminate().await;
    for view in ["jobs", "runners"] {
        let (ok, _, stderr) =
            run(&["--store", &app.store.url, "projections", "rebuild", view]).await;
        assert!(ok, "{stderr}");
    }
    assert_eq!(fleet_views(&views).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_on_one_postgres_lease_each_flow_once_and_survive_one_dying() {
    let Some(store) = TestStore::postgres("e2e_two_gateways_one_postgres").await else {
        return;
    };
    let shared = store.shared();
    let first = spawn_app().store(store).flags(TERMS).await;
    let mut second = spawn_app().store(shared).flags(TERMS).await;
    let (_, ada, job, key) = running_job(&first).await;
    // Half the fleet starts on each gateway, and fails over to the other.
    let (a, b) = (runner_url(&first), runner_url(&second));
    let on_first = Arc::new(Mutex::new(vec![a.clone(), b.clone()]));
    let on_second = Arc::new(Mutex::new(vec![b, a]));
    let runners = fleet(&first, &key, 6, &[on_first, on_second]);
    finished_at_least(&first, &ada, &job, FLOWS / 4).await;
    second.process.kill().await;
    let (recorded, duplicates, reconnects) = totals(runners).await;
    assert!(
        reconnects >= 3,
        "the dead gateway's runners moved: {reconnects}"
    );
    // As when a gateway restarts: the store below is the count.
    assert!(
        recorded <= FLOWS && recorded + duplicates >= FLOWS,
        "{recorded} + {duplicates}"
    );
    assert_eq!(
        standing(&first, &ada, &job).await,
        ("DONE".to_owned(), FLOWS, FLOWS)
    );
    let accounting = flow_accounting(&first.store, &job).await;
    assert_eq!(
        accounting,
        (0, FLOWS, 0),
        "(flows leased while held, finished, finished twice): every flow leased once at a time and counted once"
    );
}

/// (online, offlineReason) of each runner, as `runners` answers.
pub async fn runner_standing(app: &TestApp, root: &str) -> Vec<(String, bool, Option<String>)> {
    let r = app
        .gql(
            "{ runners { id online offlineReason } }",
            json!({}),
            Some(root),
        )
        .await;
    r["data"]["runners"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|runner| {
            (
                runner["id"].as_str().unwrap().to_owned(),
                runner["online"].as_bool().unwrap(),
                runner["offlineReason"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_stranded_by_a_killed_gateway_goes_offline_and_one_that_came_back_is_online() {
    let mut app = spawn_app().flags(TERMS).await;
    let root = app.with_accounts().await;
    let (_, key) = runner_key(&app, &root).await;
    let (stranded, returning) = (RunnerId(Uuid::now_v7()), RunnerId(Uuid::now_v7()));
    let _stranded = Connection::open(&runner_config(&app, stranded, &key))
        .await
        .unwrap();
    let _first = Connection::open(&runner_config(&app, returning, &key))
        .await
        .unwrap();
    app.process.kill().await;
    let store = std::mem::replace(&mut app.store, TestStore::sqlite());
    let app = spawn_app().store(store).flags(TERMS).await;
    let _back = Connection::open(&runner_config(&app, returning, &key))
        .await
        .unwrap();
    let root = app.token("root", ROOT_PASSWORD).await;
    let expected = {
        let mut both = vec![
            (stranded.to_string(), false, Some("silent".to_owned())),
            (returning.to_string(), true, None),
        ];
        both.sort();
        both
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut now = runner_standing(&app, &root).await;
        now.sort();
        if now == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fleet never showed the stranded runner offline: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The runner's work loop (`runner::worker`) against real `trafficbuster
//! serve` processes, with an executor whose flows take a fixed time, so what
//! is proven is the loop's own: flows run within the job's instances and
//! the executor's capacity, every flow counts once, pause and stop cancel
//! running flows within a second, a gateway SIGKILLed mid-job loses none
//! of the reports the flows in hand made while it was away (nor when the
//! runner stops meanwhile: they wait on disk for its next start), and a
//! runner killed and restarted on its state directory is the same runner
//! and frees at once the flows its killed run held.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::flow::{Click, FlowFinished, FlowId, FlowOutcome, PageLoad};
use domain::job::JobId;
use domain::runner_key::RunnerKey;
use domain::web_vitals::PageVitals;
use runner::state_dir::StateDir;
use runner::worker::{self, Executor, Finished, Order, Progress, Totals, WorkerOptions};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::helpers::{PASSWORD, TestApp, TestStore, spawn_app};
use crate::recovery::{
    TERMS, flow_accounting, runner_standing, runner_url, running_job_of, standing,
};
use crate::runners::runner_config;

/// Heartbeats as in [`TERMS`], but leases of 20 s: a job that ends well
/// within that got back its flows some other way than by expiry.
const LONG_LEASES: &[&str] = &["--runner-heartbeat-ms", "200", "--lease-ttl-ms", "20000"];

/// Flows that take `work` each, counted as they run.
struct Timed {
    capacity: u32,
    /// Milliseconds a flow takes, changed as a test goes.
    work_ms: AtomicU64,
    running: Arc<AtomicU32>,
    most: Arc<AtomicU32>,
    started: Arc<Mutex<Vec<(JobId, FlowId)>>>,
}

impl Timed {
    fn new(capacity: u32, work: Duration) -> Self {
        Self {
            capacity,
            work_ms: AtomicU64::new(work.as_millis() as u64),
            running: Arc::default(),
            most: Arc::default(),
            started: Arc::default(),
        }
    }
}

/// Counts a flow as running until dropped (finished or cancelled).
struct Running(Arc<AtomicU32>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Executor for Timed {
    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn run(
        &self,
        order: Order,
        progress: Progress,
    ) -> impl Future<Output = Finished> + Send + 'static {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.started.lock().unwrap().push((order.job, order.flow));
        let running = Running(self.running.clone());
        let work = Duration::from_millis(self.work_ms.load(Ordering::SeqCst));
        async move {
            let _running = running;
            progress.started(None);
            tokio::time::sleep(work).await;
            let report = FlowFinished {
                flow: order.flow,
                outcome: FlowOutcome::Succeeded,
                duration_ms: work.as_millis() as u64,
                proxy: None,
                pages: vec![PageLoad {
                    ms: 5,
                    status: Some(200),
                    vitals: PageVitals::default(),
                }],
                clicks: if order.click {
                    vec![Click::Internal]
                } else {
                    Vec::new()
                },
                artifacts: Vec::new(),
            };
            Finished {
                report,
                rest: Duration::ZERO,
                artifacts: Vec::new(),
            }
        }
    }
}

/// A runner on a fresh state directory, until idle for 4 s.
fn start(
    app: &TestApp,
    key: &RunnerKey,
    executor: Arc<Timed>,
    gateways: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<Totals> {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let options = WorkerOptions {
        gateways,
        idle_exit: Some(Duration::from_secs(4)),
        ..WorkerOptions::default()
    };
    let runner = run_as(app, state, key, executor, options, std::future::pending());
    tokio::spawn(async move {
        let totals = runner.await;
        drop(dir);
        totals
    })
}

/// A runner on `state`, until `stop` (5 s of grace) or `options.idle_exit`.
fn run_as(
    app: &TestApp,
    state: StateDir,
    key: &RunnerKey,
    executor: Arc<Timed>,
    options: WorkerOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = Totals> + Send + 'static {
    let config = runner_config(app, state.id(), key);
    worker::run(
        state,
        config,
        options,
        executor,
        stop,
        Duration::from_secs(5),
    )
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let began = Instant::now();
    while !done().await {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "{what}: timed out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    began.elapsed()
}

async fn set(app: &TestApp, token: &str, mutation: &str, job: &str) {
    let q = format!("mutation($id: ID!) {{ {mutation}(id: $id) {{ status }} }}");
    let r = app.gql(&q, json!({ "id": job }), Some(token)).await;
    assert!(r["errors"].is_null(), "{mutation}: {r}");
}

const FLOWS: u64 = 3 * 20;

/// Waits until `job` has finished `flows` and the next flows have just
/// begun, so they have most of their time left.
async fn mid_flight(app: &TestApp, ada: &str, job: &str, flows: u64, timed: &Timed) {
    wait_until("flows finished", async || {
        standing(app, ada, job).await.1 >= flows
    })
    .await;
    wait_until("the next flows running", async || {
        timed.running.load(Ordering::SeqCst) > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flows_run_within_instances_count_once_and_obey_pause_and_stop_within_a_second() {
    let app = spawn_app().flags(TERMS).await;
    let rows = "https://shop.example.com/a,20,5\nhttps://shop.example.com/b,20,5\n\
                https://shop.example.com/c,20,5\n";
    let (_, ada, job, key) = running_job_of(&app, rows, 3).await;
    let timed = Arc::new(Timed::new(5, Duration::from_millis(100)));
    let gateways = Arc::new(Mutex::new(vec![runner_url(&app)]));
    let runner = start(&app, &key, timed.clone(), gateways);
    wait_until("the job done", async || {
        standing(&app, &ada, &job).await.0 == "DONE"
    })
    .await;
    assert_eq!(
        standing(&app, &ada, &job).await,
        ("DONE".to_owned(), FLOWS, FLOWS)
    );
    assert!(
        timed.most.load(Ordering::SeqCst) <= 3,
        "at most the job's 3 instances at once, though the executor had room for 5"
    );
    let clicks = app
        .gql(
            "query($id: ID!) { job(id: $id) { clicked } }",
            json!({ "id": job }),
            Some(&ada),
        )
        .await;
    assert_eq!(clicks["data"]["job"]["clicked"], 15, "{clicks}");
    assert_eq!(flow_accounting(&app.store, &job).await, (0, FLOWS, 0));

    // Flows of 2 s: pause and stop must cut them short, within a second.
    timed.work_ms.store(2_000, Ordering::SeqCst);
    let rows = "https://shop.example.com/a,4,0\nhttps://shop.example.com/b,4,0\n";
    let vars = crate::jobs::datasets_of(&app, &ada, rows, 3).await;
    let r = app.gql(crate::jobs::CREATE, vars, Some(&ada)).await;
    let second = r["data"]["createJob"]["id"].as_str().unwrap().to_owned();
    set(&app, &ada, "runJob", &second).await;
    mid_flight(&app, &ada, &second, 3, &timed).await;
    set(&app, &ada, "pauseJob", &second).await;
    let took = wait_until("running flows cancelled", async || {
        timed.running.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(took < Duration::from_secs(1), "pause took {took:?}");
    let before = timed.started.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        timed.started.lock().unwrap().len(),
        before,
        "no flow starts while paused"
    );
    assert_eq!(standing(&app, &ada, &second).await.0, "PAUSED");

    set(&app, &ada, "resumeJob", &second).await;
    mid_flight(&app, &ada, &second, 3, &timed).await;
    set(&app, &ada, "stopJob", &second).await;
    let took = wait_until("running flows stopped", async || {
        timed.running.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    let (status, finished, _) = standing(&app, &ada, &second).await;
    assert_eq!(status, "STOPPED");
    assert!(finished < 8, "stopped before its end: {finished}");
    let totals = runner.await.unwrap();
    assert!(totals.cancelled >= 2, "{totals:?}");
    let ran: BTreeSet<_> = timed.started.lock().unwrap().iter().copied().collect();
    assert!(ran.len() >= FLOWS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_mid_job_loses_none_of_the_reports_made_while_it_was_away() {
    let mut app = spawn_app().flags(TERMS).await;
    let rows = "https://shop.example.com/a,40,0\nhttps://shop.example.com/b,40,0\n";
    let (_, ada, job, key) = running_job_of(&app, rows, 8).await;
    let gateways = Arc::new(Mutex::new(vec![runner_url(&app)]));
    let executors: Vec<Arc<Timed>> = (0..2)
        .map(|_| Arc::new(Timed::new(4, Duration::from_millis(300))))
        .collect();
    let runners: Vec<_> = executors
        .iter()
        .map(|e| start(&app, &key, e.clone(), gateways.clone()))
        .collect();
    wait_until("a quarter of the flows", async || {
        standing(&app, &ada, &job).await.1 >= 20
    })
    .await;
    wait_until("flows in hand", async || {
        executors
            .iter()
            .all(|e| e.running.load(Ordering::SeqCst) > 0)
    })
    .await;
    app.process.kill().await;
    // The flows in hand finish while no gateway is up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store = std::mem::replace(&mut app.store, TestStore::sqlite());
    let app = spawn_app().store(store).flags(TERMS).await;
    *gateways.lock().unwrap() = vec![runner_url(&app)];
    let mut reconnects = 0;
    for runner in runners {
        reconnects += runner.await.unwrap().reconnects;
    }
    assert!(reconnects >= 2, "both runners reconnected: {reconnects}");
    let ada = app.token("ada", PASSWORD).await;
    assert_eq!(
        standing(&app, &ada, &job).await,
        ("DONE".to_owned(), 80, 80)
    );
    let (twice_leased, finished, finished_twice) = flow_accounting(&app.store, &job).await;
    assert_eq!((twice_leased, finished, finished_twice), (0, 80, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_killed_and_restarted_on_its_state_directory_is_the_same_runner_and_frees_what_it_held()
 {
    let app = spawn_app().flags(LONG_LEASES).await;
    let rows = "https://shop.example.com/a,20,0\nhttps://shop.example.com/b,20,0\n";
    let (root, ada, job, key) = running_job_of(&app, rows, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let timed = Arc::new(Timed::new(4, Duration::from_millis(200)));
    let state = StateDir::open(dir.path()).unwrap();
    let id = state.id();
    let killed = tokio::spawn(run_as(
        &app,
        state,
        &key,
        timed.clone(),
        WorkerOptions::default(),
        std::future::pending(),
    ));
    mid_flight(&app, &ada, &job, 8, &timed).await;
    // Killed: nothing handed back, nothing reported of the flows in hand.
    killed.abort();
    assert!(killed.await.unwrap_err().is_cancelled());

    let state = StateDir::open(dir.path()).unwrap();
    assert_eq!(state.id(), id, "the same runner");
    let restarted = Instant::now();
    let options = WorkerOptions {
        idle_exit: Some(Duration::from_secs(3)),
        ..WorkerOptions::default()
    };
    let runner = tokio::spawn(run_as(
        &app,
        state,
        &key,
        timed.clone(),
        options,
        std::future::pending(),
    ));
    wait_until("the job done", async || {
        standing(&app, &ada, &job).await.0 == "DONE"
    })
    .await;
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "the killed run's flows came back by expiry, not at once: {took:?}"
    );
    assert_eq!(
        standing(&app, &ada, &job).await,
        ("DONE".to_owned(), 40, 40)
    );
    assert_eq!(flow_accounting(&app.store, &job).await, (0, 40, 0));
    // One runner in the fleet, under its one id, online.
    assert_eq!(
        runner_standing(&app, &root).await,
        vec![(id.to_string(), true, None)]
    );
    runner.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_kept_on_disk_while_the_gateway_was_away_count_once_after_the_runner_restarts() {
    let mut app = spawn_app().flags(LONG_LEASES).await;
    let rows = "https://shop.example.com/a,12,0\nhttps://shop.example.com/b,12,0\n";
    let (_, ada, job, key) = running_job_of(&app, rows, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let timed = Arc::new(Timed::new(4, Duration::from_millis(300)));
    let gateways = Arc::new(Mutex::new(vec![runner_url(&app)]));
    // A memory of one report: the outbox lives on disk.
    let options = WorkerOptions {
        outbox_memory: 1,
        gateways: gateways.clone(),
        ..WorkerOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(run_as(
        &app,
        StateDir::open(dir.path()).unwrap(),
        &key,
        timed.clone(),
        options.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    mid_flight(&app, &ada, &job, 4, &timed).await;
    app.process.kill().await;
    // The flows in hand finish while no gateway is up; then the runner
    // is told to stop, and its grace runs out with the gateway still away.
    wait_until("the flows in hand finished", async || {
        timed.running.load(Ordering::SeqCst) == 0
    })
    .await;
    stop.send(()).unwrap();
    let totals = first.await.unwrap();
    assert!(totals.spilled > 0, "{totals:?}");

    let store = std::mem::replace(&mut app.store, TestStore::sqlite());
    let app = spawn_app().store(store).flags(LONG_LEASES).await;
    *gateways.lock().unwrap() = vec![runner_url(&app)];
    let options = WorkerOptions {
        idle_exit: Some(Duration::from_secs(3)),
        ..options
    };
    let state = StateDir::open(dir.path()).unwrap();
    let second = run_as(
        &app,
        state,
        &key,
        timed.clone(),
        options,
        std::future::pending(),
    )
    .await;
    assert_eq!(second.dropped, 0, "{second:?}");
    let ada = app.token("ada", PASSWORD).await;
    assert_eq!(
        standing(&app, &ada, &job).await,
        ("DONE".to_owned(), 24, 24)
    );
    assert_eq!(flow_accounting(&app.store, &job).await, (0, 24, 0));
    // The flows that finished while the gateway was away were counted
    // from the disk, not run again.
    let started = timed.started.lock().unwrap().clone();
    let once: BTreeSet<_> = started.iter().copied().collect();
    assert_eq!((started.len(), once.len()), (24, 24));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_told_to_stop_drains_over_the_connection_it_holds() {
    let app = spawn_app().flags(TERMS).await;
    let rows = "https://shop.example.com/a,20,0\nhttps://shop.example.com/b,20,0\n";
    let (_, ada, job, key) = running_job_of(&app, rows, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let timed = Arc::new(Timed::new(4, Duration::from_millis(500)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(run_as(
        &app,
        StateDir::open(dir.path()).unwrap(),
        &key,
        timed.clone(),
        WorkerOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    mid_flight(&app, &ada, &job, 4, &timed).await;
    stop.send(()).unwrap();
    let totals = runner.await.unwrap();
    assert_eq!(
        (totals.cancelled, totals.reconnects),
        (0, 0),
        "running flows finished: {totals:?}"
    );
    // The view follows the reports the gateway took: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, finished) = loop {
        let (status, finished, _) = standing(&app, &ada, &job).await;
        if finished == totals.flows_run || Instant::now() > deadline {
            break (status, finished);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, "RUNNING");
    assert_eq!(finished, totals.flows_run, "all it ran was reported");
    assert!(finished < 40, "queued flows went back unrun: {finished}");
    assert_eq!(flow_accounting(&app.store, &job).await.0, 0);
    let connections = app.process.log().matches("runner connected").count();
    assert_eq!(connections, 1, "drained over the one connection it held");
}

//! Runners' work on jobs through a real gateway, on both stores: reports
//! counted once, flows not held refused, pause and stop pushed to runners,
//! leases renewed by heartbeats and expired by the sweep, flows handed back
//! at once, and the jobs view counting exactly and equal after a rebuild.

mod support;

use std::time::Duration;

use domain::Reason;
use domain::account::Username;
use domain::flow::{FlowId, FlowRange};
use domain::job::{JobCommand, JobEvent, JobStatus};
use domain::runner_protocol::{ErrorCode, LeaseGrant};
use domain::target_domain::{
    TargetDomainCommand, VerificationMethod, VerificationOutcome, VerificationToken,
};
use domain::web_vitals::PageVitals;
use projections::{ProjectionEngine, SqlValue};
use runner::state_dir::StateDir;
use runner::worker::{self, Totals, WorkerOptions};
use runner::zero_work_executor::ZeroWorkExecutor;
use runner::{Answer, Connection, Leased, Notice};
use store::testing::{TestStore, eventually};
use time::OffsetDateTime;
use uuid::Uuid;

use support::*;

fn range(start: u64, end: u64) -> FlowRange {
    FlowRange::new(start, end).unwrap()
}

/// A runner of 2 slots whose flows do no work, holding up to
/// `flows_in_hand` flows, with a state directory of its own; it ends once
/// idle for `idle_exit`.
fn zero_work_runner(
    live: &Live,
    key: &domain::runner_key::RunnerKey,
    flows_in_hand: u64,
    idle_exit: Duration,
) -> impl Future<Output = Totals> + Send + 'static {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let config = live.config(state.id(), key);
    let options = WorkerOptions {
        queued_per_slot: flows_in_hand / 2 - 1,
        idle_exit: Some(idle_exit),
        ..WorkerOptions::default()
    };
    let executor = std::sync::Arc::new(ZeroWorkExecutor {
        capacity: 2,
        work: Duration::ZERO,
    });
    async move {
        let stop = std::future::pending();
        let totals = worker::run(state, config, options, executor, stop, Duration::ZERO).await;
        drop(dir);
        totals
    }
}

/// (finished, succeeded, status) of the job in the view.
async fn job_row(live: &Live, job: domain::job::JobId) -> Option<(i64, i64, String)> {
    let rows = live
        .views
        .query(
            "SELECT finished, succeeded, status FROM view_jobs WHERE job = $1",
            vec![SqlValue::from(job.to_string())],
        )
        .await
        .unwrap_or_default();
    rows.first().map(|r| {
        (
            r.get("finished").unwrap(),
            r.get("succeeded").unwrap(),
            r.get("status").unwrap(),
        )
    })
}

/// Every row of the jobs view's tables, for comparing.
async fn job_tables(live: &Live) -> Vec<Vec<SqlValue>> {
    job_tables_of(&live.views).await
}

async fn job_tables_of(views: &projections::ViewStore) -> Vec<Vec<SqlValue>> {
    let mut all = Vec::new();
    for sql in [
        "SELECT job, owner, status, finished, succeeded, failed, clicked, pages FROM view_jobs ORDER BY job",
        "SELECT job, target, first_flow, end_flow, flows_done, clicks_done FROM view_job_targets ORDER BY job, target",
        "SELECT job, upto_ms, pages FROM view_job_page_times ORDER BY job, upto_ms",
        "SELECT job, commit_pos, prepare_pos, line, level, message, artifacts FROM view_job_log ORDER BY job, commit_pos, prepare_pos, line",
        "SELECT job, target, vital, upto, pages FROM view_job_vitals ORDER BY job, target, vital, upto",
        "SELECT owner, day, flows FROM view_job_days ORDER BY owner, day",
        "SELECT job, dataset, version, role FROM view_job_datasets ORDER BY job, role",
    ] {
        let rows = views.query(sql, vec![]).await.unwrap();
        all.extend(rows.into_iter().map(|r| r.values().to_vec()));
    }
    all
}

/// A lease, asked for again while the answer is `no_work` or RETRY (the
/// jobs view may not show a job just run yet, or not exist yet), for up to
/// 10 s.
async fn granted(connection: &mut Connection, slots: u32, flows: u64) -> LeaseGrant {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connection.lease(slots, flows).await.unwrap() {
            Leased::Granted(grant) => return grant,
            Leased::NoWork { .. } if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Leased::Refused(e)
                if e.code == ErrorCode::Retry && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("no lease: {other:?}"),
        }
    }
}

/// The reasons the job was halted for, oldest first.
async fn halts(live: &Live, job: domain::job::JobId) -> Vec<String> {
    let stream = job.stream().unwrap();
    let registry = domain::event_registry();
    live.store_events()
        .await
        .iter()
        .filter(|e| e.stream_id == stream && e.event_type == "JobHalted")
        .map(|e| match registry.decode::<JobEvent>(e).unwrap() {
            JobEvent::JobHalted(h) => h.reason.to_string(),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// The next notice within a second, briefs (which precede grants) passed over.
async fn notice_within_a_second(connection: &mut Connection) -> Option<Notice> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match connection.next_notice(left).await.unwrap() {
            Some(Notice::Briefed(_)) => continue,
            other => return other,
        }
    }
}

mod cases {
    use super::*;

    pub async fn safe_mode_or_a_withdrawn_listing_halts_a_run_and_its_runners_stop_at_once(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let mut connection = Connection::open(&live.config(new_runner(), &key))
            .await
            .unwrap();
        let job = live.running_job(2, 50, 0, 2).await;
        let grant = granted(&mut connection, 1, 10).await;
        assert_eq!(grant.job, job);

        live.safe_mode(true).await;
        assert_eq!(
            notice_within_a_second(&mut connection).await,
            Some(Notice::JobStopped(job))
        );
        let state = live.job_state(job).await;
        assert_eq!(state.status, JobStatus::Paused);
        assert!(state.leases.is_empty(), "every lease taken back");
        assert_eq!(state.pool.len(), 100, "every unfinished flow in the pool");
        let reasons = halts(&live, job).await;
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with("safe mode is on since ")
                && reasons[0].contains("turned on by root: the orchestrator tests"),
            "{reasons:?}"
        );
        // Nothing more is leased, and reports on what it held are refused.
        assert!(matches!(
            connection.lease(1, 10).await.unwrap(),
            Leased::NoWork { .. }
        ));
        let held = grant.work[0].flows.start();
        match connection
            .report(Uuid::now_v7(), job, vec![succeeded(held)])
            .await
            .unwrap()
        {
            Answer::Refused(e) => assert_eq!(e.code, ErrorCode::FlowsNotHeld),
            other => panic!("a report after the halt got {other:?}"),
        }
        // Safe mode off again: the job waits for its owner to resume it.
        live.safe_mode(false).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(live.job_state(job).await.status, JobStatus::Paused);
        live.run(job).await;
        granted(&mut connection, 1, 10).await;

        // The staging host's allow-listing is withdrawn mid-run.
        live.domain(
            "shop.example.com",
            TargetDomainCommand::RemoveFromAllowList {
                reason: Reason::parse("staging is over").unwrap(),
            },
            &root(),
        )
        .await;
        assert_eq!(
            notice_within_a_second(&mut connection).await,
            Some(Notice::JobStopped(job))
        );
        let reasons = halts(&live, job).await;
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[1].starts_with("traffic may not go to shop.example.com: "),
            "{reasons:?}"
        );
        assert!(live.job_state(job).await.leases.is_empty());
        // It is not run again while the domain has no consent.
        assert!(live.run_on(job, "shop.example.com").await.is_err());
        eventually("the view showing the job paused", || async {
            job_row(&live, job)
                .await
                .is_some_and(|(.., status)| status == "paused")
        })
        .await;
        live.stop().await;
    }

    pub async fn a_run_is_halted_when_its_verification_expires_unless_verified_again(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let mut connection = Connection::open(&live.config(new_runner(), &key))
            .await
            .unwrap();
        let domain = "verified.example.com";
        live.domain(
            domain,
            TargetDomainCommand::Claim {
                account: Username::parse(OWNER).unwrap(),
                token: VerificationToken::parse(&"t".repeat(40)).unwrap(),
            },
            &owner(),
        )
        .await;
        let verify = |seconds: i64| TargetDomainCommand::RecordVerification {
            account: Username::parse(OWNER).unwrap(),
            method: VerificationMethod::WellKnown,
            outcome: VerificationOutcome::Verified {
                valid_until: OffsetDateTime::now_utc() + time::Duration::seconds(seconds),
            },
        };
        live.domain(domain, verify(2), &owner()).await;
        let job = live.ready_job(domain, 1, 200, 0, 2).await;
        live.run_on(job, domain).await.unwrap();
        granted(&mut connection, 1, 10).await;
        // Verified again before it expires: the run goes on past the first
        // expiry, and ends at the second.
        live.domain(domain, verify(4), &owner()).await;
        let second_expiry = OffsetDateTime::now_utc() + time::Duration::seconds(4);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(live.job_state(job).await.status, JobStatus::Running);
        assert!(matches!(
            connection.lease(0, 10).await.unwrap(),
            Leased::Granted(_)
        ));
        let until_second = second_expiry - OffsetDateTime::now_utc();
        tokio::time::sleep(until_second.try_into().unwrap_or_default()).await;
        assert_eq!(
            notice_within_a_second(&mut connection).await,
            Some(Notice::JobStopped(job))
        );
        let reasons = halts(&live, job).await;
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with(&format!(
                "traffic may not go to {domain}: {domain}: its verification expired at "
            )),
            "{reasons:?}"
        );
        let rechecked = live
            .store_events()
            .await
            .iter()
            .filter(|e| e.stream_id == job.stream().unwrap() && e.event_type == "ConsentRechecked")
            .count();
        assert_eq!(rechecked, 1, "the second verification recorded once");
        assert!(matches!(
            connection.lease(1, 10).await.unwrap(),
            Leased::NoWork { .. }
        ));
        live.stop().await;
    }

    pub async fn a_lease_grant_says_what_to_do_and_only_matching_runners_get_one(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        // 3 targets of 5 flows, the first of each clicking.
        let job = live.running_job(3, 5, 1, 2).await;
        let mut windows = live.config(new_runner(), &key);
        windows.capabilities.platform = domain::runner::Platform {
            os: domain::runner::Os::Windows,
            browser: domain::runner::Browser::Edge,
        };
        let mut connection = Connection::open(&live.config(new_runner(), &key))
            .await
            .unwrap();
        let grant = granted(&mut connection, 1, 7).await;
        // The job is in view now; a Windows Edge runner serves none of it.
        let mut other = Connection::open(&windows).await.unwrap();
        assert!(matches!(
            other.lease(1, 10).await.unwrap(),
            Leased::NoWork { .. }
        ));
        assert_eq!(grant.job, job);
        assert_eq!(grant.slots, 1);
        assert!(grant.marker_header);
        let work: Vec<_> = grant
            .work
            .iter()
            .map(|w| {
                (
                    w.flows.start(),
                    w.flows.end(),
                    w.target,
                    w.url.as_str(),
                    w.click,
                )
            })
            .collect();
        assert_eq!(
            work,
            [
                (0, 1, 0, "https://shop.example.com/p/0", true),
                (1, 5, 0, "https://shop.example.com/p/0", false),
                (5, 6, 1, "https://shop.example.com/p/1", true),
                (6, 7, 1, "https://shop.example.com/p/1", false),
            ]
        );
        live.stop().await;
    }

    pub async fn a_lease_request_sent_again_gets_its_first_grant(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let job = live.running_job(2, 50, 0, 4).await;
        let runner = new_runner();
        let mut first = Connection::open(&live.config(runner, &key)).await.unwrap();
        let request = runner::client::fresh_request_id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let grant = loop {
            match first.lease_as(request, 1, 20).await.unwrap() {
                Leased::Granted(grant) => break grant,
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("no lease: {other:?}"),
            }
        };
        // Its answer lost with the connection: asked again, on a new one.
        drop(first);
        let mut again = Connection::open(&live.config(runner, &key)).await.unwrap();
        match again.lease_as(request, 1, 20).await.unwrap() {
            Leased::Granted(replayed) => assert_eq!(replayed, grant),
            other => panic!("the request sent again got {other:?}"),
        }
        assert_eq!(live.job_state(job).await.leases[&runner].held.len(), 20);
        // A new request is a new lease.
        let Leased::Granted(more) = again.lease(0, 20).await.unwrap() else {
            panic!("no second lease");
        };
        assert_eq!(more.work[0].flows, range(20, 40));
        live.stop().await;
    }

    pub async fn a_fleet_of_zero_work_runners_finishes_a_job_exactly(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let job = live.running_job(10, 50, 3, 6).await;
        let fleet: Vec<_> = (0..3)
            .map(|_| tokio::spawn(zero_work_runner(&live, &key, 40, Duration::from_secs(3))))
            .collect();
        let mut recorded = 0;
        for runner in fleet {
            let totals = runner.await.unwrap();
            assert_eq!(totals.duplicates, 0, "{totals:?}");
            recorded += totals.recorded;
        }
        assert_eq!(recorded, 500);
        let state = live.job_state(job).await;
        assert_eq!(state.status, JobStatus::Done);
        assert_eq!((state.tally.finished, state.tally.succeeded), (500, 500));
        eventually("the view showing the job done", || async {
            job_row(&live, job).await == Some((500, 500, "done".into()))
        })
        .await;
        live.stop().await;
    }

    pub async fn a_runner_killed_mid_lease_has_its_flows_leased_again_after_expiry(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let job = live.running_job(4, 25, 0, 4).await;
        // A runner leases, then dies without a word.
        let doomed = new_runner();
        let mut connection = Connection::open(&live.config(doomed, &key)).await.unwrap();
        let grant = granted(&mut connection, 1, 30).await;
        let held: u64 = grant.work.iter().map(|w| w.flows.len()).sum();
        assert_eq!(held, 30);
        drop(connection);
        let survivor = zero_work_runner(&live, &key, 20, TERMS.lease_ttl * 3).await;
        assert_eq!(survivor.recorded, 100, "{survivor:?}");
        assert_eq!(survivor.duplicates, 0);
        let state = live.job_state(job).await;
        assert_eq!(state.status, JobStatus::Done);
        assert_eq!(state.tally.finished, 100);
        let expired = live
            .store_events()
            .await
            .into_iter()
            .filter(|e| e.event_type == "LeaseExpired")
            .count();
        assert_eq!(expired, 1, "the dead runner's lease expired once");
        live.stop().await;
    }

    pub async fn reports_count_once_and_flows_not_held_are_refused(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let mut connection = Connection::open(&live.config(runner, &key)).await.unwrap();
        // 3 targets of 4 flows, the first flow of each clicking.
        let job = live.running_job(3, 4, 1, 2).await;
        assert_eq!(live.lease(job, runner, 1, 10).await, vec![range(0, 10)]);
        let batch = Uuid::now_v7();
        let first: Vec<_> = (0..5).map(succeeded).collect();
        assert_eq!(
            connection.report(batch, job, first.clone()).await.unwrap(),
            Answer::Accepted {
                recorded: 5,
                duplicates: 0
            }
        );
        // The same batch again (its answer lost, say): nothing new.
        assert_eq!(
            connection.report(batch, job, first).await.unwrap(),
            Answer::Accepted {
                recorded: 0,
                duplicates: 5
            }
        );
        // A new batch repeating a finished flow: that one is a duplicate.
        assert_eq!(
            connection
                .report(Uuid::now_v7(), job, vec![succeeded(3), succeeded(5)])
                .await
                .unwrap(),
            Answer::Accepted {
                recorded: 1,
                duplicates: 1
            }
        );
        // A flow it does not hold: the batch is refused whole.
        match connection
            .report(Uuid::now_v7(), job, vec![succeeded(6), succeeded(11)])
            .await
            .unwrap()
        {
            Answer::Refused(e) => {
                assert_eq!(e.code, ErrorCode::FlowsNotHeld);
                assert_eq!(e.flows, vec![FlowId(11)]);
                assert!(e.message.contains("flow 11"), "{}", e.message);
            }
            other => panic!("a report on an unheld flow got {other:?}"),
        }
        let state = live.job_state(job).await;
        assert_eq!(state.tally.finished, 6);
        assert!(
            !state.done.contains(FlowId(6)),
            "a refused batch records nothing"
        );
        eventually("the view counting six flows", || async {
            job_row(&live, job).await == Some((6, 6, "running".into()))
        })
        .await;
        // The log's totals, on /metrics (each view at its own pace).
        let expected = [
            "tb_flows_recorded{outcome=\"succeeded\"} 6",
            "tb_flows_recorded{outcome=\"failed\"} 0",
            "tb_clicks_recorded 0",
            "tb_leases_recorded 1",
            "tb_lease_expiries_recorded 0",
        ];
        eventually("the job totals on /metrics", || async {
            let (status, metrics) = live.get("/metrics").await;
            status == 200 && expected.iter().all(|line| metrics.contains(line))
        })
        .await;
        live.stop().await;
    }

    pub async fn pause_and_stop_reach_the_runner_within_a_second(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let mut connection = Connection::open(&live.config(runner, &key)).await.unwrap();
        let job = live.running_job(1, 20, 0, 1).await;
        live.lease(job, runner, 1, 5).await;
        live.job(job, JobCommand::Pause, &owner()).await.unwrap();
        let notice = connection
            .next_notice(Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(notice, Some(Notice::JobPaused(job)));
        // Reports on running flows are still taken while paused.
        assert!(matches!(
            connection
                .report(Uuid::now_v7(), job, vec![succeeded(0)])
                .await
                .unwrap(),
            Answer::Accepted { recorded: 1, .. }
        ));
        live.job(job, JobCommand::Stop { reason: None }, &owner())
            .await
            .unwrap();
        let notice = connection
            .next_notice(Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(notice, Some(Notice::JobStopped(job)));
        match connection
            .report(Uuid::now_v7(), job, vec![succeeded(1)])
            .await
            .unwrap()
        {
            Answer::Refused(e) => assert_eq!(e.code, ErrorCode::JobNotRunning),
            other => panic!("a report on a stopped job got {other:?}"),
        }
        // A hand-back on an ended job is accepted: nothing is held any more.
        assert_eq!(
            connection.hand_back(job, None).await.unwrap(),
            Answer::HandedBack
        );
        assert_eq!(live.job_state(job).await.status, JobStatus::Stopped);
        live.stop().await;
    }

    pub async fn heartbeats_keep_a_lease_and_silence_lets_it_expire(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let mut connection = Connection::open(&live.config(runner, &key)).await.unwrap();
        let job = live.running_job(1, 100, 0, 4).await;
        assert_eq!(
            granted(&mut connection, 1, 10).await.work[0].flows,
            range(0, 10)
        );
        // A runner that leased and is gone (never connected here), and a
        // lease whose grant never reached a connected runner: neither is
        // renewed.
        let gone = new_runner();
        live.lease(job, gone, 1, 10).await;
        let unaware = new_runner();
        let _unaware = Connection::open(&live.config(unaware, &key)).await.unwrap();
        live.lease(job, unaware, 1, 10).await;
        tokio::time::sleep(TERMS.lease_ttl * 2).await;
        let state = live.job_state(job).await;
        assert!(
            state.leases.contains_key(&runner),
            "the heartbeating runner keeps its lease"
        );
        assert!(
            !state.leases.contains_key(&gone),
            "the silent runner's lease expired"
        );
        assert!(
            !state.leases.contains_key(&unaware),
            "a lease its runner never heard of expired"
        );
        assert!(state.pool.contains(FlowId(10)) && state.pool.contains(FlowId(29)));
        assert!(!state.pool.contains(FlowId(0)));
        live.stop().await;
    }

    pub async fn hand_backs_and_leaving_return_flows_at_once(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let mut connection = Connection::open(&live.config(runner, &key)).await.unwrap();
        let job = live.running_job(1, 50, 0, 2).await;
        live.lease(job, runner, 1, 20).await;
        assert_eq!(
            connection
                .hand_back(job, Some(vec![range(10, 20)]))
                .await
                .unwrap(),
            Answer::HandedBack
        );
        let state = live.job_state(job).await;
        assert_eq!(state.leases[&runner].held.len(), 10);
        assert!(state.pool.contains(FlowId(15)));
        match connection
            .hand_back(job, Some(vec![range(30, 31)]))
            .await
            .unwrap()
        {
            Answer::Refused(e) => assert_eq!(e.code, ErrorCode::FlowsNotHeld),
            other => panic!("handing back an unheld flow got {other:?}"),
        }
        connection.deregister(None).await.unwrap();
        eventually("everything handed back on leaving", || async {
            !live.job_state(job).await.leases.contains_key(&runner)
        })
        .await;
        assert_eq!(live.job_state(job).await.pool.len(), 50);
        live.stop().await;
    }

    pub async fn the_jobs_view_counts_targets_exactly_and_equals_a_rebuild(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let mut connection = Connection::open(&live.config(runner, &key)).await.unwrap();
        // Targets of 5 flows, the first 2 of each clicking.
        let job = live.running_job(4, 5, 2, 1).await;
        live.lease(job, runner, 1, 20).await;
        let mut reports = Vec::new();
        for flow in [0u64, 1, 2, 5, 6, 7, 8, 9, 19] {
            let mut r = succeeded(flow);
            if let domain::flow::FlowReport::Finished(f) = &mut r {
                if flow % 5 < 2 {
                    f.clicks = vec![domain::flow::Click::Internal];
                }
                // LCP 100 ms × (flow + 1); no layout shift; TTFB on the last only.
                f.pages[0].vitals = PageVitals {
                    lcp_ms: Some(100 * (flow as u32 + 1)),
                    cls_milli: Some(0),
                    ttfb_ms: (flow == 19).then_some(30),
                    ..PageVitals::default()
                };
            }
            reports.push(r);
        }
        connection
            .report(Uuid::now_v7(), job, reports)
            .await
            .unwrap();
        let progress = || async {
            live.views
                .query(
                    "SELECT target, flows_done, flow_target, clicks_done, click_target FROM view_job_targets \
                     WHERE job = $1 ORDER BY target",
                    vec![SqlValue::from(job.to_string())],
                )
                .await
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    (1..5)
                        .map(|i| r.get::<i64>(i).unwrap())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        let expected = vec![
            vec![3, 5, 2, 2],
            vec![5, 5, 2, 2],
            vec![0, 5, 0, 2],
            vec![1, 5, 0, 2],
        ];
        eventually("per-target progress", || async {
            progress().await == expected
        })
        .await;
        // Each target's vitals in buckets: counts, never samples.
        let vitals = live
            .views
            .query(
                "SELECT target, vital, upto, pages FROM view_job_vitals WHERE job = $1 ORDER BY target, vital, upto",
                vec![SqlValue::from(job.to_string())],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<i64>("target").unwrap(),
                    r.get::<String>("vital").unwrap(),
                    r.get::<i64>("upto").unwrap(),
                    r.get::<i64>("pages").unwrap(),
                )
            })
            .collect::<Vec<_>>();
        let row = |t: i64, v: &str, upto: i64, n: i64| (t, v.to_owned(), upto, n);
        assert_eq!(
            vitals,
            vec![
                row(0, "cls", 0, 3),
                row(0, "lcp", 100, 1),
                row(0, "lcp", 200, 1),
                row(0, "lcp", 300, 1),
                row(1, "cls", 0, 5),
                row(1, "lcp", 600, 1),
                row(1, "lcp", 800, 2),
                row(1, "lcp", 1000, 2),
                row(3, "cls", 0, 1),
                row(3, "lcp", 2000, 1),
                row(3, "ttfb", 50, 1),
            ]
        );
        let before = job_tables(&live).await;
        // Rebuilt by an engine of its own, the gateway's stopped.
        let (events, views) = (live.store.clone(), live.views.clone());
        drop(connection);
        live.stop().await;
        let engine =
            ProjectionEngine::start(events, views.clone(), projections::all_views()).unwrap();
        engine.wait_until_live().await.unwrap();
        engine.rebuild("jobs").await.unwrap();
        engine.wait_until_live().await.unwrap();
        engine.shutdown().await;
        assert_eq!(job_tables_of(&views).await, before);
    }
}

store::each_backend!(
    safe_mode_or_a_withdrawn_listing_halts_a_run_and_its_runners_stop_at_once,
    a_run_is_halted_when_its_verification_expires_unless_verified_again,
    a_lease_grant_says_what_to_do_and_only_matching_runners_get_one,
    a_fleet_of_zero_work_runners_finishes_a_job_exactly,
    a_lease_request_sent_again_gets_its_first_grant,
    a_runner_killed_mid_lease_has_its_flows_leased_again_after_expiry,
    reports_count_once_and_flows_not_held_are_refused,
    pause_and_stop_reach_the_runner_within_a_second,
    heartbeats_keep_a_lease_and_silence_lets_it_expire,
    hand_backs_and_leaving_return_flows_at_once,
    the_jobs_view_counts_targets_exactly_and_equals_a_rebuild
);

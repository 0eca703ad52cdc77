//! Proxy health through a real gateway, on both stores: failovers that
//! runners report disable a proxy that keeps failing (counted across
//! runners, a batch sent again counted once); every runner briefed on the
//! job hears it and its brief says so, as does a runner briefed later; the
//! proxy pools view shows it; after its cool-down it is re-enabled on
//! trial, and a flow that succeeds through it restores it.

mod support;

use std::time::Duration;

use domain::flow::{FlowFinished, FlowId, FlowOutcome, FlowReport, PageLoad, ProxyIndex};
use domain::job::{JobId, JobSettings};
use domain::proxy_pool::{self, ProxyPoolEvent};
use domain::runner::{Browser, Os, Platform};
use domain::runner_protocol::{ErrorCode, LeaseGrant};
use gateway::runner_link::proxy_health;
use projections::SqlValue;
use runner::{Answer, Connection, Leased, Notice};
use store::testing::{TestStore, eventually};
use time::OffsetDateTime;
use uuid::Uuid;

use support::*;

/// A job of 20 flows on shop.example.com through three proxies.
async fn proxied_job(live: &Live) -> JobId {
    live.running_job_of(
        "url,flow_target\nhttps://shop.example.com/,20\n",
        (
            "name,os,browser,user_agent,viewport_width,viewport_height\n\
             desk,linux,chromium,Mozilla/5.0 (X11; Linux x86_64) Chrome/126,1920,1080\n",
            vec![Platform {
                os: Os::Linux,
                browser: Browser::Chromium,
            }],
        ),
        "name,instances,proxy_switching\nproxied,4,on_failure\n",
        Some(
            "host,port,username,password\n\
             10.0.0.1,3128,a,pa\n10.0.0.2,3128,b,pb\n10.0.0.3,3128,c,pc\n",
        ),
        JobSettings {
            instances: 4,
            human_surfing: false,
            external_clicks: false,
            marker_header: true,
        },
    )
    .await
}

async fn granted(connection: &mut Connection, flows: u64) -> LeaseGrant {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connection.lease(1, flows).await.unwrap() {
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

fn failed_over(flow: u64, from: u32) -> FlowReport {
    FlowReport::ProxyFailedOver {
        flow: FlowId(flow),
        from: ProxyIndex(from),
        to: Some(ProxyIndex((from + 1) % 3)),
        error: "net::ERR_PROXY_CONNECTION_FAILED".into(),
    }
}

fn succeeded_through(flow: u64, proxy: u32) -> FlowReport {
    FlowReport::Finished(FlowFinished {
        flow: FlowId(flow),
        outcome: FlowOutcome::Succeeded,
        duration_ms: 10,
        proxy: Some(ProxyIndex(proxy)),
        pages: vec![PageLoad {
            ms: 100,
            status: Some(200),
            vitals: Default::default(),
        }],
        clicks: vec![],
        artifacts: vec![],
    })
}

async fn accepted(connection: &mut Connection, batch: Uuid, job: JobId, reports: Vec<FlowReport>) {
    match connection.report(batch, job, reports).await.unwrap() {
        Answer::Accepted { .. } => {}
        other => panic!("batch refused: {other:?}"),
    }
}

/// The next proxy notice within 5 s, skipping others.
async fn proxy_notice(connection: &mut Connection) -> Notice {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match connection.next_notice(left).await.unwrap() {
            Some(n @ (Notice::ProxyDisabled { .. } | Notice::ProxyEnabled { .. })) => return n,
            Some(_) => {}
            None => panic!("no proxy notice within 5 s"),
        }
    }
}

/// The pool's events, decoded, in order.
async fn pool_events(live: &Live, job: JobId) -> Vec<ProxyPoolEvent> {
    let pool = live.job_state(job).await.spec.proxies.unwrap().version;
    let stream = proxy_pool::stream(pool).unwrap();
    let registry = domain::event_registry();
    live.store_events()
        .await
        .iter()
        .filter(|e| e.stream_id == stream)
        .map(|e| registry.decode::<ProxyPoolEvent>(e).unwrap())
        .collect()
}

/// (status, failures) of the proxy in the view.
async fn health(live: &Live, job: JobId, proxy: u32) -> Option<(String, i64)> {
    let pool = live.job_state(job).await.spec.proxies.unwrap().version;
    let rows = live
        .views
        .query(
            "SELECT status, failures FROM view_proxy_health WHERE dataset = $1 AND version = $2 AND proxy = $3",
            vec![
                SqlValue::from(pool.dataset.to_string()),
                SqlValue::from(pool.version),
                SqlValue::from(proxy),
            ],
        )
        .await
        .unwrap_or_default();
    rows.first()
        .map(|r| (r.get("status").unwrap(), r.get("failures").unwrap()))
}

mod cases {
    use super::*;

    pub async fn a_proxy_that_keeps_failing_is_disabled_heard_of_and_re_enabled_on_trial(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let job = proxied_job(&live).await;
        let mut a = Connection::open(&live.config(new_runner(), &key))
            .await
            .unwrap();
        let mut b = Connection::open(&live.config(new_runner(), &key))
            .await
            .unwrap();
        let a_flows = granted(&mut a, 5).await.work[0].flows;
        let b_flows = granted(&mut b, 5).await.work[0].flows;
        assert!(!a.brief(job).unwrap().proxy(ProxyIndex(1)).unwrap().disabled);
        // Two failures of proxy 1 on runner a: counted, not enough.
        let batch = Uuid::now_v7();
        let two = vec![
            failed_over(a_flows.start(), 1),
            failed_over(a_flows.start() + 1, 1),
        ];
        accepted(&mut a, batch, job, two.clone()).await;
        // Sent again (its answer lost): counted once.
        accepted(&mut a, batch, job, two).await;
        assert_eq!(pool_events(&live, job).await.len(), 1);
        // A third, on runner b, within the window: disabled.
        accepted(
            &mut b,
            Uuid::now_v7(),
            job,
            vec![failed_over(b_flows.start(), 1)],
        )
        .await;
        for runner in [&mut a, &mut b] {
            match proxy_notice(runner).await {
                Notice::ProxyDisabled {
                    job: j,
                    proxy,
                    reason,
                } => {
                    assert_eq!((j, proxy), (job, ProxyIndex(1)));
                    assert_eq!(
                        reason,
                        "3 failures within 120 s (last: net::ERR_PROXY_CONNECTION_FAILED)"
                    );
                }
                other => panic!("{other:?}"),
            }
            let brief = runner.brief(job).unwrap();
            assert!(brief.proxy(ProxyIndex(1)).unwrap().disabled);
            assert!(!brief.proxy(ProxyIndex(0)).unwrap().disabled);
        }
        let events = pool_events(&live, job).await;
        let ProxyPoolEvent::ProxyDisabled(disabled) = &events[2] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (disabled.proxy, disabled.failures, disabled.cool_down_s),
            (ProxyIndex(1), 3, 60)
        );
        eventually("the view shows proxy 1 disabled", || async {
            health(&live, job, 1).await == Some(("disabled".into(), 3))
        })
        .await;
        assert_eq!(health(&live, job, 0).await, None, "never failed: no row");
        // A runner briefed now learns it from its brief.
        let mut c = Connection::open(&live.config(new_runner(), &key))
            .await
            .unwrap();
        let _ = granted(&mut c, 2).await;
        assert!(c.brief(job).unwrap().proxy(ProxyIndex(1)).unwrap().disabled);
        // Failures of a disabled proxy (flows that picked it before) do not count.
        accepted(
            &mut b,
            Uuid::now_v7(),
            job,
            vec![failed_over(b_flows.start() + 1, 1)],
        )
        .await;
        assert_eq!(pool_events(&live, job).await.len(), 3);
        // Before its cool-down ends nothing changes; after it, on trial.
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            proxy_health::re_enable_due(live.app(), now + time::Duration::seconds(30)).await,
            0
        );
        eventually("the sweep's view is up to date", || async {
            proxy_health::re_enable_due(live.app(), now + time::Duration::seconds(61)).await == 1
        })
        .await;
        for runner in [&mut a, &mut b, &mut c] {
            assert_eq!(
                proxy_notice(runner).await,
                Notice::ProxyEnabled {
                    job,
                    proxy: ProxyIndex(1)
                }
            );
            assert!(
                !runner
                    .brief(job)
                    .unwrap()
                    .proxy(ProxyIndex(1))
                    .unwrap()
                    .disabled
            );
        }
        eventually("the view shows proxy 1 on trial", || async {
            health(&live, job, 1).await == Some(("trial".into(), 3))
        })
        .await;
        // A flow that succeeds through it restores it.
        accepted(
            &mut a,
            Uuid::now_v7(),
            job,
            vec![succeeded_through(a_flows.start() + 2, 1)],
        )
        .await;
        assert!(matches!(
            pool_events(&live, job).await.last(),
            Some(ProxyPoolEvent::ProxyRecovered(r)) if r.proxy == ProxyIndex(1)
        ));
        eventually("the view shows proxy 1 healthy", || async {
            health(&live, job, 1).await == Some(("healthy".into(), 3))
        })
        .await;
        // The view rebuilt from the first event equals the live one.
        const ALL: &str = "SELECT dataset, version, proxy, status, failures, last_error, \
             disabled_until, strikes, changed_at FROM view_proxy_health ORDER BY dataset, version, proxy";
        let table = |views: projections::ViewStore| async move {
            let rows = views.query(ALL, vec![]).await.unwrap();
            rows.into_iter()
                .map(|r| r.values().to_vec())
                .collect::<Vec<_>>()
        };
        let before = table(live.views.clone()).await;
        assert_eq!(before.len(), 1);
        let (events, views) = (live.store.clone(), live.views.clone());
        drop((a, b, c));
        live.stop().await;
        let engine =
            projections::ProjectionEngine::start(events, views.clone(), projections::all_views())
                .unwrap();
        engine.wait_until_live().await.unwrap();
        engine.rebuild("proxy_pools").await.unwrap();
        engine.wait_until_live().await.unwrap();
        engine.shutdown().await;
        assert_eq!(table(views).await, before);
    }
}

store::each_backend!(a_proxy_that_keeps_failing_is_disabled_heard_of_and_re_enabled_on_trial);

//! The scheduler on real gateways, on both stores: two gateways on one
//! store, their clocks moved together, fire each of 50 occurrences exactly
//! once; a missed run fires once on recovery; a fire whose gateway stopped
//! before its job started is started by the next look;
//! each fire's job is created and run, caused by its firing; a fire that
//! cannot start its job (safe mode, the licence lost) is recorded and the
//! schedule carries on; the schedule table shows it all.

mod support;

use domain::account::Username;
use domain::job::JobId;
use domain::licence::{Allowances, Licence, LicenceCommand, LicenceTerms};
use domain::occurrence::{Occurrence, Zone};
use domain::schedule::{
    JobTemplate, Missed, ScheduleAggregate, ScheduleCommand, ScheduleEvent, ScheduleId,
    ScheduleSpec,
};
use domain::target_domain::TargetDomainCommand;
use domain::thresholds::Thresholds;
use domain::{DatasetKind, EventRegistry, Reason, RecordedEvent, StreamId};
use gateway::CommandMeta;
use gateway::scheduler::{self, Tick};
use projections::SqlValue;
use store::testing::{TestStore, eventually};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use support::*;

/// ada's licence, with the scheduler unless `scheduler` is false.
async fn licence(live: &Live, scheduler: bool) {
    let terms = LicenceTerms {
        allows: Allowances {
            scheduler,
            max_instances: 64,
            max_flows_per_day: 10_000_000,
            max_targets: 1_000_000,
            ..Allowances::default()
        },
        expires_at: OffsetDateTime::now_utc() + Duration::days(30),
    };
    let stream = StreamId::for_aggregate("licence", OWNER).unwrap();
    live.handler
        .handle::<Licence>(
            &stream,
            LicenceCommand::Issue {
                username: OWNER.into(),
                terms,
            },
            &root(),
            &CommandMeta::default(),
        )
        .await
        .unwrap();
}

/// A schedule of ada's every minute from `starts_at`, of a one-target job
/// on the allow-listed shop.example.com.
async fn every_minute(live: &Live, starts_at: OffsetDateTime) -> ScheduleId {
    let targets = live
        .publish(
            DatasetKind::Targets,
            "url,flow_target,click_target\nhttps://shop.example.com/p/0,2,0\n",
        )
        .await;
    let device_profiles = live
        .publish(
            DatasetKind::DeviceProfiles,
            "name,os,browser,user_agent,viewport_width,viewport_height\n\
             desk,linux,chromium,Mozilla/5.0 (X11; Linux x86_64) Chrome/126,1920,1080\n",
        )
        .await;
    let settings_profile = live
        .publish(
            DatasetKind::SettingsProfiles,
            "name,instances,marker_header\nfast,1,yes\n",
        )
        .await;
    live.domain(
        "shop.example.com",
        TargetDomainCommand::AllowList {
            reason: Reason::parse("the scheduler tests' staging host").unwrap(),
        },
        &root(),
    )
    .await;
    let id = ScheduleId(Uuid::now_v7());
    let spec = ScheduleSpec {
        owner: Username::parse(OWNER).unwrap(),
        name: "every minute".into(),
        template: JobTemplate {
            targets,
            device_profiles,
            settings_profile,
            proxies: None,
            thresholds: Thresholds::default(),
        },
        occurrence: Occurrence::every(60).unwrap(),
        zone: Zone::parse("Europe/Berlin").unwrap(),
        starts_at: Some(starts_at),
        ends_at: None,
        max_runs: None,
        missed: Missed::FireOnce,
    };
    let mut ada = owner();
    ada.licence.as_mut().unwrap().allows.scheduler = true;
    live.handler
        .handle::<ScheduleAggregate>(
            &id.stream().unwrap(),
            ScheduleCommand::Create { id, spec },
            &ada,
            &CommandMeta::default(),
        )
        .await
        .unwrap();
    id
}

fn decoded(registry: &EventRegistry, events: &[RecordedEvent]) -> Vec<ScheduleEvent> {
    events
        .iter()
        .map(|e| registry.decode::<ScheduleEvent>(e).unwrap())
        .collect()
}

/// The schedule's row: (state, runs, refusal, last job status).
async fn row(live: &Live, id: ScheduleId) -> Option<(String, i64, Option<String>, Option<String>)> {
    let rows = live
        .views
        .query(
            "SELECT state, runs, refusal, last_job_status FROM view_schedules WHERE schedule = $1",
            vec![SqlValue::from(id.to_string())],
        )
        .await
        .unwrap_or_default();
    rows.first().map(|r| {
        (
            r.get("state").unwrap(),
            r.get("runs").unwrap(),
            r.get("refusal").unwrap(),
            r.get("last_job_status").unwrap(),
        )
    })
}

mod cases {
    use super::*;

    pub async fn two_gateways_fire_each_occurrence_exactly_once_and_start_its_job(
        store: &TestStore,
    ) {
        let shared = store.shared();
        let (one, two) = (Live::start(store).await, Live::start(&shared).await);
        licence(&one, true).await;
        one.safe_mode(false).await;
        // A day ahead, whole seconds: the gateways' own loops, on the real
        // clock, leave it alone; the test's clock moves there.
        let start = OffsetDateTime::from_unix_timestamp(
            (OffsetDateTime::now_utc() + Duration::days(1)).unix_timestamp(),
        )
        .unwrap();
        let id = every_minute(&one, start).await;
        for live in [&one, &two] {
            eventually("the schedule in each gateway's view", || async {
                row(live, id).await.is_some()
            })
            .await;
        }
        const OCCURRENCES: i64 = 50;
        let mut fired = 0;
        for k in 0..OCCURRENCES {
            let now = start + Duration::minutes(k) + Duration::seconds(2);
            let (a, b) = tokio::join!(
                scheduler::tick(one.app(), now),
                scheduler::tick(two.app(), now)
            );
            assert_eq!(a.fired + b.fired, 1, "occurrence {k}: {a:?} and {b:?}");
            fired += a.fired + b.fired;
            // Looking again at the same time fires nothing more.
            assert_eq!(scheduler::tick(two.app(), now).await, Tick::default());
        }
        assert_eq!(fired as i64, OCCURRENCES);
        let registry = domain::event_registry();
        let stream = id.stream().unwrap();
        let recorded: Vec<RecordedEvent> = store
            .events()
            .await
            .into_iter()
            .filter(|e| e.stream_id == stream)
            .collect();
        let fires: Vec<(RecordedEvent, JobId, OffsetDateTime)> = recorded
            .iter()
            .zip(decoded(&registry, &recorded))
            .filter_map(|(r, e)| match e {
                ScheduleEvent::ScheduleFired(f) => Some((r.clone(), f.job, f.occurrence)),
                _ => None,
            })
            .collect();
        let occurrences: Vec<OffsetDateTime> = fires.iter().map(|f| f.2).collect();
        let expected: Vec<OffsetDateTime> = (0..OCCURRENCES)
            .map(|k| start + Duration::minutes(k))
            .collect();
        assert_eq!(occurrences, expected, "each occurrence once, in order");
        // Each job was created and started, its events caused by its firing.
        let all = store.events().await;
        for (fired, job, _) in &fires {
            let job_stream = job.stream().unwrap();
            let job_events: Vec<&RecordedEvent> =
                all.iter().filter(|e| e.stream_id == job_stream).collect();
            let types: Vec<&str> = job_events.iter().map(|e| e.event_type.as_str()).collect();
            assert_eq!(types, ["JobCreated", "JobStarted"], "job {job}");
            for e in job_events {
                assert_eq!(e.metadata.causation_id, Some(fired.id.0), "{job}");
            }
        }
        eventually(
            "the table counts the runs and the last job running",
            || async {
                row(&one, id).await
                    == Some((
                        "scheduled".into(),
                        OCCURRENCES,
                        None,
                        Some("running".into()),
                    ))
            },
        )
        .await;

        // Safe mode on: the next fire's job cannot start; recorded, carried on.
        one.safe_mode(true).await;
        let now = start + Duration::minutes(OCCURRENCES) + Duration::seconds(1);
        let (a, b) = tokio::join!(
            scheduler::tick(one.app(), now),
            scheduler::tick(two.app(), now)
        );
        assert_eq!(a.fired + b.fired, 1);
        eventually("the refusal in the table", || async {
            matches!(row(&two, id).await, Some((state, _, Some(why), _))
                if state == "scheduled" && why.contains("safe mode"))
        })
        .await;
        one.safe_mode(false).await;

        // The licence loses the scheduler: the next occurrence is refused, saying why.
        licence(&one, false).await;
        let now = start + Duration::minutes(OCCURRENCES + 1) + Duration::seconds(1);
        let (a, b) = tokio::join!(
            scheduler::tick(one.app(), now),
            scheduler::tick(two.app(), now)
        );
        assert_eq!(a.fired + b.fired, 0);
        eventually("the licence refusal in the table", || async {
            matches!(row(&one, id).await, Some((_, runs, Some(why), _))
                if runs == OCCURRENCES + 1 && why == "scheduler is not licensed: the licence does not include it")
        })
        .await;
        one.stop().await;
        two.stop().await;
    }

    pub async fn a_gateway_down_across_occurrences_fires_once_on_recovery(store: &TestStore) {
        let live = Live::start(store).await;
        licence(&live, true).await;
        live.safe_mode(false).await;
        let start = OffsetDateTime::from_unix_timestamp(
            (OffsetDateTime::now_utc() + Duration::days(2)).unix_timestamp(),
        )
        .unwrap();
        let id = every_minute(&live, start).await;
        eventually("the schedule in the view", || async {
            row(&live, id).await.is_some()
        })
        .await;
        // Nobody looked for ten minutes and a half.
        let now = start + Duration::minutes(10) + Duration::seconds(30);
        let done = scheduler::tick(live.app(), now).await;
        assert_eq!(done.fired, 1);
        let (_, state) = live
            .handler
            .load::<ScheduleAggregate>(&id.stream().unwrap())
            .await
            .unwrap();
        let s = state.schedule.unwrap();
        assert_eq!(s.runs, 1);
        assert_eq!(s.next_run, Some(start + Duration::minutes(11)));
        let registry = domain::event_registry();
        let stream = id.stream().unwrap();
        let recorded: Vec<RecordedEvent> = store
            .events()
            .await
            .into_iter()
            .filter(|e| e.stream_id == stream)
            .collect();
        let missed: Vec<u64> = decoded(&registry, &recorded)
            .into_iter()
            .filter_map(|e| match e {
                ScheduleEvent::OccurrencesMissed(m) => Some(m.count),
                _ => None,
            })
            .collect();
        assert_eq!(missed, [10], "00..09 missed; 10 fired on time");
        live.stop().await;
    }

    pub async fn a_fire_whose_gateway_stopped_before_its_job_is_started_by_the_next_look(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        licence(&live, true).await;
        live.safe_mode(false).await;
        let start = OffsetDateTime::from_unix_timestamp(
            (OffsetDateTime::now_utc() + Duration::days(3)).unix_timestamp(),
        )
        .unwrap();
        let id = every_minute(&live, start).await;
        // The firing is appended, and its gateway stops there.
        let mut ctx = system();
        ctx.now = start + Duration::seconds(1);
        ctx.licence = owner().licence.map(|mut t| {
            t.allows.scheduler = true;
            t
        });
        let stream = id.stream().unwrap();
        let fired = live
            .handler
            .handle::<ScheduleAggregate>(
                &stream,
                ScheduleCommand::Fire,
                &ctx,
                &CommandMeta::default(),
            )
            .await
            .unwrap();
        let [ScheduleEvent::ScheduleFired(f)] = fired.events.as_slice() else {
            panic!("{:?}", fired.events);
        };
        let job = f.job;
        eventually("the firing in the view", || async {
            matches!(row(&live, id).await, Some((_, 1, None, None)))
        })
        .await;
        let done = scheduler::tick(live.app(), start + Duration::seconds(40)).await;
        assert_eq!((done.fired, done.restarted), (0, 1));
        let all = store.events().await;
        let fired_id = all
            .iter()
            .find(|e| e.stream_id == stream && e.event_type == "ScheduleFired")
            .unwrap()
            .id;
        let job_stream = job.stream().unwrap();
        let job_events: Vec<&RecordedEvent> =
            all.iter().filter(|e| e.stream_id == job_stream).collect();
        let types: Vec<&str> = job_events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["JobCreated", "JobStarted"]);
        assert!(
            job_events
                .iter()
                .all(|e| e.metadata.causation_id == Some(fired_id.0))
        );
        eventually("the job running in the table", || async {
            row(&live, id).await == Some(("scheduled".into(), 1, None, Some("running".into())))
        })
        .await;
        // Started once: the next look leaves it be.
        let done = scheduler::tick(live.app(), start + Duration::seconds(50)).await;
        assert_eq!(done, Tick::default());
        live.stop().await;
    }
}

store::each_backend!(
    two_gateways_fire_each_occurrence_exactly_once_and_start_its_job,
    a_gateway_down_across_occurrences_fires_once_on_recovery,
    a_fire_whose_gateway_stopped_before_its_job_is_started_by_the_next_look,
);

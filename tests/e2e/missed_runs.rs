//! Occurrences due while the gateway process is dead (SIGKILLed: no
//! graceful stop, nothing flushed or handed over) are missed, and the
//! restarted gateway obeys each schedule's policy: `FIRE_ONCE` records the
//! misses and fires one catch-up, whose job starts; `SKIP` records them and
//! fires nothing. Both schedules sit in one store (a SQLite file, or a
//! PostgreSQL schema), so one kill and one restart exercise both policies.
//!
//! An occurrence counts as missed only once it is more than
//! [`ON_TIME_WITHIN`] late (a gateway back sooner fires it on time), so
//! the gateway stays down for a minute: the floor this test cannot go
//! below on a real clock.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use domain::job::{JobEvent, JobId};
use domain::schedule::{
    Ending, Missed, ON_TIME_WITHIN, OccurrencesMissed, ScheduleEnded, ScheduleEvent, ScheduleFired,
    ScheduleId,
};
use domain::{RecordedEvent, StreamId};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::helpers::{PASSWORD, TestApp, TestStore, spawn_app};
use crate::jobs::{ISSUE, datasets_of, licence};

const CREATE: &str =
    "mutation($s: ScheduleInput!) { createSchedule(schedule: $s) { id state nextRun } }";
/// Seconds between occurrences.
const EVERY: i64 = 2;
/// Occurrences of each schedule: at `due`, `due + EVERY`, `due + 2 * EVERY`.
const OCCURRENCES: i64 = 3;

/// ada's schedule `name` over the createJob variables `job`: every
/// [`EVERY`] s from `due` through its [`OCCURRENCES`] occurrences, missed
/// runs handled by `missed`; its id.
async fn schedule(
    app: &TestApp,
    ada: &str,
    job: &Value,
    name: &str,
    due: OffsetDateTime,
    missed: &str,
) -> ScheduleId {
    let last = due + time::Duration::seconds(EVERY * (OCCURRENCES - 1));
    let input = json!({
        "name": name,
        "targets": job["t"], "deviceProfiles": job["d"], "settingsProfile": job["s"],
        "occurrence": { "everySeconds": EVERY }, "timezone": "UTC",
        "startsAt": rfc3339(due), "endsAt": rfc3339(last), "missed": missed,
    });
    let r = app.gql(CREATE, json!({ "s": input }), Some(ada)).await;
    let created = &r["data"]["createSchedule"];
    assert_eq!(created["state"], "SCHEDULED", "{r}");
    let next_run = created["nextRun"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        OffsetDateTime::parse(next_run, &Rfc3339).unwrap(),
        due,
        "{r}"
    );
    let id = created["id"].as_str().unwrap();
    ScheduleId(Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}")))
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// The events of `stream` among `events`.
fn of(events: &[RecordedEvent], stream: &StreamId) -> Vec<RecordedEvent> {
    events
        .iter()
        .filter(|e| &e.stream_id == stream)
        .cloned()
        .collect()
}

fn decoded(events: &[RecordedEvent]) -> Vec<ScheduleEvent> {
    let registry = domain::event_registry();
    events
        .iter()
        .map(|e| registry.decode::<ScheduleEvent>(e).unwrap())
        .collect()
}

fn types(events: &[RecordedEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_type.clone()).collect()
}

/// Polls the store (at most 30 s) until every one of `streams` has ended;
/// every event then.
async fn until_ended(app: &TestApp, streams: &[&StreamId]) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = app.store.events().await;
        let ended = streams.iter().all(|stream| {
            of(&events, stream)
                .iter()
                .any(|e| e.event_type == "ScheduleEnded")
        });
        if ended {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted gateway did not end every schedule within 30 s: {:?}\n{}",
            streams
                .iter()
                .map(|s| (s.as_str(), types(&of(&events, s))))
                .collect::<Vec<_>>(),
            app.process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn missed_runs_obey_their_policy(store: TestStore) {
    let mut app = spawn_app().store(store).await;
    let root = app.with_accounts().await;
    let ada = app.token("ada", PASSWORD).await;
    let mut with_scheduler = licence(8);
    with_scheduler["scheduler"] = json!(true);
    let r = app
        .gql(
            ISSUE,
            json!({ "u": "ada", "l": with_scheduler }),
            Some(&root),
        )
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
    let job = datasets_of(&app, &ada, "https://shop.example.com/a,3,0\n", 1).await;
    // A catch-up's job may run: safe mode off, the domain allow-listed.
    let off = "mutation { turnSafeModeOff(reason: \"missed runs e2e\") { safeMode { on } } }";
    let r = app.gql(off, json!({}), Some(&root)).await;
    assert_eq!(r["data"]["turnSafeModeOff"]["safeMode"]["on"], false, "{r}");
    let list = "mutation { allowListDomain(domain: \"shop.example.com\", reason: \"e2e\") }";
    let r = app.gql(list, json!({}), Some(&root)).await;
    assert_eq!(r["data"]["allowListDomain"], true, "{r}");

    // Due a few seconds from now, on a whole second.
    let now = OffsetDateTime::now_utc();
    let due = (now + time::Duration::seconds(6))
        .replace_nanosecond(0)
        .unwrap();
    let last = due + time::Duration::seconds(EVERY * (OCCURRENCES - 1));
    let fire_once = schedule(&app, &ada, &job, "catch up", due, "FIRE_ONCE").await;
    let skip = schedule(&app, &ada, &job, "skip", due, "SKIP").await;
    let (fire_once, skip) = (fire_once.stream().unwrap(), skip.stream().unwrap());

    // SIGKILL before the first occurrence, with nothing fired yet.
    let pid = app.process.pid();
    app.process.kill().await;
    let status = app.process.wait(Duration::from_secs(10)).await;
    let killed_at = OffsetDateTime::now_utc();
    assert_eq!(status.signal(), Some(9), "SIGKILLed: {status:?}");
    assert!(
        killed_at < due,
        "the gateway died at {killed_at}, after the first occurrence at {due}: \
         too slow a setup to test anything"
    );
    let before = app.store.events().await;
    for stream in [&fire_once, &skip] {
        assert_eq!(types(&of(&before, stream)), ["ScheduleCreated"], "{stream}");
    }

    // Dead through every occurrence, and until the last is too late to be on time.
    let missed_by = last + ON_TIME_WITHIN + time::Duration::seconds(1);
    let down = missed_by - OffsetDateTime::now_utc();
    tokio::time::sleep(down.try_into().unwrap_or_default()).await;
    let store = std::mem::replace(&mut app.store, TestStore::sqlite());
    drop(app);
    let restarted_at = OffsetDateTime::now_utc();
    assert!(restarted_at > missed_by);
    let app = spawn_app().store(store).await;
    assert_ne!(app.process.pid(), pid, "a new gateway process");

    let events = until_ended(&app, &[&fire_once, &skip]).await;
    for stream in [&fire_once, &skip] {
        for e in &of(&events, stream)[1..] {
            assert!(
                e.recorded_at >= restarted_at,
                "{} recorded at {}, before the restart at {restarted_at}",
                e.event_type,
                e.recorded_at
            );
            assert_eq!(e.metadata.source.as_deref(), Some("gateway"), "{e:?}");
        }
    }
    let missed = |policy| {
        ScheduleEvent::OccurrencesMissed(OccurrencesMissed {
            first: due,
            last,
            count: OCCURRENCES as u64,
            policy,
            next_run: None,
        })
    };
    let ended = ScheduleEvent::ScheduleEnded(ScheduleEnded {
        ending: Ending::NoMoreOccurrences,
    });

    // FIRE_ONCE: every miss recorded, then one catch-up for the last of them.
    let catch_up_job = ScheduleId::of_stream(fire_once.as_str())
        .unwrap()
        .job_for(last);
    assert_eq!(
        decoded(&of(&events, &fire_once))[1..],
        [
            missed(Missed::FireOnce),
            ScheduleEvent::ScheduleFired(ScheduleFired {
                occurrence: last,
                job: catch_up_job,
                catch_up: true,
                next_run: None,
            }),
            ended.clone(),
        ],
        "{fire_once}"
    );
    // SKIP: every miss recorded, nothing fired.
    assert_eq!(
        decoded(&of(&events, &skip))[1..],
        [missed(Missed::Skip), ended],
        "{skip}"
    );

    // The catch-up's job was created and started, caused by the firing;
    // no other job exists.
    let firing = of(&events, &fire_once)
        .into_iter()
        .find(|e| e.event_type == "ScheduleFired")
        .unwrap();
    started(&app, catch_up_job, firing.id.0).await;
    let jobs: Vec<_> = app
        .store
        .events()
        .await
        .into_iter()
        .filter(|e| e.event_type == "JobCreated")
        .map(|e| e.stream_id)
        .collect();
    assert_eq!(jobs, [catch_up_job.stream().unwrap()]);
}

/// Waits (at most 20 s) for job `id` to have started; its creation and
/// start are caused by the event `cause`.
async fn started(app: &TestApp, id: JobId, cause: Uuid) {
    let stream = id.stream().unwrap();
    let registry = domain::event_registry();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = of(&app.store.events().await, &stream);
        if events
            .iter()
            .any(|e| matches!(registry.decode::<JobEvent>(e), Ok(JobEvent::JobStarted(_))))
        {
            for e in events
                .iter()
                .filter(|e| ["JobCreated", "JobStarted"].contains(&e.event_type.as_str()))
            {
                assert_eq!(e.metadata.causation_id, Some(cause), "{e:?}");
            }
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the catch-up's job never started: {:?}\n{}",
            types(&events),
            app.process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_missed_while_the_gateway_was_killed_obey_their_policy_on_sqlite() {
    missed_runs_obey_their_policy(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_missed_while_the_gateway_was_killed_obey_their_policy_on_postgres() {
    let Some(store) = TestStore::postgres("e2e_missed_runs").await else {
        return;
    };
    missed_runs_obey_their_policy(store).await;
}

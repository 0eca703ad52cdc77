//! The projection engine and view storage against real databases: every
//! case runs on a temp SQLite file and on a fresh PostgreSQL schema.

use std::sync::Arc;
use std::time::Duration;

use domain::{EventId, Metadata, NewEvent, Payload, Position, RecordedEvent, StreamId};
use projections::{
    Checkpoint, EngineError, EngineStatus, EventCounts, Phase, Projection, ProjectionEngine,
    ProjectionError, Row, SqlValue, Statement, ViewError, ViewStore,
};
use store::testing::TestStore;
use store::{AppendResult, Backend, EventStore, ExpectedVersion, Filter};
use time::OffsetDateTime;

/// The events and the views kept beside them, opened as the CLI opens them.
async fn open(b: &TestStore) -> (Arc<dyn EventStore>, ViewStore) {
    let backend = b.open_backend().await;
    let views = ViewStore::open(&backend).await.unwrap();
    (backend.event_store(), views)
}

const WAIT: Duration = Duration::from_secs(30);

fn stream(name: &str) -> StreamId {
    StreamId::parse(name).unwrap()
}

fn events(ty: &str, count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|n| {
            NewEvent::new(
                ty,
                1,
                Payload::to_json(&serde_json::json!({ "n": n })).unwrap(),
            )
        })
        .collect()
}

async fn append(store: &dyn EventStore, s: &str, ty: &str, count: usize) -> AppendResult {
    store
        .append(&stream(s), ExpectedVersion::Any, events(ty, count))
        .await
        .unwrap()
}

fn start(
    store: &Arc<dyn EventStore>,
    views: &ViewStore,
    projections: Vec<Arc<dyn Projection>>,
) -> ProjectionEngine {
    ProjectionEngine::start(store.clone(), views.clone(), projections).unwrap()
}

async fn live(engine: &ProjectionEngine) {
    tokio::time::timeout(WAIT, engine.wait_until_live())
        .await
        .expect("views did not catch up in time")
        .unwrap();
}

/// Waits until the engine's status satisfies `done`, and returns it.
async fn status_until(
    engine: &ProjectionEngine,
    what: &str,
    done: impl FnMut(&EngineStatus) -> bool,
) -> EngineStatus {
    let mut rx = engine.status();
    let reached = tokio::time::timeout(WAIT, rx.wait_for(done))
        .await
        .map(|status| status.unwrap().clone());
    reached.unwrap_or_else(|_| panic!("timed out waiting until {what}: {:?}", *rx.borrow()))
}

async fn counts(views: &ViewStore) -> Vec<(String, i64)> {
    views
        .query(
            "SELECT event_type, count FROM view_event_counts ORDER BY event_type",
            vec![],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("event_type").unwrap(), r.get("count").unwrap()))
        .collect()
}

fn count_of(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
}

async fn table(views: &ViewStore, name: &str) -> Vec<Row> {
    views
        .query(&format!("SELECT * FROM {name} ORDER BY 1"), vec![])
        .await
        .unwrap()
}

/// An event as the store would hand it to a projection.
fn recorded(ty: &str, position: Position) -> RecordedEvent {
    RecordedEvent {
        id: EventId::new(),
        stream_id: stream("test-1"),
        stream_version: 0,
        position,
        event_type: ty.into(),
        schema_version: 1,
        recorded_at: OffsetDateTime::now_utc(),
        metadata: Metadata::default(),
        data: "{}".into(),
    }
}

fn count_statements(events: &[RecordedEvent]) -> Vec<Statement> {
    let mut out = Vec::new();
    for e in events {
        EventCounts.apply(e, &mut out).unwrap();
    }
    out
}

/// Records every event it sees, and refuses `Poison` events.
struct Fussy;

impl Projection for Fussy {
    fn name(&self) -> &'static str {
        "fussy"
    }
    fn schema(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE view_fussy (commit_pos BIGINT NOT NULL, prepare_pos BIGINT NOT NULL, \
           event_type TEXT NOT NULL, PRIMARY KEY (commit_pos, prepare_pos))",
        ]
    }
    fn tables(&self) -> &'static [&'static str] {
        &["view_fussy"]
    }
    fn apply(&self, e: &RecordedEvent, out: &mut Vec<Statement>) -> Result<(), ProjectionError> {
        if e.event_type == "Poison" {
            return Err(ProjectionError::Invalid(
                "poison is not allowed here".into(),
            ));
        }
        out.push(
            Statement::new(
                "INSERT INTO view_fussy (commit_pos, prepare_pos, event_type) VALUES ($1, $2, $3)",
            )
            .bind(SqlValue::try_from(e.position.commit)?)
            .bind(SqlValue::try_from(e.position.prepare)?)
            .bind(e.event_type.as_str()),
        );
        Ok(())
    }
}

/// Like `Fussy`, but its `Bad` events make a write the database refuses.
struct Strict;

impl Projection for Strict {
    fn name(&self) -> &'static str {
        "strict"
    }
    fn schema(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE view_strict (commit_pos BIGINT NOT NULL, prepare_pos BIGINT NOT NULL, \
           event_type TEXT NOT NULL, PRIMARY KEY (commit_pos, prepare_pos))",
        ]
    }
    fn tables(&self) -> &'static [&'static str] {
        &["view_strict"]
    }
    fn apply(&self, e: &RecordedEvent, out: &mut Vec<Statement>) -> Result<(), ProjectionError> {
        let ty = (e.event_type != "Bad").then_some(e.event_type.as_str());
        out.push(
            Statement::new(
                "INSERT INTO view_strict (commit_pos, prepare_pos, event_type) VALUES ($1, $2, $3)",
            )
            .bind(SqlValue::try_from(e.position.commit)?)
            .bind(SqlValue::try_from(e.position.prepare)?)
            .bind(ty),
        );
        Ok(())
    }
}

/// Event counts of `job-…` streams only, under a version of our choosing.
struct JobCounts {
    version: u32,
}

impl Projection for JobCounts {
    fn name(&self) -> &'static str {
        "job_counts"
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn schema(&self) -> &'static [&'static str] {
        match self.version {
            1 => &[
                "CREATE TABLE view_job_counts (event_type TEXT PRIMARY KEY, count BIGINT NOT NULL)",
            ],
            // A later version adds a column.
            _ => &[
                "CREATE TABLE view_job_counts (event_type TEXT PRIMARY KEY, count BIGINT NOT NULL, \
                    note TEXT)",
            ],
        }
    }
    fn tables(&self) -> &'static [&'static str] {
        &["view_job_counts"]
    }
    fn filter(&self) -> Filter {
        Filter::stream_prefix("job-")
    }
    fn apply(&self, e: &RecordedEvent, out: &mut Vec<Statement>) -> Result<(), ProjectionError> {
        out.push(
            Statement::new(
                "INSERT INTO view_job_counts (event_type, count) VALUES ($1, 1) \
                 ON CONFLICT (event_type) DO UPDATE SET count = view_job_counts.count + 1",
            )
            .bind(e.event_type.as_str()),
        );
        Ok(())
    }
}

/// A table wide enough for placeholders past $9.
struct Wide;

impl Projection for Wide {
    fn name(&self) -> &'static str {
        "wide"
    }
    fn schema(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE view_wide (a1 BIGINT PRIMARY KEY, a2 BIGINT, a3 BIGINT, a4 BIGINT, \
           a5 BIGINT, a6 BIGINT, a7 BIGINT, a8 BIGINT, a9 BIGINT, a10 BIGINT, a11 INTEGER, \
           flag BOOLEAN, ratio DOUBLE PRECISION, note TEXT, missing TEXT)",
        ]
    }
    fn tables(&self) -> &'static [&'static str] {
        &["view_wide"]
    }
    fn apply(&self, _: &RecordedEvent, _: &mut Vec<Statement>) -> Result<(), ProjectionError> {
        Ok(())
    }
}

mod cases {
    use super::*;

    pub async fn a_view_catches_up_with_existing_events_then_follows_live_appends(b: &TestStore) {
        let (store, views) = open(b).await;
        for i in 0..6 {
            append(store.as_ref(), &format!("job-{i}"), "JobCreated", 100).await;
        }
        let before = append(store.as_ref(), "job-0", "JobStarted", 50).await;
        let engine = start(&store, &views, vec![Arc::new(EventCounts)]);
        live(&engine).await;
        assert_eq!(
            counts(&views).await,
            count_of(&[("JobCreated", 600), ("JobStarted", 50)])
        );
        let status = engine.status().borrow().clone();
        let s = status.get("event_counts").unwrap();
        assert_eq!(
            (s.checkpoint, s.applied, s.caught_up),
            (before.position, 650, true)
        );

        // Live: each lone event shows up promptly, without waiting for a batch.
        let mut last = before;
        for _ in 0..3 {
            last = append(store.as_ref(), "job-9", "JobFinished", 1).await;
            let at = last.position;
            tokio::time::timeout(
                Duration::from_secs(5),
                engine
                    .status()
                    .wait_for(|s| s.get("event_counts").unwrap().checkpoint == at),
            )
            .await
            .expect("a live event was not applied within 5 s")
            .unwrap();
        }
        assert_eq!(
            counts(&views).await,
            count_of(&[("JobCreated", 600), ("JobFinished", 3), ("JobStarted", 50)])
        );
        let rows = views
            .query(
                "SELECT last_commit, last_prepare, last_recorded_at FROM view_event_counts WHERE event_type = $1",
                vec!["JobFinished".into()],
            )
            .await
            .unwrap();
        assert_eq!(
            Position::new(
                rows[0].get("last_commit").unwrap(),
                rows[0].get("last_prepare").unwrap()
            ),
            last.position
        );
        let recorded: OffsetDateTime = rows[0].get("last_recorded_at").unwrap();
        assert!((OffsetDateTime::now_utc() - recorded).whole_seconds().abs() < 60);
        assert_eq!(
            views.checkpoint("event_counts").await.unwrap(),
            Some(Checkpoint {
                position: last.position,
                version: 1
            })
        );
        engine.shutdown().await;
    }

    pub async fn the_checkpoint_and_the_view_commit_together(b: &TestStore) {
        let (_store, views) = open(b).await;
        let start = views.reset(&EventCounts).await.unwrap();
        assert_eq!(
            start,
            Checkpoint {
                position: Position::START,
                version: 1
            }
        );
        assert_eq!(views.checkpoint("event_counts").await.unwrap(), Some(start));

        let first = vec![recorded("A", Position::new(5, 1))];
        views
            .commit(
                "event_counts",
                start,
                Position::new(5, 1),
                count_statements(&first),
            )
            .await
            .unwrap();
        let at_five = Checkpoint {
            position: Position::new(5, 1),
            version: 1,
        };
        assert_eq!(
            views.checkpoint("event_counts").await.unwrap(),
            Some(at_five)
        );
        let view_before = table(&views, "view_event_counts").await;

        // A batch whose third write breaks a constraint: nothing of it lands.
        let mut batch = count_statements(&[
            recorded("A", Position::new(6, 1)),
            recorded("B", Position::new(7, 1)),
        ]);
        batch.push(
            Statement::new(
                "INSERT INTO view_event_counts (event_type, count, last_commit, last_prepare, last_recorded_at) \
                 VALUES ($1, NULL, 0, 0, 0)",
            )
            .bind("C"),
        );
        let err = views
            .commit("event_counts", at_five, Position::new(8, 1), batch)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ViewError::Statement { index: 2, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("view event_counts: statement #2"),
            "{err}"
        );
        assert_eq!(table(&views, "view_event_counts").await, view_before);
        assert_eq!(
            views.checkpoint("event_counts").await.unwrap(),
            Some(at_five)
        );

        // A commit from a stale checkpoint writes nothing either.
        let err = views
            .commit(
                "event_counts",
                start,
                Position::new(9, 1),
                count_statements(&[recorded("D", Position::new(9, 1))]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ViewError::CheckpointMoved { .. }), "{err}");
        assert_eq!(table(&views, "view_event_counts").await, view_before);
        assert_eq!(
            views.checkpoint("event_counts").await.unwrap(),
            Some(at_five)
        );
    }

    pub async fn a_restarted_engine_resumes_from_its_checkpoint_without_double_counting(
        b: &TestStore,
    ) {
        let (store, views) = open(b).await;
        append(store.as_ref(), "job-1", "A", 20).await;
        let engine = start(&store, &views, vec![Arc::new(EventCounts)]);
        live(&engine).await;
        engine.shutdown().await;
        drop((store, views));

        let (store, views) = open(b).await;
        append(store.as_ref(), "job-1", "A", 10).await;
        append(store.as_ref(), "job-2", "B", 5).await;
        let engine = start(&store, &views, vec![Arc::new(EventCounts)]);
        live(&engine).await;
        assert_eq!(counts(&views).await, count_of(&[("A", 30), ("B", 5)]));
        assert_eq!(
            engine
                .status()
                .borrow()
                .get("event_counts")
                .unwrap()
                .applied,
            15,
            "the restarted engine should apply only the events after its checkpoint"
        );
        engine.shutdown().await;
    }

    pub async fn rebuild_drops_and_replays_and_the_rebuilt_view_equals_the_live_one(b: &TestStore) {
        let (store, views) = open(b).await;
        for i in 0..12 {
            let ty = ["SessionStarted", "JobCreated", "ProxyFailedOver"][i % 3];
            append(store.as_ref(), &format!("s-{}", i % 5), ty, 10 + i).await;
        }
        let engine = start(&store, &views, vec![Arc::new(EventCounts)]);
        live(&engine).await;
        let live_view = table(&views, "view_event_counts").await;
        let total: i64 = counts(&views).await.iter().map(|(_, n)| n).sum();
        assert_eq!(total, (0..12).map(|i| 10 + i).sum::<i64>());

        // Spoil the view behind the engine's back; a rebuild must not keep it.
        let cp = views.checkpoint("event_counts").await.unwrap().unwrap();
        views
            .commit(
                "event_counts",
                cp,
                cp.position,
                vec![Statement::new("UPDATE view_event_counts SET count = 999")],
            )
            .await
            .unwrap();
        assert_ne!(table(&views, "view_event_counts").await, live_view);

        engine.rebuild("event_counts").await.unwrap();
        live(&engine).await;
        assert_eq!(table(&views, "view_event_counts").await, live_view);
        let status = engine.status().borrow().clone();
        let s = status.get("event_counts").unwrap();
        assert_eq!((s.applied, s.checkpoint), (total as u64, cp.position));

        let err = engine.rebuild("nope").await.unwrap_err();
        assert!(err.to_string().contains("event_counts"), "{err}");
        engine.shutdown().await;
    }

    pub async fn an_apply_error_stops_that_projection_and_is_reported_not_skipped(b: &TestStore) {
        let (store, views) = open(b).await;
        let kept = append(store.as_ref(), "job-1", "A", 2).await;
        let poison = store
            .append(&stream("job-2"), ExpectedVersion::Any, events("Poison", 1))
            .await
            .unwrap();
        append(store.as_ref(), "job-1", "A", 1).await;

        let engine = start(&store, &views, vec![Arc::new(EventCounts), Arc::new(Fussy)]);
        let status = status_until(&engine, "fussy fails and event_counts is live", |s| {
            s.get("fussy").unwrap().failure().is_some()
                && s.get("event_counts").unwrap().phase == Phase::Live
        })
        .await;
        let fussy = status.get("fussy").unwrap();
        let failure = fussy.failure().unwrap();
        let event = failure.event.as_ref().expect("the failure names its event");
        assert_eq!(
            (event.event_type.as_str(), event.position),
            ("Poison", poison.position)
        );
        assert!(
            failure.error.contains("poison is not allowed here"),
            "{failure}"
        );
        assert_eq!(
            fussy.checkpoint, kept.position,
            "it stops just before the poison"
        );
        assert_eq!(table(&views, "view_fussy").await.len(), 2);
        match engine.wait_until_live().await {
            Err(EngineError::Failed { view: "fussy", .. }) => {}
            other => panic!("expected fussy's failure, got {other:?}"),
        }

        // The other view goes on; the failed one does not skip ahead.
        let last = append(store.as_ref(), "job-1", "A", 1).await;
        status_until(&engine, "event_counts applies the new event", |s| {
            s.get("event_counts").unwrap().checkpoint == last.position
        })
        .await;
        assert_eq!(counts(&views).await, count_of(&[("A", 4), ("Poison", 1)]));
        assert_eq!(table(&views, "view_fussy").await.len(), 2);
        let stored = views.checkpoint("fussy").await.unwrap().unwrap();
        assert_eq!(stored.position, fussy.checkpoint);
        engine.shutdown().await;
    }

    pub async fn a_write_the_database_refuses_stops_that_projection_at_its_event(b: &TestStore) {
        let (store, views) = open(b).await;
        // One append: the good events before Bad share its batch.
        let mut batch = events("Good", 2);
        batch.extend(events("Bad", 1));
        batch.extend(events("Good", 1));
        let bad_id = batch[2].id;
        store
            .append(&stream("job-1"), ExpectedVersion::Any, batch)
            .await
            .unwrap();
        let engine = start(&store, &views, vec![Arc::new(Strict)]);
        let status = status_until(&engine, "strict fails", |s| {
            s.get("strict").unwrap().failure().is_some()
        })
        .await;
        let s = status.get("strict").unwrap();
        let failure = s.failure().unwrap();
        assert_eq!(failure.event.as_ref().unwrap().id, bad_id);
        assert!(
            failure.error.contains("INSERT INTO view_strict"),
            "{failure}"
        );
        let rows = table(&views, "view_strict").await;
        assert_eq!(rows.len(), 2, "the events before the refused one are kept");
        let last_kept = Position::new(
            rows[1].get("commit_pos").unwrap(),
            rows[1].get("prepare_pos").unwrap(),
        );
        assert_eq!(s.checkpoint, last_kept);
        assert!(last_kept < failure.event.as_ref().unwrap().position);
        engine.shutdown().await;
    }

    pub async fn placeholders_past_nine_bind_in_order_and_leave_string_literals_alone(
        b: &TestStore,
    ) {
        let (_store, views) = open(b).await;
        let cp = views.reset(&Wide).await.unwrap();
        let insert = (1..=11)
            .fold(
                Statement::new(
                    "INSERT INTO view_wide (a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, flag, ratio, note, missing) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'costs $1', $14)",
                ),
                |s, n| s.bind(n * 100),
            )
            .bind(true)
            .bind(0.5)
            .bind(None::<String>);
        // Placeholders out of order and past $9; the literal keeps its $.
        let update = (1..=11).fold(
            Statement::new(
                "UPDATE view_wide SET a2 = $10, a10 = $2, a11 = $11 + 1, note = note || ' and $2' \
                 WHERE a1 = $1 AND a3 = $3 AND a4 = $4 AND a5 = $5 AND a6 = $6 AND a7 = $7 AND a8 = $8 AND a9 = $9",
            ),
            |s, n| s.bind(n * 100),
        );
        views
            .commit("wide", cp, Position::new(1, 0), vec![insert, update])
            .await
            .unwrap();
        let rows = views
            .query(
                "SELECT * FROM view_wide WHERE a1 = $1",
                vec![SqlValue::Int(100)],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.get::<i64>("a2").unwrap(), 1000);
        assert_eq!(r.get::<i64>("a10").unwrap(), 200);
        assert_eq!(r.get::<i64>("a9").unwrap(), 900);
        assert_eq!(r.get::<i32>("a11").unwrap(), 1101);
        assert!(r.get::<bool>("flag").unwrap());
        assert_eq!(r.get::<f64>("ratio").unwrap(), 0.5);
        assert_eq!(r.get::<String>("note").unwrap(), "costs $1 and $2");
        assert_eq!(r.get::<Option<String>>("missing").unwrap(), None);

        // SQL that would mean something else on one backend is refused on both.
        let err = views
            .query(
                "SELECT a1 FROM view_wide WHERE a1 = ?",
                vec![SqlValue::Int(100)],
            )
            .await
            .unwrap_err();
        if views.backend() == "sqlite" {
            assert!(matches!(err, ViewError::InvalidSql { .. }), "{err}");
        }
    }

    pub async fn a_filtered_view_is_live_even_when_the_newest_events_do_not_match(b: &TestStore) {
        let (store, views) = open(b).await;
        append(store.as_ref(), "job-1", "JobCreated", 3).await;
        let last_job = append(store.as_ref(), "job-2", "JobCreated", 1).await;
        for i in 0..5 {
            append(
                store.as_ref(),
                &format!("account-{i}"),
                "AccountCreated",
                20,
            )
            .await;
        }
        let engine = start(&store, &views, vec![Arc::new(JobCounts { version: 1 })]);
        live(&engine).await;
        let rows = table(&views, "view_job_counts").await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<i64>("count").unwrap(), 4);
        assert_eq!(
            engine
                .status()
                .borrow()
                .get("job_counts")
                .unwrap()
                .checkpoint,
            last_job.position
        );
        engine.shutdown().await;
    }

    pub async fn a_view_is_not_live_while_committed_events_wait_behind_an_open_transaction(
        b: &TestStore,
    ) {
        let (store, views) = open(b).await;
        // On PostgreSQL, an open transaction with an id holds back the read
        // horizon: events committed after it began are not readable yet.
        let holder = match b.open_backend().await {
            Backend::Postgres(other) => {
                let client = other.pool().get().await.unwrap();
                client
                    .batch_execute("BEGIN; SELECT pg_current_xact_id()")
                    .await
                    .unwrap();
                Some((other, client))
            }
            Backend::Sqlite(_) => None,
        };
        append(store.as_ref(), "job-1", "JobCreated", 5).await;
        let engine = start(&store, &views, vec![Arc::new(EventCounts)]);
        if let Some((_other, client)) = holder {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let status = engine.status().borrow().clone();
            let s = status.get("event_counts").unwrap();
            assert!(s.phase != Phase::Live && !s.caught_up, "{s:?}");
            assert_eq!(counts(&views).await, []);
            client.batch_execute("COMMIT").await.unwrap();
        }
        live(&engine).await;
        assert_eq!(counts(&views).await, count_of(&[("JobCreated", 5)]));
        engine.shutdown().await;
    }

    pub async fn a_view_built_by_an_older_version_is_rebuilt_when_the_engine_starts(b: &TestStore) {
        let (store, views) = open(b).await;
        append(store.as_ref(), "job-1", "JobCreated", 7).await;
        let engine = start(&store, &views, vec![Arc::new(JobCounts { version: 1 })]);
        live(&engine).await;
        engine.shutdown().await;
        // Reads before and after the rebuild, which changes the table's columns.
        for _ in 0..4 {
            assert_eq!(table(&views, "view_job_counts").await[0].columns().len(), 2);
        }
        let cp = views.checkpoint("job_counts").await.unwrap().unwrap();
        views
            .commit(
                "job_counts",
                cp,
                cp.position,
                vec![Statement::new("UPDATE view_job_counts SET count = 999")],
            )
            .await
            .unwrap();

        // The newer build runs elsewhere (its own connections); this process's
        // cached reads of the old table must not get in the way.
        let (other_store, other_views) = open(b).await;
        let engine = start(
            &other_store,
            &other_views,
            vec![Arc::new(JobCounts { version: 2 })],
        );
        live(&engine).await;
        let rows = table(&views, "view_job_counts").await;
        assert_eq!(rows[0].get::<i64>("count").unwrap(), 7);
        assert_eq!(rows[0].columns(), ["event_type", "count", "note"]);
        assert_eq!(
            views
                .checkpoint("job_counts")
                .await
                .unwrap()
                .unwrap()
                .version,
            2
        );
        engine.shutdown().await;

        // An older build leaves a newer view alone, and says why.
        let engine = start(&store, &views, vec![Arc::new(JobCounts { version: 1 })]);
        let err = tokio::time::timeout(WAIT, engine.wait_until_live())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("newer than this build's 1"),
            "{err}"
        );
        assert_eq!(table(&views, "view_job_counts").await, rows);
        engine.shutdown().await;
    }

    pub async fn two_engines_on_one_database_never_double_count(b: &TestStore) {
        let (store, views) = open(b).await;
        let (other_store, other_views) = open(b).await;
        let one = start(&store, &views, vec![Arc::new(EventCounts)]);
        let two = start(&other_store, &other_views, vec![Arc::new(EventCounts)]);
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        append(store.as_ref(), &format!("job-{w}"), "Tick", 3).await;
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let head = store.head().await.unwrap();
        for engine in [&one, &two] {
            status_until(engine, "the engine has seen every event", |s| {
                let p = s.get("event_counts").unwrap();
                p.phase == Phase::Live && p.caught_up && p.checkpoint.commit > 0
            })
            .await;
        }
        // Both engines are idle; the checkpoint covers every append.
        let cp = views.checkpoint("event_counts").await.unwrap().unwrap();
        assert!(head.saw(cp.position));
        tokio::time::timeout(WAIT, async {
            while counts(&views).await != count_of(&[("Tick", 300)]) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the counts never settled at 300"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(counts(&views).await, count_of(&[("Tick", 300)]));
        one.shutdown().await;
        two.shutdown().await;
    }
}

store::each_backend!(
    a_view_catches_up_with_existing_events_then_follows_live_appends,
    the_checkpoint_and_the_view_commit_together,
    a_restarted_engine_resumes_from_its_checkpoint_without_double_counting,
    rebuild_drops_and_replays_and_the_rebuilt_view_equals_the_live_one,
    an_apply_error_stops_that_projection_and_is_reported_not_skipped,
    a_write_the_database_refuses_stops_that_projection_at_its_event,
    placeholders_past_nine_bind_in_order_and_leave_string_literals_alone,
    a_filtered_view_is_live_even_when_the_newest_events_do_not_match,
    a_view_is_not_live_while_committed_events_wait_behind_an_open_transaction,
    a_view_built_by_an_older_version_is_rebuilt_when_the_engine_starts,
    two_engines_on_one_database_never_double_count,
);

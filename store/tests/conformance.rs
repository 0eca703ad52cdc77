//! The conformance suite: every guarantee of `EventStore`, written once and
//! run against each backend (a temp SQLite file; a fresh PostgreSQL schema).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use domain::{EventId, Metadata, NewEvent, Payload, Position, RecordedEvent, StreamId};
use store::testing::{TestStore, read_everything};
use store::{
    Direction, ExpectedVersion, Filter, Presence, Snapshot, StoreError, StreamFrom, SubscribeFrom,
    Subscription,
};
use uuid::Uuid;

fn stream(name: &str) -> StreamId {
    StreamId::parse(name).unwrap()
}

fn event(ty: &str, n: u64) -> NewEvent {
    NewEvent::new(
        ty,
        1,
        Payload::to_json(&serde_json::json!({ "n": n })).unwrap(),
    )
}

fn events(ty: &str, count: u64) -> Vec<NewEvent> {
    (0..count).map(|n| event(ty, n)).collect()
}

fn n_of(e: &RecordedEvent) -> u64 {
    serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["n"]
        .as_u64()
        .unwrap()
}

async fn next_within(sub: &mut Subscription, secs: u64) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(secs), sub.next())
        .await
        .expect("subscription delivered nothing in time")
        .expect("subscription ended")
        .expect("subscription failed")
}

async fn nothing_within(sub: &mut Subscription, millis: u64) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(millis), sub.next()).await {
        panic!("expected no event, got {e:?}");
    }
}

mod cases {
    use super::*;

    pub async fn a_new_stream_numbers_its_events_from_zero(b: &TestStore) {
        let store = b.open().await;
        let s = stream("job-1");
        let first = store
            .append(&s, ExpectedVersion::NoStream, events("JobCreated", 3))
            .await
            .unwrap();
        assert_eq!(first.version, 2);
        let second = store
            .append(&s, ExpectedVersion::Exact(2), events("JobStarted", 1))
            .await
            .unwrap();
        assert_eq!(second.version, 3);
        assert!(second.position > first.position);
        let read = store
            .read_stream(&s, StreamFrom::Start, Direction::Forward, 100)
            .await
            .unwrap();
        let versions: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, [0, 1, 2, 3]);
        assert_eq!(read[3].position, second.position);
        assert_eq!(read[2].position, first.position);
    }

    pub async fn a_wrong_expected_version_is_a_typed_error_naming_the_actual_version(
        b: &TestStore,
    ) {
        let store = b.open().await;
        let s = stream("account-7");
        let err = store
            .append(&s, ExpectedVersion::StreamExists, events("X", 1))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::WrongExpectedVersion {
                    actual: None,
                    expected: ExpectedVersion::StreamExists,
                    ..
                }
            ),
            "{err}"
        );
        let err = store
            .append(&s, ExpectedVersion::Exact(0), events("X", 1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::WrongExpectedVersion { actual: None, .. }),
            "{err}"
        );

        store
            .append(&s, ExpectedVersion::NoStream, events("X", 2))
            .await
            .unwrap();
        for expected in [
            ExpectedVersion::NoStream,
            ExpectedVersion::Exact(0),
            ExpectedVersion::Exact(5),
        ] {
            match store
                .append(&s, expected, events("X", 1))
                .await
                .unwrap_err()
            {
                StoreError::WrongExpectedVersion {
                    stream,
                    expected: e,
                    actual,
                } => {
                    assert_eq!(
                        (stream.as_str(), e, actual),
                        ("account-7", expected, Some(1))
                    );
                }
                other => panic!("{other}"),
            }
        }
        let err = store
            .append(&s, ExpectedVersion::NoStream, events("X", 1))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "stream account-7: expected no stream, but it is at version 1"
        );
        store
            .append(&s, ExpectedVersion::StreamExists, events("X", 1))
            .await
            .unwrap();
        let r = store
            .append(&s, ExpectedVersion::Any, events("X", 1))
            .await
            .unwrap();
        assert_eq!(r.version, 3);
    }

    pub async fn appending_the_same_events_again_returns_the_first_result_and_writes_nothing(
        b: &TestStore,
    ) {
        let store = b.open().await;
        let s = stream("session-1");
        let batch = events("SessionStarted", 3);
        let first = store
            .append(&s, ExpectedVersion::NoStream, batch.clone())
            .await
            .unwrap();
        store
            .append(&s, ExpectedVersion::Any, events("Other", 1))
            .await
            .unwrap();
        // A retry after a lost reply: the expectation no longer holds, the ids do.
        for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
            let again = store.append(&s, expected, batch.clone()).await.unwrap();
            assert_eq!(again, first);
        }
        // And from another handle, as another gateway would.
        let other = b.open().await;
        assert_eq!(
            other
                .append(&s, ExpectedVersion::Exact(0), batch.clone())
                .await
                .unwrap(),
            first
        );
        let all = store
            .read_stream(&s, StreamFrom::Start, Direction::Forward, 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(read_everything(&*store, &Filter::all()).await.len(), 4);
    }

    pub async fn a_batch_that_only_partly_repeats_earlier_events_is_refused_whole(b: &TestStore) {
        let store = b.open().await;
        let s = stream("dataset-1");
        let batch = events("Uploaded", 2);
        store
            .append(&s, ExpectedVersion::Any, batch.clone())
            .await
            .unwrap();

        // The first id repeats, the second is new.
        let mixed = vec![batch[0].clone(), event("Uploaded", 9)];
        let err = store
            .append(&s, ExpectedVersion::Any, mixed)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyConflict { .. }),
            "{err}"
        );

        // A new first id, then a repeated one: still nothing written.
        let mixed = vec![event("Uploaded", 9), batch[1].clone()];
        let err = store
            .append(&s, ExpectedVersion::Any, mixed)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyConflict { .. }),
            "{err}"
        );

        // The same ids sent to another stream.
        let err = store
            .append(&stream("dataset-2"), ExpectedVersion::Any, batch.clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("dataset-1"), "{err}");

        assert_eq!(read_everything(&*store, &Filter::all()).await.len(), 2);
    }

    pub async fn invalid_appends_are_refused_with_a_reason_and_write_nothing(b: &TestStore) {
        let store = b.open().await;
        let s = stream("job-2");
        let err = store
            .append(&s, ExpectedVersion::Any, vec![])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at least one event"), "{err}");

        let e = event("X", 1);
        let err = store
            .append(&s, ExpectedVersion::Any, vec![e.clone(), e])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");

        let huge = "x".repeat(store::MAX_EVENT_DATA_BYTES + 1);
        let big = NewEvent::new("Big", 1, Payload::to_json(&huge).unwrap());
        let err = store
            .append(&s, ExpectedVersion::Any, vec![big])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");

        let unnamed = NewEvent::new("", 1, Payload::to_json(&1).unwrap());
        let err = store
            .append(&s, ExpectedVersion::Any, vec![unnamed])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("empty event type"), "{err}");

        assert!(read_everything(&*store, &Filter::all()).await.is_empty());
    }

    pub async fn streams_read_forward_and_backward_from_any_version(b: &TestStore) {
        let store = b.open().await;
        let s = stream("schedule-1");
        store
            .append(&s, ExpectedVersion::NoStream, events("Tick", 10))
            .await
            .unwrap();
        store
            .append(
                &stream("schedule-2"),
                ExpectedVersion::Any,
                events("Tick", 3),
            )
            .await
            .unwrap();
        let versions =
            |es: Vec<RecordedEvent>| es.iter().map(|e| e.stream_version).collect::<Vec<_>>();
        let read = |from, dir, limit| {
            let store = store.clone();
            let s = s.clone();
            async move { versions(store.read_stream(&s, from, dir, limit).await.unwrap()) }
        };
        assert_eq!(
            read(StreamFrom::Start, Direction::Forward, 3).await,
            [0, 1, 2]
        );
        assert_eq!(
            read(StreamFrom::Version(7), Direction::Forward, 100).await,
            [7, 8, 9]
        );
        assert_eq!(
            read(StreamFrom::End, Direction::Forward, 100).await,
            Vec::<u64>::new()
        );
        assert_eq!(read(StreamFrom::End, Direction::Backward, 2).await, [9, 8]);
        assert_eq!(
            read(StreamFrom::Version(2), Direction::Backward, 100).await,
            [2, 1, 0]
        );
        assert_eq!(read(StreamFrom::Start, Direction::Backward, 100).await, [0]);
        assert_eq!(
            read(StreamFrom::Version(50), Direction::Forward, 10).await,
            Vec::<u64>::new()
        );
        assert_eq!(
            read(StreamFrom::Version(u64::MAX), Direction::Forward, 10).await,
            Vec::<u64>::new()
        );
        assert_eq!(
            read(StreamFrom::Version(u64::MAX), Direction::Backward, 1).await,
            [9]
        );
        let missing = store
            .read_stream(
                &stream("schedule-404"),
                StreamFrom::Start,
                Direction::Forward,
                10,
            )
            .await
            .unwrap();
        assert!(missing.is_empty());
    }

    pub async fn the_envelope_round_trips_every_field(b: &TestStore) {
        let store = b.open().await;
        let s = stream("runner-abc");
        let id = EventId::new();
        let metadata = Metadata {
            actor: Some("account-42".into()),
            correlation_id: Some(Uuid::now_v7()),
            causation_id: Some(Uuid::now_v7()),
            source: Some("runner:abc".into()),
        };
        let data = r#"{"nested":{"list":[1,2.5,"ünïcode ✓"]},"null":null}"#;
        let new = NewEvent {
            id,
            event_type: "RunnerConnected".into(),
            schema_version: 3,
            data: Payload::from_json_text(data).unwrap(),
            metadata: metadata.clone(),
        };
        let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
        let result = store
            .append(&s, ExpectedVersion::NoStream, vec![new])
            .await
            .unwrap();
        let after = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
        let got = &store
            .read_stream(&s, StreamFrom::Start, Direction::Forward, 1)
            .await
            .unwrap()[0];
        assert_eq!(got.id, id);
        assert_eq!(got.stream_id, s);
        assert_eq!(got.stream_version, 0);
        assert_eq!(got.position, result.position);
        assert_eq!(got.event_type, "RunnerConnected");
        assert_eq!(got.schema_version, 3);
        assert_eq!(got.metadata, metadata);
        let parsed: serde_json::Value = serde_json::from_str(&got.data).unwrap();
        assert_eq!(
            parsed,
            serde_json::from_str::<serde_json::Value>(data).unwrap()
        );
        assert!(
            got.recorded_at > before && got.recorded_at < after,
            "{}",
            got.recorded_at
        );
        let via_all = read_everything(&*store, &Filter::all()).await;
        assert_eq!(&via_all[0], got);
        assert_eq!(store.read_event(id).await.unwrap().as_ref(), Some(got));
        assert_eq!(store.read_event(EventId::new()).await.unwrap(), None);
    }

    pub async fn read_all_pages_through_the_global_order(b: &TestStore) {
        let store = b.open().await;
        let mut appended = Vec::new();
        for i in 0..25u64 {
            let s = stream(&format!("job-{}", i % 4));
            let r = store
                .append(&s, ExpectedVersion::Any, events("Step", 1 + i % 3))
                .await
                .unwrap();
            appended.push(r.position);
        }
        let mut after = Position::START;
        let mut seen = Vec::new();
        loop {
            let page = store.read_all(after, &Filter::all(), 7).await.unwrap();
            assert!(page.events.len() <= 7);
            if page.events.is_empty() && !page.pending {
                break;
            }
            if page.pending && page.events.is_empty() {
                // Another test's open transaction holds the horizon back
                // (transaction ids are shared by every schema).
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            after = page.next;
            seen.extend(page.events);
        }
        let total: u64 = (0..25u64).map(|i| 1 + i % 3).sum();
        assert_eq!(seen.len() as u64, total);
        assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
        let positions: HashSet<Position> = seen.iter().map(|e| e.position).collect();
        assert!(appended.iter().all(|p| positions.contains(p)));
        // The head saw every appended event, and nothing after it is new.
        let head = store.head().await.unwrap();
        assert!(appended.iter().all(|p| head.saw(*p)), "{head}");
        let page = store
            .read_all(head.after, &Filter::all(), 10)
            .await
            .unwrap();
        assert!(page.events.iter().all(|e| head.saw(e.position)));
    }

    pub async fn filters_select_by_stream_prefix_and_event_type(b: &TestStore) {
        let store = b.open().await;
        let mut last = Position::START;
        for (s, ty) in [
            ("job-1", "JobCreated"),
            ("job-2", "JobStarted"),
            ("jobs_x-1", "JobCreated"), // `_` must not act as a wildcard
            ("job%-1", "JobCreated"),   // nor `%`
            ("account-1", "AccountCreated"),
            ("job-1", "JobFinished"),
        ] {
            last = store
                .append(&stream(s), ExpectedVersion::Any, events(ty, 1))
                .await
                .unwrap()
                .position;
        }
        let streams = |es: Vec<RecordedEvent>| {
            es.iter()
                .map(|e| format!("{}/{}", e.stream_id, e.event_type))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            streams(read_everything(&*store, &Filter::stream_prefix("job-")).await),
            ["job-1/JobCreated", "job-2/JobStarted", "job-1/JobFinished"]
        );
        assert_eq!(
            streams(read_everything(&*store, &Filter::stream_prefix("job%")).await),
            ["job%-1/JobCreated"]
        );
        assert_eq!(
            streams(read_everything(&*store, &Filter::event_type("JobCreated")).await),
            [
                "job-1/JobCreated",
                "jobs_x-1/JobCreated",
                "job%-1/JobCreated"
            ]
        );
        let both = Filter {
            stream_prefixes: vec!["job-".into(), "account-".into()],
            event_types: vec!["JobCreated".into(), "AccountCreated".into()],
        };
        assert_eq!(
            streams(read_everything(&*store, &both).await),
            ["job-1/JobCreated", "account-1/AccountCreated"]
        );
        // A filtered page still moves the checkpoint past what it skipped.
        let page = store
            .read_all(Position::START, &Filter::event_type("Nothing"), 10)
            .await
            .unwrap();
        assert!(page.events.is_empty());
        assert!(
            page.next >= last || page.pending,
            "{:?} < {last:?}",
            page.next
        );

        let mut sub = store.subscribe_all(SubscribeFrom::Start, Filter::stream_prefix("account-"));
        assert_eq!(
            next_within(&mut sub, 10).await.stream_id.as_str(),
            "account-1"
        );
        store
            .append(
                &stream("job-9"),
                ExpectedVersion::Any,
                events("JobCreated", 1),
            )
            .await
            .unwrap();
        store
            .append(
                &stream("account-2"),
                ExpectedVersion::Any,
                events("AccountCreated", 1),
            )
            .await
            .unwrap();
        assert_eq!(
            next_within(&mut sub, 10).await.stream_id.as_str(),
            "account-2"
        );
    }

    pub async fn a_subscription_catches_up_then_goes_live(b: &TestStore) {
        let store = b.open().await;
        let s = stream("job-live");
        store
            .append(&s, ExpectedVersion::Any, events("Old", 1500))
            .await
            .unwrap();
        let mut sub = store.subscribe_all(SubscribeFrom::Start, Filter::all());
        for n in 0..1500 {
            let e = next_within(&mut sub, 10).await;
            assert_eq!((e.event_type.as_str(), n_of(&e)), ("Old", n));
        }
        nothing_within(&mut sub, 200).await;
        let r = store
            .append(&s, ExpectedVersion::Any, events("New", 2))
            .await
            .unwrap();
        let a = next_within(&mut sub, 5).await;
        let b2 = next_within(&mut sub, 5).await;
        assert_eq!((a.event_type.as_str(), n_of(&a), n_of(&b2)), ("New", 0, 1));
        assert_eq!(b2.position, r.position);
    }

    pub async fn a_subscription_from_the_end_sees_only_later_events(b: &TestStore) {
        let store = b.open().await;
        store
            .append(&stream("job-a"), ExpectedVersion::Any, events("Before", 5))
            .await
            .unwrap();
        let mut sub = store.subscribe_all(SubscribeFrom::End, Filter::all());
        // Let the subscription find the head before appending.
        nothing_within(&mut sub, 300).await;
        store
            .append(&stream("job-b"), ExpectedVersion::Any, events("After", 1))
            .await
            .unwrap();
        assert_eq!(next_within(&mut sub, 5).await.event_type, "After");
        nothing_within(&mut sub, 200).await;
    }

    /// On PostgreSQL a transaction that took its id first can commit last,
    /// landing below events that were visible when a subscription began.
    /// Hold one open across the start of subscriptions from the end: each
    /// must still deliver its event, once, and nothing visible before.
    pub async fn a_subscription_from_the_end_sees_a_transaction_that_was_open_when_it_began(
        b: &TestStore,
    ) {
        let store = b.open().await;
        store
            .append(&stream("job-a"), ExpectedVersion::Any, events("Before", 3))
            .await
            .unwrap();
        let held = match b.open_backend().await {
            store::Backend::Postgres(other) => {
                let client = other.pool().get().await.unwrap();
                client
                    .batch_execute(
                        "BEGIN; SELECT * FROM tb_append('job-held', -1, ARRAY[gen_random_uuid()], \
                         ARRAY['Held'], ARRAY[1], ARRAY['{\"n\": 0}'], ARRAY[NULL]::text[], \
                         ARRAY[NULL]::uuid[], ARRAY[NULL]::uuid[], ARRAY[NULL]::text[])",
                    )
                    .await
                    .unwrap();
                Some((other, client))
            }
            store::Backend::Sqlite(_) => None,
        };
        // Committed after the held transaction took its (lower) id.
        store
            .append(&stream("job-b"), ExpectedVersion::Any, events("Visible", 2))
            .await
            .unwrap();
        let mut from_end = store.subscribe_all(SubscribeFrom::End, Filter::all());
        let head = store.head().await.unwrap();
        let mut from_head = store.subscribe_all(SubscribeFrom::Head(head), Filter::all());
        // Both have found their start; neither shows what was visible then.
        nothing_within(&mut from_end, 300).await;
        nothing_within(&mut from_head, 50).await;
        let mut expected = vec![];
        if let Some((_other, client)) = held {
            client.batch_execute("COMMIT").await.unwrap();
            expected.push("Held");
        }
        store
            .append(&stream("job-c"), ExpectedVersion::Any, events("After", 1))
            .await
            .unwrap();
        expected.push("After");
        for sub in [&mut from_end, &mut from_head] {
            for ty in &expected {
                assert_eq!(next_within(sub, 5).await.event_type, *ty);
            }
            nothing_within(sub, 200).await;
        }
    }

    pub async fn a_subscription_resumes_after_a_checkpoint_without_duplicates(b: &TestStore) {
        let store = b.open().await;
        store
            .append(&stream("job-c"), ExpectedVersion::Any, events("E", 10))
            .await
            .unwrap();
        let all = read_everything(&*store, &Filter::all()).await;
        let checkpoint = all[4].position;
        let mut sub = store.subscribe_all(SubscribeFrom::After(checkpoint), Filter::all());
        for expected in &all[5..] {
            assert_eq!(next_within(&mut sub, 5).await.id, expected.id);
        }
        nothing_within(&mut sub, 200).await;
    }

    pub async fn a_subscription_wakes_for_appends_made_through_another_handle(b: &TestStore) {
        let reader = b.open().await;
        let writer = b.open().await;
        let mut sub = reader.subscribe_all(SubscribeFrom::Start, Filter::all());
        nothing_within(&mut sub, 300).await;
        for i in 0..5 {
            let started = std::time::Instant::now();
            writer
                .append(&stream("job-x"), ExpectedVersion::Any, events("Remote", 1))
                .await
                .unwrap();
            next_within(&mut sub, 5).await;
            // Wake-ups (NOTIFY) or the poll must bring it well inside the poll ceiling.
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "round {i}: {:?}",
                started.elapsed()
            );
        }
    }

    /// Many writers commit concurrently while subscriptions read: each must
    /// see every event exactly once, in one global order that matches a
    /// later full read. A plain sequence number fails this on PostgreSQL.
    pub async fn concurrent_writers_are_seen_exactly_once_in_order(b: &TestStore) {
        const WRITERS: usize = 12;
        const APPENDS: usize = 400;
        let store = b.open().await;
        let live = store.subscribe_all(SubscribeFrom::Start, Filter::all());
        let collect = |mut sub: Subscription, want: usize| {
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(want);
                while got.len() < want {
                    match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                        Ok(Some(Ok(e))) => got.push(e),
                        other => {
                            panic!("subscription stalled after {} events: {other:?}", got.len())
                        }
                    }
                }
                nothing_within(&mut sub, 300).await;
                got
            })
        };
        let mut writers = Vec::new();
        let mut total = 0;
        for w in 0..WRITERS {
            // Some writers append single events, some batches, some to shared streams.
            let batch = 1 + (w % 3) as u64;
            total += APPENDS * batch as usize;
            let store = b.open().await;
            writers.push(tokio::spawn(async move {
                for i in 0..APPENDS {
                    let s = if w % 2 == 0 {
                        stream(&format!("job-w{w}"))
                    } else {
                        stream(&format!("job-shared-{}", i % 3))
                    };
                    store
                        .append(&s, ExpectedVersion::Any, events("Work", batch))
                        .await
                        .unwrap();
                }
            }));
        }
        let live = collect(live, total);
        // A second subscriber joins in the middle of the storm.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let late = collect(
            store.subscribe_all(SubscribeFrom::Start, Filter::all()),
            total,
        );
        for w in writers {
            w.await.unwrap();
        }
        let live = live.await.unwrap();
        let late = late.await.unwrap();
        let truth = read_everything(&*store, &Filter::all()).await;
        assert_eq!(truth.len(), total);
        for (name, seen) in [("live", &live), ("late", &late)] {
            let ids: HashSet<EventId> = seen.iter().map(|e| e.id).collect();
            assert_eq!(ids.len(), total, "{name}: duplicates");
            assert!(
                seen.windows(2).all(|w| w[0].position < w[1].position),
                "{name}: out of global order"
            );
            let seen_ids: Vec<EventId> = seen.iter().map(|e| e.id).collect();
            let truth_ids: Vec<EventId> = truth.iter().map(|e| e.id).collect();
            assert!(
                seen_ids == truth_ids,
                "{name}: order differs from a full read"
            );
        }
        // Within each stream, versions arrive 0, 1, 2… with no hole.
        let mut next_version: HashMap<&str, u64> = HashMap::new();
        for e in &live {
            let v = next_version.entry(e.stream_id.as_str()).or_default();
            assert_eq!(e.stream_version, *v, "stream {}", e.stream_id);
            *v += 1;
        }
    }

    pub async fn blobs_are_stored_once_under_their_sha256(b: &TestStore) {
        let store = b.open().await;
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let h1 = store.put_blob(&bytes).await.unwrap();
        let h2 = store.put_blob(&bytes).await.unwrap();
        assert_eq!(h1, h2);
        assert_eq!(h1, domain::BlobHash::of(&bytes));
        assert_eq!(
            store.get_blob(&h1).await.unwrap().as_deref(),
            Some(&bytes[..])
        );
        assert_eq!(
            store
                .get_blob(&domain::BlobHash::of(b"other"))
                .await
                .unwrap(),
            None
        );
        let empty = store.put_blob(b"").await.unwrap();
        assert_eq!(store.get_blob(&empty).await.unwrap(), Some(vec![]));
    }

    pub async fn chunks_are_staged_per_upload_replaced_on_retry_and_deleted_together(
        b: &TestStore,
    ) {
        let store = b.open().await;
        let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
        let chunk = |fill: u8, len: usize| vec![fill; len];
        assert_eq!(store.chunk_indexes(one).await.unwrap(), Vec::<u32>::new());
        // Out of order, one sent twice (the second replaces the first).
        store.put_chunk(one, 2, chunk(2, 10)).await.unwrap();
        store.put_chunk(one, 0, chunk(9, 1 << 20)).await.unwrap();
        store.put_chunk(one, 0, chunk(0, 1 << 20)).await.unwrap();
        store.put_chunk(two, 0, chunk(7, 5)).await.unwrap();
        let mut staged = store.staged_uploads().await.unwrap();
        staged.sort();
        assert_eq!(staged, [one, two]);
        assert_eq!(store.chunk_indexes(one).await.unwrap(), [0, 2]);
        assert_eq!(
            store.read_chunks(one).await.unwrap(),
            [(0, chunk(0, 1 << 20)), (2, chunk(2, 10))]
        );
        store.put_chunk(one, 1, chunk(1, 3)).await.unwrap();
        assert_eq!(store.chunk_indexes(one).await.unwrap(), [0, 1, 2]);

        // Staging survives reopening the store, until deleted.
        drop(store);
        let store = b.open().await;
        assert_eq!(store.chunk_indexes(one).await.unwrap(), [0, 1, 2]);
        assert_eq!(store.delete_chunks(one).await.unwrap(), 3);
        assert_eq!(store.delete_chunks(one).await.unwrap(), 0);
        assert!(store.read_chunks(one).await.unwrap().is_empty());
        assert_eq!(store.read_chunks(two).await.unwrap(), [(0, chunk(7, 5))]);
        assert_eq!(store.staged_uploads().await.unwrap(), [two]);
    }

    pub async fn a_runners_presence_belongs_to_the_connection_that_last_heard_it(b: &TestStore) {
        let store = b.open().await;
        let (runner, other) = (Uuid::now_v7(), Uuid::now_v7());
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        let at = |micros: i64| {
            time::OffsetDateTime::from_unix_timestamp_nanos(
                1_700_000_000_000_000_000 + i128::from(micros) * 1000,
            )
            .unwrap()
        };
        let seen = |runner, holder, micros, busy| Presence {
            runner,
            holder,
            seen_at: at(micros),
            busy,
        };
        let all = || async {
            let mut rows = store.presences().await.unwrap();
            rows.sort_by_key(|p| p.runner);
            rows
        };
        assert!(store.presences().await.unwrap().is_empty());
        store
            .touch_presence(seen(runner, first, 1, 0))
            .await
            .unwrap();
        store
            .touch_presence(seen(runner, first, 7, 3))
            .await
            .unwrap();
        store
            .touch_presence(seen(other, first, 2, 1))
            .await
            .unwrap();
        assert_eq!(
            all().await,
            [seen(runner, first, 7, 3), seen(other, first, 2, 1)]
        );
        // Another connection takes the runner over: the first no longer
        // holds it, so its leaving forgets nothing.
        store
            .touch_presence(seen(runner, second, 9, 0))
            .await
            .unwrap();
        assert!(!store.release_presence(runner, first).await.unwrap());
        assert_eq!(all().await[0], seen(runner, second, 9, 0));
        // Kept across reopening, until its holder lets it go.
        drop(store);
        let store = b.open().await;
        assert!(store.release_presence(runner, second).await.unwrap());
        assert!(!store.release_presence(runner, second).await.unwrap());
        assert_eq!(store.presences().await.unwrap(), [seen(other, first, 2, 1)]);
    }

    pub async fn a_stream_keeps_its_last_saved_snapshot(b: &TestStore) {
        let store = b.open().await;
        let (one, two) = (stream("licence-one"), stream("licence-two"));
        let snapshot = |kind: &str, version: u64| Snapshot {
            kind: kind.into(),
            version,
            data: format!(r#"{{"at":{version}}}"#),
        };
        assert_eq!(store.get_snapshot(&one).await.unwrap(), None);
        for saved in [
            snapshot("licence/1", 10),
            snapshot("licence/1", 20),
            // Older, or another build's kind: still the last word.
            snapshot("licence/1", 5),
            snapshot("licence/2", 3),
        ] {
            store.put_snapshot(&one, saved.clone()).await.unwrap();
            assert_eq!(store.get_snapshot(&one).await.unwrap(), Some(saved));
        }
        assert_eq!(store.get_snapshot(&two).await.unwrap(), None);

        drop(store);
        let store = b.open().await;
        assert_eq!(
            store.get_snapshot(&one).await.unwrap(),
            Some(snapshot("licence/2", 3))
        );
    }

    pub async fn events_survive_reopening_the_store(b: &TestStore) {
        let r = {
            let store = b.open().await;
            store
                .append(&stream("job-d"), ExpectedVersion::NoStream, events("E", 3))
                .await
                .unwrap()
        };
        let store = b.open().await;
        let all = store
            .read_stream(&stream("job-d"), StreamFrom::Start, Direction::Forward, 10)
            .await
            .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].position, r.position);
        let next = store
            .append(&stream("job-d"), ExpectedVersion::Exact(2), events("E", 1))
            .await
            .unwrap();
        assert!(next.position > r.position);
    }

    /// A writer process killed with SIGKILL in the middle of appending
    /// leaves only whole batches behind.
    pub async fn a_killed_writer_leaves_only_whole_batches(b: &TestStore) {
        let url = b.url.clone();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child_writer", "--ignored", "--nocapture"])
            .env("TB_CRASH_CHILD_STORE", &url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let store = b.open().await;
        // Let it write a while, then kill it mid-stride.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let n = store
                .read_all(Position::START, &Filter::all(), 5_000)
                .await
                .unwrap()
                .events
                .len();
            if n >= 3_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child wrote only {n} events"
            );
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let store = b.open().await;
        let all = read_everything(&*store, &Filter::all()).await;
        let mut per_stream: HashMap<String, Vec<&RecordedEvent>> = HashMap::new();
        for e in &all {
            per_stream
                .entry(e.stream_id.to_string())
                .or_default()
                .push(e);
        }
        for (s, es) in per_stream {
            assert_eq!(
                es.len() % CRASH_BATCH as usize,
                0,
                "{s}: a torn batch of {}",
                es.len()
            );
            for (i, e) in es.iter().enumerate() {
                assert_eq!(e.stream_version, i as u64);
                assert_eq!(n_of(e), i as u64 % CRASH_BATCH, "{s}: batch out of order");
            }
        }
        // The store still takes appends.
        store
            .append(
                &stream("job-after-crash"),
                ExpectedVersion::NoStream,
                events("E", 1),
            )
            .await
            .unwrap();
    }
}

const CRASH_BATCH: u64 = 50;

/// The child side of `a_killed_writer_leaves_only_whole_batches`: appends
/// batches until killed. Does nothing when run on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "child process of a_killed_writer_leaves_only_whole_batches"]
async fn crash_child_writer() {
    let Ok(url) = std::env::var("TB_CRASH_CHILD_STORE") else {
        return;
    };
    let (store, _) = store::open(&url.parse().unwrap()).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let s = stream(&format!("crash-{w}-{}", i % 5));
                store
                    .append(&s, ExpectedVersion::Any, events("Batch", CRASH_BATCH))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

store::each_backend!(
    a_new_stream_numbers_its_events_from_zero,
    a_wrong_expected_version_is_a_typed_error_naming_the_actual_version,
    appending_the_same_events_again_returns_the_first_result_and_writes_nothing,
    a_batch_that_only_partly_repeats_earlier_events_is_refused_whole,
    invalid_appends_are_refused_with_a_reason_and_write_nothing,
    streams_read_forward_and_backward_from_any_version,
    the_envelope_round_trips_every_field,
    read_all_pages_through_the_global_order,
    filters_select_by_stream_prefix_and_event_type,
    a_subscription_catches_up_then_goes_live,
    a_subscription_from_the_end_sees_only_later_events,
    a_subscription_from_the_end_sees_a_transaction_that_was_open_when_it_began,
    a_subscription_resumes_after_a_checkpoint_without_duplicates,
    a_subscription_wakes_for_appends_made_through_another_handle,
    concurrent_writers_are_seen_exactly_once_in_order,
    blobs_are_stored_once_under_their_sha256,
    chunks_are_staged_per_upload_replaced_on_retry_and_deleted_together,
    a_stream_keeps_its_last_saved_snapshot,
    a_runners_presence_belongs_to_the_connection_that_last_heard_it,
    events_survive_reopening_the_store,
    a_killed_writer_leaves_only_whole_batches,
);

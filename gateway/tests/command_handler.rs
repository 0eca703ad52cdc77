//! The command handler against real stores: a temp SQLite file and a fresh
//! PostgreSQL schema. Two handlers on one store stand for two gateways.

use std::sync::Arc;

use domain::account::{Account, AccountCommand, AccountError, PasswordHash, Username};
use domain::licence::{
    Allowances, Licence, LicenceCommand, LicenceError, LicenceEvent, LicenceState, LicenceTerms,
};
use domain::{Actor, Context, Decider, EventRegistry, Role, StreamId};
use gateway::{CommandError, CommandHandler, CommandMeta};
use store::testing::TestStore;
use store::{Direction, EventStore, Snapshot, StreamFrom};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

fn registry() -> Arc<EventRegistry> {
    Arc::new(
        EventRegistry::new()
            .with::<domain::account::AccountEvent>()
            .with::<LicenceEvent>(),
    )
}

fn admin() -> Context {
    Context::new(
        OffsetDateTime::now_utc(),
        Actor::Account {
            account_id: Uuid::nil(),
            username: "root".into(),
            roles: [Role::Admin].into(),
        },
    )
}

fn terms(instances: u32) -> LicenceTerms {
    LicenceTerms {
        allows: Allowances {
            max_instances: instances,
            human_surfing: true,
            import_proxy: true,
            scheduler: true,
            external_clicks: false,
            max_targets: 5,
            max_flows_per_day: 100,
        },
        expires_at: OffsetDateTime::now_utc() + Duration::days(30),
    }
}

fn issue(instances: u32) -> LicenceCommand {
    LicenceCommand::Issue {
        username: "ada".into(),
        terms: terms(instances),
    }
}

fn revoke() -> LicenceCommand {
    LicenceCommand::Revoke {
        username: "ada".into(),
    }
}

fn licence_stream() -> StreamId {
    StreamId::parse("licence-ada").unwrap()
}

async fn stream_versions(store: &Arc<dyn EventStore>, stream: &StreamId) -> Vec<u64> {
    store
        .read_stream(stream, StreamFrom::Start, Direction::Forward, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect()
}

mod cases {
    use super::*;

    pub async fn a_command_appends_its_events_with_metadata(b: &TestStore) {
        let store = b.open().await;
        let handler = CommandHandler::new(store.clone(), registry());
        let meta = CommandMeta {
            source: Some("gateway".into()),
            correlation_id: Some(Uuid::now_v7()),
            ..CommandMeta::default()
        };
        let done = handler
            .handle::<Licence>(&licence_stream(), issue(2), &admin(), &meta)
            .await
            .unwrap();
        assert_eq!(
            (done.version, done.events.len(), done.replayed),
            (Some(0), 1, false)
        );
        let stored = &store
            .read_stream(&licence_stream(), StreamFrom::Start, Direction::Forward, 10)
            .await
            .unwrap()[0];
        assert_eq!(stored.event_type, "LicenceIssued");
        assert_eq!(stored.metadata.actor.as_deref(), Some("root"));
        assert_eq!(stored.metadata.source.as_deref(), Some("gateway"));
        assert_eq!(stored.metadata.correlation_id, meta.correlation_id);
        let (version, state) = handler.load::<Licence>(&licence_stream()).await.unwrap();
        assert_eq!(
            (version, state.terms.map(|t| t.allows.max_instances)),
            (Some(0), Some(2))
        );
    }

    pub async fn a_refusal_appends_nothing(b: &TestStore) {
        let store = b.open().await;
        let handler = CommandHandler::new(store.clone(), registry());
        let err = handler
            .handle::<Licence>(
                &licence_stream(),
                revoke(),
                &admin(),
                &CommandMeta::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, CommandError::Rejected(LicenceError::NoLicence(_))),
            "{err}"
        );
        assert!(stream_versions(&store, &licence_stream()).await.is_empty());
    }

    pub async fn two_gateways_on_one_stream_both_get_their_commands_in(b: &TestStore) {
        let store = b.open().await;
        let a = Arc::new(CommandHandler::new(store.clone(), registry()));
        let b = Arc::new(CommandHandler::new(store.clone(), registry()));
        let mut tasks = Vec::new();
        for (handler, base) in [(a, 0u32), (b, 1000)] {
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    handler
                        .handle::<Licence>(
                            &licence_stream(),
                            issue(base + i),
                            &admin(),
                            &CommandMeta::default(),
                        )
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            stream_versions(&store, &licence_stream()).await,
            (0..50).collect::<Vec<u64>>()
        );
    }

    pub async fn a_stale_cached_state_is_corrected_not_trusted(b: &TestStore) {
        let store = b.open().await;
        let a = CommandHandler::new(store.clone(), registry());
        let b = CommandHandler::new(store.clone(), registry());
        let none = CommandMeta::default();
        a.handle::<Licence>(&licence_stream(), issue(1), &admin(), &none)
            .await
            .unwrap();
        // B revokes behind A's back; A's cache still holds a licence.
        b.handle::<Licence>(&licence_stream(), revoke(), &admin(), &none)
            .await
            .unwrap();
        let err = a
            .handle::<Licence>(&licence_stream(), revoke(), &admin(), &none)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CommandError::Rejected(LicenceError::NoLicence(_))),
            "{err}"
        );
        // Now A caches "no licence"; B issues one. A's stale refusal must be re-checked.
        b.handle::<Licence>(&licence_stream(), issue(3), &admin(), &none)
            .await
            .unwrap();
        let done = a
            .handle::<Licence>(&licence_stream(), revoke(), &admin(), &none)
            .await
            .unwrap();
        assert_eq!(done.version, Some(3));
    }

    pub async fn a_repeated_idempotency_key_returns_the_first_result(b: &TestStore) {
        let store = b.open().await;
        let handler = CommandHandler::new(store.clone(), registry());
        let username = Username::parse("ada").unwrap();
        let stream = username.stream().unwrap();
        let create = AccountCommand::Create {
            account_id: Uuid::now_v7(),
            username,
            roles: [Role::User].into(),
            password_hash: PasswordHash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        };
        let keyed = CommandMeta {
            idempotency_key: Some("create-ada-1".into()),
            ..CommandMeta::default()
        };
        let first = handler
            .handle::<Account>(&stream, create.clone(), &admin(), &keyed)
            .await
            .unwrap();
        // The retry of a request whose reply was lost: same key, same answer,
        // even though deciding again would now say "already exists".
        let again = handler
            .handle::<Account>(&stream, create.clone(), &admin(), &keyed)
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(
            (again.events, again.version, again.position),
            (first.events, first.version, first.position)
        );
        // Also from another gateway, which never saw the first request.
        let other = CommandHandler::new(store.clone(), registry());
        assert!(
            other
                .handle::<Account>(&stream, create.clone(), &admin(), &keyed)
                .await
                .unwrap()
                .replayed
        );
        // A new key is a new request.
        let fresh = CommandMeta {
            idempotency_key: Some("create-ada-2".into()),
            ..CommandMeta::default()
        };
        let err = handler
            .handle::<Account>(&stream, create, &admin(), &fresh)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CommandError::Rejected(AccountError::AlreadyExists(_))),
            "{err}"
        );
        assert_eq!(stream_versions(&store, &stream).await, [0]);
    }

    async fn snapshot_of(store: &Arc<dyn EventStore>, stream: &StreamId) -> Snapshot {
        store
            .get_snapshot(stream)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{stream} has no snapshot"))
    }

    fn licence_with(instances: u32) -> LicenceState {
        LicenceState {
            terms: Some(terms(instances)),
        }
    }

    /// A loaded licence, told apart by its `max_instances` (the expiry
    /// differs by when the terms were made).
    fn instances((version, state): (Option<u64>, LicenceState)) -> (Option<u64>, Option<u32>) {
        (version, state.terms.map(|t| t.allows.max_instances))
    }

    pub async fn a_fresh_handler_starts_from_the_snapshot(b: &TestStore) {
        let store = b.open().await;
        let stream = licence_stream();
        let writer = CommandHandler::new(store.clone(), registry()).with_snapshot_every(10);
        for n in 1..=25 {
            writer
                .handle::<Licence>(&stream, issue(n), &admin(), &CommandMeta::default())
                .await
                .unwrap();
        }
        // Saved at versions 9 and 19 (every 10 events): the fold up to there.
        let saved = snapshot_of(&store, &stream).await;
        assert_eq!(
            (saved.kind.as_str(), saved.version),
            (Licence::SNAPSHOT_KIND, 19)
        );
        let state: LicenceState = serde_json::from_str(&saved.data).unwrap();
        assert_eq!(state.terms.unwrap().allows.max_instances, 20);

        // A fresh handler (a restarted gateway) starts from the snapshot and
        // reads only the events after it. To see that it does, the snapshot
        // is swapped for one that no fold of this stream could produce.
        let marked = Snapshot {
            data: serde_json::to_string(&licence_with(1000)).unwrap(),
            version: 24,
            ..saved
        };
        store.put_snapshot(&stream, marked).await.unwrap();
        let fresh = CommandHandler::new(store.clone(), registry()).with_snapshot_every(10);
        let loaded = fresh.load::<Licence>(&stream).await.unwrap();
        assert_eq!(instances(loaded), (Some(24), Some(1000)));
        // And commands go on from there.
        let done = fresh
            .handle::<Licence>(&stream, issue(26), &admin(), &CommandMeta::default())
            .await
            .unwrap();
        assert_eq!(done.version, Some(25));
        assert_eq!(
            stream_versions(&store, &stream).await,
            (0..=25).collect::<Vec<_>>()
        );
    }

    pub async fn a_snapshot_that_does_not_fit_is_passed_over(b: &TestStore) {
        let store = b.open().await;
        let stream = licence_stream();
        let writer = CommandHandler::new(store.clone(), registry());
        for n in 1..=5 {
            writer
                .handle::<Licence>(&stream, issue(n), &admin(), &CommandMeta::default())
                .await
                .unwrap();
        }
        let truth = (Some(4), Some(5));
        let fresh_load = || async {
            instances(
                CommandHandler::new(store.clone(), registry())
                    .load::<Licence>(&stream)
                    .await
                    .unwrap(),
            )
        };
        let wrong_state = serde_json::to_string(&licence_with(1000)).unwrap();
        // Another build's state, and one that does not decode: folded anew.
        for (kind, data) in [
            ("licence/0", wrong_state.as_str()),
            (Licence::SNAPSHOT_KIND, "{not json"),
        ] {
            let snapshot = Snapshot {
                kind: kind.into(),
                version: 3,
                data: data.into(),
            };
            store.put_snapshot(&stream, snapshot).await.unwrap();
            assert_eq!(fresh_load().await, truth, "{kind} {data}");
        }
        // One ahead of the stream (restored from elsewhere): the first append
        // exposes it; the handler folds the stream and replaces it.
        let ahead = Snapshot {
            kind: Licence::SNAPSHOT_KIND.into(),
            version: 40,
            data: wrong_state.clone(),
        };
        store.put_snapshot(&stream, ahead).await.unwrap();
        let fresh = CommandHandler::new(store.clone(), registry());
        let done = fresh
            .handle::<Licence>(&stream, issue(6), &admin(), &CommandMeta::default())
            .await
            .unwrap();
        assert_eq!(done.version, Some(5));
        assert_eq!(snapshot_of(&store, &stream).await.version, 4);
        assert_eq!(fresh_load().await, (Some(5), Some(6)));
    }
}

store::each_backend!(
    a_command_appends_its_events_with_metadata,
    a_refusal_appends_nothing,
    two_gateways_on_one_stream_both_get_their_commands_in,
    a_stale_cached_state_is_corrected_not_trusted,
    a_repeated_idempotency_key_returns_the_first_result,
    a_fresh_handler_starts_from_the_snapshot,
    a_snapshot_that_does_not_fit_is_passed_over,
);

//! The runner socket against a real gateway on loopback, on both stores:
//! runners (the `runner` crate's protocol client, or raw frames for what
//! no well-behaved client sends) authenticate, register, heartbeat, drain,
//! leave, and are refused clearly when they misbehave.

mod support;

use std::time::Duration;

use domain::runner::{Runner, RunnerCommand};
use domain::runner_key::{RunnerKey, RunnerKeyCommand};
use domain::runner_protocol::{ErrorCode, VersionRange};
use futures_util::SinkExt;
use gateway::CommandMeta;
use runner::{ClientError, Connection, Notice};
use serde_json::json;
use store::testing::{TestStore, eventually};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use support::*;

mod cases {
    use super::*;

    pub async fn a_runner_registers_once_and_goes_offline_when_it_disconnects(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let connection = Connection::open(&live.config(runner, &key)).await.unwrap();
        assert_eq!(connection.terms().heartbeat_every, TERMS.heartbeat_every);
        assert_eq!(connection.terms().lease_ttl, TERMS.lease_ttl);
        eventually("the runner online in the view", || async {
            live.standing(runner).await == Some((true, false, None))
        })
        .await;
        // Heartbeats keep it online, and are not events.
        tokio::time::sleep(TERMS.silence() * 2).await;
        assert_eq!(live.runner_events(runner).await, ["RunnerRegistered"]);
        assert_eq!(live.standing(runner).await, Some((true, false, None)));
        // The same runner again (its gateway restarted, say) while online:
        // nothing changed, nothing recorded; the older connection is closed.
        let mut newer = Connection::open(&live.config(runner, &key)).await.unwrap();
        assert_eq!(live.runner_events(runner).await, ["RunnerRegistered"]);
        drop(connection);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(live.runner_events(runner).await, ["RunnerRegistered"]);
        assert_eq!(
            newer.next_notice(Duration::from_millis(100)).await.unwrap(),
            None
        );
        drop(newer);
        eventually("the runner offline in the view", || async {
            live.standing(runner).await == Some((false, false, Some("disconnected".into())))
        })
        .await;
        assert_eq!(
            live.runner_events(runner).await,
            ["RunnerRegistered", "RunnerWentOffline"]
        );
        live.stop().await;
    }

    pub async fn wrong_malformed_and_revoked_keys_are_refused(store: &TestStore) {
        let live = Live::start(store).await;
        let (id, key) = live.key().await;
        let runner = new_runner();
        let stranger = RunnerKey::parse(&"x".repeat(43)).unwrap();
        let (code, message) = refusal(Connection::open(&live.config(runner, &stranger)).await);
        assert_eq!(code, ErrorCode::Unauthenticated);
        assert!(message.contains("unknown or revoked"), "{message}");
        // A malformed key is an authentication failure too, not garbled JSON.
        let mut ws = raw(&live).await;
        send(
            &mut ws,
            json!({"type": "hello", "protocol": {"oldest": 1, "newest": 1}, "runner": runner,
                   "key": "short", "name": "raw", "software": "test"}),
        )
        .await;
        let refused = next(&mut ws).await.unwrap();
        assert_eq!(refused["code"], "UNAUTHENTICATED", "{refused}");
        assert_eq!(refused["fatal"], true);
        assert!(next(&mut ws).await.is_none(), "the connection closes");
        // Revoking the key drops the runner connected with it, and keeps it out.
        let mut connected = Connection::open(&live.config(runner, &key)).await.unwrap();
        live.keys(RunnerKeyCommand::Revoke { key: id }).await;
        match connected.next_notice(Duration::from_secs(2)).await {
            Err(ClientError::Refused(e)) => {
                assert_eq!(e.code, ErrorCode::Unauthenticated);
                assert!(e.message.contains("revoked"), "{}", e.message);
            }
            other => panic!("expected the revoked key's refusal, got {other:?}"),
        }
        let (code, _) = refusal(Connection::open(&live.config(runner, &key)).await);
        assert_eq!(code, ErrorCode::Unauthenticated);
        // Kicked (offline), and the refused hello registered nothing.
        eventually("the kicked runner offline", || async {
            live.runner_events(runner).await == ["RunnerRegistered", "RunnerWentOffline"]
        })
        .await;
        live.stop().await;
    }

    pub async fn versions_that_do_not_meet_are_refused_saying_which_side_to_upgrade(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let mut config = live.config(new_runner(), &key);
        // Only versions newer than this gateway's.
        config.protocol = VersionRange {
            oldest: domain::runner_protocol::PROTOCOL_VERSION + 1,
            newest: domain::runner_protocol::PROTOCOL_VERSION + 2,
        };
        let (code, message) = refusal(Connection::open(&config).await);
        assert_eq!(code, ErrorCode::UnsupportedProtocol);
        assert!(message.contains("upgrade the gateway"), "{message}");
        live.stop().await;
    }

    pub async fn messages_out_of_turn_and_unknown_ones_are_refused(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        // Before hello: fatal.
        let mut ws = raw(&live).await;
        send(&mut ws, json!({"type": "heartbeat", "seq": 1, "busy": 0})).await;
        let refused = next(&mut ws).await.unwrap();
        assert_eq!(refused["code"], "NOT_REGISTERED", "{refused}");
        assert!(next(&mut ws).await.is_none());
        // After registering: an unknown type is refused, the link stays up.
        let runner = new_runner();
        let mut ws = raw_registered(&live, runner, &key).await;
        send(&mut ws, json!({"type": "teleport", "request": 3})).await;
        let refused = next(&mut ws).await.unwrap();
        assert_eq!(refused["code"], "BAD_MESSAGE", "{refused}");
        assert_eq!(refused["fatal"], false);
        assert_eq!(refused["request"], 3);
        ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(next(&mut ws).await.unwrap()["code"], "BAD_MESSAGE");
        send(&mut ws, json!({"type": "heartbeat", "seq": 7, "busy": 1})).await;
        // A report on a job that does not exist changes nothing.
        let batch = Uuid::now_v7();
        send(
            &mut ws,
            json!({"type": "report", "batch": batch, "job": Uuid::now_v7(),
                   "reports": [{"kind": "started", "flow": 0}]}),
        )
        .await;
        let refused = next(&mut ws).await.unwrap();
        assert_eq!(refused["code"], "JOB_NOT_RUNNING", "{refused}");
        assert_eq!(refused["batch"], batch.to_string());
        assert_eq!(live.runner_events(runner).await, ["RunnerRegistered"]);
        live.stop().await;
    }

    pub async fn an_oversized_frame_and_a_flood_are_refused_and_the_connection_closed(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let mut ws = raw_registered(&live, runner, &key).await;
        let huge = "x".repeat(domain::runner_protocol::MAX_FRAME_BYTES + 1);
        send(&mut ws, json!({"type": "drain", "padding": huge})).await;
        let refused = next(&mut ws).await.unwrap();
        assert_eq!(refused["code"], "FRAME_TOO_LARGE", "{refused}");
        assert_eq!(refused["fatal"], true);
        assert!(next(&mut ws).await.is_none());
        eventually("the runner offline after its oversized frame", || async {
            live.standing(runner)
                .await
                .is_some_and(|(online, ..)| !online)
        })
        .await;
        // A flood: far more than 50 messages a second.
        let runner = new_runner();
        let mut ws = raw_registered(&live, runner, &key).await;
        for seq in 0..400 {
            let beat = json!({"type": "heartbeat", "seq": seq, "busy": 0});
            if ws.send(Message::text(beat.to_string())).await.is_err() {
                break;
            }
        }
        let refused = loop {
            let m = next(&mut ws).await.expect("a refusal before the close");
            if m["type"] == "error" {
                break m;
            }
        };
        assert_eq!(refused["code"], "RATE_LIMITED", "{refused}");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("50 messages a second"),
            "{refused}"
        );
        assert!(next(&mut ws).await.is_none());
        live.stop().await;
    }

    pub async fn a_silent_runner_goes_offline(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        // Registered by hand, and then never a heartbeat.
        let mut ws = raw_registered(&live, runner, &key).await;
        assert!(next(&mut ws).await.is_none(), "closed for its silence");
        eventually("the silent runner offline", || async {
            live.standing(runner).await == Some((false, false, Some("silent".into())))
        })
        .await;
        live.stop().await;
    }

    pub async fn a_runner_whose_gateway_died_goes_offline_through_another_but_one_that_moved_does_not(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let doomed = Doomed::start(store).await;
        let (stranded, moved) = (new_runner(), new_runner());
        let on_doomed = |runner| {
            let mut config = live.config(runner, &key);
            config.url = doomed.url.clone();
            config
        };
        let stranded_link = Connection::open(&on_doomed(stranded)).await.unwrap();
        let first_link = Connection::open(&on_doomed(moved)).await.unwrap();
        for runner in [stranded, moved] {
            eventually("the runners online", || async {
                live.standing(runner).await == Some((true, false, None))
            })
            .await;
        }
        // Heard on the doomed gateway: the other's sweep leaves them be.
        tokio::time::sleep(TERMS.silence() * 3).await;
        for runner in [stranded, moved] {
            assert_eq!(live.runner_events(runner).await, ["RunnerRegistered"]);
        }

        let killed = std::time::Instant::now();
        doomed.kill();
        // One runner comes back through the other gateway; one never does.
        let back = Connection::open(&live.config(moved, &key)).await.unwrap();
        eventually("the stranded runner recorded offline", || async {
            live.runner_events(stranded).await == ["RunnerRegistered", "RunnerWentOffline"]
        })
        .await;
        let took = killed.elapsed();
        // Silent for the limit, then found by the next sweep (every
        // heartbeat period), with time to append on a busy machine.
        let limit = TERMS.silence() + TERMS.heartbeat_every + Duration::from_secs(1);
        assert!(
            took <= limit,
            "offline after {took:?}; the limit is {limit:?}"
        );
        eventually("the stranded runner offline in the view", || async {
            live.standing(stranded).await == Some((false, false, Some("silent".into())))
        })
        .await;
        tokio::time::sleep(TERMS.silence() * 3).await;
        assert_eq!(
            live.runner_events(moved).await,
            ["RunnerRegistered"],
            "the runner that moved was never taken for gone"
        );
        assert_eq!(live.standing(moved).await, Some((true, false, None)));
        drop((stranded_link, first_link, back));
        live.stop().await;
    }

    pub async fn a_runner_taken_for_gone_while_connected_comes_back_online_still_draining(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let mut connection = Connection::open(&live.config(runner, &key)).await.unwrap();
        connection.drain().await.unwrap();
        eventually("the runner draining", || async {
            live.standing(runner).await == Some((true, true, None))
        })
        .await;
        // Another gateway's sweep, in the instant nobody had heard from it.
        live.handler
            .handle::<Runner>(
                &runner.stream().unwrap(),
                RunnerCommand::GoOffline {
                    reason: domain::runner::OfflineReason::Silent,
                },
                &system(),
                &CommandMeta::default(),
            )
            .await
            .unwrap();
        // Its next heartbeat here puts it back: online, and still draining.
        eventually("the runner back online, draining", || async {
            live.runner_events(runner).await
                == [
                    "RunnerRegistered",
                    "DrainRequested",
                    "RunnerWentOffline",
                    "RunnerRegistered",
                    "DrainRequested",
                ]
        })
        .await;
        eventually("the view showing it draining", || async {
            live.standing(runner).await == Some((true, true, None))
        })
        .await;
        match connection.lease(1, 10).await.unwrap() {
            runner::Leased::Refused(e) => assert_eq!(e.code, ErrorCode::Draining),
            other => panic!("a draining runner got {other:?}"),
        }
        live.stop().await;
    }

    pub async fn a_drain_reaches_the_runner_and_stops_its_leases(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let mut connection = Connection::open(&live.config(runner, &key)).await.unwrap();
        live.handler
            .handle::<Runner>(
                &runner.stream().unwrap(),
                RunnerCommand::RequestDrain,
                &admin(),
                &CommandMeta::default(),
            )
            .await
            .unwrap();
        let notice = connection
            .next_notice(Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(notice, Some(Notice::Drain { by: "root".into() }));
        assert!(connection.draining());
        match connection.lease(1, 10).await.unwrap() {
            runner::Leased::Refused(e) => assert_eq!(e.code, ErrorCode::Draining),
            other => panic!("a draining runner got {other:?}"),
        }
        drop(connection);
        let other = new_runner();
        let mut own = Connection::open(&live.config(other, &key)).await.unwrap();
        own.drain().await.unwrap();
        eventually("the runner's own drain in the view", || async {
            live.standing(other).await == Some((true, true, None))
        })
        .await;
        own.deregister(Some("decommissioned".into())).await.unwrap();
        eventually("the runner's deregistration", || async {
            live.runner_events(other).await
                == ["RunnerRegistered", "DrainRequested", "RunnerDeregistered"]
        })
        .await;
        live.stop().await;
    }
}

store::each_backend!(
    a_runner_registers_once_and_goes_offline_when_it_disconnects,
    wrong_malformed_and_revoked_keys_are_refused,
    versions_that_do_not_meet_are_refused_saying_which_side_to_upgrade,
    messages_out_of_turn_and_unknown_ones_are_refused,
    an_oversized_frame_and_a_flood_are_refused_and_the_connection_closed,
    a_silent_runner_goes_offline,
    a_runner_whose_gateway_died_goes_offline_through_another_but_one_that_moved_does_not,
    a_runner_taken_for_gone_while_connected_comes_back_online_still_draining,
    a_drain_reaches_the_runner_and_stops_its_leases
);

//! The GraphQL WebSocket's bounds, on a real gateway: message size,
//! operations per connection, connections per session.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway::ws_limits::{
    MAX_CONNECTIONS_PER_SESSION, MAX_MESSAGE_BYTES, MAX_SUBSCRIPTIONS_PER_CONNECTION,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::graphql::{SESSION_EVENTS, Ws, ws_connect, ws_next};
use crate::helpers::{PASSWORD, spawn_app};

const PROTOCOL: &str = "graphql-transport-ws";

/// Opens a socket and sends `connection_init`: the socket and the reply.
async fn ws_init(addr: &str, token: &str) -> (Ws, Value) {
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", PROTOCOL.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    ws.send(Message::text(init.to_string())).await.unwrap();
    let reply = ws_next(&mut ws).await;
    (ws, reply)
}

/// The close frame the server sends next (skipping other messages): (code, reason).
async fn close_frame(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("a close frame before the end")
            .expect("a readable message");
        if let Message::Close(frame) = msg {
            let frame = frame.expect("a close frame with a code and reason");
            return (frame.code, frame.reason.to_string());
        }
    }
}

async fn subscribe(ws: &mut Ws, id: &str, query: &str) {
    let msg = json!({ "id": id, "type": "subscribe", "payload": { "query": query } });
    ws.send(Message::text(msg.to_string())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_and_the_connection_closed_saying_why() {
    let app = spawn_app().await;
    app.with_accounts().await;
    let token = app.token("ada", PASSWORD).await;
    let mut ws = ws_connect(&app.addr, PROTOCOL, &token).await;

    let query = format!("{{ me {{ username }} }} #{}", "x".repeat(MAX_MESSAGE_BYTES));
    let msg = json!({ "id": "1", "type": "subscribe", "payload": { "query": query } });
    assert!(msg.to_string().len() > MAX_MESSAGE_BYTES);
    ws.send(Message::text(msg.to_string())).await.unwrap();
    let (code, reason) = close_frame(&mut ws).await;
    assert_eq!(code, CloseCode::Size, "{reason}");
    assert!(
        reason.contains(&format!("at most {MAX_MESSAGE_BYTES} bytes")),
        "{reason}"
    );

    // Just under the limit is fine.
    let mut ws = ws_connect(&app.addr, PROTOCOL, &token).await;
    let query = "{ me { username } }";
    let padding = MAX_MESSAGE_BYTES - 200;
    let msg = json!({ "id": "2", "type": "subscribe", "payload": { "query": format!("{query} #{}", "x".repeat(padding)) } });
    assert!(msg.to_string().len() < MAX_MESSAGE_BYTES);
    ws.send(Message::text(msg.to_string())).await.unwrap();
    let next = ws_next(&mut ws).await;
    assert_eq!(next["payload"]["data"]["me"]["username"], "ada", "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_past_the_cap_is_refused_until_another_completes() {
    let app = spawn_app().await;
    app.with_accounts().await;
    let token = app.token("ada", PASSWORD).await;
    let mut ws = ws_connect(&app.addr, PROTOCOL, &token).await;
    for i in 0..MAX_SUBSCRIPTIONS_PER_CONNECTION {
        subscribe(&mut ws, &format!("s{i}"), SESSION_EVENTS).await;
    }

    subscribe(&mut ws, "over", SESSION_EVENTS).await;
    let refused = ws_next(&mut ws).await;
    assert_eq!(refused["id"], "over", "{refused}");
    let error = &refused["payload"]["errors"][0];
    assert_eq!(error["extensions"]["code"], "RATE_LIMITED", "{refused}");
    assert!(
        error["message"].as_str().unwrap().contains(&format!(
            "already runs {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions"
        )),
        "{refused}"
    );
    let done = ws_next(&mut ws).await;
    assert_eq!(
        (done["type"].as_str(), done["id"].as_str()),
        (Some("complete"), Some("over"))
    );

    // The client completes one: a query now runs in its place...
    let complete = json!({ "id": "s0", "type": "complete" });
    ws.send(Message::text(complete.to_string())).await.unwrap();
    let done = ws_next(&mut ws).await;
    assert_eq!(
        (done["type"].as_str(), done["id"].as_str()),
        (Some("complete"), Some("s0"))
    );
    subscribe(&mut ws, "q", "{ me { username } }").await;
    let answer = ws_next(&mut ws).await;
    assert_eq!(
        answer["payload"]["data"]["me"]["username"], "ada",
        "{answer}"
    );
    assert_eq!(ws_next(&mut ws).await["type"], "complete");
    // ...and, once it finished, a subscription takes the place, and the next is refused again.
    subscribe(&mut ws, "again", SESSION_EVENTS).await;
    subscribe(&mut ws, "over2", SESSION_EVENTS).await;
    let refused = ws_next(&mut ws).await;
    assert_eq!(refused["id"], "over2", "{refused}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"],
        "RATE_LIMITED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_past_the_sessions_cap_is_refused_until_another_closes() {
    let app = spawn_app().await;
    app.with_accounts().await;
    let token = app.token("ada", PASSWORD).await;
    let mut open = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_SESSION {
        open.push(ws_connect(&app.addr, PROTOCOL, &token).await);
    }

    let (mut refused, reply) = ws_init(&app.addr, &token).await;
    assert_eq!(reply["type"], "closed", "{reply}");
    let _ = refused.close(None).await;
    let reply = reply["frame"].as_str().unwrap();
    assert!(
        reply.contains(&format!(
            "this session already has {MAX_CONNECTIONS_PER_SESSION} WebSocket connections open"
        )),
        "{reply}"
    );

    // Another session is not affected.
    let other = app.token("audrey", PASSWORD).await;
    let (_, reply) = ws_init(&app.addr, &other).await;
    assert_eq!(reply["type"], "connection_ack", "{reply}");

    // Closing one frees a place.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_ws, reply) = ws_init(&app.addr, &token).await;
        if reply["type"] == "connection_ack" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no place after closing a connection: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! The GraphQL gateway end to end: a real `trafficbuster serve`, real HTTP,
//! real WebSockets in both subscription protocols.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{PASSWORD, TestApp, TestStore, code, create_user, http_get, spawn_app};

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn ws_connect(addr: &str, protocol: &str, token: &str) -> Ws {
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    ws.send(Message::text(init.to_string())).await.unwrap();
    let ack = ws_next(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws
}

pub(crate) async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a WebSocket message within 10 s")
            .expect("the socket is open")
            .unwrap();
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "ka" || v["type"] == "ping" || v["type"] == "pong" {
                    continue;
                }
                return v;
            }
            Message::Close(frame) => {
                return json!({ "type": "closed", "frame": format!("{frame:?}") });
            }
            _ => continue,
        }
    }
}

pub(crate) const SESSION_EVENTS: &str =
    "subscription { sessionEvents { __typename ... on SessionEnded { reason } } }";

/// A second login ends the first session; the first client's subscription
/// hears `sessionEnded` and completes; the first token stops working.
async fn a_second_login_ends_the_first_clients_subscription(app: &TestApp, protocol: &str) {
    let first = app.token("ada", PASSWORD).await;
    let mut ws = ws_connect(&app.addr, protocol, &first).await;
    let (start, data) = if protocol == "graphql-transport-ws" {
        ("subscribe", "next")
    } else {
        ("start", "data")
    };
    ws.send(Message::text(
        json!({ "id": "1", "type": start, "payload": { "query": SESSION_EVENTS } }).to_string(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = app.token("ada", PASSWORD).await;

    let next = ws_next(&mut ws).await;
    assert_eq!(next["type"], data, "{next}");
    let event = &next["payload"]["data"]["sessionEvents"];
    assert_eq!(event["__typename"], "SessionEnded", "{next}");
    assert_eq!(event["reason"], "superseded by a newer login", "{next}");
    let done = ws_next(&mut ws).await;
    assert_eq!(
        (done["type"].as_str(), done["id"].as_str()),
        (Some("complete"), Some("1")),
        "{done}"
    );

    let me = "{ me { username roles } }";
    let old = app.gql(me, json!({}), Some(&first)).await;
    assert_eq!(code(&old), "UNAUTHENTICATED", "{old}");
    let new = app.gql(me, json!({}), Some(&second)).await;
    assert_eq!(
        new["data"]["me"],
        json!({ "username": "ada", "roles": ["USER"] }),
        "{new}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersession_closes_subscriptions_in_both_protocols_on_sqlite() {
    let app = spawn_app().await;
    app.with_accounts().await;
    a_second_login_ends_the_first_clients_subscription(&app, "graphql-transport-ws").await;
    a_second_login_ends_the_first_clients_subscription(&app, "graphql-ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersession_closes_subscriptions_in_both_protocols_on_postgres() {
    let Some(store) = TestStore::postgres("supersession_on_postgres").await else {
        return;
    };
    let mut app = spawn_app().store(store).await;
    app.with_accounts().await;
    a_second_login_ends_the_first_clients_subscription(&app, "graphql-transport-ws").await;
    a_second_login_ends_the_first_clients_subscription(&app, "graphql-ws").await;
    app.terminate().await;
    app.store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_tokens_and_features_follow_the_licence() {
    let app = spawn_app().await;
    let root = app.with_accounts().await;
    let login = app.login("ada", PASSWORD).await;
    let refresh_token = login["data"]["login"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let refresh =
        "mutation($t: String!) { refresh(refreshToken: $t) { accessToken refreshToken } }";
    let renewed = app.gql(refresh, json!({ "t": refresh_token }), None).await;
    let token = renewed["data"]["refresh"]["accessToken"]
        .as_str()
        .expect("renewed")
        .to_owned();
    let reused = app.gql(refresh, json!({ "t": refresh_token }), None).await;
    assert_eq!(code(&reused), "UNAUTHENTICATED", "{reused}");

    let features = "{ features { licensed scheduler maxTargets } }";
    let none = app.gql(features, json!({}), Some(&token)).await;
    assert_eq!(
        none["data"]["features"],
        json!({ "licensed": false, "scheduler": false, "maxTargets": 0 })
    );
    let issue = "mutation($u: String!, $l: LicenceInput!) { issueLicence(username: $u, licence: $l) { licensed } }";
    let licence = json!({ "maxInstances": 2, "humanSurfing": true, "importProxy": false, "scheduler": true,
        "externalClicks": false, "maxTargets": 3, "maxFlowsPerDay": 100, "expiresAt": "2099-01-01T00:00:00Z" });
    let refused = app
        .gql(issue, json!({ "u": "ada", "l": licence }), Some(&token))
        .await;
    assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
    let issued = app
        .gql(issue, json!({ "u": "ada", "l": licence }), Some(&root))
        .await;
    assert_eq!(issued["data"]["issueLicence"]["licensed"], true, "{issued}");
    let some = app.gql(features, json!({}), Some(&token)).await;
    assert_eq!(
        some["data"]["features"],
        json!({ "licensed": true, "scheduler": true, "maxTargets": 3 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rate_limits_trip_with_a_retry_after() {
    let app = spawn_app().await;
    app.with_accounts().await;
    for _ in 0..5 {
        let r = app.login("ada", "not the password at all").await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
        assert_eq!(r["errors"][0]["message"], "wrong username or password");
    }
    let r = app.login("ada", PASSWORD).await;
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    assert!(
        r["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap() >= 1,
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_pages_the_audit_log_and_others_are_refused() {
    let app = spawn_app().await;
    app.with_accounts().await;
    let user = app.token("ada", PASSWORD).await;
    let auditor = app.token("audrey", PASSWORD).await;
    let page = "query($after: String) { auditLog(first: 2, after: $after) { entries { position actor eventType summary } nextCursor } }";
    let refused = app.gql(page, json!({}), Some(&user)).await;
    assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
    let anonymous = app.gql(page, json!({}), None).await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED", "{anonymous}");

    // Views follow the log; wait for the last login to show.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut entries = Vec::new();
    loop {
        entries.clear();
        let mut after = Value::Null;
        loop {
            let r = app
                .gql(page, json!({ "after": after }), Some(&auditor))
                .await;
            let log = &r["data"]["auditLog"];
            let got = log["entries"].as_array().unwrap_or_else(|| panic!("{r}"));
            assert!(got.len() <= 2);
            entries.extend(got.iter().cloned());
            after = log["nextCursor"].clone();
            if after.is_null() {
                break;
            }
        }
        if entries.iter().any(|e| {
            e["summary"]
                .as_str()
                .unwrap_or("")
                .starts_with("audrey logged in")
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit log never showed the last login: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Newest first, no entry twice, every account creation there.
    let positions: Vec<&str> = entries
        .iter()
        .map(|e| e["position"].as_str().unwrap())
        .collect();
    let mut unique = positions.clone();
    unique.dedup();
    assert_eq!(unique.len(), positions.len());
    for name in ["root", "ada", "audrey"] {
        assert!(entries.iter().any(|e| {
            e["summary"]
                .as_str()
                .unwrap()
                .starts_with(&format!("account {name} created"))
        }));
    }
    let by_root = "query { auditLog(first: 50, actor: \"root\", eventType: \"AccountCreated\") { entries { summary } } }";
    let r = app.gql(by_root, json!({}), Some(&auditor)).await;
    assert_eq!(
        r["data"]["auditLog"]["entries"].as_array().unwrap().len(),
        2,
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_server_stays_up() {
    let app = spawn_app().await;
    app.with_accounts().await;
    let token = app.token("ada", PASSWORD).await;

    let (status, body) = app.post("{\"query\": \"{ me { username } ", None).await;
    assert_eq!(status, 400, "malformed JSON: {body}");

    let r = app
        .gql(
            "{ me { username favouriteColour } }",
            json!({}),
            Some(&token),
        )
        .await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("favouriteColour"),
        "{r}"
    );

    let r = app.gql("{ me { username }", json!({}), Some(&token)).await;
    assert_eq!(code(&r), "VALIDATION", "syntax: {r}");

    let huge = json!({ "query": format!("{{ me {{ username }} }} #{}", "x".repeat(300 * 1024)) })
        .to_string();
    let (status, _) = app.post(&huge, Some(&token)).await;
    assert_eq!(status, 413, "oversize body");

    let r = app
        .gql("{ me { username } }", json!({}), Some("not.a.token"))
        .await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not valid"),
        "{r}"
    );

    let deep = format!(
        "{{ __schema {{ types {{ {} name {} }} }} }}",
        "fields { type { ofType { ".repeat(4),
        "} } } ".repeat(4)
    );
    let r = app.gql(&deep, json!({}), Some(&token)).await;
    assert_eq!(code(&r), "VALIDATION", "deep query: {r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{r}"
    );

    // Shallow but wide: 1,100 aliased fields exceed the complexity limit.
    let wide: String = (0..1100)
        .map(|i| format!("a{i}: me {{ username }} "))
        .collect();
    let r = app
        .gql(&format!("{{ {wide} }}"), json!({}), Some(&token))
        .await;
    assert_eq!(code(&r), "VALIDATION", "wide query: {r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("complex"),
        "{r}"
    );

    let r = app
        .gql(
            "mutation { createAccount(username: \"x y\", password: \"p\", roles: [USER]) }",
            json!({}),
            Some(&token),
        )
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "a user creating accounts: {r}");

    assert_eq!(http_get(&app.addr, "/healthz").await.0, 200);
    let r = app
        .gql("{ me { username } }", json!({}), Some(&token))
        .await;
    assert_eq!(r["data"]["me"]["username"], "ada", "{r}");
}

/// What GraphiQL, GraphQL Codegen, Apollo, Postman and Insomnia send first:
/// graphql-js 16's `getIntrospectionQuery()` with its default options.
const STANDARD_INTROSPECTION: &str = include_str!("fixtures/introspection_query.graphql");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_introspection_query_loads_the_schema() {
    let app = spawn_app().await;
    let r = app.gql(STANDARD_INTROSPECTION, json!({}), None).await;
    assert!(r.get("errors").is_none(), "{r}");
    let schema = &r["data"]["__schema"];
    assert_eq!(schema["queryType"]["name"], "Query", "{r}");
    assert_eq!(schema["subscriptionType"]["name"], "Subscription", "{r}");
    let types = schema["types"].as_array().expect("types");
    assert!(types.iter().any(|t| t["name"] == "SessionEnded"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_keeps_sessions_views_and_the_audit_log() {
    let app = spawn_app().await;
    app.with_accounts().await;
    let token = app.token("ada", PASSWORD).await;
    let auditor = app.token("audrey", PASSWORD).await;
    let TestApp {
        mut process, store, ..
    } = app;
    process.kill().await; // no graceful shutdown

    let app = spawn_app().store(store).await;
    let r = app
        .gql("{ me { username } }", json!({}), Some(&token))
        .await;
    assert_eq!(
        r["data"]["me"]["username"], "ada",
        "sessions survive a restart: {r}"
    );
    let r = app
        .gql(
            "{ auditLog(first: 500) { entries { eventType } } }",
            json!({}),
            Some(&auditor),
        )
        .await;
    let entries = r["data"]["auditLog"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"));
    let events = app.store.events().await.len();
    assert_eq!(entries.len(), events, "the audit log holds every event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_events_and_view_progress() {
    let app = spawn_app().await;
    app.with_accounts().await;
    let token = app.token("ada", PASSWORD).await;
    app.gql("{ me { username } }", json!({}), Some(&token))
        .await;
    app.gql("{ me { nope } }", json!({}), Some(&token)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = http_get(&app.addr, "/metrics").await;
        assert_eq!(status, 200);
        if body.contains("tb_projection_live{view=\"sessions\"} 1")
            || tokio::time::Instant::now() > deadline
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for expected in [
        "tb_http_requests_total{method=\"POST\",route=\"/graphql\",status=\"200\"}",
        "tb_http_request_duration_seconds_bucket{method=\"POST\",route=\"/graphql\"",
        "tb_graphql_requests_total{operation=\"mutation\",outcome=\"ok\"}",
        "tb_graphql_requests_total{operation=\"query\",outcome=\"error\"} 1",
        "tb_graphql_request_duration_seconds_count{operation=\"query\"} 2",
        "tb_events_appended_total{event_type=\"SessionStarted\"}",
        "tb_events_appended_total{event_type=\"AccountCreated\"} 2",
        "tb_projection_live{view=\"sessions\"} 1",
        "tb_projection_lag_seconds{view=\"audit\"}",
    ] {
        assert!(body.contains(expected), "missing {expected} in:\n{body}");
    }
}

/// The `accounts` view serves the admins' `accounts` query; the `metrics`
/// and `event_counts` views serve /metrics with totals of the whole log.
async fn views_serve_the_account_list_and_the_log_totals(app: &TestApp) {
    let root = app.with_accounts().await;
    let wrong = app.login("ada", "not the password of ada").await;
    assert_eq!(code(&wrong), "UNAUTHENTICATED", "{wrong}");
    let ada = app.token("ada", PASSWORD).await;

    let list = "query($after: String) { accounts(first: 2, after: $after) { username roles disabled failedLogins createdBy lastLoginAt } }";
    let r = app.gql(list, json!({}), Some(&ada)).await;
    assert_eq!(code(&r), "FORBIDDEN", "a user listing accounts: {r}");
    // Views follow the log asynchronously.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first_page = loop {
        let r = app.gql(list, json!({}), Some(&root)).await;
        let page = r["data"]["accounts"].clone();
        if page[0]["failedLogins"] == 1 && !page[0]["lastLoginAt"].is_null()
            || tokio::time::Instant::now() > deadline
        {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first_page[0]["username"], "ada", "{first_page}");
    assert_eq!(first_page[0]["roles"], json!(["USER"]), "{first_page}");
    assert_eq!(first_page[0]["failedLogins"], 1, "{first_page}");
    assert_eq!(first_page[0]["createdBy"], "root", "{first_page}");
    assert_eq!(first_page[1]["username"], "audrey", "{first_page}");
    assert!(first_page[1]["lastLoginAt"].is_null(), "{first_page}");
    let r = app
        .gql(list, json!({ "after": "audrey" }), Some(&root))
        .await;
    let last = &r["data"]["accounts"];
    assert_eq!(last.as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(last[0]["username"], "root", "{r}");
    assert_eq!(last[0]["roles"], json!(["SUPER_ADMIN"]), "{r}");
    assert!(!r["data"]["accounts"][0]["lastLoginAt"].is_null(), "{r}");

    let expected = [
        "tb_logins_recorded 2",
        "tb_failed_logins_recorded 1",
        "tb_active_sessions 2",
        "tb_events_recorded{event_type=\"AccountCreated\"} 3",
        "tb_events_recorded{event_type=\"SessionStarted\"} 2",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = http_get(&app.addr, "/metrics").await;
        assert_eq!(status, 200);
        if expected.iter().all(|e| body.contains(e)) || tokio::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for e in expected {
        assert!(body.contains(e), "missing {e} in:\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_serve_the_account_list_and_the_log_totals_on_sqlite() {
    let app = spawn_app().await;
    views_serve_the_account_list_and_the_log_totals(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_serve_the_account_list_and_the_log_totals_on_postgres() {
    let Some(store) = TestStore::postgres("views_serve_on_postgres").await else {
        return;
    };
    let mut app = spawn_app().store(store).await;
    views_serve_the_account_list_and_the_log_totals(&app).await;
    app.terminate().await;
    app.store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_inside_the_grace_period_keeps_the_session_and_after_it_does_not() {
    let store = TestStore::sqlite();
    // The account comes from the CLI: no admin token that could expire meanwhile.
    create_user(&store.url, "ada", "user", PASSWORD).await;
    // Tokens live 2 s; a refresh keeps the session up to 3 s after that.
    let app = spawn_app()
        .store(store)
        .flags(&["--access-token-ttl", "2", "--refresh-grace", "3"])
        .await;

    let refresh =
        "mutation($t: String!) { refresh(refreshToken: $t) { accessToken refreshToken } }";
    let login = app.login("ada", PASSWORD).await;
    let access = login["data"]["login"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = login["data"]["login"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let expired = app
        .gql("{ me { username } }", json!({}), Some(&access))
        .await;
    assert_eq!(code(&expired), "UNAUTHENTICATED", "{expired}");
    assert!(
        expired["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{expired}"
    );
    // Inside the grace period: the session goes on.
    let renewed = app.gql(refresh, json!({ "t": token }), None).await;
    let access = renewed["data"]["refresh"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{renewed}"))
        .to_owned();
    let token = renewed["data"]["refresh"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let me = app
        .gql("{ me { username } }", json!({}), Some(&access))
        .await;
    assert_eq!(me["data"]["me"]["username"], "ada", "{me}");
    // Past access expiry (2 s, rounded up to a whole second) plus grace (3 s): log in again.
    tokio::time::sleep(Duration::from_millis(6200)).await;
    let late = app.gql(refresh, json!({ "t": token }), None).await;
    assert_eq!(code(&late), "UNAUTHENTICATED", "{late}");
    assert!(
        late["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("log in again"),
        "{late}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_with_a_dot_refreshes_over_graphql() {
    let store = TestStore::sqlite();
    create_user(&store.url, "ada.l", "user", PASSWORD).await;
    let app = spawn_app().store(store).await;
    let login = app.login("ada.l", PASSWORD).await;
    let token = login["data"]["login"]["refreshToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"))
        .to_owned();
    let refresh = "mutation($t: String!) { refresh(refreshToken: $t) { accessToken } }";
    let renewed = app.gql(refresh, json!({ "t": token }), None).await;
    let access = renewed["data"]["refresh"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{renewed}"));
    let me = app
        .gql("{ me { username } }", json!({}), Some(access))
        .await;
    assert_eq!(me["data"]["me"]["username"], "ada.l", "{me}");
}

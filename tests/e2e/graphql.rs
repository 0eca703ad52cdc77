//! The GraphQL gateway end to end: a real `trafficbuster serve`, real HTTP,
//! real WebSockets in both subscription protocols.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Running, TestStore, create_user, http_get, listening_addr, serve_command};

pub const ROOT_PASSWORD: &str = "root password for the tests";
pub const PASSWORD: &str = "a perfectly fine password";
pub const SECRET: &str = "an-e2e-test-secret-of-at-least-32-chars";

/// A running gateway and the store it serves; requests go through its [`Client`].
pub struct App {
    pub client: Client,
    pub server: Running,
    pub store: TestStore,
}

impl std::ops::Deref for App {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Speaks GraphQL over HTTP to a gateway at `addr`.
pub struct Client {
    pub addr: String,
}

impl App {
    pub async fn spawn(store: TestStore) -> App {
        App::spawn_with(store, &[]).await
    }

    /// Spawns with extra `serve` flags.
    pub async fn spawn_with(store: TestStore, extra: &[&str]) -> App {
        let command = serve_command(&store.url, Some(SECRET), extra);
        App::spawn_command(store, command).await
    }

    /// Spawns `command`, a `serve` of `store` made by [`serve_command`].
    pub async fn spawn_command(store: TestStore, command: tokio::process::Command) -> App {
        let mut server = Running::spawn(command);
        let line = server
            .stderr_line_containing("gateway listening on", Duration::from_secs(30))
            .await;
        let app = App {
            client: Client {
                addr: listening_addr(&line),
            },
            server,
            store,
        };
        app.wait_ready().await;
        app
    }

    /// Creates the super-admin `root` with the CLI and `ada` (a user) through GraphQL.
    pub async fn with_accounts(&self) -> String {
        create_user(&self.store.url, "root", "super_admin", ROOT_PASSWORD).await;
        let root = self.token("root", ROOT_PASSWORD).await;
        for (name, role) in [("ada", "USER"), ("audrey", "AUDITOR")] {
            let r = self
                .gql(
                    "mutation($u: String!, $p: String!, $r: [RoleName!]!) { createAccount(username: $u, password: $p, roles: $r) }",
                    json!({ "u": name, "p": PASSWORD, "r": [role] }),
                    Some(&root),
                )
                .await;
            assert_eq!(r["data"]["createAccount"], name, "{r}");
        }
        root
    }
}

impl Client {
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while http_get(&self.addr, "/readyz").await.0 != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway never became ready"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// A GraphQL request over HTTP: (status, response JSON).
    pub async fn post(&self, body: &str, token: Option<&str>) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        self.post_from(None, &headers, body).await
    }

    /// A GraphQL request over HTTP with extra headers, sent from the
    /// loopback address `from` if given (all of 127/8 is loopback on Linux).
    pub async fn post_from(
        &self,
        from: Option<std::net::Ipv4Addr>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let request = format!(
            "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(ip) = from {
            socket.bind((ip, 0).into()).unwrap();
        }
        let mut stream = socket.connect(self.addr.parse().unwrap()).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    pub async fn gql(&self, query: &str, variables: Value, token: Option<&str>) -> Value {
        let body = json!({ "query": query, "variables": variables }).to_string();
        let (status, value) = self.post(&body, token).await;
        assert_eq!(status, 200, "{value}");
        value
    }

    pub async fn login(&self, username: &str, password: &str) -> Value {
        self.gql(
            "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { accessToken refreshToken sessionId } }",
            json!({ "u": username, "p": password }),
            None,
        )
        .await
    }

    pub async fn token(&self, username: &str, password: &str) -> String {
        let r = self.login(username, password).await;
        r["data"]["login"]["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("login failed: {r}"))
            .to_owned()
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {response}"))
}

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
async fn a_second_login_ends_the_first_clients_subscription(app: &App, protocol: &str) {
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
    let app = App::spawn(TestStore::sqlite()).await;
    app.with_accounts().await;
    a_second_login_ends_the_first_clients_subscription(&app, "graphql-transport-ws").await;
    a_second_login_ends_the_first_clients_subscription(&app, "graphql-ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersession_closes_subscriptions_in_both_protocols_on_postgres() {
    let Some(store) = TestStore::postgres("supersession_on_postgres").await else {
        return;
    };
    let app = App::spawn(store).await;
    app.with_accounts().await;
    a_second_login_ends_the_first_clients_subscription(&app, "graphql-transport-ws").await;
    a_second_login_ends_the_first_clients_subscription(&app, "graphql-ws").await;
    app.server.terminate().await;
    app.store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_tokens_and_features_follow_the_licence() {
    let app = App::spawn(TestStore::sqlite()).await;
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
    let app = App::spawn(TestStore::sqlite()).await;
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
    let app = App::spawn(TestStore::sqlite()).await;
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
    let app = App::spawn(TestStore::sqlite()).await;
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
    let app = App::spawn(TestStore::sqlite()).await;
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
    let app = App::spawn(TestStore::sqlite()).await;
    app.with_accounts().await;
    let token = app.token("ada", PASSWORD).await;
    let auditor = app.token("audrey", PASSWORD).await;
    let App {
        mut server, store, ..
    } = app;
    server.child.kill().await.unwrap(); // no graceful shutdown

    let app = App::spawn(store).await;
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
    let app = App::spawn(TestStore::sqlite()).await;
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
async fn views_serve_the_account_list_and_the_log_totals(app: &App) {
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
    let app = App::spawn(TestStore::sqlite()).await;
    views_serve_the_account_list_and_the_log_totals(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_serve_the_account_list_and_the_log_totals_on_postgres() {
    let Some(store) = TestStore::postgres("views_serve_on_postgres").await else {
        return;
    };
    let app = App::spawn(store).await;
    views_serve_the_account_list_and_the_log_totals(&app).await;
    app.server.terminate().await;
    app.store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_inside_the_grace_period_keeps_the_session_and_after_it_does_not() {
    let store = TestStore::sqlite();
    // The account comes from the CLI: no admin token that could expire meanwhile.
    create_user(&store.url, "ada", "user", PASSWORD).await;
    // Tokens live 2 s; a refresh keeps the session up to 3 s after that.
    let app = App::spawn_with(store, &["--access-token-ttl", "2", "--refresh-grace", "3"]).await;

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
    let app = App::spawn(store).await;
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

//! The one way tests start the gateway: [`spawn_app`] runs the real binary's
//! `serve` on a free loopback port with a fresh store, waits until it is
//! ready, and hands back a [`TestApp`] to talk to it.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestStore, bin, create_user, http_get};
use crate::process::Process;

pub const ROOT_PASSWORD: &str = "root password for the tests";
pub const PASSWORD: &str = "a perfectly fine password";
/// The JWT secret a [`TestApp`] signs with unless told otherwise.
pub const SECRET: &str = "an-e2e-test-secret-of-at-least-32-chars";

/// A gateway to start: `spawn_app().await`, or with variations first,
/// e.g. `spawn_app().store(store).flags(&["--trusted-proxy", "127.0.0.1/32"]).await`.
pub fn spawn_app() -> AppBuilder {
    AppBuilder {
        store: None,
        flags: Vec::new(),
        env: Vec::new(),
        jwt_secret: Some(SECRET.to_owned()),
        wait_ready: true,
        runner: false,
    }
}

/// What differs between the gateways the tests start.
pub struct AppBuilder {
    store: Option<TestStore>,
    flags: Vec<String>,
    env: Vec<(String, String)>,
    jwt_secret: Option<String>,
    wait_ready: bool,
    /// Start the in-process browser runner (off unless a test drives Chromium).
    runner: bool,
}

impl AppBuilder {
    /// Serves this store (default: a fresh SQLite file).
    pub fn store(mut self, store: TestStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Extra `serve` flags.
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// An environment variable for the gateway, e.g. `RUST_LOG`.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `TB_JWT_SECRET` (default: [`SECRET`]); with none the gateway finds
    /// or makes its own, or refuses.
    pub fn jwt_secret(mut self, secret: Option<&str>) -> Self {
        self.jwt_secret = secret.map(str::to_owned);
        self
    }

    /// Starts `serve`'s in-process browser runner too.
    pub fn with_runner(mut self) -> Self {
        self.runner = true;
        self
    }

    /// Returns once the gateway listens, before its views are ready.
    pub fn before_ready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    async fn spawn(self) -> TestApp {
        let store = self.store.unwrap_or_else(TestStore::sqlite);
        let mut cmd = bin();
        if let Some(secret) = &self.jwt_secret {
            cmd.env("TB_JWT_SECRET", secret);
        }
        cmd.envs(self.env);
        cmd.args(["--store", &store.url, "--log-format", "json", "serve"]);
        cmd.args(["--listen", "127.0.0.1:0"]);
        if !self.runner {
            cmd.arg("--no-runner");
        }
        cmd.args(self.flags);
        let process = Process::spawn(cmd);
        let line = process
            .wait_for_log("gateway listening on", Duration::from_secs(30))
            .await;
        let app = TestApp {
            client: Client {
                addr: listening_addr(&line),
            },
            store,
            process,
        };
        if self.wait_ready {
            app.wait_ready().await;
        }
        app
    }
}

impl IntoFuture for AppBuilder {
    type Output = TestApp;
    type IntoFuture = Pin<Box<dyn Future<Output = TestApp> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.spawn())
    }
}

/// A running gateway, the store it serves, and a [`Client`] to it (also
/// reached through `Deref`). Dropping it kills the gateway.
pub struct TestApp {
    /// Its `addr` is the gateway's `IP:PORT` on loopback.
    pub client: Client,
    pub store: TestStore,
    /// The gateway: its log, its pid, `terminate`.
    pub process: Process,
}

impl std::ops::Deref for TestApp {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl TestApp {
    /// Creates the super-admin `root` with the CLI and `ada` (a user) and
    /// `audrey` (an auditor) through GraphQL; returns root's token.
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

    /// Sends SIGTERM and waits for the exit status; the log stays readable.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate().await
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while http_get(&self.addr, "/readyz").await.0 != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway never became ready:\n{}",
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

/// The address in serve's JSON "gateway listening on http://ADDR" line.
fn listening_addr(log_line: &str) -> String {
    let log: Value = serde_json::from_str(log_line).expect("a JSON log line");
    log["message"]
        .as_str()
        .and_then(|m| m.rsplit("http://").next())
        .unwrap_or_else(|| panic!("no address in {log_line}"))
        .to_owned()
}

/// Speaks GraphQL over HTTP to a gateway at `addr`.
pub struct Client {
    pub addr: String,
}

/// Longest a test waits for one HTTP answer.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Client {
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
        // A stalled gateway fails the test, never hangs it.
        let exchange = async {
            let mut stream = socket.connect(self.addr.parse().unwrap()).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
            raw
        };
        let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("no answer from the gateway within {REQUEST_TIMEOUT:?}"));
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

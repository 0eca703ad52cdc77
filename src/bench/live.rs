//! What the benches that drive a gateway share: an in-process gateway on
//! 127.0.0.1 over a scratch store, a command handler beside it for set-up,
//! accounts, and a keep-alive HTTP/1.1 client for its `/graphql`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use domain::account::{Account, AccountCommand, PasswordHash, Username};
use domain::{Actor, Context, Role};
use gateway::auth::rate_limit::LoginLimits;
use gateway::auth::sessions::SessionPolicy;
use gateway::client_addr::TrustedProxies;
use gateway::state::AppState;
use gateway::{CommandHandler, CommandMeta, Gateway, GatewayConfig};
use serde_json::{Value, json};
use store::EventStore;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::bench::Scratch;

/// Signs the bench gateway's tokens; it never leaves this process.
pub(crate) const JWT_SECRET: &[u8] = b"trafficbuster bench gateway secret, 32+ bytes";
/// Every bench account's password.
pub(crate) const PASSWORD: &str = "bench password, long enough";
/// Longest wait for any one reply or delivery before the bench gives up.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
pub(crate) const LOGIN: &str =
    "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { accessToken } }";

/// A gateway serving on 127.0.0.1 inside this process, and a command
/// handler of the bench's own on the same store (for set-up and appends).
pub(crate) struct LiveGateway {
    pub(crate) addr: SocketAddr,
    pub(crate) handler: Arc<CommandHandler>,
    /// The gateway's own state, to set data up through its paths.
    pub(crate) app: AppState,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
}

impl LiveGateway {
    pub(crate) async fn start(scratch: &Scratch) -> anyhow::Result<Self> {
        let config = GatewayConfig {
            jwt_secret: JWT_SECRET.to_vec().into(),
            session_policy: SessionPolicy::default(),
            login_limits: LoginLimits::default(),
            trusted_proxies: TrustedProxies::default(),
            data_key: None,
            upload_ttl: gateway::startup::DEFAULT_UPLOAD_TTL,
            verification: gateway::verification::VerificationSettings::default(),
        };
        let gateway = Gateway::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            &scratch.backend,
            config,
        )
        .await
        .context("cannot start the gateway")?;
        let addr = gateway.local_addr()?;
        let app = gateway.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            handler: Arc::new(new_handler(scratch.store())),
            app,
            stop,
            serving,
        })
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(PATIENCE, self.serving).await {
            Ok(served) => Ok(served??),
            Err(_) => bail!("the gateway did not stop within {PATIENCE:?}"),
        }
    }
}

pub(crate) fn new_handler(store: Arc<dyn EventStore>) -> CommandHandler {
    CommandHandler::new(store, Arc::new(domain::event_registry()))
}

pub(crate) fn bench_meta() -> CommandMeta {
    CommandMeta {
        source: Some("bench".into()),
        ..CommandMeta::default()
    }
}

pub(crate) fn system() -> Context {
    Context::new(OffsetDateTime::now_utc(), Actor::System)
}

pub(crate) async fn create_account(
    handler: &CommandHandler,
    name: &str,
    role: Role,
    hash: &PasswordHash,
) -> anyhow::Result<()> {
    let username = Username::parse(name)?;
    let command = AccountCommand::Create {
        account_id: Uuid::now_v7(),
        username: username.clone(),
        roles: [role].into(),
        password_hash: hash.clone(),
    };
    handler
        .handle::<Account>(&username.stream()?, command, &system(), &bench_meta())
        .await
        .with_context(|| format!("cannot create account {name}"))?;
    Ok(())
}

/// A keep-alive HTTP/1.1 connection to the gateway's `/graphql`.
pub(crate) struct HttpConn {
    io: BufReader<TcpStream>,
    host: String,
}

impl HttpConn {
    pub(crate) async fn connect(from: IpAddr, to: SocketAddr) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(from, 0))
            .with_context(|| format!("cannot bind a client socket to {from}"))?;
        let stream = socket
            .connect(to)
            .await
            .with_context(|| format!("cannot connect from {from} to {to}"))?;
        // Requests go out in one write each; no reason to let Nagle hold them.
        stream.set_nodelay(true)?;
        Ok(Self {
            io: BufReader::new(stream),
            host: to.to_string(),
        })
    }

    /// Posts a GraphQL request; a non-200 answer or a GraphQL error is an error.
    pub(crate) async fn graphql(
        &mut self,
        query: &str,
        variables: Value,
        token: Option<&str>,
    ) -> anyhow::Result<Value> {
        let body = json!({ "query": query, "variables": variables }).to_string();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.io.get_mut().write_all(request.as_bytes()).await?;
        let (status, body) = tokio::time::timeout(PATIENCE, self.read_response())
            .await
            .with_context(|| format!("no HTTP response within {PATIENCE:?}"))??;
        let text = String::from_utf8_lossy(&body);
        ensure!(status == 200, "HTTP {status}: {text}");
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("the response is not JSON: {text}"))?;
        if let Some(errors) = value.get("errors") {
            bail!("GraphQL errors: {errors}");
        }
        Ok(value)
    }

    /// The status and body of one response (Content-Length or chunked).
    async fn read_response(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            ensure!(
                self.io.read_line(&mut line).await? > 0,
                "the gateway closed the connection mid-response"
            );
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>()?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        let body = if chunked {
            self.read_chunked().await?
        } else {
            let mut body = vec![0; length.context("a response without a length")?];
            self.io.read_exact(&mut body).await?;
            body
        };
        Ok((status, body))
    }

    async fn read_chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            self.io.read_line(&mut line).await?;
            let size = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .with_context(|| format!("not a chunk size: {line:?}"))?;
            // The chunk, then its CRLF (no trailers follow the last one).
            let mut chunk = vec![0; size + 2];
            self.io.read_exact(&mut chunk).await?;
            if size == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
}

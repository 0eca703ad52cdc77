//! A client of a gateway's GraphQL, as a browser speaks it: queries and
//! mutations over a keep-alive HTTP/1.1 connection ([`HttpConn`]), and
//! subscriptions over a WebSocket with graphql-transport-ws
//! ([`subscribe`], [`next_data`]). The benches and the demo drive
//! gateways with it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Longest wait for any one reply before a client gives up.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
pub(crate) const LOGIN: &str =
    "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { accessToken } }";

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to the gateway at `addr`, authenticates with `token`
/// and starts `query` (a subscription) with `variables`, as operation "1".
pub(crate) async fn subscribe(
    addr: SocketAddr,
    token: &str,
    query: &str,
    variables: Value,
) -> anyhow::Result<Ws> {
    let mut request = format!("ws://{addr}/graphql").into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .context("WebSocket handshake")?;
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    ws.send(Message::text(init.to_string())).await?;
    let ack = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .context("no connection_ack in time")?
        .context("the socket closed before connection_ack")??;
    let ack: Value = serde_json::from_str(ack.to_text()?)?;
    ensure!(
        ack["type"] == "connection_ack",
        "expected connection_ack, got {ack}"
    );
    let start = json!({ "id": "1", "type": "subscribe",
        "payload": { "query": query, "variables": variables } });
    ws.send(Message::text(start.to_string())).await?;
    Ok(ws)
}

/// The `data` of the subscription's next result, answering pings on the
/// way; `None` once the server completes it. An error result, a closed
/// socket or anything unexpected is an error saying what came.
pub(crate) async fn next_data(ws: &mut Ws) -> anyhow::Result<Option<Value>> {
    loop {
        let message = ws
            .next()
            .await
            .context("the gateway closed the subscription's socket")??;
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => bail!("the gateway closed the subscription: {frame:?}"),
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("the subscription sent something not JSON: {text}"))?;
        match v["type"].as_str() {
            Some("next") if v["payload"]["errors"].is_null() => {
                return Ok(Some(v["payload"]["data"].clone()));
            }
            Some("complete") => return Ok(None),
            Some("ping") => {
                let pong = json!({ "type": "pong" }).to_string();
                ws.send(Message::text(pong)).await?;
            }
            Some("pong") => {}
            _ => bail!("the subscription stopped: {text}"),
        }
    }
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

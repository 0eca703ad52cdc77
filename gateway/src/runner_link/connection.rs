//! One runner's connection, from hello to close: the key checked, the
//! version agreed, the registration recorded, then each message answered
//! in turn while notices for the runner are passed on. Every refusal is
//! one `error` message; a fatal one closes the connection. Nothing a runner
//! sends reaches an event before the gateway has validated it.

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use domain::reason::{Reason, one_line};
use domain::runner::{Capabilities, OfflineReason, Runner, RunnerCommand, RunnerId};
use domain::runner_key::{self, RunnerKey, RunnerKeyId, RunnerKeys};
use domain::runner_protocol::{
    ErrorCode, ErrorMessage, GatewayMessage, Limits, ProtocolError, RunnerMessage, VersionRange,
    decode_runner_message, encode, negotiate,
};
use domain::{Actor, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::command_handler::CommandMeta;
use crate::runner_link::fleet::NOTICE_QUEUE;
use crate::runner_link::presence::Heard;
use crate::runner_link::{RunnerTerms, artifacts, work};
use crate::state::AppState;

/// Longest a closing connection waits for the runner's own close.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Who is on the other end, once the hello is accepted.
pub(crate) struct Peer {
    pub runner: RunnerId,
    pub key: RunnerKeyId,
    pub name: String,
    pub protocol: u16,
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The runner closed it, or the socket broke.
    Gone,
    /// The gateway refused the runner, fatally, and told it why.
    Refused,
    /// No message for longer than the silence limit.
    Silent,
    /// The runner deregistered.
    Left,
    /// A newer connection of the same runner replaced this one.
    Replaced,
}

pub(crate) struct Link {
    pub app: AppState,
    pub terms: RunnerTerms,
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    flood: DefaultDirectRateLimiter,
}

/// Serves one runner socket until it ends.
pub async fn serve(app: AppState, socket: WebSocket) {
    let terms = app.runner_terms;
    let (sink, stream) = socket.split();
    let sustained = std::num::NonZeroU32::new(Limits::THIS_BUILD.max_messages_per_second)
        .unwrap_or(std::num::NonZeroU32::MIN);
    // Bursts of up to two seconds' worth pass (a batch and its heartbeat
    // after a stall); a sustained excess does not.
    let burst = sustained.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(sustained));
    let mut link = Link {
        app,
        terms,
        sink,
        stream,
        flood: RateLimiter::direct(Quota::per_second(sustained).allow_burst(burst)),
    };
    let Some(peer) = link.hello().await else {
        return;
    };
    let Some(capabilities) = link.register_message().await else {
        return;
    };
    let (notices_tx, notices) = mpsc::channel(NOTICE_QUEUE);
    let fleet = link.app.fleet.clone();
    // Heard here first, so no gateway's sweep takes it for gone.
    let mut heard = Heard::first(&link.app, peer.runner).await;
    let attachment = fleet.attach(peer.runner, peer.key, notices_tx);
    let Some(draining) = link.register(&peer, &capabilities).await else {
        return;
    };
    if link
        .send(&GatewayMessage::Registered { draining })
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(runner = %peer.runner, name = %peer.name, "runner connected");
    let mut session = work::Session::new(peer, attachment.connection(), capabilities);
    session.draining = draining;
    for brief in work::briefs_of_held_jobs(&link, &session).await {
        if link.send(&brief).await.is_err() {
            return;
        }
    }
    let end = link.run(&mut session, notices, &mut heard).await;
    let peer = session.peer();
    // Still its connection, here and on every gateway? Then its going is
    // news; if another connection took it over meanwhile, it is not gone.
    let still_current = attachment.is_current();
    let held = heard
        .release(&link.app, peer.runner)
        .await
        .unwrap_or(still_current);
    drop(attachment);
    match end {
        End::Left | End::Replaced => {}
        End::Gone | End::Refused | End::Silent if still_current && held => {
            let reason = if matches!(end, End::Silent) {
                OfflineReason::Silent
            } else {
                OfflineReason::Disconnected
            };
            link.record(peer, RunnerCommand::GoOffline { reason }).await;
        }
        _ => {}
    }
    tracing::info!(runner = %peer.runner, ?end, "runner disconnected");
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn system() -> Context {
    Context::new(now(), Actor::System)
}

/// Metadata for what the gateway records for a runner.
pub(crate) fn runner_meta(runner: RunnerId, idempotency_key: Option<String>) -> CommandMeta {
    CommandMeta {
        idempotency_key,
        correlation_id: None,
        causation_id: None,
        source: Some(format!("runner:{runner}")),
    }
}

/// A refusal as sent: the code's own fatality.
pub(crate) fn refusal(code: ErrorCode, message: impl Into<String>) -> ErrorMessage {
    ProtocolError::new(code, message).into_message()
}

/// What a frame is, as far as the link cares.
enum Frame {
    Text(String),
    /// Something that is not a text frame, with what to say.
    Refused(ErrorMessage),
    Skip,
    Closed,
}

impl Link {
    /// The next frame, within the silence limit; `None` on silence.
    async fn frame(&mut self) -> Option<Frame> {
        let read = tokio::time::timeout(self.terms.silence(), self.stream.next()).await;
        let Ok(read) = read else { return None };
        Some(match read {
            None | Some(Ok(Message::Close(_))) => Frame::Closed,
            Some(Ok(Message::Text(text))) => Frame::Text(text.to_string()),
            Some(Ok(Message::Binary(_))) => Frame::Refused(refusal(
                ErrorCode::BadMessage,
                "binary frames are refused: send each message as one JSON text frame",
            )),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Frame::Skip,
            Some(Err(e)) => match crate::ws_limits::too_long(&e) {
                Some((size, max)) => Frame::Refused(refusal(
                    ErrorCode::FrameTooLarge,
                    format!("a frame of {size} bytes; the limit is {max}: send smaller batches"),
                )),
                None => Frame::Closed,
            },
        })
    }

    pub(crate) async fn send(&mut self, message: &GatewayMessage) -> Result<(), axum::Error> {
        self.sink.send(Message::text(encode(message))).await
    }

    /// Sends a refusal; a fatal one also closes the connection.
    async fn refuse(&mut self, error: ErrorMessage) -> Result<(), axum::Error> {
        let fatal = error.fatal;
        let reason = one_line(&format!("{}: {}", error.code, error.message), 120);
        self.send(&GatewayMessage::Error(error)).await?;
        if fatal {
            self.close(close_code::POLICY, reason).await;
        }
        Ok(())
    }

    /// Says goodbye, then reads (and drops) what the runner still sends
    /// until it closes too: closing at once over unread frames would reset
    /// the connection and could lose the refusal just sent.
    async fn close(&mut self, code: u16, reason: String) {
        let _ = self
            .sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(frame)) = self.stream.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    /// Is this message within the flood limit? If not, the runner is told
    /// and the connection ends.
    async fn within_rate(&mut self) -> bool {
        if self.flood.check().is_ok() {
            return true;
        }
        let limit = Limits::THIS_BUILD.max_messages_per_second;
        let _ = self
            .refuse(refusal(
                ErrorCode::RateLimited,
                format!(
                    "more than {limit} messages a second: batch reports (up to {} a batch) and heartbeat every {} ms",
                    Limits::THIS_BUILD.max_reports_per_batch,
                    self.terms.heartbeat_every.as_millis()
                ),
            ))
            .await;
        false
    }

    /// The first text frame, or `None` when the connection ended (having
    /// said why, where there was something to say).
    async fn first_text(&mut self, awaited: &str) -> Option<String> {
        loop {
            match self.frame().await {
                None => {
                    self.close(close_code::POLICY, format!("no {awaited} in time"))
                        .await;
                    return None;
                }
                Some(Frame::Closed) => return None,
                Some(Frame::Skip) => {}
                Some(Frame::Refused(mut e)) => {
                    // Nothing before the registration is worth a second try.
                    e.fatal = true;
                    let _ = self.refuse(e).await;
                    return None;
                }
                Some(Frame::Text(text)) => {
                    return self.within_rate().await.then_some(text);
                }
            }
        }
    }

    /// Reads the hello: the key checked, a version agreed, the welcome sent.
    async fn hello(&mut self) -> Option<Peer> {
        let text = self.first_text("hello").await?;
        let outcome = self.accept_hello(&text).await;
        match outcome {
            Ok((peer, welcome)) => self.send(&welcome).await.ok().map(|()| peer),
            Err(e) => {
                let _ = self.refuse(e).await;
                None
            }
        }
    }

    async fn accept_hello(&self, text: &str) -> Result<(Peer, GatewayMessage), ErrorMessage> {
        // A hello whose key is malformed is an authentication failure, not
        // a garbled message: look at its type before decoding it whole.
        let raw: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let is_hello = raw.get("type").and_then(|t| t.as_str()) == Some("hello");
        if !is_hello {
            return Err(refusal(
                ErrorCode::NotRegistered,
                "say hello first: {\"type\":\"hello\",\"protocol\":…,\"runner\":…,\"key\":…}",
            ));
        }
        if let Some(key) = raw.get("key")
            && key.as_str().is_none_or(|k| RunnerKey::parse(k).is_err())
        {
            return Err(refusal(
                ErrorCode::Unauthenticated,
                "the key is malformed: a runner key is 32 to 128 characters of A-Z, a-z, 0-9, '-' or '_', as createRunnerKey showed it",
            ));
        }
        let message = decode_runner_message(text).map_err(|mut e| {
            e.message = format!("hello: {}", e.message);
            let mut m = e.into_message();
            m.fatal = true;
            m
        })?;
        let RunnerMessage::Hello {
            protocol,
            runner,
            key,
            name,
            software: _,
        } = message
        else {
            return Err(refusal(ErrorCode::NotRegistered, "say hello first"));
        };
        let protocol =
            negotiate(VersionRange::THIS_BUILD, protocol).map_err(ProtocolError::into_message)?;
        let key = self.authenticate(&key).await?;
        let name = one_line(&name, domain::runner::MAX_NAME_CHARS);
        let name = if name.trim().is_empty() {
            runner.to_string()
        } else {
            name
        };
        let welcome = GatewayMessage::Welcome {
            protocol,
            heartbeat_every_ms: self.terms.heartbeat_every.as_millis() as u64,
            lease_ttl_ms: self.terms.lease_ttl.as_millis() as u64,
            limits: Limits::THIS_BUILD,
        };
        Ok((
            Peer {
                runner,
                key,
                name,
                protocol,
            },
            welcome,
        ))
    }

    async fn authenticate(&self, key: &RunnerKey) -> Result<RunnerKeyId, ErrorMessage> {
        let stream = runner_key::stream()
            .map_err(|e| refusal(ErrorCode::Internal, format!("runner keys: {e}")))?;
        let (_, keys) = self
            .app
            .handler
            .load::<RunnerKeys>(&stream)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read the runner keys");
                refusal(
                    ErrorCode::Internal,
                    "the gateway cannot read its runner keys now; connect again shortly",
                )
            })?;
        keys.authenticate(key).map_err(|e| {
            let mut m = refusal(ErrorCode::Unauthenticated, e.to_string());
            m.fatal = true;
            m
        })
    }

    /// Reads the `register` that must follow the welcome.
    async fn register_message(&mut self) -> Option<Capabilities> {
        let text = self.first_text("register").await?;
        let refused = match decode_runner_message(&text) {
            Ok(RunnerMessage::Register { capabilities }) => match capabilities.check() {
                Ok(()) => return Some(capabilities),
                Err(e) => refusal(ErrorCode::BadMessage, format!("register: capabilities.{e}")),
            },
            Ok(_) => refusal(
                ErrorCode::NotRegistered,
                "register first: {\"type\":\"register\",\"capabilities\":{…}}",
            ),
            Err(e) => e.into_message(),
        };
        let mut refused = refused;
        refused.fatal = true;
        let _ = self.refuse(refused).await;
        None
    }

    /// Records the registration; `Some(draining)` once it stands.
    async fn register(&mut self, peer: &Peer, capabilities: &Capabilities) -> Option<bool> {
        let command = RunnerCommand::Register {
            key: peer.key,
            name: peer.name.clone(),
            capabilities: capabilities.clone(),
            protocol: peer.protocol,
        };
        if !self.record(peer, command).await {
            let _ = self
                .refuse(refusal(
                    ErrorCode::Internal,
                    "the gateway could not record the registration; connect again shortly",
                ))
                .await;
            self.close(close_code::AGAIN, "registration not recorded".into())
                .await;
            return None;
        }
        let state = self
            .app
            .handler
            .load::<Runner>(&peer.runner.stream().ok()?)
            .await
            .ok()?
            .1;
        Some(state.draining)
    }

    /// Runs a runner command as the gateway; false (logged) if it did not
    /// go through.
    pub(crate) async fn record(&self, peer: &Peer, command: RunnerCommand) -> bool {
        let Ok(stream) = peer.runner.stream() else {
            return false;
        };
        match self
            .app
            .handler
            .handle::<Runner>(&stream, command, &system(), &runner_meta(peer.runner, None))
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(runner = %peer.runner, error = %e, "runner command not recorded");
                false
            }
        }
    }

    /// Answers messages and passes notices on until the connection ends.
    async fn run(
        &mut self,
        session: &mut work::Session,
        mut notices: mpsc::Receiver<GatewayMessage>,
        heard: &mut Heard,
    ) -> End {
        loop {
            let frame = tokio::select! {
                frame = self.frame() => frame,
                notice = notices.recv() => {
                    let Some(notice) = notice else {
                        self.close(close_code::NORMAL, "a newer connection of this runner took over".into()).await;
                        return End::Replaced;
                    };
                    session.noticed(&notice);
                    if let GatewayMessage::Error(e) = notice {
                        // Its key was revoked: refused, as at a hello.
                        let fatal = e.fatal;
                        if self.refuse(e).await.is_err() || fatal {
                            return End::Refused;
                        }
                    } else if self.send(&notice).await.is_err() {
                        return End::Gone;
                    }
                    continue;
                }
            };
            let text = match frame {
                None => {
                    let silence = self.terms.silence().as_secs();
                    self.close(
                        close_code::POLICY,
                        format!(
                            "no message for {silence} s: send a heartbeat every {} ms",
                            self.terms.heartbeat_every.as_millis()
                        ),
                    )
                    .await;
                    return End::Silent;
                }
                Some(Frame::Closed) => return End::Gone,
                Some(Frame::Skip) => continue,
                Some(Frame::Refused(e)) => {
                    let fatal = e.fatal;
                    if self.refuse(e).await.is_err() || fatal {
                        return End::Refused;
                    }
                    continue;
                }
                Some(Frame::Text(text)) => text,
            };
            if !self.within_rate().await {
                return End::Refused;
            }
            let message = decode_runner_message(&text);
            let busy = match &message {
                Ok(RunnerMessage::Heartbeat { busy, .. }) => Some(*busy),
                _ => None,
            };
            heard.again(&self.app, session.runner(), busy).await;
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    let fatal = e.code.is_fatal();
                    let mut m = e.into_message();
                    let raw: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    m.request = raw.get("request").and_then(serde_json::Value::as_u64);
                    m.batch = raw
                        .get("batch")
                        .and_then(|b| b.as_str())
                        .and_then(|b| uuid::Uuid::parse_str(b).ok());
                    if self.refuse(m).await.is_err() || fatal {
                        return End::Refused;
                    }
                    continue;
                }
            };
            let answered = match message {
                RunnerMessage::Hello { .. } | RunnerMessage::Register { .. } => {
                    self.refuse(refusal(
                        ErrorCode::BadMessage,
                        "this connection said hello and registered already; reconnect to change capabilities",
                    ))
                    .await
                }
                RunnerMessage::Heartbeat { seq, busy: _ } => {
                    work::heartbeat(self, session).await;
                    self.send(&GatewayMessage::HeartbeatAck { seq }).await
                }
                RunnerMessage::Drain {} => {
                    session.draining = true;
                    self.record(session.peer(), RunnerCommand::RequestDrain)
                        .await;
                    Ok(())
                }
                RunnerMessage::Deregister { reason } => {
                    work::hand_back_everything(self, session).await;
                    let reason = reason
                        .as_deref()
                        .and_then(|r| Reason::parse(&one_line(r, 200)).ok());
                    self.record(session.peer(), RunnerCommand::Deregister { reason })
                        .await;
                    self.close(close_code::NORMAL, "deregistered".into()).await;
                    return End::Left;
                }
                RunnerMessage::LeaseRequest {
                    request,
                    slots,
                    flows,
                } => {
                    let mut sent = Ok(());
                    for answer in work::lease(self, session, request, slots, flows).await {
                        sent = self.send(&answer).await;
                        if sent.is_err() {
                            break;
                        }
                    }
                    sent
                }
                RunnerMessage::Report {
                    batch,
                    job,
                    reports,
                } => {
                    let answer = work::report(self, session, batch, job, reports).await;
                    self.send(&answer).await
                }
                RunnerMessage::Artifact {
                    request,
                    job,
                    flow,
                    kind,
                    part,
                    parts,
                    data,
                } => {
                    let answer = artifacts::part(
                        self, session, request, job, flow, kind, part, parts, data,
                    )
                    .await;
                    self.send(&answer).await
                }
                RunnerMessage::HandBack {
                    request,
                    job,
                    flows,
                } => {
                    let answer = work::hand_back(self, session, request, job, flows).await;
                    self.send(&answer).await
                }
            };
            if answered.is_err() {
                return End::Gone;
            }
        }
    }
}

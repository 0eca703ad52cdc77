//! The runner protocol's client (docs/runner-protocol.md): one connection
//! to a gateway's `GET /runner`, from hello to deregister. It authenticates,
//! registers, heartbeats on its own, and asks and answers one request at a
//! time; what the gateway pushes meanwhile (pause, stop, drain, expired
//! leases, briefs, proxies disabled or enabled) waits in
//! [`Connection::notices`]. Job briefs (protocol 2) are put together from
//! their parts and kept, with proxy notices applied, for
//! [`Connection::brief`]. The worker (`crate::worker`) drives it, and so
//! do the gateway's protocol tests, message by message.
//!
//! Never logs the runner key, nor a brief (it holds proxy passwords).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use domain::artifact::{ARTIFACT_PART_BYTES, ArtifactKind, ArtifactRef};
use domain::flow::{FlowId, FlowRange, FlowReport, ProxyIndex};
use domain::job::JobId;
use domain::job_brief::{BriefAssembly, JobBrief};
use domain::runner::{Capabilities, RunnerId};
use domain::runner_key::RunnerKey;
use domain::runner_protocol::{
    ARTIFACTS_SINCE, ErrorCode, ErrorMessage, GatewayMessage, LeaseGrant, Limits, RunnerMessage,
    VersionRange, decode_gateway_message, encode,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Longest the client waits for the gateway's answer to one message.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Who the runner is and what it can do.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway's runner socket, e.g. `ws://10.0.0.5:8080/runner`.
    pub url: String,
    pub runner: RunnerId,
    pub key: RunnerKey,
    pub name: String,
    pub software: String,
    pub capabilities: Capabilities,
    /// The versions it speaks; [`VersionRange::THIS_BUILD`] but in tests.
    pub protocol: VersionRange,
}

/// Why the client stopped or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The gateway refused, fatally: the connection is over.
    #[error("the gateway refused the runner: {}: {}", .0.code, .0.message)]
    Refused(ErrorMessage),
    #[error("the gateway closed the connection{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    #[error("the gateway sent what this runner cannot read: {0}")]
    Garbled(String),
    #[error("the gateway answered {got} where {expected} was due")]
    Unexpected { expected: &'static str, got: String },
    #[error("no answer from the gateway within {0:?}")]
    Timeout(Duration),
}

/// The terms a gateway's welcome set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub protocol: u16,
    pub heartbeat_every: Duration,
    pub lease_ttl: Duration,
    pub limits: Limits,
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq)]
pub enum Leased {
    Granted(LeaseGrant),
    NoWork {
        retry_after: Duration,
    },
    /// Refused (e.g. DRAINING); the connection stays up.
    Refused(ErrorMessage),
}

/// The answer to a report or a hand-back.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A report: how many were recorded, how many were known already.
    Accepted {
        recorded: u32,
        duplicates: u32,
    },
    HandedBack,
    Refused(ErrorMessage),
}

/// A message the gateway pushes without being asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    JobPaused(JobId),
    JobStopped(JobId),
    LeaseExpired {
        job: JobId,
        flows: Vec<FlowRange>,
    },
    Drain {
        by: String,
    },
    /// A job's brief came whole (protocol 2): before the first grant of the
    /// job on this connection, or, on connecting, for a job the runner
    /// holds flows of. [`Connection::brief`] has it.
    Briefed(JobId),
    /// The gateway disabled a proxy of the job: pick it for no new flow.
    /// The brief already says so.
    ProxyDisabled {
        job: JobId,
        proxy: ProxyIndex,
        reason: String,
    },
    /// A proxy of the job may be picked again (on trial). The brief
    /// already says so.
    ProxyEnabled {
        job: JobId,
        proxy: ProxyIndex,
    },
    /// A refusal not tied to a request of this client (e.g. a frame it
    /// could not read).
    Error(ErrorMessage),
}

/// One authenticated, registered connection.
pub struct Connection {
    terms: Terms,
    draining: bool,
    out: mpsc::Sender<Message>,
    incoming: mpsc::Receiver<Incoming>,
    notices: VecDeque<Notice>,
    /// The briefs heard on this connection, by job.
    briefs: HashMap<JobId, Arc<JobBrief>>,
    /// A brief whose parts are still coming.
    assembly: BriefAssembly,
    busy: Arc<AtomicU32>,
    tasks: Vec<JoinHandle<()>>,
    /// When the last artifact part went: parts are paced to half the
    /// gateway's message rate, leaving the rest to reports and heartbeats.
    last_part: Option<tokio::time::Instant>,
}

/// What the reader hands over: a message, or why the socket ended.
enum Incoming {
    Message(GatewayMessage),
    Garbled(String),
    Closed(Option<String>),
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Connection {
    /// Connects, says hello, and registers: a connection ready to lease,
    /// with what the gateway says on connecting already in
    /// [`Connection::notices`] (the briefs of jobs the runner holds).
    pub async fn open(config: &ClientConfig) -> Result<Self, ClientError> {
        let (socket, _) = tokio_tungstenite::connect_async(config.url.as_str())
            .await
            .map_err(|source| ClientError::Connect {
                url: config.url.clone(),
                source: Box::new(source),
            })?;
        let (mut sink, mut stream) = socket.split();
        let (out, mut outgoing) = mpsc::channel::<Message>(64);
        let (deliver, incoming) = mpsc::channel::<Incoming>(256);
        let writer = tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader = tokio::spawn(async move {
            let ended = loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let item = match decode_gateway_message(&text) {
                            Ok(message) => Incoming::Message(message),
                            Err(e) => Incoming::Garbled(e.to_string()),
                        };
                        if deliver.send(item).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break frame
                            .map(|f| f.reason.to_string())
                            .filter(|r| !r.is_empty());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break None,
                }
            };
            let _ = deliver.send(Incoming::Closed(ended)).await;
        });
        let mut connection = Connection {
            terms: Terms {
                protocol: 0,
                heartbeat_every: Duration::ZERO,
                lease_ttl: Duration::ZERO,
                limits: Limits::THIS_BUILD,
            },
            draining: false,
            out,
            incoming,
            notices: VecDeque::new(),
            briefs: HashMap::new(),
            assembly: BriefAssembly::default(),
            busy: Arc::default(),
            tasks: vec![writer, reader],
            last_part: None,
        };
        connection.handshake(config).await?;
        Ok(connection)
    }

    async fn handshake(&mut self, config: &ClientConfig) -> Result<(), ClientError> {
        self.send(&RunnerMessage::Hello {
            protocol: config.protocol,
            runner: config.runner,
            key: config.key.clone(),
            name: config.name.clone(),
            software: config.software.clone(),
        })
        .await?;
        match self.answer("welcome").await? {
            GatewayMessage::Welcome {
                protocol,
                heartbeat_every_ms,
                lease_ttl_ms,
                limits,
            } => {
                self.terms = Terms {
                    protocol,
                    heartbeat_every: Duration::from_millis(heartbeat_every_ms.max(100)),
                    lease_ttl: Duration::from_millis(lease_ttl_ms),
                    limits,
                }
            }
            other => return Err(unexpected("welcome", &other)),
        }
        self.send(&RunnerMessage::Register {
            capabilities: config.capabilities.clone(),
        })
        .await?;
        match self.answer("registered").await? {
            GatewayMessage::Registered { draining } => self.draining = draining,
            other => return Err(unexpected("registered", &other)),
        }
        // One round trip before the runner goes on: what the gateway says
        // on connecting (the briefs of jobs this runner holds flows of)
        // comes before its answer, so it is in `notices` when `open`
        // returns, before the runner asks for anything.
        self.send(&RunnerMessage::Heartbeat { seq: 0, busy: 0 })
            .await?;
        loop {
            match self.answer("heartbeat_ack").await? {
                GatewayMessage::HeartbeatAck { seq: 0 } => break,
                other => self.stray(other, "heartbeat_ack")?,
            }
        }
        self.tasks.push(tokio::spawn(heartbeats(
            self.out.clone(),
            self.busy.clone(),
            self.terms.heartbeat_every,
        )));
        Ok(())
    }

    /// The terms of the gateway's welcome.
    pub fn terms(&self) -> Terms {
        self.terms
    }

    /// Was the runner draining when it registered, or told to since?
    pub fn draining(&self) -> bool {
        self.draining
            || self
                .notices
                .iter()
                .any(|n| matches!(n, Notice::Drain { .. }))
    }

    /// The brief of `job` as this connection heard it, with the proxy
    /// notices since applied. A gateway speaking protocol 2 sends it before
    /// the first grant of the job on a connection, so once
    /// [`Connection::lease`] answers [`Leased::Granted`], the grant's job
    /// has one; a version 1 gateway sends none. Forgotten when the job stops.
    pub fn brief(&self, job: JobId) -> Option<Arc<JobBrief>> {
        self.briefs.get(&job).cloned()
    }

    /// How many browsers are busy, for the next heartbeats.
    pub fn set_busy(&self, busy: u32) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// Sends one message as it is.
    pub async fn send(&self, message: &RunnerMessage) -> Result<(), ClientError> {
        self.out
            .send(Message::text(encode(message)))
            .await
            .map_err(|_| ClientError::Closed(None))
    }

    /// Asks for up to `flows` flows and `slots` more browser slots.
    pub async fn lease(&mut self, slots: u32, flows: u64) -> Result<Leased, ClientError> {
        self.lease_as(fresh_request_id(), slots, flows).await
    }

    /// [`Connection::lease`] under a request id of the caller's: a request
    /// whose answer was lost (the connection broke) is sent again under
    /// the same id, on any connection to any gateway, and gets the grant
    /// it got the first time instead of a second one.
    pub async fn lease_as(
        &mut self,
        request: u64,
        slots: u32,
        flows: u64,
    ) -> Result<Leased, ClientError> {
        self.send(&RunnerMessage::LeaseRequest {
            request,
            slots,
            flows,
        })
        .await?;
        loop {
            match self.answer("lease_granted or no_work").await? {
                GatewayMessage::LeaseGranted { request: r, grant } if r == request => {
                    return Ok(Leased::Granted(grant));
                }
                GatewayMessage::NoWork {
                    request: r,
                    retry_after_ms,
                } if r == request => {
                    return Ok(Leased::NoWork {
                        retry_after: Duration::from_millis(retry_after_ms),
                    });
                }
                GatewayMessage::Error(e) if e.request == Some(request) => {
                    return Ok(Leased::Refused(e));
                }
                other => self.stray(other, "lease_granted or no_work")?,
            }
        }
    }

    /// Sends a batch of reports on one job and waits for its answer. The
    /// same `batch` id sent again counts once.
    pub async fn report(
        &mut self,
        batch: Uuid,
        job: JobId,
        reports: Vec<FlowReport>,
    ) -> Result<Answer, ClientError> {
        self.send(&RunnerMessage::Report {
            batch,
            job,
            reports,
        })
        .await?;
        loop {
            match self.answer("report_accepted").await? {
                GatewayMessage::ReportAccepted {
                    batch: b,
                    recorded,
                    duplicates,
                } if b == batch => {
                    return Ok(Answer::Accepted {
                        recorded,
                        duplicates,
                    });
                }
                GatewayMessage::Error(e) if e.batch == Some(batch) => {
                    return Ok(Answer::Refused(e));
                }
                other => self.stray(other, "report_accepted")?,
            }
        }
    }

    /// Uploads a failed flow's artifact in parts, each answered before the
    /// next goes; the stored artifact for the flow's report, or why the
    /// gateway would not take it (a gateway before protocol 3 takes none;
    /// one too large is not sent).
    pub async fn upload_artifact(
        &mut self,
        job: JobId,
        flow: FlowId,
        kind: ArtifactKind,
        bytes: &[u8],
    ) -> Result<Result<ArtifactRef, ErrorMessage>, ClientError> {
        let refused = |code, message: String| {
            Ok(Err(ErrorMessage {
                code,
                message,
                fatal: false,
                request: None,
                batch: None,
                flows: Vec::new(),
            }))
        };
        if self.terms.protocol < ARTIFACTS_SINCE {
            return refused(
                ErrorCode::BadMessage,
                format!(
                    "the gateway speaks runner protocol {}, which takes no artifacts",
                    self.terms.protocol
                ),
            );
        }
        if bytes.len() > self.terms.limits.max_artifact_bytes {
            return refused(
                ErrorCode::LimitExceeded,
                format!(
                    "a {kind} of {} bytes; the gateway takes at most {}",
                    bytes.len(),
                    self.terms.limits.max_artifact_bytes
                ),
            );
        }
        let request = fresh_request_id();
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![bytes]
        } else {
            bytes.chunks(ARTIFACT_PART_BYTES).collect()
        };
        let parts = chunks.len() as u32;
        let every = Duration::from_secs(1) / (self.terms.limits.max_messages_per_second / 2).max(1);
        for (part, chunk) in chunks.into_iter().enumerate() {
            let part = part as u32;
            if let Some(last) = self.last_part {
                tokio::time::sleep_until(last + every).await;
            }
            self.last_part = Some(tokio::time::Instant::now());
            self.send(&RunnerMessage::Artifact {
                request,
                job,
                flow,
                kind,
                part,
                parts,
                data: STANDARD.encode(chunk),
            })
            .await?;
            loop {
                match self.answer("artifact_stored").await? {
                    GatewayMessage::ArtifactStored {
                        request: r,
                        part: p,
                        artifact,
                    } if r == request && p == part => {
                        if let Some(artifact) = artifact {
                            return Ok(Ok(artifact));
                        }
                        break;
                    }
                    GatewayMessage::Error(e) if e.request == Some(request) => return Ok(Err(e)),
                    other => self.stray(other, "artifact_stored")?,
                }
            }
        }
        Err(ClientError::Unexpected {
            expected: "artifact_stored naming the artifact",
            got: "no artifact after its last part".into(),
        })
    }

    /// Gives flows of `job` back unrun; `None`: all it holds of it.
    pub async fn hand_back(
        &mut self,
        job: JobId,
        flows: Option<Vec<FlowRange>>,
    ) -> Result<Answer, ClientError> {
        let request = fresh_request_id();
        self.send(&RunnerMessage::HandBack {
            request,
            job,
            flows,
        })
        .await?;
        loop {
            match self.answer("handed_back").await? {
                GatewayMessage::HandedBack { request: r, .. } if r == request => {
                    return Ok(Answer::HandedBack);
                }
                GatewayMessage::Error(e) if e.request == Some(request) => {
                    return Ok(Answer::Refused(e));
                }
                other => self.stray(other, "handed_back")?,
            }
        }
    }

    /// Tells the gateway it drains: it gets no new leases from now on.
    pub async fn drain(&mut self) -> Result<(), ClientError> {
        self.draining = true;
        self.send(&RunnerMessage::Drain {}).await
    }

    /// Leaves for good: the gateway hands back what it still holds, records
    /// the deregistration and closes the connection.
    pub async fn deregister(mut self, reason: Option<String>) -> Result<(), ClientError> {
        self.send(&RunnerMessage::Deregister { reason }).await?;
        loop {
            match self.incoming.recv().await {
                Some(Incoming::Closed(_)) | None => return Ok(()),
                Some(Incoming::Message(GatewayMessage::Error(e))) if e.fatal => {
                    return Err(ClientError::Refused(e));
                }
                Some(_) => {}
            }
        }
    }

    /// The notices received so far, oldest first, taken.
    pub fn notices(&mut self) -> Vec<Notice> {
        self.notices.drain(..).collect()
    }

    /// Waits up to `within` for the next notice.
    pub async fn next_notice(&mut self, within: Duration) -> Result<Option<Notice>, ClientError> {
        if let Some(n) = self.notices.pop_front() {
            return Ok(Some(n));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.incoming.recv()).await;
            let Ok(next) = next else { return Ok(None) };
            let message = self.read(next)?;
            self.stray(message, "nothing")?;
            if let Some(n) = self.notices.pop_front() {
                return Ok(Some(n));
            }
        }
    }

    /// The next message from the gateway, within [`ANSWER_TIMEOUT`].
    async fn answer(&mut self, expected: &'static str) -> Result<GatewayMessage, ClientError> {
        let next = tokio::time::timeout(ANSWER_TIMEOUT, self.incoming.recv())
            .await
            .map_err(|_| ClientError::Timeout(ANSWER_TIMEOUT))?;
        let message = self.read(next)?;
        match message {
            GatewayMessage::Error(e) if e.fatal => Err(ClientError::Refused(e)),
            message => {
                tracing::trace!(expected, "gateway message");
                Ok(message)
            }
        }
    }

    fn read(&mut self, next: Option<Incoming>) -> Result<GatewayMessage, ClientError> {
        match next {
            Some(Incoming::Message(GatewayMessage::Error(e))) if e.fatal => {
                Err(ClientError::Refused(e))
            }
            Some(Incoming::Message(m)) => Ok(m),
            Some(Incoming::Garbled(why)) => Err(ClientError::Garbled(why)),
            Some(Incoming::Closed(why)) => Err(ClientError::Closed(why)),
            None => Err(ClientError::Closed(None)),
        }
    }

    /// Marks a proxy of a job's brief disabled or usable.
    fn set_proxy_disabled(&mut self, job: JobId, proxy: ProxyIndex, disabled: bool) {
        if let Some(brief) = self.briefs.get_mut(&job) {
            Arc::make_mut(brief).set_proxy_disabled(proxy, disabled);
        }
    }

    /// A message that is not the answer awaited: kept as a notice, or an
    /// error when it can be nothing but a misunderstanding.
    fn stray(
        &mut self,
        message: GatewayMessage,
        expected: &'static str,
    ) -> Result<(), ClientError> {
        let notice = match message {
            // Acks only prove the link is up; but the handshake's, nobody
            // waits for them.
            GatewayMessage::HeartbeatAck { .. } => return Ok(()),
            GatewayMessage::JobPaused { job } => Notice::JobPaused(job),
            GatewayMessage::JobStopped { job } => {
                self.briefs.remove(&job);
                Notice::JobStopped(job)
            }
            GatewayMessage::JobBrief { part, parts, brief } => {
                let whole = self
                    .assembly
                    .take(part, parts, brief)
                    .map_err(|e| ClientError::Garbled(format!("job_brief: {e}")))?;
                let Some(whole) = whole else { return Ok(()) };
                let job = whole.job;
                self.briefs.insert(job, Arc::new(whole));
                Notice::Briefed(job)
            }
            GatewayMessage::ProxyDisabled { job, proxy, reason } => {
                self.set_proxy_disabled(job, proxy, true);
                Notice::ProxyDisabled { job, proxy, reason }
            }
            GatewayMessage::ProxyEnabled { job, proxy } => {
                self.set_proxy_disabled(job, proxy, false);
                Notice::ProxyEnabled { job, proxy }
            }
            GatewayMessage::LeaseExpired { job, flows } => Notice::LeaseExpired { job, flows },
            GatewayMessage::Drain { by } => {
                self.draining = true;
                Notice::Drain { by }
            }
            // Fatal ones never get here: `read` ends the connection on them.
            GatewayMessage::Error(e) => Notice::Error(e),
            other => return Err(unexpected(expected, &other)),
        };
        self.notices.push_back(notice);
        Ok(())
    }
}

/// A request id no other request of this runner has used, across
/// connections and restarts: microseconds since the epoch at the first
/// call, counting up from there.
pub fn fresh_request_id() -> u64 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        std::sync::atomic::AtomicU64::new(micros)
    })
    .fetch_add(1, Ordering::Relaxed)
}

fn unexpected(expected: &'static str, got: &GatewayMessage) -> ClientError {
    let got = match got {
        // It holds proxy passwords: named, never quoted.
        GatewayMessage::JobBrief { .. } => got.kind().to_owned(),
        other => encode(other).chars().take(200).collect(),
    };
    ClientError::Unexpected { expected, got }
}

/// Sends a heartbeat every `every` until the connection ends (numbered
/// from 1: the handshake's is 0).
async fn heartbeats(out: mpsc::Sender<Message>, busy: Arc<AtomicU32>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut seq = 0;
    loop {
        tick.tick().await;
        seq += 1;
        let beat = RunnerMessage::Heartbeat {
            seq,
            busy: busy.load(Ordering::Relaxed),
        };
        if out.send(Message::text(encode(&beat))).await.is_err() {
            return;
        }
    }
}

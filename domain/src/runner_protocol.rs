//! The runner protocol: every message a runner and a gateway exchange over
//! the runner WebSocket, as JSON text frames tagged by `type`, with version
//! negotiation and limits. Shared by the gateway and the runner, so both
//! read one definition; `docs/runner-protocol.md` describes it for people.
//!
//! Compatibility: within a protocol version, messages only gain optional
//! fields, which older readers ignore. A new message type, a new required
//! field or a changed meaning is a new version. `Hello` never changes shape,
//! so any two versions can at least agree that they disagree.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::artifact::{
    ARTIFACT_PART_BYTES, ArtifactKind, ArtifactRef, MAX_ARTIFACT_BYTES, MAX_ARTIFACT_PARTS,
};
use crate::domain_name::DomainName;
use crate::flow::{
    FlowId, FlowRange, FlowReport, MAX_CLICKS_PER_FLOW, MAX_LOG_CHARS, MAX_PAGES_PER_FLOW,
    ProxyIndex,
};
use crate::job::{JobError, JobId, MAX_FLOWS_PER_LEASE, MAX_REPORTS_PER_BATCH};
use crate::job_brief::{BriefTooLarge, JobBrief};
use crate::runner::{Capabilities, RunnerId};
use crate::runner_key::RunnerKey;

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;
/// The first version with job briefs (`job_brief`) and proxy notices
/// (`proxy_disabled`, `proxy_enabled`): a gateway sends them only to
/// runners that agreed on it or a later one.
pub const BRIEFS_SINCE: u16 = 2;
/// The first version with failure artifacts (`artifact`,
/// `artifact_stored`): a runner uploads them only to a gateway that agreed
/// on it or a later one.
pub const ARTIFACTS_SINCE: u16 = 3;
/// The oldest protocol version this build still speaks.
pub const OLDEST_PROTOCOL_VERSION: u16 = 1;
/// Largest text frame either side accepts, in bytes.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Messages a runner may send per second, sustained; more is a flood.
pub const MAX_MESSAGES_PER_SECOND: u32 = 50;
/// Ranges one hand-back may name.
pub const MAX_RANGES_PER_HAND_BACK: usize = 1000;
/// Longest runner name or software version in a hello, in characters.
pub const MAX_HELLO_TEXT: usize = 64;

/// The protocol versions one side speaks, oldest to newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    pub oldest: u16,
    pub newest: u16,
}

impl VersionRange {
    /// What this build speaks.
    pub const THIS_BUILD: VersionRange = VersionRange {
        oldest: OLDEST_PROTOCOL_VERSION,
        newest: PROTOCOL_VERSION,
    };

    pub fn speaks(self, version: u16) -> bool {
        (self.oldest..=self.newest).contains(&version)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.oldest == self.newest {
            write!(f, "version {}", self.oldest)
        } else {
            write!(f, "versions {} to {}", self.oldest, self.newest)
        }
    }
}

/// The version a gateway speaking `gateway` and a runner speaking `runner`
/// use: the newest both speak, or a refusal that says which side to upgrade.
pub fn negotiate(gateway: VersionRange, runner: VersionRange) -> Result<u16, ProtocolError> {
    let newest = gateway.newest.min(runner.newest);
    if runner.oldest <= runner.newest && gateway.speaks(newest) && runner.speaks(newest) {
        return Ok(newest);
    }
    let advice = if runner.oldest > runner.newest {
        "its hello names an empty range; send oldest <= newest"
    } else if runner.newest < gateway.oldest {
        "the runner is older than this gateway supports: upgrade the runner"
    } else {
        "the runner is newer than this gateway: upgrade the gateway, or run a runner that speaks its version"
    };
    Err(ProtocolError::new(
        ErrorCode::UnsupportedProtocol,
        format!(
            "this gateway speaks runner protocol {gateway}; the runner speaks {runner}: {advice}"
        ),
    ))
}

/// What a runner sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunnerMessage {
    /// The first message: who it is, its key, the versions it speaks.
    /// Its shape never changes across versions.
    Hello {
        protocol: VersionRange,
        runner: RunnerId,
        key: RunnerKey,
        /// A name for people, e.g. the host name.
        name: String,
        /// The runner's build, e.g. `trafficbuster 0.4.1`.
        software: String,
    },
    /// What it can do; after `welcome`, before anything else.
    Register { capabilities: Capabilities },
    /// Still alive, and how many browsers are busy.
    Heartbeat { seq: u64, busy: u32 },
    /// Asks for up to `flows` flows and up to `slots` more browser slots.
    LeaseRequest {
        request: u64,
        slots: u32,
        flows: u64,
    },
    /// A batch of reports on one job's flows. `batch` is the runner's id
    /// for it, the same when it sends the batch again.
    Report {
        batch: Uuid,
        job: JobId,
        reports: Vec<FlowReport>,
    },
    /// Part `part` (from 0) of `parts` of a failed flow's artifact, its
    /// bytes in base64 (version 3). Parts come in order, each answered
    /// before the next is sent; the last one's answer names the blob,
    /// which the flow's report then carries.
    Artifact {
        request: u64,
        job: JobId,
        flow: FlowId,
        kind: ArtifactKind,
        part: u32,
        parts: u32,
        data: String,
    },
    /// Gives flows back unrun; `flows` absent: everything it holds of `job`.
    HandBack {
        request: u64,
        job: JobId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flows: Option<Vec<FlowRange>>,
    },
    /// It wants to stop: it finishes what it holds and takes nothing new.
    Drain {},
    /// It leaves for good.
    Deregister {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// The limits a gateway holds a runner to, told in its welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_messages_per_second: u32,
    pub max_reports_per_batch: usize,
    pub max_flows_per_lease: u64,
    pub max_pages_per_flow: usize,
    pub max_clicks_per_flow: usize,
    pub max_log_chars: usize,
    /// Largest failure artifact; 0 from a gateway that takes none (before
    /// version 3).
    #[serde(default)]
    pub max_artifact_bytes: usize,
}

impl Limits {
    /// This build's limits.
    pub const THIS_BUILD: Limits = Limits {
        max_frame_bytes: MAX_FRAME_BYTES,
        max_messages_per_second: MAX_MESSAGES_PER_SECOND,
        max_reports_per_batch: MAX_REPORTS_PER_BATCH,
        max_flows_per_lease: MAX_FLOWS_PER_LEASE,
        max_pages_per_flow: MAX_PAGES_PER_FLOW,
        max_clicks_per_flow: MAX_CLICKS_PER_FLOW,
        max_log_chars: MAX_LOG_CHARS,
        max_artifact_bytes: MAX_ARTIFACT_BYTES,
    };
}

/// How a visit arrives at its target: what its referrer is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Traffic {
    /// Typed in or bookmarked: no referrer.
    #[default]
    Direct,
    /// From a link on another site: `source` is the referring page's URL.
    Referral { source: String },
    /// From a search engine's results for `keyword`.
    Organic { engine: String, keyword: String },
}

impl Traffic {
    pub fn is_direct(&self) -> bool {
        matches!(self, Traffic::Direct)
    }
}

/// What to do with some of a grant's flows: all of one target, all
/// clicking or all not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowWork {
    pub flows: FlowRange,
    pub target: u32,
    pub url: String,
    /// These flows should click a link.
    pub click: bool,
    /// How the visits arrive; absent: direct. Added in version 2 (optional,
    /// so version 1 runners ignore it).
    #[serde(default, skip_serializing_if = "Traffic::is_direct")]
    pub traffic: Traffic,
    /// The device profile of each of `flows`, in order, by its row in the
    /// job's device profiles version (the brief's `profiles`). Added in
    /// version 2, optional.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<u32>,
}

impl FlowWork {
    /// The device profile row `flow` of this work uses, if it was given.
    pub fn profile_of(&self, flow: FlowId) -> Option<u32> {
        let offset = flow.0.checked_sub(self.flows.start())?;
        if offset >= self.flows.len() {
            return None;
        }
        self.profiles.get(usize::try_from(offset).ok()?).copied()
    }
}

/// Flows leased to the runner, and what to do with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub job: JobId,
    /// Browser slots of the job added to the runner's share.
    pub slots: u32,
    /// The lease lasts this long unless heartbeats keep it.
    pub expires_in_ms: u64,
    pub work: Vec<FlowWork>,
    pub marker_header: bool,
    /// Domains the flows may follow external links to; none when the job
    /// does not click external links.
    #[serde(default)]
    pub external_click_domains: Vec<DomainName>,
}

/// What a gateway sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GatewayMessage {
    /// The hello is accepted: the version agreed and the terms.
    Welcome {
        protocol: u16,
        heartbeat_every_ms: u64,
        lease_ttl_ms: u64,
        limits: Limits,
    },
    /// The registration is recorded.
    Registered {
        draining: bool,
    },
    HeartbeatAck {
        seq: u64,
    },
    LeaseGranted {
        request: u64,
        grant: LeaseGrant,
    },
    /// Nothing to lease now; ask again after `retry_after_ms`.
    NoWork {
        request: u64,
        retry_after_ms: u64,
    },
    /// The batch is recorded; `duplicates` of its reports were known already.
    ReportAccepted {
        batch: Uuid,
        recorded: u32,
        duplicates: u32,
    },
    HandedBack {
        request: u64,
        job: JobId,
    },
    /// An artifact's part is taken (version 3); after the last part,
    /// `artifact` names the stored blob for the flow's report.
    ArtifactStored {
        request: u64,
        part: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        artifact: Option<ArtifactRef>,
    },
    /// The runner's lease ran out: stop these flows, they are not its own.
    LeaseExpired {
        job: JobId,
        flows: Vec<FlowRange>,
    },
    /// Start no new flow of the job; finish or hand back what is running.
    JobPaused {
        job: JobId,
    },
    /// Stop the job's flows now; reports on them are refused.
    JobStopped {
        job: JobId,
    },
    /// Finish what you hold and take nothing new.
    Drain {
        by: String,
    },
    /// Part `part` (from 0) of `parts` of a job's brief (version 2): sent
    /// before the first grant of the job on a connection, and for the jobs
    /// a runner holds when it connects again. Parts come in order, one
    /// after the other; put together, they are the brief.
    JobBrief {
        part: u32,
        parts: u32,
        brief: JobBrief,
    },
    /// The gateway disabled the job's proxy `proxy` (version 2): pick it
    /// for no new flow.
    ProxyDisabled {
        job: JobId,
        proxy: ProxyIndex,
        reason: String,
    },
    /// The job's proxy `proxy` may be picked again (version 2).
    ProxyEnabled {
        job: JobId,
        proxy: ProxyIndex,
    },
    Error(ErrorMessage),
}

impl GatewayMessage {
    /// The message's `type`, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayMessage::Welcome { .. } => "welcome",
            GatewayMessage::Registered { .. } => "registered",
            GatewayMessage::HeartbeatAck { .. } => "heartbeat_ack",
            GatewayMessage::LeaseGranted { .. } => "lease_granted",
            GatewayMessage::NoWork { .. } => "no_work",
            GatewayMessage::ReportAccepted { .. } => "report_accepted",
            GatewayMessage::HandedBack { .. } => "handed_back",
            GatewayMessage::ArtifactStored { .. } => "artifact_stored",
            GatewayMessage::LeaseExpired { .. } => "lease_expired",
            GatewayMessage::JobPaused { .. } => "job_paused",
            GatewayMessage::JobStopped { .. } => "job_stopped",
            GatewayMessage::Drain { .. } => "drain",
            GatewayMessage::JobBrief { .. } => "job_brief",
            GatewayMessage::ProxyDisabled { .. } => "proxy_disabled",
            GatewayMessage::ProxyEnabled { .. } => "proxy_enabled",
            GatewayMessage::Error(_) => "error",
        }
    }

    /// A brief as the `job_brief` messages that carry it, each within the
    /// frame limit.
    pub fn brief_parts(brief: JobBrief) -> Result<Vec<GatewayMessage>, BriefTooLarge> {
        let frame = |part, parts, brief: &JobBrief| {
            serde_json::to_string(&JobBriefFrame {
                kind: "job_brief",
                part,
                parts,
                brief,
            })
            .map_or(usize::MAX / 2, |s| s.len())
        };
        let parts = brief.split(MAX_FRAME_BYTES, frame)?;
        let n = parts.len() as u32;
        Ok(parts
            .into_iter()
            .enumerate()
            .map(|(i, brief)| GatewayMessage::JobBrief {
                part: i as u32,
                parts: n,
                brief,
            })
            .collect())
    }
}

/// A `job_brief` frame as it is encoded, without cloning the brief to measure it.
#[derive(Serialize)]
struct JobBriefFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    part: u32,
    parts: u32,
    brief: &'a JobBrief,
}

/// A refusal, with what it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub code: ErrorCode,
    pub message: String,
    /// The gateway closes the connection after this message.
    pub fatal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Uuid>,
    /// The flows refused (for FLOWS_NOT_HELD), the first few of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<FlowId>,
}

/// Stable machine codes for refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// No protocol version both sides speak. Fatal.
    UnsupportedProtocol,
    /// The key is malformed, unknown or revoked. Fatal.
    Unauthenticated,
    /// A message before `hello` or before `register`. Fatal.
    NotRegistered,
    /// A frame that is not a message this version knows.
    BadMessage,
    /// A frame over the size limit. Fatal.
    FrameTooLarge,
    /// Too many messages. Fatal.
    RateLimited,
    /// A message over a count limit (reports in a batch, flows asked for).
    LimitExceeded,
    /// A report or hand-back names flows the runner does not hold.
    FlowsNotHeld,
    /// A report the job refuses (an unknown proxy, a click without consent).
    BadReport,
    /// A report on a job no longer running.
    JobNotRunning,
    /// The runner's platform serves none of the job's device profiles.
    PlatformMismatch,
    /// The runner is draining and takes no new leases.
    Draining,
    /// The gateway could not record it now; send it again.
    Retry,
    /// A fault in the gateway.
    Internal,
    /// A code from a newer gateway than this runner knows.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Does the gateway close the connection after it?
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::UnsupportedProtocol
                | ErrorCode::Unauthenticated
                | ErrorCode::NotRegistered
                | ErrorCode::FrameTooLarge
                | ErrorCode::RateLimited
        )
    }

    /// The code a job's refusal reaches a runner with.
    pub fn for_job(error: &JobError) -> Self {
        match error {
            JobError::NotHeld { .. } => ErrorCode::FlowsNotHeld,
            JobError::BadReport { .. } => ErrorCode::BadReport,
            JobError::TooManyReports { .. } | JobError::ReportTooLarge { .. } => {
                ErrorCode::LimitExceeded
            }
            JobError::WrongStatus { .. }
            | JobError::AlreadyRunning
            | JobError::InstancesInUse { .. }
            | JobError::ConsentLapsed { .. }
            | JobError::NotFound => ErrorCode::JobNotRunning,
            JobError::PlatformMismatch { .. } => ErrorCode::PlatformMismatch,
            JobError::Forbidden(_)
            | JobError::Exists
            | JobError::Invalid(_)
            | JobError::SafeMode(_)
            | JobError::NotLicensed(_)
            | JobError::NoConsent(_)
            | JobError::BadTtl => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// A message refused: the code, and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The error as the gateway sends it.
    pub fn into_message(self) -> ErrorMessage {
        ErrorMessage {
            fatal: self.code.is_fatal(),
            code: self.code,
            message: self.message,
            request: None,
            batch: None,
            flows: Vec::new(),
        }
    }
}

/// Reads one text frame from a runner: the size first, then the JSON, then
/// the limits, each refusal saying what was wrong.
pub fn decode_runner_message(frame: &str) -> Result<RunnerMessage, ProtocolError> {
    check_size(frame)?;
    let message: RunnerMessage = serde_json::from_str(frame)
        .map_err(|e| ProtocolError::new(ErrorCode::BadMessage, bad_json(&e)))?;
    message.check_limits()?;
    Ok(message)
}

/// Reads one text frame from a gateway.
pub fn decode_gateway_message(frame: &str) -> Result<GatewayMessage, ProtocolError> {
    check_size(frame)?;
    serde_json::from_str(frame).map_err(|e| ProtocolError::new(ErrorCode::BadMessage, bad_json(&e)))
}

/// One message as a text frame.
pub fn encode<M: Serialize>(message: &M) -> String {
    serde_json::to_string(message).expect("protocol messages always serialize")
}

fn check_size(frame: &str) -> Result<(), ProtocolError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::new(
            ErrorCode::FrameTooLarge,
            format!(
                "a frame of {} bytes; the limit is {MAX_FRAME_BYTES}: send smaller batches",
                frame.len()
            ),
        ));
    }
    Ok(())
}

fn bad_json(e: &serde_json::Error) -> String {
    format!("the frame is not a message of protocol {PROTOCOL_VERSION}: {e}")
}

fn over(what: &str, count: impl fmt::Display, limit: impl fmt::Display) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::LimitExceeded,
        format!("{what}: {count} given, at most {limit}"),
    )
}

impl RunnerMessage {
    /// Are the message's counts within the protocol's limits?
    pub fn check_limits(&self) -> Result<(), ProtocolError> {
        match self {
            RunnerMessage::Hello { name, software, .. } => {
                for (field, text) in [("name", name), ("software", software)] {
                    let len = text.chars().count();
                    if len > MAX_HELLO_TEXT {
                        return Err(over(
                            &format!("hello.{field} characters"),
                            len,
                            MAX_HELLO_TEXT,
                        ));
                    }
                }
            }
            RunnerMessage::Report { reports, .. } if reports.len() > MAX_REPORTS_PER_BATCH => {
                return Err(over(
                    "reports in one batch",
                    reports.len(),
                    MAX_REPORTS_PER_BATCH,
                ));
            }
            RunnerMessage::Artifact {
                part, parts, data, ..
            } => {
                if *parts == 0 || *parts > MAX_ARTIFACT_PARTS {
                    return Err(over("parts of one artifact", parts, MAX_ARTIFACT_PARTS));
                }
                if part >= parts {
                    return Err(ProtocolError::new(
                        ErrorCode::BadMessage,
                        format!("artifact part {part} of {parts}: parts count from 0"),
                    ));
                }
                let most = ARTIFACT_PART_BYTES.div_ceil(3) * 4;
                if data.len() > most {
                    return Err(over(
                        "base64 characters in one artifact part",
                        data.len(),
                        most,
                    ));
                }
            }
            RunnerMessage::LeaseRequest { flows, .. } if *flows > MAX_FLOWS_PER_LEASE => {
                return Err(over(
                    "flows in one lease request",
                    flows,
                    MAX_FLOWS_PER_LEASE,
                ));
            }
            RunnerMessage::HandBack {
                flows: Some(flows), ..
            } if flows.len() > MAX_RANGES_PER_HAND_BACK => {
                return Err(over(
                    "ranges in one hand-back",
                    flows.len(),
                    MAX_RANGES_PER_HAND_BACK,
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::flow::{FlowFinished, FlowOutcome};
    use crate::runner::tests::linux_chromium;

    fn range(oldest: u16, newest: u16) -> VersionRange {
        VersionRange { oldest, newest }
    }

    fn key() -> RunnerKey {
        RunnerKey::parse(&"k".repeat(43)).unwrap()
    }

    fn hello() -> RunnerMessage {
        RunnerMessage::Hello {
            protocol: VersionRange::THIS_BUILD,
            runner: RunnerId(Uuid::from_u128(1)),
            key: key(),
            name: "rack-1".into(),
            software: "trafficbuster 0.1.0".into(),
        }
    }

    #[test]
    fn the_newest_version_both_speak_is_chosen() {
        assert_eq!(negotiate(range(1, 3), range(2, 5)), Ok(3));
        assert_eq!(negotiate(range(2, 5), range(1, 3)), Ok(3));
        assert_eq!(negotiate(range(1, 1), range(1, 1)), Ok(1));
    }

    #[test]
    fn a_runner_too_old_or_too_new_is_told_which_side_to_upgrade() {
        let err = negotiate(range(3, 4), range(1, 2)).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedProtocol);
        assert_eq!(
            err.message,
            "this gateway speaks runner protocol versions 3 to 4; the runner speaks versions 1 to 2: the runner is older than this gateway supports: upgrade the runner"
        );
        let err = negotiate(range(1, 1), range(2, 2)).unwrap_err();
        assert!(
            err.message
                .ends_with("upgrade the gateway, or run a runner that speaks its version"),
            "{err}"
        );
        let err = negotiate(range(1, 1), range(2, 1)).unwrap_err();
        assert!(err.message.contains("empty range"), "{err}");
        assert!(err.code.is_fatal());
    }

    #[test]
    fn messages_are_json_tagged_by_type_and_read_back() {
        assert_eq!(
            encode(&RunnerMessage::Heartbeat { seq: 7, busy: 2 }),
            r#"{"type":"heartbeat","seq":7,"busy":2}"#
        );
        let messages = [
            hello(),
            RunnerMessage::Register {
                capabilities: Capabilities {
                    platform: linux_chromium(),
                    browser_version: "126".into(),
                    max_instances: 4,
                    labels: BTreeMap::from([("region".into(), "eu".into())]),
                },
            },
            RunnerMessage::LeaseRequest {
                request: 1,
                slots: 2,
                flows: 128,
            },
            RunnerMessage::Report {
                batch: Uuid::from_u128(9),
                job: JobId(Uuid::from_u128(4)),
                reports: vec![FlowReport::Finished(FlowFinished {
                    flow: FlowId(3),
                    outcome: FlowOutcome::Succeeded,
                    duration_ms: 10,
                    proxy: None,
                    pages: vec![],
                    clicks: vec![],
                    artifacts: vec![],
                })],
            },
            RunnerMessage::HandBack {
                request: 2,
                job: JobId(Uuid::from_u128(4)),
                flows: None,
            },
            RunnerMessage::Drain {},
            RunnerMessage::Deregister { reason: None },
        ];
        for m in messages {
            assert_eq!(decode_runner_message(&encode(&m)), Ok(m));
        }
        let grant = GatewayMessage::LeaseGranted {
            request: 1,
            grant: LeaseGrant {
                job: JobId(Uuid::from_u128(4)),
                slots: 1,
                expires_in_ms: 30_000,
                work: vec![FlowWork {
                    flows: FlowRange::new(0, 3).unwrap(),
                    target: 0,
                    url: "https://shop.example.com/".into(),
                    click: true,
                    traffic: Traffic::Organic {
                        engine: "google".into(),
                        keyword: "blue shoes".into(),
                    },
                    profiles: vec![1, 4, 1],
                }],
                marker_header: true,
                external_click_domains: vec![],
            },
        };
        assert_eq!(decode_gateway_message(&encode(&grant)), Ok(grant));
        let error = GatewayMessage::Error(
            ProtocolError::new(ErrorCode::FlowsNotHeld, "runner … does not hold flow 5")
                .into_message(),
        );
        let json = encode(&error);
        assert!(
            json.starts_with(r#"{"type":"error","code":"FLOWS_NOT_HELD","#),
            "{json}"
        );
        assert_eq!(decode_gateway_message(&json), Ok(error));
    }

    #[test]
    fn a_version_1_runner_is_answered_in_version_1_and_a_version_2_one_in_2() {
        assert_eq!(negotiate(VersionRange::THIS_BUILD, range(1, 1)), Ok(1));
        assert_eq!(negotiate(VersionRange::THIS_BUILD, range(1, 2)), Ok(2));
        assert_eq!(negotiate(VersionRange::THIS_BUILD, range(2, 2)), Ok(2));
        assert_eq!(negotiate(VersionRange::THIS_BUILD, range(2, 7)), Ok(3));
        // A version 1 gateway and this runner agree on 1: no briefs.
        assert_eq!(negotiate(range(1, 1), VersionRange::THIS_BUILD), Ok(1));
        const { assert!(BRIEFS_SINCE > 1 && BRIEFS_SINCE <= PROTOCOL_VERSION) };
    }

    #[test]
    fn briefs_and_proxy_notices_read_back_and_a_work_names_each_flows_profile() {
        let brief = crate::job_brief::tests::brief(3, 2);
        let job = brief.job;
        let messages = GatewayMessage::brief_parts(brief.clone())
            .unwrap()
            .into_iter()
            .chain([
                GatewayMessage::ProxyDisabled {
                    job,
                    proxy: ProxyIndex(2),
                    reason: "3 failures within 120 s; last: connect timeout".into(),
                },
                GatewayMessage::ProxyEnabled {
                    job,
                    proxy: ProxyIndex(2),
                },
            ]);
        for m in messages {
            let json = encode(&m);
            assert!(
                json.starts_with(&format!(r#"{{"type":"{}","#, m.kind())),
                "{json}"
            );
            assert_eq!(decode_gateway_message(&json), Ok(m));
        }
        let work = FlowWork {
            flows: FlowRange::new(10, 13).unwrap(),
            target: 0,
            url: "https://shop.example.com/".into(),
            click: false,
            traffic: Traffic::Direct,
            profiles: vec![4, 1, 4],
        };
        let json = serde_json::to_string(&work).unwrap();
        assert!(!json.contains("traffic"), "direct is left out: {json}");
        assert_eq!(work.profile_of(FlowId(11)), Some(1));
        assert_eq!(work.profile_of(FlowId(13)), None);
        assert_eq!(work.profile_of(FlowId(9)), None);
    }

    #[test]
    fn a_brief_too_large_for_a_frame_goes_in_parts_that_each_fit() {
        let brief = crate::job_brief::tests::brief(6000, 3000);
        let parts = GatewayMessage::brief_parts(brief.clone()).unwrap();
        assert!(parts.len() >= 4, "{} parts", parts.len());
        let mut assembly = crate::job_brief::BriefAssembly::default();
        let mut whole = None;
        for m in parts {
            let json = encode(&m);
            assert!(json.len() <= MAX_FRAME_BYTES, "{} bytes", json.len());
            let Ok(GatewayMessage::JobBrief { part, parts, brief }) = decode_gateway_message(&json)
            else {
                panic!("not a brief part")
            };
            whole = assembly.take(part, parts, brief).unwrap();
        }
        assert_eq!(whole, Some(brief));
    }

    #[test]
    fn a_newer_gateways_optional_fields_and_error_codes_do_not_break_an_older_runner() {
        let from_newer =
            r#"{"type":"error","code":"SOMETHING_NEW","message":"m","fatal":false,"hint":"x"}"#;
        let Ok(GatewayMessage::Error(e)) = decode_gateway_message(from_newer) else {
            panic!("not read")
        };
        assert_eq!(e.code, ErrorCode::Unknown);
        let welcome = r#"{"type":"welcome","protocol":1,"heartbeat_every_ms":5000,"lease_ttl_ms":30000,
            "limits":{"max_frame_bytes":1,"max_messages_per_second":1,"max_reports_per_batch":1,
            "max_flows_per_lease":1,"max_pages_per_flow":1,"max_clicks_per_flow":1,"max_log_chars":1,
            "max_something_new":3},"compression":"none"}"#;
        assert!(matches!(
            decode_gateway_message(welcome),
            Ok(GatewayMessage::Welcome { protocol: 1, .. })
        ));
    }

    #[test]
    fn bad_frames_are_refused_saying_what_was_wrong() {
        let err = decode_runner_message(r#"{"type":"teleport"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadMessage);
        assert!(err.message.contains("unknown variant `teleport`"), "{err}");
        assert!(
            err.message.contains("`hello`"),
            "it lists the types it knows: {err}"
        );
        let err = decode_runner_message("not json").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadMessage);
        let err = decode_runner_message(r#"{"type":"heartbeat","seq":-1,"busy":0}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadMessage);
        let big = format!(
            r#"{{"type":"drain","pad":"{}"}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        let err = decode_runner_message(&big).unwrap_err();
        assert_eq!(err.code, ErrorCode::FrameTooLarge);
        assert!(err.code.is_fatal());
        let err =
            decode_runner_message(r#"{"type":"lease_request","request":1,"slots":1,"flows":5000}"#)
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "LIMIT_EXCEEDED: flows in one lease request: 5000 given, at most 1000"
        );
        let bad_key = encode(&hello()).replace(&"k".repeat(43), "short");
        let err = decode_runner_message(&bad_key).unwrap_err();
        assert!(err.message.contains("runner key"), "{err}");
        let bad_range = r#"{"type":"hand_back","request":1,"job":"00000000-0000-0000-0000-000000000004","flows":[[5,5]]}"#;
        assert!(
            decode_runner_message(bad_range)
                .unwrap_err()
                .message
                .contains("empty or reversed")
        );
    }

    #[test]
    fn an_artifact_part_fits_a_frame_and_its_counts_are_checked() {
        let part = |part, parts, data: String| RunnerMessage::Artifact {
            request: 5,
            job: JobId(Uuid::from_u128(4)),
            flow: FlowId(9),
            kind: ArtifactKind::Screenshot,
            part,
            parts,
            data,
        };
        let full = "A".repeat(ARTIFACT_PART_BYTES.div_ceil(3) * 4);
        let json = encode(&part(0, MAX_ARTIFACT_PARTS, full.clone()));
        assert!(json.len() <= MAX_FRAME_BYTES, "{} bytes", json.len());
        assert!(
            json.starts_with(r#"{"type":"artifact","request":5,"#),
            "{}",
            &json[..60]
        );
        assert_eq!(
            decode_runner_message(&json),
            Ok(part(0, MAX_ARTIFACT_PARTS, full.clone()))
        );
        let err = decode_runner_message(&encode(&part(0, MAX_ARTIFACT_PARTS + 1, "AA".into())))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        let err = decode_runner_message(&encode(&part(2, 2, "AA".into()))).unwrap_err();
        assert!(err.message.contains("count from 0"), "{err}");
        let err = decode_runner_message(&encode(&part(0, 1, format!("{full}AAAA")))).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        let stored = GatewayMessage::ArtifactStored {
            request: 5,
            part: 0,
            artifact: Some(ArtifactRef {
                kind: ArtifactKind::Screenshot,
                blob: crate::BlobHash::of(b"png"),
                bytes: 3,
            }),
        };
        assert_eq!(decode_gateway_message(&encode(&stored)), Ok(stored));
    }

    #[test]
    fn a_hello_never_shows_its_key_in_debug() {
        let shown = format!("{:?}", hello());
        assert!(!shown.contains(&"k".repeat(43)), "{shown}");
        assert!(shown.contains("RunnerKey(..)"));
    }

    #[test]
    fn the_examples_in_the_protocol_doc_decode() {
        let doc = include_str!("../../docs/runner-protocol.md");
        let mut examples = 0;
        for block in doc.split("```json").skip(1) {
            let json = block.split("```").next().unwrap_or_default();
            let runner = decode_runner_message(json);
            let gateway = decode_gateway_message(json);
            assert!(
                runner.is_ok() || gateway.is_ok(),
                "{json}\nas a runner message: {runner:?}\nas a gateway message: {gateway:?}"
            );
            examples += 1;
        }
        assert!(examples >= 10, "only {examples} examples found");
    }

    #[test]
    fn the_welcome_tells_the_limits_the_gateway_enforces() {
        let limits = Limits::THIS_BUILD;
        assert_eq!(limits.max_reports_per_batch, MAX_REPORTS_PER_BATCH);
        assert_eq!(limits.max_flows_per_lease, MAX_FLOWS_PER_LEASE);
        // A batch that fits a frame fits an event: the job decider's byte
        // limit guards only other ways in (an in-process runner).
        const { assert!(MAX_FRAME_BYTES < crate::job::MAX_REPORT_BYTES) };
    }
}

//! A webhook: an account's receiver URL for the topics it chose. Stream
//! `webhook-<id>`.
//!
//! The stream also records every delivery attempt and redelivery request,
//! so what was sent, when, and what the receiver answered is as auditable
//! as anything else. Which events become deliveries is the `webhooks`
//! view's work (a delivery checkpoint, like any view); the gateway's sender
//! reads due deliveries there and records each attempt here.
//!
//! The signing secret enters an event only sealed with the gateway's data
//! key: the gateway seals and opens it; this module never sees it in clear.
//!
//! Pure: the time comes in the [`Context`].

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::account::Username;
use crate::decider::{Context, Decider};
use crate::envelope::{StreamId, StreamIdError};
use crate::reason::one_line;

/// Longest accepted URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Longest error kept of one attempt, in characters.
pub const MAX_ERROR_CHARS: usize = 300;

/// A webhook's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookId(pub Uuid);

impl WebhookId {
    /// The webhook's stream: `webhook-<id>`.
    pub fn stream(self) -> Result<StreamId, StreamIdError> {
        StreamId::for_aggregate("webhook", self.0)
    }

    /// The webhook `stream` belongs to.
    pub fn of_stream(stream: &str) -> Option<Self> {
        stream
            .strip_prefix("webhook-")
            .and_then(|id| Uuid::parse_str(id).ok())
            .map(Self)
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One event sent to one webhook: `<event id>.<webhook id>`. Derived from
/// both, so a rebuilt view names every delivery as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId {
    pub event: Uuid,
    pub webhook: WebhookId,
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.event, self.webhook)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a delivery id is <event id>.<webhook id>, as webhookDeliveries lists it")]
pub struct DeliveryIdError;

impl std::str::FromStr for DeliveryId {
    type Err = DeliveryIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (event, webhook) = s.trim().split_once('.').ok_or(DeliveryIdError)?;
        Ok(Self {
            event: Uuid::parse_str(event).map_err(|_| DeliveryIdError)?,
            webhook: WebhookId(Uuid::parse_str(webhook).map_err(|_| DeliveryIdError)?),
        })
    }
}

impl Serialize for DeliveryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeliveryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a webhook can be told about: each names one kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Topic {
    #[serde(rename = "job.started")]
    JobStarted,
    #[serde(rename = "job.done")]
    JobDone,
    /// The job ended in failure: today, its error-rate threshold aborted it.
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.stopped")]
    JobStopped,
    /// The system paused it (safe mode, a consent lapsed).
    #[serde(rename = "job.halted")]
    JobHalted,
    #[serde(rename = "schedule.fired")]
    ScheduleFired,
    #[serde(rename = "schedule.refused")]
    ScheduleRefused,
    #[serde(rename = "proxy.disabled")]
    ProxyDisabled,
    /// Runners are the fleet's, not an account's: admins only.
    #[serde(rename = "runner.offline")]
    RunnerOffline,
}

impl Topic {
    pub const ALL: [Topic; 9] = [
        Topic::JobStarted,
        Topic::JobDone,
        Topic::JobFailed,
        Topic::JobStopped,
        Topic::JobHalted,
        Topic::ScheduleFired,
        Topic::ScheduleRefused,
        Topic::ProxyDisabled,
        Topic::RunnerOffline,
    ];

    /// The name on the wire and in `createWebhook`'s `events`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::JobStarted => "job.started",
            Topic::JobDone => "job.done",
            Topic::JobFailed => "job.failed",
            Topic::JobStopped => "job.stopped",
            Topic::JobHalted => "job.halted",
            Topic::ScheduleFired => "schedule.fired",
            Topic::ScheduleRefused => "schedule.refused",
            Topic::ProxyDisabled => "proxy.disabled",
            Topic::RunnerOffline => "runner.offline",
        }
    }

    /// The topic of a recorded event type, if webhooks hear of it.
    pub fn of_event_type(event_type: &str) -> Option<Topic> {
        Some(match event_type {
            "JobStarted" => Topic::JobStarted,
            "JobCompleted" => Topic::JobDone,
            "JobFailed" => Topic::JobFailed,
            "JobStopped" => Topic::JobStopped,
            "JobHalted" => Topic::JobHalted,
            "ScheduleFired" => Topic::ScheduleFired,
            "ScheduleFireRefused" => Topic::ScheduleRefused,
            "ProxyDisabled" => Topic::ProxyDisabled,
            "RunnerWentOffline" => Topic::RunnerOffline,
            _ => return None,
        })
    }

    /// Does it concern the whole fleet rather than one account?
    pub fn fleet_wide(self) -> bool {
        self == Topic::RunnerOffline
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Topic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::ALL
            .into_iter()
            .find(|t| t.as_str() == s.trim())
            .ok_or_else(|| {
                let known: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown event {:?}; known: {}", s.trim(), known.join(", "))
            })
    }
}

/// Why a URL cannot receive webhooks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("it is not a URL: {0}")]
    Unparsable(String),
    #[error("its scheme is {0:?}; webhooks are sent over http or https")]
    Scheme(String),
    #[error("it names no host")]
    NoHost,
    #[error("it carries a user name or password; put secrets in the webhook's secret, not its URL")]
    Credentials,
    #[error("it is longer than {MAX_URL_LEN} bytes")]
    TooLong,
}

/// A receiver's address, checked: http(s), a host, no credentials (they
/// would enter the event log in clear).
pub fn check_url(raw: &str) -> Result<String, UrlError> {
    let raw = raw.trim();
    if raw.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let url = url::Url::parse(raw).map_err(|e| UrlError::Unparsable(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme(url.scheme().to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    Ok(url.to_string())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookCreated {
    pub webhook: WebhookId,
    pub owner: Username,
    pub url: String,
    pub topics: BTreeSet<Topic>,
    /// The signing secret, sealed with the gateway's data key.
    pub sealed_secret: String,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDeleted {
    pub by: String,
}

/// One try at sending a delivery, and what comes next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDeliveryAttempted {
    pub delivery: DeliveryId,
    /// 1 for the first try of this delivery.
    pub attempt: u32,
    /// The receiver's HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it did not count as delivered (no 2xx), in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub delivered: bool,
    pub duration_ms: u64,
    /// When the next try is due; `None` with `delivered` false: given up.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRedeliveryRequested {
    pub delivery: DeliveryId,
    pub by: String,
}

crate::event_set! {
    /// What happens to a webhook.
    pub enum WebhookEvent {
        WebhookCreated(WebhookCreated) = 1,
        WebhookDeleted(WebhookDeleted) = 1,
        WebhookDeliveryAttempted(WebhookDeliveryAttempted) = 1,
        WebhookRedeliveryRequested(WebhookRedeliveryRequested) = 1,
    }
}

impl crate::registry::Summary for WebhookEvent {
    // Never the secret, sealed or not.
    fn summary(&self, stream: &StreamId) -> String {
        match self {
            Self::WebhookCreated(c) => {
                let topics: Vec<&str> = c.topics.iter().map(|t| t.as_str()).collect();
                format!(
                    "{} created {stream} for {} to {} ({})",
                    c.by,
                    c.owner,
                    c.url,
                    topics.join(", ")
                )
            }
            Self::WebhookDeleted(d) => format!("{} deleted {stream}", d.by),
            Self::WebhookDeliveryAttempted(a) => {
                let answer = a
                    .status
                    .map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
                let outcome = match (a.delivered, a.next_attempt_at) {
                    (true, _) => "delivered".to_owned(),
                    (false, Some(next)) => format!("retry at {next}"),
                    (false, None) => "given up".to_owned(),
                };
                format!(
                    "delivery {} attempt {} on {stream}: {answer}, {outcome}",
                    a.delivery, a.attempt
                )
            }
            Self::WebhookRedeliveryRequested(r) => {
                format!("{} asked to redeliver {} on {stream}", r.by, r.delivery)
            }
        }
    }
}

/// Commands on a webhook.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookCommand {
    /// `sealed_secret` is the secret as the gateway sealed it.
    Create {
        webhook: WebhookId,
        owner: Username,
        url: String,
        topics: Vec<Topic>,
        sealed_secret: String,
    },
    Delete,
    /// The sender's record of one try (the system's).
    RecordAttempt(WebhookDeliveryAttempted),
    Redeliver {
        delivery: DeliveryId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {0} exists already")]
    Exists(WebhookId),
    #[error("there is no such webhook")]
    NotFound,
    #[error("the webhook was deleted")]
    Deleted,
    #[error("only {0}, an admin or the system may change this webhook")]
    Forbidden(Username),
    #[error("a webhook is created for one's own account, unless one is an admin")]
    NotYourAccount,
    #[error("url: {0}")]
    BadUrl(UrlError),
    #[error("events: choose at least one")]
    NoTopics,
    #[error("events: {0} concerns the whole fleet; only admins may hear of it")]
    FleetTopic(Topic),
    #[error("only the system records delivery attempts")]
    NotTheSender,
    #[error("delivery {0} is not this webhook's")]
    OtherWebhook(DeliveryId),
}

/// A webhook as its stream has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookState {
    pub created: Option<Created>,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub webhook: WebhookId,
    pub owner: Username,
    pub url: String,
    pub topics: BTreeSet<Topic>,
}

pub struct Webhook;

inventory::submit! { crate::replay::Replayer::of::<Webhook>() }

impl Decider for Webhook {
    const SNAPSHOT_KIND: &'static str = "webhook/1";
    type State = WebhookState;
    type Command = WebhookCommand;
    type Event = WebhookEvent;
    type Error = WebhookError;

    fn evolve(mut state: WebhookState, event: &WebhookEvent) -> WebhookState {
        match event {
            WebhookEvent::WebhookCreated(c) => {
                state.created = Some(Created {
                    webhook: c.webhook,
                    owner: c.owner.clone(),
                    url: c.url.clone(),
                    topics: c.topics.clone(),
                });
            }
            WebhookEvent::WebhookDeleted(_) => state.deleted = true,
            WebhookEvent::WebhookDeliveryAttempted(_)
            | WebhookEvent::WebhookRedeliveryRequested(_) => {}
        }
        state
    }

    fn decide(
        state: &WebhookState,
        command: WebhookCommand,
        ctx: &Context,
    ) -> Result<Vec<WebhookEvent>, WebhookError> {
        let by = ctx.actor.name();
        if let WebhookCommand::Create {
            webhook,
            owner,
            url,
            topics,
            sealed_secret,
        } = command
        {
            if state.created.is_some() {
                return Err(WebhookError::Exists(webhook));
            }
            if !ctx.actor.acts_for(owner.as_str()) {
                return Err(WebhookError::NotYourAccount);
            }
            let url = check_url(&url).map_err(WebhookError::BadUrl)?;
            let topics: BTreeSet<Topic> = topics.into_iter().collect();
            if topics.is_empty() {
                return Err(WebhookError::NoTopics);
            }
            if let Some(fleet) = topics.iter().find(|t| t.fleet_wide())
                && !ctx.actor.is_admin()
            {
                return Err(WebhookError::FleetTopic(*fleet));
            }
            return Ok(vec![WebhookEvent::WebhookCreated(WebhookCreated {
                webhook,
                owner,
                url,
                topics,
                sealed_secret,
                by,
            })]);
        }
        let created = state.created.as_ref().ok_or(WebhookError::NotFound)?;
        match command {
            WebhookCommand::Create { .. } => unreachable!("handled above"),
            WebhookCommand::Delete => {
                if !ctx.actor.acts_for(created.owner.as_str()) {
                    return Err(WebhookError::Forbidden(created.owner.clone()));
                }
                if state.deleted {
                    return Ok(vec![]);
                }
                Ok(vec![WebhookEvent::WebhookDeleted(WebhookDeleted { by })])
            }
            WebhookCommand::RecordAttempt(mut attempt) => {
                if ctx.actor != crate::decider::Actor::System {
                    return Err(WebhookError::NotTheSender);
                }
                if attempt.delivery.webhook != created.webhook {
                    return Err(WebhookError::OtherWebhook(attempt.delivery));
                }
                attempt.error = attempt.error.map(|e| one_line(&e, MAX_ERROR_CHARS));
                Ok(vec![WebhookEvent::WebhookDeliveryAttempted(attempt)])
            }
            WebhookCommand::Redeliver { delivery } => {
                if !ctx.actor.acts_for(created.owner.as_str()) {
                    return Err(WebhookError::Forbidden(created.owner.clone()));
                }
                if state.deleted {
                    return Err(WebhookError::Deleted);
                }
                if delivery.webhook != created.webhook {
                    return Err(WebhookError::OtherWebhook(delivery));
                }
                Ok(vec![WebhookEvent::WebhookRedeliveryRequested(
                    WebhookRedeliveryRequested { delivery, by },
                )])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::decider::{Actor, Role};
    use crate::spec::{Spec, acting_as};

    const NOW: OffsetDateTime = datetime!(2026-11-24 09:00 UTC);

    fn id() -> WebhookId {
        WebhookId(Uuid::from_u128(7))
    }

    fn ada() -> Username {
        Username::parse("ada").unwrap()
    }

    fn create(topics: &[Topic]) -> WebhookCommand {
        WebhookCommand::Create {
            webhook: id(),
            owner: ada(),
            url: " https://hooks.example.com/tb ".into(),
            topics: topics.to_vec(),
            sealed_secret: "c2VhbGVk".into(),
        }
    }

    fn created() -> WebhookEvent {
        WebhookEvent::WebhookCreated(WebhookCreated {
            webhook: id(),
            owner: ada(),
            url: "https://hooks.example.com/tb".into(),
            topics: [Topic::JobDone, Topic::JobFailed].into(),
            sealed_secret: "c2VhbGVk".into(),
            by: "ada".into(),
        })
    }

    fn delivery() -> DeliveryId {
        DeliveryId {
            event: Uuid::from_u128(99),
            webhook: id(),
        }
    }

    fn attempt(n: u32, delivered: bool) -> WebhookDeliveryAttempted {
        WebhookDeliveryAttempted {
            delivery: delivery(),
            attempt: n,
            status: Some(if delivered { 200 } else { 500 }),
            error: (!delivered).then(|| "HTTP 500\nInternal  Server Error".into()),
            delivered,
            duration_ms: 12,
            next_attempt_at: (!delivered).then_some(NOW + time::Duration::seconds(30)),
        }
    }

    fn system() -> Context {
        Context::new(NOW, Actor::System)
    }

    #[test]
    fn a_user_creates_a_webhook_for_their_account_with_a_checked_url() {
        let state = Spec::<Webhook>::given([])
            .in_context(acting_as("ada", Role::User, NOW))
            .when(create(&[Topic::JobFailed, Topic::JobDone, Topic::JobDone]))
            .then([created()]);
        assert_eq!(state.created.unwrap().topics.len(), 2);
    }

    #[test]
    fn bad_urls_are_refused_saying_why() {
        for (url, why) in [
            ("ftp://example.com/x", "scheme is \"ftp\""),
            ("not a url", "not a URL"),
            ("https://user:pw@example.com/", "user name or password"),
            ("file:///etc/passwd", "scheme is \"file\""),
        ] {
            let mut command = create(&[Topic::JobDone]);
            if let WebhookCommand::Create { url: u, .. } = &mut command {
                *u = url.into();
            }
            Spec::<Webhook>::given([])
                .in_context(acting_as("ada", Role::User, NOW))
                .when(command)
                .then_err(|e| {
                    let text = e.to_string();
                    text.starts_with("url: ") && text.contains(why)
                });
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(check_url(&long), Err(UrlError::TooLong));
    }

    #[test]
    fn no_topics_another_account_and_fleet_topics_need_the_right_actor() {
        Spec::<Webhook>::given([])
            .in_context(acting_as("ada", Role::User, NOW))
            .when(create(&[]))
            .then_err(|e| *e == WebhookError::NoTopics);
        Spec::<Webhook>::given([])
            .in_context(acting_as("bob", Role::User, NOW))
            .when(create(&[Topic::JobDone]))
            .then_err(|e| *e == WebhookError::NotYourAccount);
        Spec::<Webhook>::given([])
            .in_context(acting_as("ada", Role::User, NOW))
            .when(create(&[Topic::RunnerOffline]))
            .then_err(|e| *e == WebhookError::FleetTopic(Topic::RunnerOffline));
        let mut for_admin = created();
        if let WebhookEvent::WebhookCreated(c) = &mut for_admin {
            c.topics = [Topic::RunnerOffline].into();
            c.by = "root".into();
        }
        Spec::<Webhook>::given([])
            .in_context(acting_as("root", Role::Admin, NOW))
            .when(create(&[Topic::RunnerOffline]))
            .then([for_admin]);
    }

    #[test]
    fn attempts_are_the_systems_and_on_their_own_webhook() {
        Spec::<Webhook>::given([created()])
            .in_context(acting_as("ada", Role::User, NOW))
            .when(WebhookCommand::RecordAttempt(attempt(1, false)))
            .then_err(|e| *e == WebhookError::NotTheSender);
        let mut one_line = attempt(1, false);
        one_line.error = Some("HTTP 500 Internal  Server Error".into());
        Spec::<Webhook>::given([created()])
            .in_context(system())
            .when(WebhookCommand::RecordAttempt(attempt(1, false)))
            .then([WebhookEvent::WebhookDeliveryAttempted(one_line)]);
        let mut elsewhere = attempt(2, true);
        elsewhere.delivery.webhook = WebhookId(Uuid::from_u128(8));
        Spec::<Webhook>::given([created()])
            .in_context(system())
            .when(WebhookCommand::RecordAttempt(elsewhere.clone()))
            .then_err(|e| *e == WebhookError::OtherWebhook(elsewhere.delivery));
    }

    #[test]
    fn the_owner_redelivers_and_deletes_others_may_not() {
        Spec::<Webhook>::given([created()])
            .in_context(acting_as("bob", Role::User, NOW))
            .when(WebhookCommand::Redeliver {
                delivery: delivery(),
            })
            .then_err(|e| *e == WebhookError::Forbidden(ada()));
        Spec::<Webhook>::given([created()])
            .in_context(acting_as("ada", Role::User, NOW))
            .when(WebhookCommand::Redeliver {
                delivery: delivery(),
            })
            .then([WebhookEvent::WebhookRedeliveryRequested(
                WebhookRedeliveryRequested {
                    delivery: delivery(),
                    by: "ada".into(),
                },
            )]);
        let deleted = WebhookEvent::WebhookDeleted(WebhookDeleted { by: "ada".into() });
        Spec::<Webhook>::given([created()])
            .in_context(acting_as("ada", Role::User, NOW))
            .when(WebhookCommand::Delete)
            .then([deleted.clone()]);
        Spec::<Webhook>::given([created(), deleted.clone()])
            .in_context(acting_as("ada", Role::User, NOW))
            .when(WebhookCommand::Delete)
            .then([]);
        Spec::<Webhook>::given([created(), deleted])
            .in_context(acting_as("ada", Role::User, NOW))
            .when(WebhookCommand::Redeliver {
                delivery: delivery(),
            })
            .then_err(|e| *e == WebhookError::Deleted);
        Spec::<Webhook>::given([])
            .in_context(acting_as("ada", Role::User, NOW))
            .when(WebhookCommand::Delete)
            .then_err(|e| *e == WebhookError::NotFound);
    }

    #[test]
    fn delivery_ids_and_topics_read_back_and_name_their_mistakes() {
        let d = delivery();
        assert_eq!(d.to_string().parse::<DeliveryId>(), Ok(d));
        assert_eq!("nonsense".parse::<DeliveryId>(), Err(DeliveryIdError));
        for topic in Topic::ALL {
            assert_eq!(topic.as_str().parse::<Topic>(), Ok(topic));
            let json = serde_json::to_string(&topic).unwrap();
            assert_eq!(json, format!("\"{topic}\""));
        }
        let err = "job.finished".parse::<Topic>().unwrap_err();
        assert!(err.contains("unknown event \"job.finished\"") && err.contains("job.done"));
        assert_eq!(Topic::of_event_type("JobCompleted"), Some(Topic::JobDone));
        assert_eq!(Topic::of_event_type("FlowsReported"), None);
    }
}

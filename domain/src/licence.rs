//! The licence: what an account may use (features) and how much (limits),
//! until when. Stream `licence-<username>`.
//!
//! Every later command a licence governs checks it in its decider through
//! [`LicenceTerms::require`] / [`LicenceTerms::require_within`]; a refusal
//! is [`NotLicensed`], which the gateway reports as FEATURE_NOT_LICENSED.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::decider::{Context, Decider};

/// A switch in the feature matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Feature {
    HumanSurfing,
    ImportProxy,
    Scheduler,
    ExternalClicks,
}

impl Feature {
    /// The name clients see (GraphQL field names).
    pub fn name(self) -> &'static str {
        match self {
            Feature::HumanSurfing => "humanSurfing",
            Feature::ImportProxy => "importProxy",
            Feature::Scheduler => "scheduler",
            Feature::ExternalClicks => "externalClicks",
        }
    }
}

/// A counted allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Limit {
    MaxInstances,
    MaxTargets,
    MaxFlowsPerDay,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Limit::MaxInstances => "maxInstances",
            Limit::MaxTargets => "maxTargets",
            Limit::MaxFlowsPerDay => "maxFlowsPerDay",
        }
    }
}

/// What a licence allows: its feature matrix and limits. Written once:
/// GraphQL's `Features` and `LicenceInput` are derived from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "graphql",
    derive(async_graphql::SimpleObject, async_graphql::InputObject),
    graphql(input_name = "AllowancesInput")
)]
pub struct Allowances {
    pub max_instances: u32,
    pub human_surfing: bool,
    pub import_proxy: bool,
    pub scheduler: bool,
    pub external_clicks: bool,
    pub max_targets: u32,
    pub max_flows_per_day: u32,
}

/// The feature matrix, limits and expiry of one licence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "graphql",
    derive(async_graphql::InputObject),
    graphql(name = "LicenceInput")
)]
pub struct LicenceTerms {
    #[cfg_attr(feature = "graphql", graphql(flatten))]
    pub allows: Allowances,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A licence refused something: which feature or limit, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{feature} is not licensed: {reason}")]
pub struct NotLicensed {
    /// The feature or limit's client-facing name, e.g. `scheduler`.
    pub feature: &'static str,
    pub reason: String,
    /// Set when a limit refused: how much was asked for and how much is
    /// allowed, so a client can show both at the field.
    pub limit: Option<OverLimit>,
}

/// How far a request went over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    /// What the licence allows now: 0 when none is in force or it expired.
    pub allowed: u32,
    pub requested: u64,
}

impl NotLicensed {
    /// `feature` is refused.
    pub fn feature(feature: Feature, reason: impl Into<String>) -> Self {
        Self {
            feature: feature.name(),
            reason: reason.into(),
            limit: None,
        }
    }

    /// `requested` of `limit` is refused; `allowed` is what may be used.
    pub fn limit(limit: Limit, allowed: u32, requested: u64, reason: impl Into<String>) -> Self {
        Self {
            feature: limit.name(),
            reason: reason.into(),
            limit: Some(OverLimit { allowed, requested }),
        }
    }
}

impl LicenceTerms {
    /// Why the licence no longer counts at `now`, if it does not.
    fn expired(&self, now: OffsetDateTime) -> Option<String> {
        (now >= self.expires_at).then(|| format!("the licence expired at {}", self.expires_at))
    }

    /// Is `feature` on, and the licence current?
    pub fn require(&self, feature: Feature, now: OffsetDateTime) -> Result<(), NotLicensed> {
        if let Some(why) = self.expired(now) {
            return Err(NotLicensed::feature(feature, why));
        }
        let on = match feature {
            Feature::HumanSurfing => self.allows.human_surfing,
            Feature::ImportProxy => self.allows.import_proxy,
            Feature::Scheduler => self.allows.scheduler,
            Feature::ExternalClicks => self.allows.external_clicks,
        };
        if on {
            Ok(())
        } else {
            Err(NotLicensed::feature(
                feature,
                "the licence does not include it",
            ))
        }
    }

    /// The allowance for `limit`.
    pub fn allowance(&self, limit: Limit) -> u32 {
        match limit {
            Limit::MaxInstances => self.allows.max_instances,
            Limit::MaxTargets => self.allows.max_targets,
            Limit::MaxFlowsPerDay => self.allows.max_flows_per_day,
        }
    }

    /// May the account use `wanted` of `limit` in total?
    pub fn require_within(
        &self,
        limit: Limit,
        wanted: u64,
        now: OffsetDateTime,
    ) -> Result<(), NotLicensed> {
        if let Some(why) = self.expired(now) {
            return Err(NotLicensed::limit(limit, 0, wanted, why));
        }
        let allowed = self.allowance(limit);
        if wanted <= u64::from(allowed) {
            Ok(())
        } else {
            Err(NotLicensed::limit(
                limit,
                allowed,
                wanted,
                format!("{wanted} requested, the licence allows {allowed}"),
            ))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenceIssued {
    pub username: String,
    pub terms: LicenceTerms,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenceRevoked {
    pub username: String,
    pub by: String,
}

crate::event_set! {
    /// What happens to a licence.
    pub enum LicenceEvent {
        LicenceIssued(LicenceIssued) = 2 { 1 => nest_allowances },
        LicenceRevoked(LicenceRevoked) = 1,
    }
}

/// Schema 1 stored the terms flat; schema 2 keeps what they allow under
/// `allows` beside `expires_at` (serde's flatten would cost every read).
fn nest_allowances(mut payload: serde_json::Value) -> Result<serde_json::Value, String> {
    let terms = payload
        .get_mut("terms")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("no terms object")?;
    let mut allows = serde_json::Map::new();
    // Schema 1's fields, fixed forever: a later allowance gets its default.
    for key in [
        "max_instances",
        "human_surfing",
        "import_proxy",
        "scheduler",
        "external_clicks",
        "max_targets",
        "max_flows_per_day",
    ] {
        let value = terms
            .remove(key)
            .ok_or_else(|| format!("terms.{key} is missing"))?;
        allows.insert(key.to_owned(), value);
    }
    terms.insert("allows".to_owned(), allows.into());
    Ok(payload)
}

impl crate::registry::Summary for LicenceEvent {
    fn summary(&self, _stream: &crate::StreamId) -> String {
        match self {
            Self::LicenceIssued(l) => format!(
                "licence issued to {} by {}, valid until {}",
                l.username, l.by, l.terms.expires_at
            ),
            Self::LicenceRevoked(l) => format!("licence of {} revoked by {}", l.username, l.by),
        }
    }
}

/// Commands on a licence.
#[derive(Debug, Clone, PartialEq)]
pub enum LicenceCommand {
    /// Issues (or replaces) the account's licence.
    Issue {
        username: String,
        terms: LicenceTerms,
    },
    Revoke {
        username: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenceError {
    #[error("only an admin or super-admin may issue or revoke licences")]
    Forbidden,
    #[error("the licence's expiry {0} is not in the future")]
    ExpiresInThePast(OffsetDateTime),
    #[error("{0} has no licence to revoke")]
    NoLicence(String),
}

/// The licence as it stands: `None` when none is in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LicenceState {
    pub terms: Option<LicenceTerms>,
}

pub struct Licence;

inventory::submit! { crate::replay::Replayer::of::<Licence>() }

impl Decider for Licence {
    const SNAPSHOT_KIND: &'static str = "licence/2";
    type State = LicenceState;
    type Command = LicenceCommand;
    type Event = LicenceEvent;
    type Error = LicenceError;

    fn evolve(_state: LicenceState, event: &LicenceEvent) -> LicenceState {
        match event {
            LicenceEvent::LicenceIssued(e) => LicenceState {
                terms: Some(e.terms.clone()),
            },
            LicenceEvent::LicenceRevoked(_) => LicenceState { terms: None },
        }
    }

    fn decide(
        state: &LicenceState,
        command: LicenceCommand,
        ctx: &Context,
    ) -> Result<Vec<LicenceEvent>, LicenceError> {
        if !ctx.actor.is_admin() {
            return Err(LicenceError::Forbidden);
        }
        let by = ctx.actor.name();
        match command {
            LicenceCommand::Issue { username, terms } => {
                if terms.expires_at <= ctx.now {
                    return Err(LicenceError::ExpiresInThePast(terms.expires_at));
                }
                Ok(vec![LicenceEvent::LicenceIssued(LicenceIssued {
                    username,
                    terms,
                    by,
                })])
            }
            LicenceCommand::Revoke { username } => {
                if state.terms.is_none() {
                    return Err(LicenceError::NoLicence(username));
                }
                Ok(vec![LicenceEvent::LicenceRevoked(LicenceRevoked {
                    username,
                    by,
                })])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use time::Duration;
    use uuid::Uuid;

    use super::*;
    use crate::decider::{Actor, Role};
    use crate::spec::Spec;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn terms() -> LicenceTerms {
        LicenceTerms {
            allows: Allowances {
                max_instances: 4,
                human_surfing: true,
                import_proxy: false,
                scheduler: true,
                external_clicks: false,
                max_targets: 3,
                max_flows_per_day: 1000,
            },
            expires_at: now() + Duration::days(30),
        }
    }

    fn as_role(role: Role) -> Context {
        Context::new(
            now(),
            Actor::Account {
                account_id: Uuid::nil(),
                username: "someone".into(),
                roles: BTreeSet::from([role]),
            },
        )
    }

    fn issued() -> LicenceEvent {
        LicenceEvent::LicenceIssued(LicenceIssued {
            username: "ada".into(),
            terms: terms(),
            by: "someone".into(),
        })
    }

    #[test]
    fn an_admin_issues_a_licence() {
        Spec::<Licence>::given([])
            .in_context(as_role(Role::Admin))
            .when(LicenceCommand::Issue {
                username: "ada".into(),
                terms: terms(),
            })
            .then([issued()]);
    }

    #[test]
    fn a_user_cannot_issue_a_licence() {
        Spec::<Licence>::given([])
            .in_context(as_role(Role::User))
            .when(LicenceCommand::Issue {
                username: "ada".into(),
                terms: terms(),
            })
            .then_err(|e| *e == LicenceError::Forbidden);
    }

    #[test]
    fn a_licence_that_already_expired_is_refused() {
        let mut old = terms();
        old.expires_at = now() - Duration::seconds(1);
        Spec::<Licence>::given([])
            .in_context(as_role(Role::SuperAdmin))
            .when(LicenceCommand::Issue {
                username: "ada".into(),
                terms: old,
            })
            .then_err(|e| matches!(e, LicenceError::ExpiresInThePast(_)));
    }

    #[test]
    fn revoking_without_a_licence_says_so() {
        Spec::<Licence>::given([])
            .in_context(as_role(Role::Admin))
            .when(LicenceCommand::Revoke {
                username: "ada".into(),
            })
            .then_err(|e| matches!(e, LicenceError::NoLicence(_)));
        let state = Spec::<Licence>::given([issued()])
            .in_context(as_role(Role::Admin))
            .when(LicenceCommand::Revoke {
                username: "ada".into(),
            })
            .then([LicenceEvent::LicenceRevoked(LicenceRevoked {
                username: "ada".into(),
                by: "someone".into(),
            })]);
        assert_eq!(state.terms, None);
    }

    #[test]
    fn features_off_or_over_the_limit_are_refused_naming_them() {
        let t = terms();
        assert!(t.require(Feature::Scheduler, now()).is_ok());
        let err = t.require(Feature::ImportProxy, now()).unwrap_err();
        assert_eq!(err.feature, "importProxy");
        assert!(t.require_within(Limit::MaxTargets, 3, now()).is_ok());
        let err = t.require_within(Limit::MaxTargets, 4, now()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "maxTargets is not licensed: 4 requested, the licence allows 3"
        );
        assert_eq!(
            err.limit,
            Some(OverLimit {
                allowed: 3,
                requested: 4
            })
        );
        assert_eq!(
            t.require(Feature::ImportProxy, now()).unwrap_err().limit,
            None
        );
    }

    #[test]
    fn an_expired_licence_refuses_everything() {
        let t = terms();
        let later = t.expires_at;
        let err = t.require(Feature::Scheduler, later).unwrap_err();
        assert!(err.reason.contains("expired"), "{err}");
        let err = t.require_within(Limit::MaxInstances, 1, later).unwrap_err();
        // Nothing is allowed any more, whatever the terms said.
        assert_eq!(
            err.limit,
            Some(OverLimit {
                allowed: 0,
                requested: 1
            })
        );
    }

    #[test]
    fn a_licence_issued_under_schema_1_reads_with_its_terms_nested() {
        let v1 = r#"{"username":"ada","by":"root","terms":{"max_instances":4,"human_surfing":true,
            "import_proxy":false,"scheduler":true,"external_clicks":false,"max_targets":3,
            "max_flows_per_day":1000,"expires_at":"2030-01-01T00:00:00Z"}}"#;
        let recorded = crate::RecordedEvent {
            position: crate::Position::new(1, 1),
            id: crate::EventId::new(),
            stream_id: crate::StreamId::parse("licence-ada").unwrap(),
            stream_version: 0,
            event_type: "LicenceIssued".into(),
            schema_version: 1,
            recorded_at: now(),
            data: v1.into(),
            metadata: crate::Metadata::default(),
        };
        let LicenceEvent::LicenceIssued(issued) = crate::event_registry()
            .decode::<LicenceEvent>(&recorded)
            .unwrap()
        else {
            panic!("not LicenceIssued");
        };
        assert_eq!(issued.terms.allows.max_instances, 4);
        assert_eq!(issued.terms.allows.max_flows_per_day, 1000);
        assert!(issued.terms.allows.scheduler && !issued.terms.allows.import_proxy);
        // Written today, it is schema 2, nested.
        use crate::registry::EventSet;
        let written = LicenceEvent::LicenceIssued(issued).to_payload().unwrap();
        assert!(
            written.as_str().contains(r#""allows":{"max_instances":4"#),
            "{}",
            written.as_str()
        );
    }
}

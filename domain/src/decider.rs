//! The decider pattern: an aggregate is three plain functions over plain data.
//!
//! `decide` holds every rule and may refuse; `evolve` only records what
//! happened and cannot fail. Pure: no I/O, no clock, no randomness — what a
//! decision needs from outside arrives in [`Context`] or in the command.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::licence::{Feature, LicenceTerms, Limit, NotLicensed};
use crate::registry::EventSet;

/// One aggregate's rules.
pub trait Decider {
    /// Names `State`'s shape and meaning in saved snapshots, e.g.
    /// `"licence/1"`. Change it whenever `State` or `evolve` changes, so
    /// that snapshots an older build saved are ignored, not trusted.
    const SNAPSHOT_KIND: &'static str;

    /// Plain data; serialized only into snapshots, a cache of the fold.
    type State: Clone + Default + Send + Sync + Serialize + DeserializeOwned + 'static;
    type Command;
    type Event: EventSet + Clone + Send + Sync + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies one event. Never fails: events are facts.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// Decides which events a command causes, or why it is refused.
    fn decide(
        state: &Self::State,
        command: Self::Command,
        ctx: &Context,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// The state after `events`, from the initial state.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events
            .into_iter()
            .fold(Self::State::default(), |s, e| Self::evolve(s, e))
    }
}

/// A role an account holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
    SuperAdmin,
    Auditor,
}

impl Role {
    /// Every role, for choosers (the CLI's `--role`).
    pub const ALL: [Role; 4] = [Role::User, Role::Admin, Role::SuperAdmin, Role::Auditor];

    /// The role's name, as stored and typed: `user`, `super_admin`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::SuperAdmin => "super_admin",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role {s:?}; roles are {}", names.join(", "))
            })
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The system itself: bootstrap, schedulers, expiry sweeps.
    System,
    /// Nobody logged in yet (a login attempt).
    Anonymous,
    /// A logged-in account.
    Account {
        account_id: Uuid,
        username: String,
        roles: BTreeSet<Role>,
    },
}

impl Actor {
    /// Does the actor hold `role`? The system holds every role.
    pub fn has(&self, role: Role) -> bool {
        match self {
            Actor::System => true,
            Actor::Anonymous => false,
            Actor::Account { roles, .. } => roles.contains(&role),
        }
    }

    /// The name recorded as `by` in events: a username or `system`.
    pub fn name(&self) -> String {
        match self {
            Actor::System => "system".into(),
            Actor::Anonymous => "anonymous".into(),
            Actor::Account { username, .. } => username.clone(),
        }
    }

    pub fn is_account(&self, username: &str) -> bool {
        matches!(self, Actor::Account { username: u, .. } if u == username)
    }

    /// May the actor act for this account's own resources (its consents,
    /// its domain claims)? The account itself, an admin, a super-admin or
    /// the system may.
    pub fn acts_for(&self, username: &str) -> bool {
        self.is_account(username) || self.is_admin()
    }

    /// An admin, a super-admin, or the system.
    pub fn is_admin(&self) -> bool {
        self.has(Role::Admin) || self.has(Role::SuperAdmin)
    }
}

/// What a decision needs from outside: the time, who is asking, and the
/// licence in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub now: OffsetDateTime,
    pub actor: Actor,
    /// The licence in force for the account the command is made for (the
    /// actor's own, unless an admin acts for another account); `None` when
    /// no licence is in force.
    pub licence: Option<LicenceTerms>,
}

impl Context {
    /// A context without a licence: enough for every command no licence
    /// governs.
    pub fn new(now: OffsetDateTime, actor: Actor) -> Self {
        Self {
            now,
            actor,
            licence: None,
        }
    }

    /// The same context with `terms` in force.
    pub fn with_licence(mut self, terms: LicenceTerms) -> Self {
        self.licence = Some(terms);
        self
    }

    /// Is `feature` licensed now? Having no licence at all is a refusal too.
    pub fn require(&self, feature: Feature) -> Result<(), NotLicensed> {
        match &self.licence {
            Some(terms) => terms.require(feature, self.now),
            None => Err(NotLicensed::feature(feature, NO_LICENCE)),
        }
    }

    /// May `wanted` of `limit` be used now? Having no licence is a refusal.
    pub fn require_within(&self, limit: Limit, wanted: u64) -> Result<(), NotLicensed> {
        match &self.licence {
            Some(terms) => terms.require_within(limit, wanted, self.now),
            None => Err(NotLicensed::limit(limit, 0, wanted, NO_LICENCE)),
        }
    }
}

const NO_LICENCE: &str = "no licence is in force";

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::licence::Allowances;

    fn terms(external_clicks: bool, max_targets: u32) -> LicenceTerms {
        LicenceTerms {
            allows: Allowances {
                external_clicks,
                max_targets,
                ..Allowances::default()
            },
            expires_at: OffsetDateTime::UNIX_EPOCH + Duration::days(1),
        }
    }

    fn ctx() -> Context {
        Context::new(OffsetDateTime::UNIX_EPOCH, Actor::System)
    }

    #[test]
    fn an_account_is_acted_for_by_itself_admins_and_the_system_only() {
        let account = |name: &str, role| Actor::Account {
            account_id: uuid::Uuid::nil(),
            username: name.into(),
            roles: BTreeSet::from([role]),
        };
        assert!(account("ada", Role::User).acts_for("ada"));
        assert!(!account("bob", Role::User).acts_for("ada"));
        assert!(!account("bob", Role::Auditor).acts_for("ada"));
        assert!(account("root", Role::Admin).acts_for("ada"));
        assert!(account("root", Role::SuperAdmin).acts_for("ada"));
        assert!(Actor::System.acts_for("ada"));
        assert!(!Actor::Anonymous.acts_for("ada"));
    }

    #[test]
    fn a_context_without_a_licence_refuses_every_feature_and_limit_saying_none_is_in_force() {
        let err = ctx().require(Feature::ExternalClicks).unwrap_err();
        assert_eq!(
            err.to_string(),
            "externalClicks is not licensed: no licence is in force"
        );
        let err = ctx().require_within(Limit::MaxTargets, 0).unwrap_err();
        assert_eq!(err.feature, "maxTargets");
        assert_eq!(
            err.limit,
            Some(crate::licence::OverLimit {
                allowed: 0,
                requested: 0
            })
        );
    }

    #[test]
    fn a_context_checks_features_and_limits_against_its_licence_at_its_time() {
        let on = ctx().with_licence(terms(true, 10));
        assert_eq!(on.require(Feature::ExternalClicks), Ok(()));
        assert_eq!(on.require_within(Limit::MaxTargets, 10), Ok(()));
        assert_eq!(
            on.require(Feature::Scheduler).unwrap_err().feature,
            "scheduler"
        );
        assert!(on.require_within(Limit::MaxTargets, 11).is_err());
        let off = ctx().with_licence(terms(false, 10));
        assert_eq!(
            off.require(Feature::ExternalClicks).unwrap_err().reason,
            "the licence does not include it"
        );
        let mut expired = on;
        expired.now = OffsetDateTime::UNIX_EPOCH + Duration::days(1);
        let err = expired.require(Feature::ExternalClicks).unwrap_err();
        assert!(err.reason.contains("expired"), "{err}");
    }
}

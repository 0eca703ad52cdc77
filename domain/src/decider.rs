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
}

/// What a decision needs from outside: the time and who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub now: OffsetDateTime,
    pub actor: Actor,
}

impl Context {
    pub fn new(now: OffsetDateTime, actor: Actor) -> Self {
        Self { now, actor }
    }
}

//! Given / when / then specifications for deciders.
//!
//! ```text
//! Spec::<Account>::given([created()]).when(disable()).then([disabled()]);
//! ```

use std::fmt::Debug;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::decider::{Actor, Context, Decider, Role};

/// A context at `now` for the account `username` holding `role`, without a
/// licence.
pub fn acting_as(username: &str, role: Role, now: OffsetDateTime) -> Context {
    Context::new(
        now,
        Actor::Account {
            account_id: Uuid::nil(),
            username: username.into(),
            roles: [role].into(),
        },
    )
}

/// A specification under construction: the history so far.
pub struct Spec<D: Decider> {
    history: Vec<D::Event>,
    ctx: Context,
}

impl<D: Decider> Spec<D> {
    /// Starts from these past events, at the Unix epoch, acting as the system.
    pub fn given(history: impl IntoIterator<Item = D::Event>) -> Self {
        Self {
            history: history.into_iter().collect(),
            ctx: Context::new(time::OffsetDateTime::UNIX_EPOCH, Actor::System),
        }
    }

    /// Decides in this context (time, actor).
    pub fn in_context(mut self, ctx: Context) -> Self {
        self.ctx = ctx;
        self
    }

    /// Decides `command`. Every specification also checks that the state
    /// it decides on survives a snapshot unchanged.
    pub fn when(self, command: D::Command) -> Outcome<D>
    where
        D::State: PartialEq + Debug,
    {
        let state = D::fold(&self.history);
        assert_snapshot_round_trips::<D>(&state);
        Outcome {
            result: D::decide(&state, command, &self.ctx),
            state,
        }
    }
}

/// A state saved into a snapshot and loaded again is the same state.
fn assert_snapshot_round_trips<D: Decider>(state: &D::State)
where
    D::State: PartialEq + Debug,
{
    let saved = serde_json::to_string(state).expect("a state serializes");
    let loaded: D::State = serde_json::from_str(&saved)
        .unwrap_or_else(|e| panic!("{} snapshot {saved} does not load: {e}", D::SNAPSHOT_KIND));
    assert_eq!(
        &loaded,
        state,
        "{} snapshot changed the state",
        D::SNAPSHOT_KIND
    );
}

/// A decision to check.
pub struct Outcome<D: Decider> {
    result: Result<Vec<D::Event>, D::Error>,
    state: D::State,
}

impl<D: Decider> Outcome<D>
where
    D::Event: PartialEq + Debug,
    D::Error: Debug,
{
    /// The command emits exactly these events.
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>) -> D::State {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events");
                events.iter().fold(self.state, |s, e| D::evolve(s, e))
            }
            Err(e) => panic!("expected events {expected:?}, got error {e:?}"),
        }
    }

    /// The command is refused with an error that `check` accepts.
    pub fn then_err(self, check: impl FnOnce(&D::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("expected an error, got events {events:?}"),
            Err(e) => assert!(check(&e), "unexpected error: {e:?}"),
        }
    }
}

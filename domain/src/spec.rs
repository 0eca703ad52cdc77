//! Given / when / then specifications for deciders.
//!
//! ```text
//! Spec::<Account>::given([created()]).when(disable()).then([disabled()]);
//! ```

use std::fmt::Debug;

use crate::decider::{Actor, Context, Decider};

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

    /// Decides `command`.
    pub fn when(self, command: D::Command) -> Outcome<D> {
        let state = D::fold(&self.history);
        Outcome {
            result: D::decide(&state, command, &self.ctx),
            state,
        }
    }
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

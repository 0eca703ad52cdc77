//! Time travel for auditors: a stream's state as its own decider folds it,
//! event by event, up to any point of its history. Each decider registers
//! itself with [`Replayer::of`] (through `inventory`); the first event of a
//! stream names the decider by the event set that holds its type, so a new
//! aggregate needs one line, not a hand-kept table.
//!
//! The state comes out as JSON with every field that holds a hash of a
//! secret or a token redacted, as auditors see payloads.

use crate::decider::Decider;
use crate::envelope::RecordedEvent;
use crate::registry::{DecodeError, EventRegistry, EventSet};

/// A decider as the replay finds it.
pub struct Replayer {
    /// Its snapshot kind: names the state's shape (`job/3`).
    kind: &'static str,
    types: fn() -> &'static [(&'static str, u32)],
    start: fn() -> Box<dyn Folding>,
}

impl Replayer {
    /// Registers `D` for replay: `inventory::submit!(Replayer::of::<D>())`.
    pub const fn of<D: Decider + 'static>() -> Self {
        Replayer {
            kind: D::SNAPSHOT_KIND,
            types: <D::Event as EventSet>::types,
            start: || Box::new(Folder::<D> { state: None }),
        }
    }
}

inventory::collect!(Replayer);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "no decider folds events of type {event_type:?}: the stream is not an aggregate's (its events are only read by views)"
    )]
    NoDecider { event_type: String },
    #[error("event at version {version} of the stream cannot be folded: {source}")]
    Decode { version: u64, source: DecodeError },
    #[error("the folded state does not encode as JSON: {0}")]
    Encode(serde_json::Error),
}

/// One stream's state, folded so far.
pub struct StreamFold {
    kind: &'static str,
    folding: Box<dyn Folding>,
    events: u64,
}

impl StreamFold {
    /// The fold for a stream whose first event has this type.
    pub fn for_first(event_type: &str) -> Result<StreamFold, ReplayError> {
        let replayer = inventory::iter::<Replayer>
            .into_iter()
            .find(|r| (r.types)().iter().any(|(t, _)| *t == event_type))
            .ok_or_else(|| ReplayError::NoDecider {
                event_type: event_type.to_owned(),
            })?;
        Ok(StreamFold {
            kind: replayer.kind,
            folding: (replayer.start)(),
            events: 0,
        })
    }

    /// Applies the stream's next event.
    pub fn apply(
        &mut self,
        registry: &EventRegistry,
        event: &RecordedEvent,
    ) -> Result<(), ReplayError> {
        self.folding
            .apply(registry, event)
            .map_err(|source| ReplayError::Decode {
                version: event.stream_version,
                source,
            })?;
        self.events += 1;
        Ok(())
    }

    /// The decider's snapshot kind, which names the state's shape.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Events folded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The state as JSON, secrets redacted.
    pub fn state(&self) -> Result<serde_json::Value, ReplayError> {
        let mut state = self.folding.state().map_err(ReplayError::Encode)?;
        redact_secrets(&mut state);
        Ok(state)
    }
}

trait Folding: Send + Sync {
    fn apply(&mut self, registry: &EventRegistry, event: &RecordedEvent)
    -> Result<(), DecodeError>;
    fn state(&self) -> Result<serde_json::Value, serde_json::Error>;
}

struct Folder<D: Decider> {
    /// `None` until the first event: evolve takes the state by value.
    state: Option<D::State>,
}

impl<D: Decider> Folding for Folder<D> {
    fn apply(
        &mut self,
        registry: &EventRegistry,
        event: &RecordedEvent,
    ) -> Result<(), DecodeError> {
        let event = registry.decode::<D::Event>(event)?;
        self.state = Some(D::evolve(self.state.take().unwrap_or_default(), &event));
        Ok(())
    }

    fn state(&self) -> Result<serde_json::Value, serde_json::Error> {
        match &self.state {
            Some(state) => serde_json::to_value(state),
            None => serde_json::to_value(D::State::default()),
        }
    }
}

/// Fields that hold a secret (even sealed), or a hash of one or of a
/// token: never shown.
fn is_secretive(key: &str) -> bool {
    key == "hash"
        || key == "token"
        || key.contains("password")
        || key.contains("secret")
        || key.ends_with("token_hash")
}

/// Replaces every secretive field's value, at any depth, with
/// `"[redacted]"`: what auditors see of payloads and states.
pub fn redact_secrets(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, v) in fields.iter_mut() {
                if is_secretive(key) {
                    *v = serde_json::Value::String("[redacted]".into());
                } else {
                    redact_secrets(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn sealed_secrets_are_redacted_too() {
        let mut payload =
            serde_json::json!({ "url": "https://x.example/", "sealed_secret": "c2Vh" });
        super::redact_secrets(&mut payload);
        assert_eq!(payload["sealed_secret"], "[redacted]");
        assert_eq!(payload["url"], "https://x.example/");
    }

    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::*;
    use crate::account::{AccountCreated, AccountEvent, PasswordChanged, PasswordHash, Username};
    use crate::envelope::{EventId, Metadata, Position, StreamId};
    use crate::reason::Reason;
    use crate::system_settings::{SafeModeTurnedOff, SafeModeTurnedOn, SystemSettingsEvent};

    fn recorded<E: EventSet>(event: &E, version: u64) -> RecordedEvent {
        RecordedEvent {
            id: EventId::new(),
            stream_id: StreamId::parse("some-stream").unwrap(),
            stream_version: version,
            position: Position::new(version + 1, 0),
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            recorded_at: OffsetDateTime::UNIX_EPOCH,
            metadata: Metadata::default(),
            data: event.to_payload().unwrap().as_str().into(),
        }
    }

    fn fold_all(events: &[RecordedEvent]) -> Result<StreamFold, ReplayError> {
        let registry = crate::event_registry();
        let mut fold = StreamFold::for_first(&events[0].event_type)?;
        for e in events {
            fold.apply(&registry, e)?;
        }
        Ok(fold)
    }

    fn safe_mode(on: bool) -> SystemSettingsEvent {
        let reason = Reason::parse("maintenance window").unwrap();
        let by = "root".to_owned();
        let at = OffsetDateTime::UNIX_EPOCH;
        if on {
            SystemSettingsEvent::SafeModeTurnedOn(SafeModeTurnedOn { by, reason, at })
        } else {
            SystemSettingsEvent::SafeModeTurnedOff(SafeModeTurnedOff { by, reason, at })
        }
    }

    #[test]
    fn no_event_type_is_folded_by_two_deciders() {
        let mut seen = BTreeSet::new();
        for replayer in inventory::iter::<Replayer> {
            for (ty, _) in (replayer.types)() {
                assert!(seen.insert(*ty), "{ty} is folded by two deciders");
            }
        }
    }

    #[test]
    fn a_stream_folded_to_a_point_is_its_deciders_state_there() {
        let history = [safe_mode(false), safe_mode(true), safe_mode(false)];
        let events: Vec<_> = history
            .iter()
            .enumerate()
            .map(|(i, e)| recorded(e, i as u64))
            .collect();
        for upto in 1..=events.len() {
            let fold = fold_all(&events[..upto]).unwrap();
            let expected =
                <crate::system_settings::SystemSettings as Decider>::fold(&history[..upto]);
            assert_eq!(
                fold.state().unwrap(),
                serde_json::to_value(&expected).unwrap()
            );
            assert_eq!(fold.events(), upto as u64);
            assert_eq!(
                fold.kind(),
                <crate::system_settings::SystemSettings as Decider>::SNAPSHOT_KIND
            );
        }
    }

    #[test]
    fn secrets_in_a_folded_state_are_redacted() {
        let created = AccountEvent::AccountCreated(AccountCreated {
            account_id: Uuid::nil(),
            username: Username::parse("alice").unwrap(),
            roles: BTreeSet::new(),
            password_hash: PasswordHash("$argon2id$secret-hash".into()),
            by: "root".into(),
        });
        let changed = AccountEvent::PasswordChanged(PasswordChanged {
            password_hash: PasswordHash("$argon2id$newer-hash".into()),
            by: "alice".into(),
        });
        let fold = fold_all(&[recorded(&created, 0), recorded(&changed, 1)]).unwrap();
        let text = fold.state().unwrap().to_string();
        assert!(text.contains("alice"), "{text}");
        assert!(!text.contains("argon2id"), "a hash leaked: {text}");
        assert!(text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn a_stream_no_decider_folds_says_so() {
        let Err(e) = StreamFold::for_first("SomethingViewsRead") else {
            panic!("folded a type no decider owns");
        };
        assert!(e.to_string().contains("SomethingViewsRead"), "{e}");
    }

    #[test]
    fn an_event_of_another_aggregate_in_the_stream_names_its_version() {
        let created = AccountEvent::AccountCreated(AccountCreated {
            account_id: Uuid::nil(),
            username: Username::parse("alice").unwrap(),
            roles: BTreeSet::new(),
            password_hash: PasswordHash("h".into()),
            by: "root".into(),
        });
        let Err(e) = fold_all(&[recorded(&created, 0), recorded(&safe_mode(true), 1)]) else {
            panic!("folded a foreign event");
        };
        assert!(matches!(e, ReplayError::Decode { version: 1, .. }), "{e}");
    }

    #[test]
    fn nested_and_listed_secrets_are_redacted_and_other_hashes_kept() {
        let mut json = serde_json::json!({
            "keys": [{ "hash": "h1", "name": "a" }],
            "tokens": { "refresh_token_hash": "h2", "expires_at": "t" },
            "token": "t1",
            "sha256": "blob",
        });
        redact_secrets(&mut json);
        assert_eq!(
            json,
            serde_json::json!({
                "keys": [{ "hash": "[redacted]", "name": "a" }],
                "tokens": { "refresh_token_hash": "[redacted]", "expires_at": "t" },
                "token": "[redacted]",
                "sha256": "blob",
            })
        );
    }
}

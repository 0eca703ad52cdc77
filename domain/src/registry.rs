//! The event type registry: maps a stored (type, schema version) to a Rust
//! type, upcasting older payloads to the current schema on the way, and
//! summarizes any registered event for auditors without the caller naming
//! its type.
//!
//! Stored payloads are never rewritten. A payload written under schema N is
//! read by applying the upcasters N→N+1→…→current; a step without an
//! upcaster passes the JSON through unchanged, so a field added later simply
//! takes its serde default.
//!
//! Every set declared with [`crate::event_set!`] registers itself (through
//! `inventory`), so [`crate::event_registry`] holds every set the program
//! links, with no hand-kept list for a new aggregate to miss.

use std::collections::HashMap;

use crate::envelope::{Metadata, NewEvent, Payload, PayloadError, RecordedEvent, StreamId};

/// One line saying what an event did, for the audit log. Built from decoded
/// fields, never from the raw payload, so no hash or token can leak.
/// Every event set must provide it: [`EventSet`] requires it.
pub trait Summary {
    /// What this event, recorded in `stream`, did.
    fn summary(&self, stream: &StreamId) -> String;
}

/// A closed set of event types, usually one aggregate's event enum.
/// Implement it with [`crate::event_set!`].
pub trait EventSet: Summary + Sized {
    /// Every event type of the set with its current schema version.
    fn types() -> &'static [(&'static str, u32)];

    /// The upcasters of the set's types: (type, the schema it reads, upcaster).
    fn upcasters() -> &'static [(&'static str, u32, Upcaster)];

    /// This event's type name, as stored.
    fn event_type(&self) -> &'static str;

    /// The payload to store.
    fn to_payload(&self) -> Result<Payload, PayloadError>;

    /// Builds the event from a current-schema payload; `None` when the type
    /// is not in this set.
    fn from_json(event_type: &str, json: &str) -> Option<Result<Self, serde_json::Error>>;

    /// This event's current schema version.
    fn schema_version(&self) -> u32 {
        let ty = self.event_type();
        Self::types()
            .iter()
            .find(|(name, _)| *name == ty)
            .map_or(1, |(_, v)| *v)
    }

    /// Wraps the event for appending, with a fresh id.
    fn to_new_event(&self, metadata: Metadata) -> Result<NewEvent, PayloadError> {
        Ok(
            NewEvent::new(self.event_type(), self.schema_version(), self.to_payload()?)
                .with_metadata(metadata),
        )
    }
}

/// An event set as [`crate::event_set!`] registers it for
/// [`crate::event_registry`].
pub struct Registration {
    register: fn(EventRegistry) -> EventRegistry,
}

impl Registration {
    /// Registers `E` and its upcasters when the registry is built.
    pub const fn of<E: EventSet>() -> Self {
        Self {
            register: EventRegistry::with::<E>,
        }
    }

    /// Every set registered in this program.
    pub(crate) fn all() -> impl Iterator<Item = &'static Registration> {
        inventory::iter::<Registration>.into_iter()
    }

    pub(crate) fn register(&self, registry: EventRegistry) -> EventRegistry {
        (self.register)(registry)
    }
}

inventory::collect!(Registration);

/// Turns a payload of schema N into one of schema N+1.
pub type Upcaster = fn(serde_json::Value) -> Result<serde_json::Value, String>;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event {event_type:?} decoded but does not encode back to JSON: {source}")]
    Reencode {
        event_type: String,
        source: PayloadError,
    },
    #[error("unknown event type {event_type:?}: no registered event set holds it")]
    UnknownType { event_type: String },
    #[error("event type {event_type:?} is not one of the {set} events")]
    NotInSet {
        event_type: String,
        set: &'static str,
    },
    #[error(
        "event {event_type:?} was stored with schema version {stored}, newer than this build's {current}; upgrade TrafficBuster"
    )]
    FutureSchema {
        event_type: String,
        stored: u32,
        current: u32,
    },
    #[error("upcasting {event_type:?} from schema version {from} failed: {reason}")]
    Upcast {
        event_type: String,
        from: u32,
        reason: String,
    },
    #[error(
        "payload of {event_type:?} (schema version {schema_version}) does not decode: {source}"
    )]
    Payload {
        event_type: String,
        schema_version: u32,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone)]
struct TypeEntry {
    current: u32,
    /// Keyed by the version the upcaster reads.
    upcasters: HashMap<u32, Upcaster>,
    /// Decodes into the type's set and summarizes.
    summarize: fn(&EventRegistry, &RecordedEvent) -> Result<String, DecodeError>,
    /// Decodes into the type's set and writes it back as current-schema JSON.
    to_json: fn(&EventRegistry, &RecordedEvent) -> Result<serde_json::Value, DecodeError>,
}

fn summarize_as<E: EventSet>(
    registry: &EventRegistry,
    event: &RecordedEvent,
) -> Result<String, DecodeError> {
    Ok(registry.decode::<E>(event)?.summary(&event.stream_id))
}

fn to_json_as<E: EventSet>(
    registry: &EventRegistry,
    event: &RecordedEvent,
) -> Result<serde_json::Value, DecodeError> {
    let payload_error = |source| DecodeError::Payload {
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        source,
    };
    let payload = registry
        .decode::<E>(event)?
        .to_payload()
        .map_err(|source| DecodeError::Reencode {
            event_type: event.event_type.clone(),
            source,
        })?;
    serde_json::from_str(payload.as_str()).map_err(payload_error)
}

/// Every event type the system knows, with upcasters for old schemas.
#[derive(Debug, Clone, Default)]
pub struct EventRegistry {
    types: HashMap<&'static str, TypeEntry>,
}

impl EventRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers every type of `E` at its current schema version, with its
    /// upcasters.
    ///
    /// Panics if a type name is already registered (two sets claiming one
    /// name), or on an upcaster from a schema that is not older than its
    /// type's current one: wiring bugs that every test run would show.
    pub fn with<E: EventSet>(mut self) -> Self {
        for &(name, current) in E::types() {
            let previous = self.types.insert(
                name,
                TypeEntry {
                    current,
                    upcasters: HashMap::new(),
                    summarize: summarize_as::<E>,
                    to_json: to_json_as::<E>,
                },
            );
            assert!(previous.is_none(), "event type {name:?} registered twice");
        }
        for &(event_type, from, upcast) in E::upcasters() {
            let entry = self
                .types
                .get_mut(event_type)
                .expect("event_set! names only the set's own types");
            assert!(
                from >= 1 && from < entry.current,
                "upcaster for {event_type:?} from schema {from}, but its current schema is {}",
                entry.current
            );
            entry.upcasters.insert(from, upcast);
        }
        self
    }

    /// Every registered type's name.
    pub fn type_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.types.keys().copied()
    }

    /// Is this type registered?
    pub fn knows(&self, event_type: &str) -> bool {
        self.types.contains_key(event_type)
    }

    /// One line saying what `event` did, decoded by whichever registered set
    /// holds its type (see [`Summary`]).
    pub fn summarize(&self, event: &RecordedEvent) -> Result<String, DecodeError> {
        let entry = self.entry(&event.event_type)?;
        (entry.summarize)(self, event)
    }

    /// `event`'s payload as this build reads it: upcast to the current
    /// schema, decoded by whichever registered set holds its type, as JSON.
    pub fn to_json(&self, event: &RecordedEvent) -> Result<serde_json::Value, DecodeError> {
        let entry = self.entry(&event.event_type)?;
        (entry.to_json)(self, event)
    }

    fn entry(&self, event_type: &str) -> Result<&TypeEntry, DecodeError> {
        self.types
            .get(event_type)
            .ok_or_else(|| DecodeError::UnknownType {
                event_type: event_type.to_owned(),
            })
    }

    /// Decodes a stored event into `E`, upcasting old schemas.
    pub fn decode<E: EventSet>(&self, event: &RecordedEvent) -> Result<E, DecodeError> {
        let ty = event.event_type.as_str();
        let entry = self.entry(ty)?;
        let stored = event.schema_version;
        if stored > entry.current {
            return Err(DecodeError::FutureSchema {
                event_type: ty.to_owned(),
                stored,
                current: entry.current,
            });
        }
        let payload_error = |source| DecodeError::Payload {
            event_type: ty.to_owned(),
            schema_version: stored,
            source,
        };
        let upcast;
        let json = if stored == entry.current {
            event.data.as_str()
        } else {
            let mut value: serde_json::Value =
                serde_json::from_str(&event.data).map_err(payload_error)?;
            for from in stored..entry.current {
                if let Some(step) = entry.upcasters.get(&from) {
                    value = step(value).map_err(|reason| DecodeError::Upcast {
                        event_type: ty.to_owned(),
                        from,
                        reason,
                    })?;
                }
            }
            upcast = value.to_string();
            upcast.as_str()
        };
        match E::from_json(ty, json) {
            None => Err(DecodeError::NotInSet {
                event_type: ty.to_owned(),
                set: std::any::type_name::<E>(),
            }),
            Some(result) => result.map_err(payload_error),
        }
    }
}

/// Declares an event enum whose variants wrap one struct each, implements
/// [`EventSet`] for it and registers it for [`crate::event_registry`]. The
/// number after each variant is that type's current schema version; the
/// variant's name is the stored type name. An optional `{ N => f, … }` after
/// the version names the upcaster `f` that turns schema N into N+1. The enum
/// must implement [`Summary`], which the compiler asks for.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct DomainVerified { pub domain: String }
///
/// domain::event_set! {
///     /// What happens to a target domain.
///     pub enum TargetEvent {
///         DomainVerified(DomainVerified) = 2 { 1 => add_nothing },
///     }
/// }
///
/// fn add_nothing(v: serde_json::Value) -> Result<serde_json::Value, String> {
///     Ok(v)
/// }
///
/// impl domain::registry::Summary for TargetEvent {
///     fn summary(&self, _stream: &domain::StreamId) -> String {
///         match self {
///             Self::DomainVerified(v) => format!("domain {} verified", v.domain),
///         }
///     }
/// }
/// ```
#[macro_export]
macro_rules! event_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])* $variant:ident($ty:ty) = $schema:literal
                $( { $( $from:literal => $upcast:path ),* $(,)? } )?
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant($ty) ),+
        }

        impl $crate::registry::EventSet for $name {
            fn types() -> &'static [(&'static str, u32)] {
                &[$( (stringify!($variant), $schema) ),+]
            }

            fn upcasters() -> &'static [(&'static str, u32, $crate::registry::Upcaster)] {
                const UPCASTERS: &[(&str, u32, $crate::registry::Upcaster)] = &[
                    $( $( $( (stringify!($variant), $from, $upcast as $crate::registry::Upcaster), )* )? )+
                ];
                UPCASTERS
            }

            fn event_type(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => stringify!($variant) ),+
                }
            }

            fn to_payload(&self) -> Result<$crate::envelope::Payload, $crate::envelope::PayloadError> {
                match self {
                    $( Self::$variant(e) => $crate::envelope::Payload::to_json(e) ),+
                }
            }

            fn from_json(event_type: &str, json: &str) -> Option<Result<Self, serde_json::Error>> {
                match event_type {
                    $( stringify!($variant) => Some(serde_json::from_str::<$ty>(json).map(Self::$variant)), )+
                    _ => None,
                }
            }
        }

        $crate::inventory::submit! {
            $crate::registry::Registration::of::<$name>()
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use time::OffsetDateTime;

    use super::*;
    use crate::envelope::{EventId, Position, StreamId};

    /// Schema 1 had `name`; 2 added `weight` (defaulted); 3 renamed `name` to `title`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct WidgetMade {
        title: String,
        #[serde(default)]
        weight: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct WidgetBroken {}

    crate::event_set! {
        enum WidgetEvent {
            WidgetMade(WidgetMade) = 3 { 2 => rename_name_to_title },
            WidgetBroken(WidgetBroken) = 1,
        }
    }

    impl Summary for WidgetEvent {
        fn summary(&self, stream: &StreamId) -> String {
            match self {
                Self::WidgetMade(m) => format!("{} made in {stream}", m.title),
                Self::WidgetBroken(_) => format!("a widget broke in {stream}"),
            }
        }
    }

    fn rename_name_to_title(mut v: serde_json::Value) -> Result<serde_json::Value, String> {
        let obj = v.as_object_mut().ok_or("payload is not an object")?;
        let name = obj.remove("name").ok_or("no `name` field")?;
        obj.insert("title".into(), name);
        Ok(v)
    }

    fn registry() -> EventRegistry {
        EventRegistry::new().with::<WidgetEvent>()
    }

    fn stored(event_type: &str, schema_version: u32, data: &str) -> RecordedEvent {
        RecordedEvent {
            id: EventId::new(),
            stream_id: StreamId::parse("widget-1").unwrap(),
            stream_version: 0,
            position: Position::new(1, 0),
            event_type: event_type.into(),
            schema_version,
            recorded_at: OffsetDateTime::UNIX_EPOCH,
            metadata: Metadata::default(),
            data: data.into(),
        }
    }

    fn made(title: &str, weight: u32) -> WidgetEvent {
        WidgetEvent::WidgetMade(WidgetMade {
            title: title.into(),
            weight,
        })
    }

    #[test]
    fn a_current_event_decodes_as_written() {
        let event = made("gear", 4);
        let new = event.to_new_event(Metadata::default()).unwrap();
        assert_eq!(
            (new.event_type.as_str(), new.schema_version),
            ("WidgetMade", 3)
        );
        let decoded: WidgetEvent = registry()
            .decode(&stored("WidgetMade", 3, new.data.as_str()))
            .unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn a_schema_one_event_is_upcast_and_gets_defaults_for_later_fields() {
        let decoded: WidgetEvent = registry()
            .decode(&stored("WidgetMade", 1, r#"{"name":"gear"}"#))
            .unwrap();
        assert_eq!(decoded, made("gear", 0));
    }

    #[test]
    fn an_unknown_type_is_an_error_naming_it() {
        let err = registry()
            .decode::<WidgetEvent>(&stored("WidgetMelted", 1, "{}"))
            .unwrap_err();
        assert!(err.to_string().contains("WidgetMelted"), "{err}");
    }

    #[test]
    fn a_schema_newer_than_the_build_is_refused() {
        let err = registry()
            .decode::<WidgetEvent>(&stored("WidgetMade", 4, r#"{"title":"x"}"#))
            .unwrap_err();
        assert!(matches!(
            err,
            DecodeError::FutureSchema {
                stored: 4,
                current: 3,
                ..
            }
        ));
    }

    #[test]
    fn a_failing_upcaster_says_which_step() {
        let err = registry()
            .decode::<WidgetEvent>(&stored("WidgetMade", 2, r#"{"title":"x"}"#))
            .unwrap_err();
        assert!(
            matches!(&err, DecodeError::Upcast { from: 2, reason, .. } if reason.contains("name")),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_payload_is_an_error_not_a_panic() {
        let err = registry()
            .decode::<WidgetEvent>(&stored("WidgetMade", 3, r#"{"title":7}"#))
            .unwrap_err();
        assert!(matches!(err, DecodeError::Payload { .. }), "{err}");
    }

    #[test]
    fn a_set_declared_with_the_macro_is_in_the_event_registry_with_its_upcasters() {
        // WidgetEvent is listed nowhere: declaring it registered it.
        let decoded: WidgetEvent = crate::event_registry()
            .decode(&stored("WidgetMade", 2, r#"{"name":"gear","weight":1}"#))
            .unwrap();
        assert_eq!(decoded, made("gear", 1));
    }

    #[test]
    fn any_registered_event_is_summarized_without_naming_its_set() {
        let summary = crate::event_registry()
            .summarize(&stored("WidgetMade", 1, r#"{"name":"gear"}"#))
            .unwrap();
        assert_eq!(summary, "gear made in widget-1");
        let err = registry()
            .summarize(&stored("WidgetMelted", 1, "{}"))
            .unwrap_err();
        assert!(matches!(err, DecodeError::UnknownType { .. }), "{err}");
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn registering_a_type_twice_is_a_wiring_bug() {
        let _ = EventRegistry::new()
            .with::<WidgetEvent>()
            .with::<WidgetEvent>();
    }
}

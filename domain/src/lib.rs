//! TrafficBuster's pure domain: event envelopes, the event type registry, and
//! (as aggregates arrive) commands, events and deciders.
//!
//! Pure: no I/O, no async, no database. Everything here is plain data and
//! plain functions, so it is tested without any infrastructure.

pub mod account;
pub mod blob;
pub mod decider;
pub mod envelope;
pub mod licence;
pub mod login_attempts;
pub mod registry;
pub mod spec;

pub use blob::{BlobHash, BlobHashError};
pub use decider::{Actor, Context, Decider, Role};
pub use envelope::{
    EventId, Metadata, NewEvent, Payload, PayloadError, Position, PositionParseError,
    RecordedEvent, StreamId, StreamIdError,
};
pub use registry::{DecodeError, EventRegistry, EventSet, Upcaster};

/// Every event set the system knows, with its upcasters.
pub fn event_registry() -> EventRegistry {
    EventRegistry::new()
        .with::<account::AccountEvent>()
        .with::<licence::LicenceEvent>()
        .with::<login_attempts::LoginAttemptEvent>()
}

//! TrafficBuster's pure domain: event envelopes, the event type registry, and
//! (as aggregates arrive) commands, events and deciders.
//!
//! Pure: no I/O, no async, no database. Everything here is plain data and
//! plain functions, so it is tested without any infrastructure.

pub mod account;
pub mod artifact;
pub mod blob;
pub mod click_consent;
pub mod dataset;
pub mod dataset_kind;
pub mod decider;
pub mod domain_name;
pub mod envelope;
pub mod flow;
pub mod job;
pub mod job_brief;
pub mod job_plan;
pub mod licence;
pub mod log_point;
pub mod login_attempts;
pub mod occurrence;
pub mod proxy_pool;
pub mod reason;
pub mod registry;
pub mod replay;
pub mod runner;
pub mod runner_key;
pub mod runner_protocol;
pub mod schedule;
pub mod spec;
pub mod system_settings;
pub mod target_domain;
pub mod thresholds;
pub mod upload;
mod uuid_id;
pub mod web_vitals;
pub mod webhook;

pub use blob::{BlobHash, BlobHashError};
pub use dataset_kind::{DatasetKind, ImportFormat, RowsSummary};
pub use decider::{Actor, Context, Decider, Role};
pub use domain_name::{DomainName, DomainNameError};
pub use envelope::{
    EventId, Metadata, NewEvent, Payload, PayloadError, Position, PositionParseError,
    RecordedEvent, StreamId, StreamIdError,
};
pub use reason::{Reason, ReasonError};
pub use registry::{DecodeError, EventRegistry, EventSet, Summary, Upcaster};

/// For [`event_set!`]'s self-registration.
#[doc(hidden)]
pub use inventory;

/// Every event set the system knows, with its upcasters: each set declared
/// with [`event_set!`] registers itself, so a new aggregate cannot be left out.
pub fn event_registry() -> EventRegistry {
    registry::Registration::all().fold(EventRegistry::new(), |registry, set| set.register(registry))
}

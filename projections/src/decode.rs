//! Decoding events for views: the event registry, built once, and the
//! account event of an account stream.

use domain::account::AccountEvent;
use domain::{EventRegistry, RecordedEvent};
use std::sync::OnceLock;

use crate::error::ProjectionError;

/// Every event type the system knows, built once.
pub fn registry() -> &'static EventRegistry {
    static REGISTRY: OnceLock<EventRegistry> = OnceLock::new();
    REGISTRY.get_or_init(domain::event_registry)
}

/// The account event in `event`, or `None` for other streams' events.
pub fn account_event(event: &RecordedEvent) -> Result<Option<AccountEvent>, ProjectionError> {
    if !event.stream_id.as_str().starts_with(ACCOUNT_PREFIX) {
        return Ok(None);
    }
    Ok(Some(registry().decode::<AccountEvent>(event)?))
}

/// The username an account stream belongs to.
pub fn username_of(event: &RecordedEvent) -> &str {
    event
        .stream_id
        .as_str()
        .strip_prefix(ACCOUNT_PREFIX)
        .unwrap_or(event.stream_id.as_str())
}

pub const ACCOUNT_PREFIX: &str = "account-";

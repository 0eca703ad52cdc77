//! The gateway: the HTTP face of TrafficBuster. For now it serves health and
//! readiness; GraphQL, the runner socket and metrics join it here.

pub mod health;
pub mod startup;

pub use startup::{Gateway, router};

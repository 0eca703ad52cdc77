//! The gateway: the HTTP face of TrafficBuster. For now it serves health and
//! readiness; GraphQL, the runner socket and metrics join it here.

pub mod auth;
pub mod command_handler;
pub mod health;
pub mod startup;

pub use command_handler::{CommandError, CommandHandler, CommandMeta, Handled};
pub use startup::{Gateway, router};

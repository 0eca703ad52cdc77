//! The gateway: the HTTP face of TrafficBuster. GraphQL (queries, mutations,
//! subscriptions) for the UI, health and readiness; command handling and
//! authentication behind them. The runner socket and metrics join it here.

pub mod audit_export;
pub mod auth;
pub mod client_addr;
pub mod command_handler;
pub mod consent_guard;
pub mod dataset_references;
pub mod domain_consents;
pub mod expiry;
pub mod graphiql;
pub mod graphql;
pub mod health;
pub mod http_auth;
pub mod http_limits;
pub mod job_artifacts;
pub mod job_datasets;
pub mod job_log;
pub mod live;
pub mod metrics;
pub mod publishing;
pub mod request_body;
pub mod rows_cache;
pub mod runner_link;
pub mod scheduler;
pub mod startup;
pub mod state;
pub mod time_travel;
pub mod verification;
pub mod webhooks;
pub mod ws_limits;

pub use command_handler::{CommandError, CommandHandler, CommandMeta, Handled};
pub use startup::{Gateway, GatewayConfig, StartError, router};

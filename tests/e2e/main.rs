//! End-to-end tests of the `trafficbuster` binary: real processes, real
//! stores (a temporary SQLite file; a fresh PostgreSQL schema), real HTTP.

mod admin;
mod app;
mod audit_export;
mod audit_streams;
mod bench;
mod browser_control;
mod browser_crash;
mod browser_proxies;
mod browser_runs;
mod chromium;
mod consents;
mod datasets;
mod demo;
mod domains;
mod fleet;
mod graphiql;
mod graphql;
mod helpers;
mod jobs;
mod login_limits;
mod missed_runs;
mod process;
mod projections;
mod proxy_pools;
mod recovery;
mod runners;
mod safe_mode;
mod schedules;
mod secrets;
mod serve;
mod setup_errors;
mod tail;
mod time_travel;
// The runner's tests start tinyproxy the same way.
#[path = "../../runner/tests/browser/tinyproxy.rs"]
mod tinyproxy;
mod verification;
mod webhooks;
mod worker;
mod ws_limits;

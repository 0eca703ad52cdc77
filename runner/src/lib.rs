//! The runner: a separate process that connects out to a gateway, leases
//! work, drives headless Chromium (chromiumoxide) and reports progress as
//! events. Only ever sends traffic to consented domains.
//!
//! - [`behaviour`]: how a flow behaves (referrer, dwell, pages, scrolling,
//!   clicks), planned from its settings; pure;
//! - [`browser`]: the Chromium driver (contexts per flow, consent gate,
//!   page operations, watchdog);
//! - [`client`]: the runner protocol's client, one connection to a gateway;
//! - [`worker`]: the work loop over any executor; its `outbox` holds the
//!   reports it has not delivered, spilling into the [`state_dir`]'s
//!   [`spill_file`];
//! - [`zero_work_executor`]: flows that do no work, for the orchestrator's
//!   tests and benchmark.

pub mod behaviour;
pub mod browser;
pub mod browser_executor;
pub mod client;
mod outbox;
pub mod spill_file;
pub mod state_dir;
pub mod worker;
pub mod zero_work_executor;

pub use client::{Answer, ClientConfig, ClientError, Connection, Leased, Notice, Terms};

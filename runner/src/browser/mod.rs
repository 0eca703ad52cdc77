//! The Chromium driver: one supervised headless Chromium per runner, a
//! fresh browser context per flow, and the page operations a flow's
//! behaviour is made of. Consent is enforced inside the browser: every
//! request of every flow passes one gate that only lets the flow's allowed
//! hosts through, and nothing here can turn it off.
//!
//! - [`supervisor`]: [`Browser`], the handle: launch, watchdog, relaunch;
//! - [`launch`]: flags and the Chromium process (its own process group);
//! - [`executable`]: which Chromium to run;
//! - [`instance`]: one running Chromium and its DevTools connection;
//! - [`interception`]: the network gate (consent, marker header, proxy auth);
//! - [`consent`]: the allowed-hosts rule (pure);
//! - [`context`]: [`FlowContext`], one flow's isolated context;
//! - [`emulation`]: a device profile as DevTools emulation;
//! - [`page`]: [`FlowPage`], navigate, scroll, links, click;
//! - [`vitals`]: Web Vitals measured in the page;
//! - [`artifacts`]: console errors, request log and screenshot of a failed flow;
//! - [`proxy_error`]: a proxy's failure told from the site's (pure);
//! - [`capacity`]: PSS, free memory, and the slots they allow;
//! - [`parse_errors`]: DevTools messages the client could not parse;
//! - [`error`]: [`LaunchError`] and [`FlowError`].

pub mod artifacts;
pub mod capacity;
pub mod consent;
pub mod context;
pub mod emulation;
pub mod error;
pub mod executable;
mod instance;
pub mod interception;
pub mod launch;
pub mod page;
pub mod parse_errors;
pub mod proxy_error;
pub mod supervisor;
pub mod vitals;

pub use artifacts::{FailureArtifacts, RequestRecord};
pub use capacity::{CapacityModel, MemorySample};
pub use consent::{AllowedHosts, BlockReason, BlockedRequest};
pub use context::{FlowContext, FlowSpec, ProxyEndpoint};
pub use error::{FlowError, LaunchError};
pub use interception::MARKER_HEADER;
pub use launch::{LaunchOptions, Timeouts};
pub use page::{FlowPage, Link, Navigation, PageMetrics};
pub use parse_errors::{parse_error_layer, parse_errors};
pub use proxy_error::{ProxyError, ProxyFailure};
pub use supervisor::Browser;
pub use vitals::WebVitals;

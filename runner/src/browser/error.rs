//! What can go wrong with the browser: starting it, and running a flow in it.

use std::time::Duration;

use super::consent::BlockedRequest;
use super::proxy_error::ProxyError;

/// Chromium could not be found or started.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    #[error(
        "no Chromium found ({searched}); install it (Debian: `apt-get install chromium`) or pass --chrome PATH / set CHROME"
    )]
    NotFound { searched: String },
    #[error("Chromium {path} could not be started: {reason}")]
    Start { path: String, reason: String },
    #[error("Chromium {path} did not open its DevTools socket within {after:?}: {stderr}")]
    NoDevTools {
        path: String,
        after: Duration,
        stderr: String,
    },
    #[error("could not connect to Chromium's DevTools socket {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("Chromium's set-up command {command} failed: {reason}")]
    Setup {
        command: &'static str,
        reason: String,
    },
    #[error("the browser was shut down")]
    ShutDown,
}

/// A flow step that did not succeed. [`FlowError::Browser`] means the
/// browser itself failed (crashed, hung, relaunched): not the site's fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlowError {
    /// Refused by consent before anything left the browser.
    #[error("blocked: {0}")]
    Blocked(BlockedRequest),
    #[error(transparent)]
    Proxy(ProxyError),
    /// The target itself failed (DNS, refused, reset…), in Chromium's words.
    #[error("{url}: {error}")]
    Net { url: String, error: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("browser: {0}")]
    Browser(String),
    /// A DevTools command failed or a page script threw.
    #[error("{what}: {reason}")]
    Page { what: &'static str, reason: String },
    /// The caller asked for something that cannot be done (a bad URL…).
    #[error("{0}")]
    Invalid(String),
}

impl FlowError {
    pub(crate) fn page(what: &'static str, reason: impl std::fmt::Display) -> Self {
        FlowError::Page {
            what,
            reason: reason.to_string(),
        }
    }
}

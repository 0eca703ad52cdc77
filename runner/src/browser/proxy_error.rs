//! A proxy's failure, told apart from the target's, so failover can act on
//! it. Pure: Chromium's net error text and status in, a kind out.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyFailure {
    /// Nothing accepted the connection at the proxy's address.
    ConnectionRefused,
    /// The proxy answered but would not carry the request (CONNECT refused,
    /// bad gateway, SOCKS failure).
    TunnelFailed,
    /// The proxy did not answer in time.
    Timeout,
    /// The proxy wants credentials it was not given, or refused them (407).
    AuthRejected,
}

impl fmt::Display for ProxyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyFailure::ConnectionRefused => "connection refused",
            ProxyFailure::TunnelFailed => "tunnel failed",
            ProxyFailure::Timeout => "timed out",
            ProxyFailure::AuthRejected => "authentication rejected (407)",
        })
    }
}

/// A flow's proxy failed: which proxy (`host:port`, never its credentials),
/// how, and Chromium's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("proxy {proxy} {failure} ({detail})")]
pub struct ProxyError {
    pub proxy: String,
    pub failure: ProxyFailure,
    pub detail: String,
}

/// The proxy failure behind a navigation's `errorText` (`net::ERR_…`) or
/// its HTTP status, for a flow that goes through a proxy. `None` when the
/// failure is the target's, or not a failure.
pub fn classify(error_text: Option<&str>, status: Option<u16>) -> Option<ProxyFailure> {
    if status == Some(407) {
        return Some(ProxyFailure::AuthRejected);
    }
    let code = error_text?.trim().trim_start_matches("net::");
    Some(match code {
        "ERR_PROXY_CONNECTION_FAILED" | "ERR_SOCKS_CONNECTION_FAILED" => {
            ProxyFailure::ConnectionRefused
        }
        "ERR_TUNNEL_CONNECTION_FAILED"
        | "ERR_HTTPS_PROXY_TUNNEL_RESPONSE_REDIRECT"
        | "ERR_PROXY_HTTP_1_1_REQUIRED"
        | "ERR_SOCKS_CONNECTION_HOST_UNREACHABLE"
        | "ERR_PROXY_CERTIFICATE_INVALID"
        | "ERR_MANDATORY_PROXY_CONFIGURATION_FAILED" => ProxyFailure::TunnelFailed,
        // Through a proxy, the only connection Chromium makes is to the proxy.
        "ERR_TIMED_OUT" | "ERR_CONNECTION_TIMED_OUT" => ProxyFailure::Timeout,
        "ERR_PROXY_AUTH_REQUESTED"
        | "ERR_PROXY_AUTH_UNSUPPORTED"
        | "ERR_PROXY_AUTH_REQUESTED_WITH_NO_CONNECTION"
        | "ERR_UNEXPECTED_PROXY_AUTH" => ProxyFailure::AuthRejected,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chromium_proxy_errors_map_to_their_kind() {
        let cases = [
            (
                "net::ERR_PROXY_CONNECTION_FAILED",
                ProxyFailure::ConnectionRefused,
            ),
            (
                "net::ERR_TUNNEL_CONNECTION_FAILED",
                ProxyFailure::TunnelFailed,
            ),
            (
                "net::ERR_SOCKS_CONNECTION_FAILED",
                ProxyFailure::ConnectionRefused,
            ),
            ("net::ERR_TIMED_OUT", ProxyFailure::Timeout),
            ("net::ERR_CONNECTION_TIMED_OUT", ProxyFailure::Timeout),
            (
                "net::ERR_PROXY_AUTH_UNSUPPORTED",
                ProxyFailure::AuthRejected,
            ),
        ];
        for (text, kind) in cases {
            assert_eq!(classify(Some(text), None), Some(kind), "{text}");
        }
    }

    #[test]
    fn a_407_is_an_authentication_failure_whatever_the_text() {
        assert_eq!(classify(None, Some(407)), Some(ProxyFailure::AuthRejected));
    }

    #[test]
    fn the_targets_own_failures_are_not_the_proxys() {
        assert_eq!(classify(Some("net::ERR_NAME_NOT_RESOLVED"), None), None);
        assert_eq!(classify(Some("net::ERR_BLOCKED_BY_CLIENT"), None), None);
        assert_eq!(classify(None, Some(502)), None);
        assert_eq!(classify(None, Some(200)), None);
    }
}

//! Consent in the browser, as a pure rule: a flow may reach its allowed
//! hosts (each exact, or any subdomain of it) and nothing else. Pure: no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

/// The hosts a flow may reach: the job's verified, allow-listed and
/// consented domains (or exact IP addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// Hosts in any case, with or without a trailing dot; IPv6 with or
    /// without brackets. Empty entries are ignored.
    pub fn new<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list: Vec<String> = hosts
            .into_iter()
            .map(|h| normalize(h.as_ref()))
            .filter(|h| !h.is_empty())
            .collect();
        list.sort();
        list.dedup();
        AllowedHosts(list)
    }

    /// Is `host` one of the hosts, or a subdomain of one? An IP address
    /// matches only itself.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normalize(host);
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        self.0.iter().any(|allowed| {
            host == *allowed
                || (!is_ip
                    && host.len() > allowed.len()
                    && host.ends_with(allowed.as_str())
                    && host.as_bytes()[host.len() - allowed.len() - 1] == b'.')
        })
    }

    /// The consent check of one URL a flow is about to request.
    pub fn check(&self, url: &str) -> Result<(), BlockedRequest> {
        let parsed = Url::parse(url).map_err(|_| BlockedRequest {
            host: String::new(),
            reason: BlockReason::NotHttp,
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BlockedRequest {
                host: parsed.host_str().unwrap_or_default().to_owned(),
                reason: BlockReason::NotHttp,
            });
        }
        let host = parsed.host_str().unwrap_or_default();
        if self.allows_host(host) {
            Ok(())
        } else {
            Err(BlockedRequest {
                host: normalize(host),
                reason: BlockReason::NotConsented,
            })
        }
    }

    /// A script, run before any of a document's own, that refuses a
    /// WebSocket to a host not allowed: the DevTools Fetch gate never sees
    /// a WebSocket handshake. It covers the page's frames, not workers.
    pub fn websocket_guard(&self) -> String {
        let hosts = serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".into());
        format!(
            r#"(() => {{
  const allowed = {hosts};
  const Native = window.WebSocket;
  if (!Native || Native.__trafficbusterGuarded) return;
  const ok = url => {{
    let host;
    try {{ host = new URL(url, location.href).hostname.toLowerCase().replace(/^\[|\]$/g, ''); }}
    catch (e) {{ return false; }}
    return allowed.some(a => host === a || (!/^[0-9.:]+$/.test(host) && host.endsWith('.' + a)));
  }};
  const Guarded = new Proxy(Native, {{
    construct(target, args, newTarget) {{
      if (!ok(args[0])) throw new DOMException("blocked: the host is not one of the job's consented domains", "SecurityError");
      return Reflect.construct(target, args, newTarget);
    }},
    get(target, key) {{ return key === '__trafficbusterGuarded' ? true : Reflect.get(target, key); }},
  }});
  Object.defineProperty(window, 'WebSocket', {{ value: Guarded, writable: false, configurable: false }});
}})();"#
        )
    }

    pub fn hosts(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn normalize(host: &str) -> String {
    let host = host.trim().trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.to_ascii_lowercase()
}

/// Why a request was stopped before it left the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    /// The host is none of the flow's allowed hosts.
    NotConsented,
    /// Not an http(s) URL.
    NotHttp,
    /// A request the browser could not tie to one flow, to a host that not
    /// every live flow allows.
    Unattributed,
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockReason::NotConsented => "the host is not one of the job's consented domains",
            BlockReason::NotHttp => "only http and https URLs are followed",
            BlockReason::Unattributed => {
                "the request could not be tied to its flow, and not every flow allows the host"
            }
        })
    }
}

/// A request refused by consent: its host and why (no path or query, which
/// may carry what a log must not keep).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedRequest {
    pub host: String,
    pub reason: BlockReason,
}

impl fmt::Display for BlockedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.host, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> AllowedHosts {
        AllowedHosts::new(["Shop.Example.", "partner.test", "127.0.0.1", "[::1]"])
    }

    #[test]
    fn an_allowed_domain_covers_itself_and_its_subdomains() {
        let a = allowed();
        assert!(a.allows_host("shop.example"));
        assert!(a.allows_host("www.shop.example"));
        assert!(a.allows_host("a.b.partner.test"));
        assert!(a.allows_host("SHOP.EXAMPLE."));
    }

    #[test]
    fn a_lookalike_or_parent_domain_is_not_allowed() {
        let a = allowed();
        assert!(!a.allows_host("evilshop.example"));
        assert!(!a.allows_host("example"));
        assert!(!a.allows_host("shop.example.evil.test"));
        assert!(!a.allows_host("other.test"));
    }

    #[test]
    fn an_ip_address_matches_only_itself() {
        let a = allowed();
        assert!(a.allows_host("127.0.0.1"));
        assert!(a.allows_host("::1"));
        assert!(!a.allows_host("127.0.0.2"));
        assert!(!AllowedHosts::new(["0.0.1"]).allows_host("127.0.0.1"));
    }

    #[test]
    fn a_url_is_checked_by_its_host_and_blocked_with_the_reason() {
        let a = allowed();
        assert_eq!(a.check("https://www.shop.example:8443/cart?x=1"), Ok(()));
        assert_eq!(a.check("http://[::1]:8080/"), Ok(()));
        assert_eq!(
            a.check("http://tracker.test/p?secret=1"),
            Err(BlockedRequest {
                host: "tracker.test".into(),
                reason: BlockReason::NotConsented
            })
        );
        assert_eq!(
            a.check("ftp://shop.example/").unwrap_err().reason,
            BlockReason::NotHttp
        );
        assert_eq!(
            a.check("not a url").unwrap_err().reason,
            BlockReason::NotHttp
        );
    }

    #[test]
    fn nothing_is_allowed_by_an_empty_list() {
        assert!(
            AllowedHosts::new(Vec::<String>::new())
                .check("http://a.test/")
                .is_err()
        );
        assert!(AllowedHosts::new([""]).is_empty());
    }
}

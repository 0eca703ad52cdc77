//! The client's address: the TCP peer, unless that peer is a proxy we trust
//! (a load balancer), whose `Forwarded` (RFC 7239) or `X-Forwarded-For`
//! header then names the client. Rate limits and the `login-attempts-…`
//! streams are keyed by this address, so it must never be what a client
//! merely claims: headers from an untrusted peer are ignored, and in a
//! trusted chain the answer is the rightmost hop that is not itself a
//! trusted proxy (hops further left were written by the client).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use axum::http::header::FORWARDED;
use ipnet::IpNet;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trusted proxy {0:?} is neither a CIDR (e.g. 10.0.0.0/8, fd00::/8) nor an IP address")]
pub struct BadCidr(pub String);

impl TrustedProxies {
    /// CIDRs, or bare addresses (one host each).
    pub fn parse<S: AsRef<str>>(cidrs: impl IntoIterator<Item = S>) -> Result<Self, BadCidr> {
        cidrs
            .into_iter()
            .map(|raw| {
                let text = raw.as_ref().trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadCidr(raw.as_ref().to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The address of the client behind a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops = match forwarded_hops(headers) {
            Some(hops) => hops,
            None => return peer,
        };
        let mut leftmost = None;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // A hop our own proxies wrote and we cannot read: claim nothing.
                return peer;
            };
            if !self.trusts(ip) {
                return ip;
            }
            leftmost = Some(ip);
        }
        // Every hop is one of ours: the request began inside.
        leftmost.unwrap_or(peer)
    }
}

/// The hops of `Forwarded` (its `for=` values), else of `X-Forwarded-For`,
/// oldest first; `None` if neither header is there. Several header lines
/// read as one list, in order.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<String>> {
    let joined = |name| {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{0}"))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    if let Some(forwarded) = joined(FORWARDED.as_str()) {
        let hops = split_outside_quotes(&forwarded, ',')
            .into_iter()
            .map(|element| for_value(&element).unwrap_or_default())
            .collect();
        return Some(hops);
    }
    let xff = joined(X_FORWARDED_FOR)?;
    Some(xff.split(',').map(|h| h.trim().to_owned()).collect())
}

/// The `for=` parameter of one `Forwarded` element, unquoted.
fn for_value(element: &str) -> Option<String> {
    split_outside_quotes(element, ';')
        .into_iter()
        .find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("for")
                .then(|| unquote(value.trim()))
        })
        .flatten()
}

/// A quoted-string's content (with `\` escapes), or a token as it is.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

/// Splits on `sep` except inside quoted strings.
fn split_outside_quotes(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().expect("never empty").push(c);
    }
    parts
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:4711`; anything else (`unknown`, `_hidden`) is `None`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .or_else(|| {
            hop.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn lb() -> TrustedProxies {
        TrustedProxies::parse(["10.0.0.0/8", "fd00::/8"]).unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let claims = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=203.0.113.8"),
        ]);
        assert_eq!(
            lb().client_ip(ip("198.51.100.1"), &claims),
            ip("198.51.100.1")
        );
        // And with no proxies trusted at all, nobody's headers count.
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(ip("10.0.0.1"), &claims), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_names_the_client() {
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(lb().client_ip(ip("10.1.2.3"), &h), ip("203.0.113.7"));
        // Without a header, the proxy itself is the client.
        assert_eq!(
            lb().client_ip(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn entries_a_client_prepends_are_passed_over_for_the_rightmost_untrusted_hop() {
        // The client sent "X-Forwarded-For: 1.2.3.4, 10.9.9.9" itself; our
        // two proxies appended its real address and the first proxy's.
        let h = headers(&[(
            "x-forwarded-for",
            "1.2.3.4, 10.9.9.9, 203.0.113.7, 10.0.0.2",
        )]);
        assert_eq!(lb().client_ip(ip("10.0.0.1"), &h), ip("203.0.113.7"));
        // Spread over several header lines, the list reads the same.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
        ]);
        assert_eq!(lb().client_ip(ip("10.0.0.1"), &h), ip("203.0.113.7"));
    }

    #[test]
    fn forwarded_is_read_with_quotes_ports_and_ipv6() {
        let h = headers(&[(
            "forwarded",
            r#"for=1.2.3.4, For="[2001:db8:cafe::17]:4711";proto=https;by="a,b", for="10.0.0.2:80""#,
        )]);
        assert_eq!(lb().client_ip(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")]);
        assert_eq!(lb().client_ip(ip("fd00::1"), &h), ip("192.0.2.60"));
        // Forwarded is preferred to X-Forwarded-For when both are sent.
        let h = headers(&[
            ("forwarded", "for=192.0.2.60"),
            ("x-forwarded-for", "192.0.2.99"),
        ]);
        assert_eq!(lb().client_ip(ip("10.0.0.1"), &h), ip("192.0.2.60"));
    }

    #[test]
    fn an_unreadable_hop_falls_back_to_the_peer() {
        for (name, value) in [
            ("x-forwarded-for", "203.0.113.7, not-an-address"),
            ("x-forwarded-for", ""),
            ("forwarded", "for=unknown"),
            ("forwarded", "proto=https"),
            ("forwarded", r#"for="[2001:db8::1"#),
        ] {
            let h = headers(&[(name, value)]);
            assert_eq!(
                lb().client_ip(ip("10.0.0.1"), &h),
                ip("10.0.0.1"),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn a_chain_of_only_trusted_hops_names_its_first() {
        let h = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.2")]);
        assert_eq!(lb().client_ip(ip("10.0.0.1"), &h), ip("10.0.0.5"));
    }

    #[test]
    fn ipv4_peers_seen_as_ipv6_are_matched_as_ipv4() {
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(lb().client_ip(ip("::ffff:10.0.0.1"), &h), ip("203.0.113.7"));
        assert_eq!(
            lb().client_ip(ip("::ffff:198.51.100.1"), &h),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn bare_addresses_are_one_host_and_bad_cidrs_are_named() {
        let one = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        assert!(one.trusts(ip("127.0.0.1")) && !one.trusts(ip("127.0.0.2")));
        let err = TrustedProxies::parse(["10.0.0.0/8", "10.0.0.0/33"]).unwrap_err();
        assert_eq!(err, BadCidr("10.0.0.0/33".into()));
        assert!(err.to_string().contains("\"10.0.0.0/33\""), "{err}");
    }
}

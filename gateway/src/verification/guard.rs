//! The SSRF guard: which addresses the verification check may connect to.
//! A claimed name can resolve to anything, the gateway's own network
//! included, so the check connects only to addresses this module lets
//! through. Pure: it judges addresses, it never resolves or connects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// IPv4 blocks that are not the public Internet, and what each is.
const V4: &[(Ipv4Net, &str)] = &[
    (v4(0, 0, 0, 0, 8), "\"this network\" (0.0.0.0/8)"),
    (v4(10, 0, 0, 0, 8), "private (10.0.0.0/8)"),
    (
        v4(100, 64, 0, 0, 10),
        "shared carrier-grade NAT (100.64.0.0/10)",
    ),
    (v4(127, 0, 0, 0, 8), "loopback (127.0.0.0/8)"),
    (
        v4(169, 254, 0, 0, 16),
        "link-local (169.254.0.0/16, where cloud metadata services answer)",
    ),
    (v4(172, 16, 0, 0, 12), "private (172.16.0.0/12)"),
    (
        v4(192, 0, 0, 0, 24),
        "reserved for protocol assignments (192.0.0.0/24)",
    ),
    (v4(192, 0, 2, 0, 24), "documentation (192.0.2.0/24)"),
    (
        v4(192, 88, 99, 0, 24),
        "6to4 relay anycast (192.88.99.0/24)",
    ),
    (v4(192, 168, 0, 0, 16), "private (192.168.0.0/16)"),
    (v4(198, 18, 0, 0, 15), "benchmarking (198.18.0.0/15)"),
    (v4(198, 51, 100, 0, 24), "documentation (198.51.100.0/24)"),
    (v4(203, 0, 113, 0, 24), "documentation (203.0.113.0/24)"),
    (v4(224, 0, 0, 0, 4), "multicast (224.0.0.0/4)"),
    (
        v4(240, 0, 0, 0, 4),
        "reserved (240.0.0.0/4, with the broadcast address)",
    ),
];

/// IPv6 blocks that are not the public Internet, and what each is. The
/// forms that carry an IPv4 address are judged by that address instead
/// (see [`embedded_v4`]).
const V6: &[(Ipv6Net, &str)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified (::)"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback (::1)"),
    (
        v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "IPv4-compatible, deprecated (::/96)",
    ),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use NAT64 (64:ff9b:1::/48)",
    ),
    (
        v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        "discard-only (100::/64)",
    ),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "reserved for protocol assignments, Teredo among them (2001::/23)",
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation (2001:db8::/32)",
    ),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        "documentation (3fff::/20)",
    ),
    (
        v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),
        "segment routing (5f00::/16)",
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local (fc00::/7)",
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "link-local (fe80::/10)",
    ),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local, deprecated (fec0::/10)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast (ff00::/8)"),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(s: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    )
}

/// An address the check may not reach, and what kind it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{addr} is {kind}")]
pub struct Refused {
    pub addr: IpAddr,
    pub kind: &'static str,
}

/// Why the check may not connect to `addr`, or `None` if it may: only
/// public unicast addresses pass.
pub fn refusal(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(inner) => refusal_v4(inner),
            None => V6
                .iter()
                .find(|(net, _)| net.contains(&v6))
                .map(|(_, kind)| *kind),
        },
    }
}

fn refusal_v4(addr: Ipv4Addr) -> Option<&'static str> {
    V4.iter()
        .find(|(net, _)| net.contains(&addr))
        .map(|(_, kind)| *kind)
}

/// The IPv4 address an IPv6 address reaches through: IPv4-mapped
/// (`::ffff:a.b.c.d`, which a dual-stack socket sends over IPv4), NAT64's
/// well-known prefix (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = addr.segments();
    let tail = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(tail(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(tail(hi, lo)),
        [0x2002, hi, lo, ..] => Some(tail(hi, lo)),
        _ => None,
    }
}

/// Lets `addrs` through if every one of them may be reached (or if
/// private addresses are allowed); a name that mixes public and refused
/// addresses is refused whole, since any of them could be the one used.
pub fn check(addrs: &[IpAddr], allow_private: bool) -> Result<(), Refused> {
    if allow_private {
        return Ok(());
    }
    match addrs
        .iter()
        .find_map(|&addr| refusal(addr).map(|kind| Refused { addr, kind }))
    {
        Some(refused) => Err(refused),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_unicast_addresses_pass() {
        let refused = [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("0.0.0.0", "this network"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "metadata"),
            ("169.254.0.1", "link-local"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("198.18.0.1", "benchmarking"),
            ("192.0.2.10", "documentation"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2001:0:4136:e378::1", "Teredo"),
            ("::7f00:1", "IPv4-compatible"),
            // IPv4-mapped, NAT64 and 6to4 forms of refused IPv4 addresses.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:0.0.0.0", "this network"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:c0a8:0101::1", "private"),
            ("2002:7f00:0001::", "loopback"),
        ];
        for (addr, what) in refused {
            assert!(refusal(ip(addr)).is_some(), "{addr} ({what}) passed");
        }
        let public = [
            "93.184.215.14",
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:93.184.215.14",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ];
        for addr in public {
            assert_eq!(refusal(ip(addr)), None, "{addr} was refused");
        }
    }

    #[test]
    fn the_metadata_address_is_named_for_what_it_is() {
        let refused = check(&[ip("169.254.169.254")], false).unwrap_err();
        assert_eq!(refused.addr, ip("169.254.169.254"));
        assert!(refused.to_string().contains("metadata"), "{refused}");
    }

    #[test]
    fn one_refused_address_refuses_the_name_unless_private_addresses_are_allowed() {
        let mixed = [ip("93.184.215.14"), ip("::1")];
        assert_eq!(
            check(&mixed, false),
            Err(Refused {
                addr: ip("::1"),
                kind: "loopback (::1)"
            })
        );
        assert_eq!(check(&mixed, true), Ok(()));
        assert_eq!(check(&[ip("93.184.215.14")], false), Ok(()));
    }
}

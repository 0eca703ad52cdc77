//! A domain name as consent is given for it: canonical (lower case, ASCII,
//! IDNs in punycode, no trailing dot), fully qualified, and never an IP
//! address, so one site has exactly one spelling in streams and checks.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use serde::{Deserialize, Serialize};

/// The DNS limits on a label and a whole name, in octets.
const MAX_LABEL: usize = 63;
const MAX_NAME: usize = 253;
/// How much of a refused input an error repeats.
const ECHO: usize = 80;

/// A canonical, fully qualified domain name, e.g. `xn--bcher-kva.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

/// Why some input is not a domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainNameProblem {
    #[error("it is empty; give a host name such as example.com")]
    Empty,
    #[error(
        "give just the host name (e.g. example.com for https://example.com/shop), without a scheme, port, user or path"
    )]
    NotJustAHost,
    #[error("it is an IP address; give the domain name the site is served under")]
    IpAddress,
    #[error("its last label is a number, which browsers read as an IP address")]
    NumericLastLabel,
    #[error("it is not a valid internationalized domain name")]
    InvalidInternational,
    #[error("it has an empty label (a leading dot or two dots in a row)")]
    EmptyLabel,
    #[error("label {label:?} is {len} octets long; a label holds at most {MAX_LABEL}")]
    LabelTooLong { label: String, len: usize },
    #[error("it is {len} octets long; a domain name holds at most {MAX_NAME}")]
    TooLong { len: usize },
    #[error("{0:?} is not allowed: a domain name holds letters, digits, hyphens and dots")]
    BadCharacter(char),
    #[error("label {0:?} starts or ends with a hyphen")]
    HyphenAtEdge(String),
    #[error("it has a single label; give a fully qualified name such as example.com")]
    SingleLabel,
}

/// Some input is not a domain name: which, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a domain name: {problem}")]
pub struct DomainNameError {
    /// The input as given (its first 80 characters).
    pub input: String,
    pub problem: DomainNameProblem,
}

impl DomainName {
    /// Turns user input into its canonical name: trims, strips one trailing
    /// dot, maps IDNs to punycode (UTS 46, lower-casing on the way), then
    /// holds the result to DNS's letter-digit-hyphen rules and lengths.
    pub fn parse(raw: &str) -> Result<Self, DomainNameError> {
        canonical(raw.trim()).map(Self).map_err(|problem| {
            let mut input: String = raw.chars().take(ECHO).collect();
            if raw.chars().nth(ECHO).is_some() {
                input.push('…');
            }
            DomainNameError { input, problem }
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does consent for `self` reach `other`? A name covers itself and its
    /// subdomains, at a label boundary: `example.com` covers
    /// `a.example.com`, not `badexample.com`.
    pub fn covers(&self, other: &DomainName) -> bool {
        other
            .0
            .strip_suffix(self.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
    }

    /// The names that cover this one, nearest first, down to two labels:
    /// `a.b.example.com` → `b.example.com` → `example.com`.
    pub fn parents(&self) -> impl Iterator<Item = DomainName> + '_ {
        std::iter::successors(Some(self.0.as_str()), |name| {
            name.split_once('.').map(|(_, parent)| parent)
        })
        .skip(1)
        .take_while(|name| name.contains('.'))
        .map(|name| DomainName(name.to_owned()))
    }
}

fn canonical(name: &str) -> Result<String, DomainNameProblem> {
    use DomainNameProblem as P;
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(P::Empty);
    }
    let unbracketed = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if unbracketed.parse::<Ipv4Addr>().is_ok() || unbracketed.parse::<Ipv6Addr>().is_ok() {
        return Err(P::IpAddress);
    }
    if name.contains(['/', ':', '?', '#', '@', '\\', '[', ']']) {
        return Err(P::NotJustAHost);
    }
    // The checks below name each problem, so UTS 46 only maps and converts:
    // no deny list, hyphens and lengths checked here.
    let ascii = Uts46::new()
        .to_ascii(
            name.as_bytes(),
            AsciiDenyList::EMPTY,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map_err(|_| P::InvalidInternational)?
        .into_owned();
    let labels: Vec<&str> = ascii.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(P::EmptyLabel);
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(P::BadCharacter(c));
        }
        if label.len() > MAX_LABEL {
            return Err(P::LabelTooLong {
                label: (*label).to_owned(),
                len: label.len(),
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(P::HyphenAtEdge((*label).to_owned()));
        }
    }
    if ascii.len() > MAX_NAME {
        return Err(P::TooLong { len: ascii.len() });
    }
    // An all-digit (or 0x-hex) last label makes a URL's host an IPv4
    // address (`127.1`, `0x7f.0.0.1`), so it could never be this name.
    let last = labels[labels.len() - 1];
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    if hex || last.chars().all(|c| c.is_ascii_digit()) {
        return Err(P::NumericLastLabel);
    }
    if labels.len() < 2 {
        return Err(P::SingleLabel);
    }
    Ok(ascii)
}

impl TryFrom<String> for DomainName {
    type Error = DomainNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DomainName> for String {
    fn from(d: DomainName) -> String {
        d.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    fn problem(s: &str) -> DomainNameProblem {
        DomainName::parse(s).unwrap_err().problem
    }

    #[test]
    fn input_is_trimmed_lower_cased_and_loses_one_trailing_dot() {
        assert_eq!(name("  Shop.Example.COM.  ").as_str(), "shop.example.com");
        assert_eq!(name("a-b.example").as_str(), "a-b.example");
        assert_eq!(problem("example.com.."), DomainNameProblem::EmptyLabel);
    }

    #[test]
    fn international_names_become_punycode() {
        assert_eq!(name("bücher.example").as_str(), "xn--bcher-kva.example");
        assert_eq!(name("BÜCHER.example").as_str(), "xn--bcher-kva.example");
        // Already converted input stays as it is.
        assert_eq!(
            name("xn--bcher-kva.example").as_str(),
            "xn--bcher-kva.example"
        );
        // The ideographic full stop separates labels as browsers read it.
        assert_eq!(name("bücher。example").as_str(), "xn--bcher-kva.example");
        assert_eq!(
            problem("xn--zz-.example"),
            DomainNameProblem::InvalidInternational
        );
    }

    #[test]
    fn ip_addresses_are_refused_in_every_spelling() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1.",
            "::1",
            "[::1]",
            "[fe80::1]",
            "2001:db8::1",
        ] {
            assert_eq!(problem(ip), DomainNameProblem::IpAddress, "{ip}");
        }
        for ip in ["127.1", "0x7f.0.0.1", "1.2.3.04", "example.0x1f"] {
            assert_eq!(problem(ip), DomainNameProblem::NumericLastLabel, "{ip}");
        }
    }

    #[test]
    fn a_url_is_refused_saying_to_give_just_the_host_name() {
        for url in [
            "https://example.com/shop",
            "example.com/shop",
            "example.com:8080",
            "user@example.com",
            "example.com?q=1",
        ] {
            let err = DomainName::parse(url).unwrap_err();
            assert_eq!(err.problem, DomainNameProblem::NotJustAHost, "{url}");
            assert!(err.to_string().contains("give just the host name"), "{err}");
        }
    }

    #[test]
    fn a_single_label_name_needs_to_be_fully_qualified() {
        let err = DomainName::parse("localhost").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"localhost\" is not a domain name: it has a single label; give a fully qualified name such as example.com"
        );
        assert_eq!(problem("localhost."), DomainNameProblem::SingleLabel);
    }

    #[test]
    fn labels_and_names_are_held_to_dns_lengths_and_characters() {
        assert_eq!(problem(""), DomainNameProblem::Empty);
        assert_eq!(problem(" . "), DomainNameProblem::Empty);
        assert_eq!(problem(".example.com"), DomainNameProblem::EmptyLabel);
        assert_eq!(problem("a..example.com"), DomainNameProblem::EmptyLabel);
        let longest_label = "a".repeat(63);
        assert!(DomainName::parse(&format!("{longest_label}.example")).is_ok());
        assert_eq!(
            problem(&format!("{longest_label}a.example")),
            DomainNameProblem::LabelTooLong {
                label: format!("{longest_label}a"),
                len: 64
            }
        );
        // 4 labels of 63 and the dots: 255 octets.
        let long = [longest_label.as_str(); 4].join(".");
        assert_eq!(problem(&long), DomainNameProblem::TooLong { len: 255 });
        assert!(DomainName::parse(&long[2..]).is_ok(), "253 octets fit");
        assert_eq!(problem("a_b.example"), DomainNameProblem::BadCharacter('_'));
        assert_eq!(
            problem("exa mple.com"),
            DomainNameProblem::BadCharacter(' ')
        );
        assert_eq!(
            problem("-shop.example.com"),
            DomainNameProblem::HyphenAtEdge("-shop".into())
        );
        assert_eq!(
            problem("shop-.example.com"),
            DomainNameProblem::HyphenAtEdge("shop-".into())
        );
    }

    #[test]
    fn an_error_names_the_input_but_never_repeats_a_huge_one() {
        let err = DomainName::parse("a_b.example").unwrap_err();
        assert!(
            err.to_string().starts_with("\"a_b.example\" is not"),
            "{err}"
        );
        let huge = "x".repeat(10_000);
        let err = DomainName::parse(&huge).unwrap_err();
        assert_eq!(err.input.chars().count(), 81);
    }

    #[test]
    fn a_name_covers_itself_and_its_subdomains_at_a_label_boundary() {
        let example = name("example.com");
        assert!(example.covers(&example));
        assert!(example.covers(&name("a.example.com")));
        assert!(example.covers(&name("a.b.example.com")));
        assert!(!example.covers(&name("badexample.com")));
        assert!(!example.covers(&name("example.org")));
        assert!(!name("a.example.com").covers(&example));
    }

    #[test]
    fn parents_go_up_to_two_labels_nearest_first() {
        let parents: Vec<String> = name("a.b.example.com")
            .parents()
            .map(String::from)
            .collect();
        assert_eq!(parents, ["b.example.com", "example.com"]);
        assert_eq!(name("example.com").parents().count(), 0);
        let deep = name("a.b.example.com");
        assert!(deep.parents().all(|p| p.covers(&deep)));
    }

    #[test]
    fn serde_reads_and_writes_the_canonical_string_and_refuses_bad_ones() {
        let json = serde_json::to_string(&name("Bücher.Example")).unwrap();
        assert_eq!(json, "\"xn--bcher-kva.example\"");
        assert_eq!(
            serde_json::from_str::<DomainName>(&json).unwrap(),
            name("bücher.example")
        );
        assert!(serde_json::from_str::<DomainName>("\"127.0.0.1\"").is_err());
    }
}

//! A job's brief: what a runner needs once per job, not per grant — how
//! sessions behave (the settings profile), the device profiles its
//! platform serves, the proxies with their credentials, the DNS host
//! mappings and the domains traffic may go to. The gateway sends it before
//! the first grant of the job on a connection (protocol 2), cut into parts
//! when it would not fit a frame; the runner puts the parts back together.
//!
//! These are wire types, apart from the datasets' stored rows on purpose:
//! the protocol stays fixed within a version while the datasets' canonical
//! form may grow, and a proxy's password travels here in clear (for the
//! runner only) where a stored row holds it sealed.
//!
//! Pure: no I/O. A password never shows in `Debug`.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::domain_name::DomainName;
use crate::flow::{FlowId, ProxyIndex};
use crate::job::JobId;
use crate::runner::Platform;

/// Most parts one brief may be cut into; a runner refuses more.
pub const MAX_BRIEF_PARTS: u32 = 64;

/// A whole-number range; a constant has equal ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub min: u32,
    pub max: u32,
}

/// How a flow picks its proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxySwitching {
    /// A new proxy for every flow.
    PerFlow,
    /// One proxy for a whole session.
    StickySession,
    /// Keep a proxy until it fails.
    OnFailure,
}

/// How sessions behave: the job's settings profile, as a runner acts on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    /// Seconds a session lasts.
    pub session_duration_s: Span,
    pub pages_per_session: Span,
    /// Seconds between one flow and the next on a browser slot.
    pub delay_between_flows_s: Span,
    /// Scroll at random throughout a page.
    pub random_scrolling: bool,
    /// Click links on a page.
    pub clicks: bool,
    /// The share of clicks sent to external links, 0 to 1.
    pub external_click_share: f64,
    /// The wait before each click, in milliseconds.
    pub click_delay_ms: Span,
    /// Browsers the job runs at once, across every runner.
    pub instances: u32,
    pub proxy_switching: ProxySwitching,
    /// Every request carries `X-TrafficBuster-Job: <job id>`.
    pub marker_header: bool,
}

/// The page area in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
}

/// A device profile a flow emulates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// Its row in the job's device profiles version: what a flow's work
    /// names it by.
    pub row: u32,
    pub name: String,
    /// The OS and browser it presents (one this runner's platform serves).
    pub platform: Platform,
    pub user_agent: String,
    pub viewport: Viewport,
    pub device_scale_factor: f64,
    pub touch: bool,
    /// A BCP 47 language tag, e.g. `en-US`.
    pub locale: String,
    /// An IANA zone name, e.g. `Europe/Paris`, or `UTC`.
    pub timezone: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyScheme {
    Http,
    Https,
    Socks5,
}

/// A proxy's password, in clear for the runner that logs in with it. Never
/// shown by `Debug`; the runner must never log it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProxyPassword(String);

impl ProxyPassword {
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password, to answer the proxy's challenge with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProxyPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyPassword(..)")
    }
}

/// A proxy of the job's proxies version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    /// Its row in the proxies version: what reports name it by.
    pub row: ProxyIndex,
    pub scheme: ProxyScheme,
    /// A domain name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<ProxyPassword>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The gateway disabled it (it kept failing): pick it for no new flow
    /// until a `proxy_enabled` says otherwise.
    #[serde(default)]
    pub disabled: bool,
}

/// A host name resolved to a fixed address (the settings profile's DNS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMapping {
    pub host: DomainName,
    pub address: IpAddr,
}

/// What a runner needs once per job. Lists are split across parts; the
/// rest is repeated in each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobBrief {
    pub job: JobId,
    pub behaviour: Behaviour,
    /// The device profiles this runner's platform serves, in row order;
    /// each flow's work names the one it uses.
    #[serde(default)]
    pub profiles: Vec<DeviceProfile>,
    /// Every proxy of the job's proxies version, in row order; none when
    /// the job uses none.
    #[serde(default)]
    pub proxies: Vec<Proxy>,
    /// Host names to resolve as given; empty: the system's resolver.
    #[serde(default)]
    pub hosts: Vec<HostMapping>,
    /// The domains the job's targets may be visited on: each target
    /// domain's verified or allow-listed name, which covers its
    /// subdomains. Traffic to any other host, but `external_click_domains`,
    /// is blocked before it leaves the browser.
    #[serde(default)]
    pub domains: Vec<DomainName>,
    /// The owner's consented external-click domains (each covering its
    /// subdomains); none when the job does not click external links.
    #[serde(default)]
    pub external_click_domains: Vec<DomainName>,
}

/// A brief that cannot be sent: an item alone is over the frame budget, or
/// it needs more parts than a runner takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BriefTooLarge {
    #[error("one {what} of the brief takes {bytes} bytes, more than a part holds ({budget})")]
    Item {
        what: &'static str,
        bytes: usize,
        budget: usize,
    },
    #[error("the brief needs {parts} parts; a runner takes at most {MAX_BRIEF_PARTS}")]
    Parts { parts: usize },
}

/// Why parts do not make a brief.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BriefPartError {
    #[error("a brief of {parts} parts; at most {MAX_BRIEF_PARTS}")]
    TooManyParts { parts: u32 },
    #[error("part {part} of {parts} is out of range")]
    OutOfRange { part: u32, parts: u32 },
    #[error("part {got} of job {job} came where part {expected} was due")]
    OutOfOrder { job: JobId, expected: u32, got: u32 },
    #[error("a part of job {got} came amid the brief of job {expected}")]
    OtherJob { expected: JobId, got: JobId },
}

impl JobBrief {
    /// Is `host` one the job may send traffic to: a target domain, or (for
    /// an external click) a consented one, or a subdomain of either?
    pub fn allows(&self, host: &DomainName) -> bool {
        self.domains
            .iter()
            .chain(&self.external_click_domains)
            .any(|d| d.covers(host))
    }

    /// The profile of row `row`, if this runner was sent it.
    pub fn profile(&self, row: u32) -> Option<&DeviceProfile> {
        self.profiles.iter().find(|p| p.row == row)
    }

    /// The proxy of row `row`.
    pub fn proxy(&self, row: ProxyIndex) -> Option<&Proxy> {
        self.proxies.iter().find(|p| p.row == row)
    }

    /// Marks a proxy disabled or usable again; false if there is no such proxy.
    pub fn set_proxy_disabled(&mut self, row: ProxyIndex, disabled: bool) -> bool {
        match self.proxies.iter_mut().find(|p| p.row == row) {
            Some(p) => {
                p.disabled = disabled;
                true
            }
            None => false,
        }
    }

    /// The brief as parts whose every `job_brief` frame, as
    /// `frame(part, parts, brief)` encodes it, takes at most `max_bytes`.
    /// Each part repeats the job and behaviour and carries a slice of the
    /// lists, in order; [`JobBrief::merge`] undoes it.
    pub fn split(
        self,
        max_bytes: usize,
        frame: impl Fn(u32, u32, &JobBrief) -> usize,
    ) -> Result<Vec<JobBrief>, BriefTooLarge> {
        let JobBrief {
            job,
            behaviour,
            profiles,
            proxies,
            hosts,
            domains,
            external_click_domains,
        } = self;
        let empty = JobBrief {
            job,
            behaviour,
            profiles: Vec::new(),
            proxies: Vec::new(),
            hosts: Vec::new(),
            domains: Vec::new(),
            external_click_domains: Vec::new(),
        };
        // The widest numbers a part could carry, so the estimate never falls short.
        let base = frame(MAX_BRIEF_PARTS, MAX_BRIEF_PARTS, &empty);
        let mut packer = Packer {
            budget: max_bytes.saturating_sub(base),
            used: 0,
            parts: vec![empty.clone()],
            empty,
        };
        for p in profiles {
            packer.room("device profile", &p)?.profiles.push(p);
        }
        for p in proxies {
            packer.room("proxy", &p)?.proxies.push(p);
        }
        for h in hosts {
            packer.room("host mapping", &h)?.hosts.push(h);
        }
        for d in domains {
            packer.room("domain", &d)?.domains.push(d);
        }
        for d in external_click_domains {
            packer
                .room("external click domain", &d)?
                .external_click_domains
                .push(d);
        }
        let parts = packer.parts;
        if parts.len() > MAX_BRIEF_PARTS as usize {
            return Err(BriefTooLarge::Parts { parts: parts.len() });
        }
        Ok(parts)
    }

    /// Appends a later part's lists to this brief.
    pub fn merge(&mut self, part: JobBrief) {
        self.profiles.extend(part.profiles);
        self.proxies.extend(part.proxies);
        self.hosts.extend(part.hosts);
        self.domains.extend(part.domains);
        self.external_click_domains
            .extend(part.external_click_domains);
    }
}

/// Fills parts in order, opening a new one when the next item would not fit.
struct Packer {
    budget: usize,
    used: usize,
    parts: Vec<JobBrief>,
    empty: JobBrief,
}

impl Packer {
    /// The part `item` goes in: the open one, or a new one when it is full.
    fn room<T: Serialize>(
        &mut self,
        what: &'static str,
        item: &T,
    ) -> Result<&mut JobBrief, BriefTooLarge> {
        // Its JSON and a comma.
        let bytes = serde_json::to_string(item).map_or(usize::MAX / 2, |s| s.len()) + 1;
        if bytes > self.budget {
            return Err(BriefTooLarge::Item {
                what,
                bytes,
                budget: self.budget,
            });
        }
        if self.used + bytes > self.budget {
            self.parts.push(self.empty.clone());
            self.used = 0;
        }
        self.used += bytes;
        Ok(self.parts.last_mut().expect("a part is open"))
    }
}

/// A brief being put back together from its parts, which come in order on
/// one connection.
#[derive(Debug, Default)]
pub struct BriefAssembly {
    open: Option<(JobBrief, u32, u32)>,
}

impl BriefAssembly {
    /// Takes part `part` of `parts`; the whole brief once its last part is in.
    /// A part 0 starts a new brief, dropping one left unfinished.
    pub fn take(
        &mut self,
        part: u32,
        parts: u32,
        brief: JobBrief,
    ) -> Result<Option<JobBrief>, BriefPartError> {
        if parts > MAX_BRIEF_PARTS {
            return Err(BriefPartError::TooManyParts { parts });
        }
        if part >= parts {
            return Err(BriefPartError::OutOfRange { part, parts });
        }
        if part == 0 {
            self.open = Some((brief, 1, parts));
        } else {
            let Some((open, next, _)) = self.open.as_mut() else {
                return Err(BriefPartError::OutOfOrder {
                    job: brief.job,
                    expected: 0,
                    got: part,
                });
            };
            if open.job != brief.job {
                let expected = open.job;
                self.open = None;
                return Err(BriefPartError::OtherJob {
                    expected,
                    got: brief.job,
                });
            }
            if *next != part {
                let (job, expected) = (open.job, *next);
                self.open = None;
                return Err(BriefPartError::OutOfOrder {
                    job,
                    expected,
                    got: part,
                });
            }
            open.merge(brief);
            *next += 1;
        }
        match &self.open {
            Some((_, next, parts)) if next == parts => Ok(self.open.take().map(|(b, _, _)| b)),
            _ => Ok(None),
        }
    }
}

/// The device profile `flow` uses among the rows a runner's platform
/// serves (`served`, in row order): round robin by flow id, so the job's
/// flows spread evenly over them and a flow leased again to a runner of
/// the same platform keeps its profile.
pub fn profile_for(flow: FlowId, served: &[u32]) -> Option<u32> {
    let n = served.len() as u64;
    (n > 0).then(|| served[(flow.0 % n) as usize])
}

#[cfg(test)]
pub(crate) mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::runner::{Browser, Os};

    pub fn brief(proxies: u32, domains: u32) -> JobBrief {
        JobBrief {
            job: JobId(Uuid::from_u128(42)),
            behaviour: Behaviour {
                session_duration_s: Span { min: 30, max: 90 },
                pages_per_session: Span { min: 1, max: 3 },
                delay_between_flows_s: Span { min: 0, max: 0 },
                random_scrolling: true,
                clicks: true,
                external_click_share: 0.25,
                click_delay_ms: Span {
                    min: 500,
                    max: 2000,
                },
                instances: 4,
                proxy_switching: ProxySwitching::OnFailure,
                marker_header: true,
            },
            profiles: vec![DeviceProfile {
                row: 1,
                name: "pixel".into(),
                platform: Platform {
                    os: Os::Android,
                    browser: Browser::Chrome,
                },
                user_agent: "Mozilla/5.0 (Linux; Android 14) Chrome/126 Mobile".into(),
                viewport: Viewport {
                    width: 412,
                    height: 915,
                },
                device_scale_factor: 2.625,
                touch: true,
                locale: "en-GB".into(),
                timezone: "Europe/London".into(),
            }],
            proxies: (0..proxies)
                .map(|i| Proxy {
                    row: ProxyIndex(i),
                    scheme: ProxyScheme::Http,
                    host: format!("proxy-{i}.example.net"),
                    port: 3128,
                    username: Some(format!("user{i}")),
                    password: Some(ProxyPassword::new(format!("secret-{i}"))),
                    region: Some("eu".into()),
                    disabled: i % 7 == 3,
                })
                .collect(),
            hosts: vec![HostMapping {
                host: DomainName::parse("staging.shop.example").unwrap(),
                address: "192.0.2.7".parse().unwrap(),
            }],
            domains: (0..domains)
                .map(|i| DomainName::parse(&format!("site-{i}.example")).unwrap())
                .collect(),
            external_click_domains: vec![DomainName::parse("partner.example").unwrap()],
        }
    }

    fn frame(part: u32, parts: u32, brief: &JobBrief) -> usize {
        serde_json::to_string(&serde_json::json!({
            "type": "job_brief", "part": part, "parts": parts, "brief": brief
        }))
        .unwrap()
        .len()
    }

    #[test]
    fn a_small_brief_is_one_part() {
        let whole = brief(3, 2);
        let parts = whole.clone().split(4096, frame).unwrap();
        assert_eq!(parts, [whole]);
    }

    #[test]
    fn a_large_brief_is_cut_into_parts_that_fit_and_merge_back() {
        let whole = brief(2000, 500);
        let parts = whole.clone().split(16 * 1024, frame).unwrap();
        assert!(parts.len() > 5, "{} parts", parts.len());
        let n = parts.len() as u32;
        for (i, p) in parts.iter().enumerate() {
            assert!(frame(i as u32, n, p) <= 16 * 1024, "part {i}");
            assert_eq!(p.behaviour, whole.behaviour);
        }
        let mut assembly = BriefAssembly::default();
        let mut done = None;
        for (i, p) in parts.into_iter().enumerate() {
            assert!(done.is_none(), "whole before its last part");
            done = assembly.take(i as u32, n, p).unwrap();
        }
        assert_eq!(done, Some(whole));
    }

    #[test]
    fn a_brief_too_large_to_send_says_why() {
        let err = brief(1, 1).split(300, frame).unwrap_err();
        assert!(matches!(err, BriefTooLarge::Item { .. }), "{err}");
        let err = brief(20_000, 0).split(4096, frame).unwrap_err();
        assert!(matches!(err, BriefTooLarge::Parts { .. }), "{err}");
    }

    #[test]
    fn parts_out_of_order_or_of_another_job_are_refused() {
        let mut assembly = BriefAssembly::default();
        let b = brief(1, 1);
        assert_eq!(
            assembly.take(1, 2, b.clone()),
            Err(BriefPartError::OutOfOrder {
                job: b.job,
                expected: 0,
                got: 1
            })
        );
        assert_eq!(assembly.take(0, 3, b.clone()), Ok(None));
        let mut other = b.clone();
        other.job = JobId(Uuid::from_u128(7));
        assert!(matches!(
            assembly.take(1, 3, other),
            Err(BriefPartError::OtherJob { .. })
        ));
        assert!(matches!(
            assembly.take(2, 2, b.clone()),
            Err(BriefPartError::OutOfRange { .. })
        ));
        assert!(matches!(
            assembly.take(0, MAX_BRIEF_PARTS + 1, b),
            Err(BriefPartError::TooManyParts { .. })
        ));
    }

    #[test]
    fn a_password_is_sent_in_clear_but_never_shown_by_debug() {
        let b = brief(1, 0);
        assert!(serde_json::to_string(&b).unwrap().contains("\"secret-0\""));
        let shown = format!("{b:?}");
        assert!(!shown.contains("secret-0"), "{shown}");
        assert!(shown.contains("ProxyPassword(..)"));
    }

    #[test]
    fn a_brief_allows_its_domains_their_subdomains_and_consented_external_ones() {
        let b = brief(0, 2);
        let name = |s: &str| DomainName::parse(s).unwrap();
        assert!(b.allows(&name("site-0.example")));
        assert!(b.allows(&name("www.site-1.example")));
        assert!(b.allows(&name("shop.partner.example")));
        assert!(!b.allows(&name("site-2.example")));
        assert!(!b.allows(&name("evilpartner.example")));
    }

    #[test]
    fn flows_take_the_served_profiles_in_turn() {
        let served = [1, 4, 5];
        let picked: Vec<_> = (0..7)
            .map(|f| profile_for(FlowId(f), &served).unwrap())
            .collect();
        assert_eq!(picked, [1, 4, 5, 1, 4, 5, 1]);
        assert_eq!(profile_for(FlowId(3), &[]), None);
    }
}

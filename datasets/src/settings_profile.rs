//! A settings profile: how a session behaves — its duration, pages, the delay
//! between flows, human surfing, instances, proxy switching, DNS and the
//! marker header. Flat columns for csv and xlsx; json may nest them as the
//! canonical form does (`{"session_duration": {"min": 30, "max": 90}}`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use domain::DomainName;
use serde::{Deserialize, Serialize};

use crate::device_profile::parse_name;
use crate::record::{Column, Fields, Row, parse_uint};
use crate::rows::Rows;

/// A whole-number range; a constant is a range whose ends are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub min: u32,
    pub max: u32,
}

impl Span {
    pub const fn constant(value: u32) -> Self {
        Span {
            min: value,
            max: value,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HumanSurfing {
    /// Scroll at random throughout a page.
    pub random_scrolling: bool,
    /// Click links on a page.
    pub clicks: bool,
    /// The share of clicks sent to external links (0 to 1); the rest stay on the site.
    pub external_click_share: f64,
    /// The wait before each click, in milliseconds.
    pub click_delay_ms: Span,
}

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

impl ProxySwitching {
    fn parse(s: &str) -> Result<Self, String> {
        let key: String = s.chars().filter(char::is_ascii_alphanumeric).collect();
        match key.to_ascii_lowercase().as_str() {
            "perflow" | "flow" => Ok(ProxySwitching::PerFlow),
            "stickysession" | "sticky" | "persession" | "session" => {
                Ok(ProxySwitching::StickySession)
            }
            "onfailure" | "failure" | "failover" => Ok(ProxySwitching::OnFailure),
            _ => Err(format!(
                "{s:?} is not a proxy switching policy (per_flow, sticky_session, on_failure)"
            )),
        }
    }
}

/// How a browser resolves host names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Dns {
    /// The runner's own resolver.
    System,
    /// These hosts resolve to these addresses; others as the system does.
    Custom { hosts: BTreeMap<String, IpAddr> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsProfile {
    pub name: String,
    /// Seconds a session lasts.
    pub session_duration: Span,
    pub pages_per_session: Span,
    /// Seconds between one flow and the next.
    pub delay_between_flows: Span,
    pub human_surfing: HumanSurfing,
    /// Concurrent browsers.
    pub instances: u32,
    pub proxy_switching: ProxySwitching,
    pub dns: Dns,
    /// Send the header that lets the site owner filter this traffic out.
    pub marker_header: bool,
}

impl SettingsProfile {
    /// Scrolling or clicks are on.
    pub fn human_surfing(&self) -> bool {
        self.human_surfing.random_scrolling || self.human_surfing.clicks
    }

    /// Some clicks go to external links.
    pub fn external_clicks(&self) -> bool {
        self.human_surfing.clicks && self.human_surfing.external_click_share > 0.0
    }
}

const DAY_SECONDS: u64 = 86_400;
const MAX_INSTANCES: u64 = 10_000;
const MAX_PAGES: u64 = 1_000;
const MAX_CLICK_DELAY_MS: u64 = 600_000;
const MAX_HOSTS: usize = 1_000;

static NAME: Column = Column::new("name", &["profile"]).required();
static SESSION: Column = Column::new(
    "session_duration",
    &["session", "session_seconds", "duration"],
);
static SESSION_MIN: Column = Column::new("session_duration_min", &["session_min", "duration_min"]);
static SESSION_MAX: Column = Column::new("session_duration_max", &["session_max", "duration_max"]);
static PAGES: Column = Column::new("pages_per_session", &["pages"]);
static PAGES_MIN: Column = Column::new("pages_per_session_min", &["pages_min"]);
static PAGES_MAX: Column = Column::new("pages_per_session_max", &["pages_max"]);
static DELAY: Column = Column::new("delay_between_flows", &["delay", "flow_delay"]);
static DELAY_MIN: Column = Column::new("delay_between_flows_min", &["delay_min", "flow_delay_min"]);
static DELAY_MAX: Column = Column::new("delay_between_flows_max", &["delay_max", "flow_delay_max"]);
static SCROLLING: Column = Column::new(
    "random_scrolling",
    &["scrolling", "human_surfing_random_scrolling"],
);
static CLICKS: Column = Column::new("clicks", &["human_surfing_clicks"]);
static EXTERNAL_SHARE: Column = Column::new(
    "external_click_share",
    &[
        "external_share",
        "external_click_ratio",
        "external_ratio",
        "human_surfing_external_click_share",
    ],
);
static CLICK_DELAY: Column = Column::new(
    "click_delay_ms",
    &[
        "click_timing",
        "click_timing_ms",
        "human_surfing_click_delay_ms",
    ],
);
static CLICK_DELAY_MIN: Column = Column::new(
    "click_delay_ms_min",
    &[
        "click_delay_min",
        "click_timing_min",
        "human_surfing_click_delay_ms_min",
    ],
);
static CLICK_DELAY_MAX: Column = Column::new(
    "click_delay_ms_max",
    &[
        "click_delay_max",
        "click_timing_max",
        "human_surfing_click_delay_ms_max",
    ],
);
static INSTANCES: Column = Column::new("instances", &["concurrency", "browsers"]);
static PROXY_SWITCHING: Column = Column::new(
    "proxy_switching",
    &["proxy_policy", "proxy_switching_policy"],
);
static DNS_MODE: Column = Column::new("dns_mode", &["dns"]);
static DNS_HOSTS: Column = Column::new("dns_hosts", &["hosts", "host_mappings"]).map();
static MARKER_HEADER: Column = Column::new("marker_header", &["marker"]);

/// A range from one column (`45`, `30..90`, `30-90`) or from its min and max
/// columns; `default` when none is given.
fn span(
    f: &mut Fields<'_>,
    [one, min_column, max_column]: [&Column; 3],
    (lowest, highest): (u64, u64),
    default: Span,
) -> Span {
    let bound = |s: &str| parse_uint(s, lowest, highest).map(|n| n as u32);
    let (has_min, has_max) = (f.has(min_column), f.has(max_column));
    if has_min || has_max {
        if f.has(one) {
            f.error(
                one,
                format!(
                    "give either {} or {} and {}",
                    one.name, min_column.name, max_column.name
                ),
            );
            return default;
        }
        let min = f.required_as(min_column, bound);
        let max = f.required_as(max_column, bound);
        return match (min, max) {
            (Some(min), Some(max)) => ordered(f, max_column, min, max).unwrap_or(default),
            _ => default,
        };
    }
    let parsed = f.parsed(one, |s| {
        let pair = s.split_once("..").or_else(|| s.split_once('-'));
        match pair {
            Some((a, b)) => Ok((bound(a.trim())?, bound(b.trim())?)),
            None => bound(s).map(|n| (n, n)),
        }
    });
    match parsed {
        Some((min, max)) => ordered(f, one, min, max).unwrap_or(default),
        None => default,
    }
}

fn ordered(f: &mut Fields<'_>, column: &Column, min: u32, max: u32) -> Option<Span> {
    if min > max {
        f.error(
            column,
            format!("the range {min}..{max} ends before it starts"),
        );
        return None;
    }
    Some(Span { min, max })
}

fn dns(f: &mut Fields<'_>) -> Dns {
    let mode = f.parsed(&DNS_MODE, |s| match s.to_ascii_lowercase().as_str() {
        "system" => Ok(false),
        "custom" => Ok(true),
        _ => Err(format!("{s:?} is not a DNS mode (system, custom)")),
    });
    let pairs = f.map(&DNS_HOSTS);
    let mut hosts = BTreeMap::new();
    for (host, address) in pairs.iter().flatten() {
        // A hosts-file line puts the address first: `192.0.2.7 example.com`.
        let (host, address) = match host.parse::<IpAddr>() {
            Ok(_) if address.parse::<IpAddr>().is_err() => (address, host),
            _ => (host, address),
        };
        let name = match DomainName::parse(host) {
            Ok(name) => name,
            Err(e) => {
                f.error(&DNS_HOSTS, e.to_string());
                continue;
            }
        };
        match address.parse::<IpAddr>() {
            Ok(ip) => {
                hosts.insert(name.as_str().to_owned(), ip);
            }
            Err(_) => f.error(
                &DNS_HOSTS,
                format!("{address:?} (for {host}) is not an IP address"),
            ),
        }
    }
    if hosts.len() > MAX_HOSTS {
        f.error(&DNS_HOSTS, format!("at most {MAX_HOSTS} host mappings"));
    }
    match (mode, pairs.is_some()) {
        (Some(false), true) => {
            f.error(
                &DNS_HOSTS,
                "system DNS takes no host mappings; set the DNS mode to custom",
            );
            Dns::System
        }
        (Some(true), false) => {
            f.error(
                &DNS_HOSTS,
                "custom DNS needs host mappings (host=address; …)",
            );
            Dns::System
        }
        (_, true) => Dns::Custom { hosts },
        (_, false) => Dns::System,
    }
}

impl Row for SettingsProfile {
    const COLUMNS: &'static [&'static Column] = &[
        &NAME,
        &SESSION,
        &SESSION_MIN,
        &SESSION_MAX,
        &PAGES,
        &PAGES_MIN,
        &PAGES_MAX,
        &DELAY,
        &DELAY_MIN,
        &DELAY_MAX,
        &SCROLLING,
        &CLICKS,
        &EXTERNAL_SHARE,
        &CLICK_DELAY,
        &CLICK_DELAY_MIN,
        &CLICK_DELAY_MAX,
        &INSTANCES,
        &PROXY_SWITCHING,
        &DNS_MODE,
        &DNS_HOSTS,
        &MARKER_HEADER,
    ];

    fn read(f: &mut Fields<'_>) -> Option<Self> {
        let name = f.required_as(&NAME, parse_name);
        let session_duration = span(
            f,
            [&SESSION, &SESSION_MIN, &SESSION_MAX],
            (1, DAY_SECONDS),
            Span::constant(60),
        );
        let pages_per_session = span(
            f,
            [&PAGES, &PAGES_MIN, &PAGES_MAX],
            (1, MAX_PAGES),
            Span::constant(1),
        );
        let delay_between_flows = span(
            f,
            [&DELAY, &DELAY_MIN, &DELAY_MAX],
            (0, DAY_SECONDS),
            Span::constant(0),
        );
        let random_scrolling = f.bool(&SCROLLING).unwrap_or(false);
        let clicks = f.bool(&CLICKS).unwrap_or(false);
        let external_click_share = f.float(&EXTERNAL_SHARE, 0.0, 1.0).unwrap_or(0.0);
        let click_delay_ms = span(
            f,
            [&CLICK_DELAY, &CLICK_DELAY_MIN, &CLICK_DELAY_MAX],
            (0, MAX_CLICK_DELAY_MS),
            Span {
                min: 500,
                max: 2_000,
            },
        );
        let instances = f.uint(&INSTANCES, 1, MAX_INSTANCES).unwrap_or(1) as u32;
        let proxy_switching = f
            .parsed(&PROXY_SWITCHING, ProxySwitching::parse)
            .unwrap_or(ProxySwitching::PerFlow);
        let dns = dns(f);
        let marker_header = f.bool(&MARKER_HEADER).unwrap_or(true);
        if f.ok() && !clicks && external_click_share > 0.0 {
            f.error(&EXTERNAL_SHARE, "external clicks need clicks turned on");
        }
        f.finish(|| {
            Some(SettingsProfile {
                name: name?,
                session_duration,
                pages_per_session,
                delay_between_flows,
                human_surfing: HumanSurfing {
                    random_scrolling,
                    clicks,
                    external_click_share,
                    click_delay_ms,
                },
                instances,
                proxy_switching,
                dns,
                marker_header,
            })
        })
    }

    fn into_rows(rows: Vec<Self>) -> Rows {
        Rows::SettingsProfiles(rows)
    }
}

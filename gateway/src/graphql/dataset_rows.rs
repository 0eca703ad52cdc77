//! A dataset version's rows over GraphQL, one object type per kind. A
//! proxy's password never leaves the gateway: a row says only whether one
//! is set.

use async_graphql::{Enum, SimpleObject, Union};
use datasets::{Dns, Rows};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "datasets::TrafficType")]
pub enum TrafficType {
    Direct,
    Referral,
    Organic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "datasets::ProxyScheme")]
pub enum ProxyScheme {
    Http,
    Https,
    #[graphql(name = "SOCKS5")]
    Socks5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "datasets::Os")]
pub enum Os {
    Windows,
    Macos,
    Linux,
    Android,
    Ios,
    Chromeos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "datasets::Browser")]
pub enum Browser {
    Chrome,
    Chromium,
    Edge,
    Firefox,
    Safari,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "datasets::ProxySwitching")]
pub enum ProxySwitching {
    PerFlow,
    StickySession,
    OnFailure,
}

/// A URL to visit and what to do there.
#[derive(SimpleObject)]
pub struct TargetRow {
    pub url: String,
    pub traffic_type: TrafficType,
    /// The referring site or search engine.
    pub source: Option<String>,
    pub keyword: Option<String>,
    /// Visits wanted.
    pub flow_target: u32,
    /// Clicks wanted.
    pub click_target: u32,
}

/// A proxy; its password stays in the gateway.
#[derive(SimpleObject)]
pub struct ProxyRow {
    pub scheme: ProxyScheme,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    /// A password is set (it is never shown).
    pub has_password: bool,
    pub region: Option<String>,
}

/// What a browser presents itself as.
#[derive(SimpleObject)]
pub struct DeviceProfileRow {
    pub name: String,
    pub os: Os,
    pub browser: Browser,
    pub user_agent: String,
    pub viewport_width: u32,
    pub viewport_height: u32,
    pub device_scale_factor: f64,
    pub touch: bool,
    pub locale: String,
    pub timezone: String,
}

/// A whole-number range; a constant has equal ends.
#[derive(SimpleObject)]
pub struct Span {
    pub min: u32,
    pub max: u32,
}

impl From<datasets::Span> for Span {
    fn from(s: datasets::Span) -> Self {
        Span {
            min: s.min,
            max: s.max,
        }
    }
}

#[derive(SimpleObject)]
pub struct HumanSurfing {
    pub random_scrolling: bool,
    pub clicks: bool,
    /// The share of clicks sent to external links, 0 to 1.
    pub external_click_share: f64,
    pub click_delay_ms: Span,
}

/// A host name and the address it resolves to.
#[derive(SimpleObject)]
pub struct HostMapping {
    pub host: String,
    pub address: String,
}

/// How a session behaves.
#[derive(SimpleObject)]
pub struct SettingsProfileRow {
    pub name: String,
    /// Seconds.
    pub session_duration: Span,
    pub pages_per_session: Span,
    /// Seconds.
    pub delay_between_flows: Span,
    pub human_surfing: HumanSurfing,
    pub instances: u32,
    pub proxy_switching: ProxySwitching,
    /// Hosts resolved as given; empty: the system's resolver.
    pub dns_hosts: Vec<HostMapping>,
    pub marker_header: bool,
}

#[derive(Union)]
pub enum DatasetRow {
    Target(TargetRow),
    Proxy(ProxyRow),
    DeviceProfile(DeviceProfileRow),
    SettingsProfile(SettingsProfileRow),
}

/// Rows `offset..offset + first` of `rows`.
pub fn page(rows: &Rows, offset: usize, first: usize) -> Vec<DatasetRow> {
    fn slice<T>(rows: &[T], offset: usize, first: usize) -> &[T] {
        let start = offset.min(rows.len());
        &rows[start..(start + first).min(rows.len())]
    }
    match rows {
        Rows::Targets(r) => slice(r, offset, first)
            .iter()
            .map(|t| {
                DatasetRow::Target(TargetRow {
                    url: t.url.to_string(),
                    traffic_type: t.traffic_type.into(),
                    source: t.source.clone(),
                    keyword: t.keyword.clone(),
                    flow_target: t.flow_target,
                    click_target: t.click_target,
                })
            })
            .collect(),
        Rows::Proxies(r) => slice(r, offset, first)
            .iter()
            .map(|p| {
                DatasetRow::Proxy(ProxyRow {
                    scheme: p.scheme.into(),
                    host: p.host.clone(),
                    port: p.port,
                    username: p.username.clone(),
                    has_password: p.password.is_some(),
                    region: p.region.clone(),
                })
            })
            .collect(),
        Rows::DeviceProfiles(r) => slice(r, offset, first)
            .iter()
            .map(|d| {
                DatasetRow::DeviceProfile(DeviceProfileRow {
                    name: d.name.clone(),
                    os: d.os.into(),
                    browser: d.browser.into(),
                    user_agent: d.user_agent.clone(),
                    viewport_width: d.viewport.width,
                    viewport_height: d.viewport.height,
                    device_scale_factor: d.device_scale_factor,
                    touch: d.touch,
                    locale: d.locale.clone(),
                    timezone: d.timezone.clone(),
                })
            })
            .collect(),
        Rows::SettingsProfiles(r) => slice(r, offset, first)
            .iter()
            .map(|s| {
                DatasetRow::SettingsProfile(SettingsProfileRow {
                    name: s.name.clone(),
                    session_duration: s.session_duration.into(),
                    pages_per_session: s.pages_per_session.into(),
                    delay_between_flows: s.delay_between_flows.into(),
                    human_surfing: HumanSurfing {
                        random_scrolling: s.human_surfing.random_scrolling,
                        clicks: s.human_surfing.clicks,
                        external_click_share: s.human_surfing.external_click_share,
                        click_delay_ms: s.human_surfing.click_delay_ms.into(),
                    },
                    instances: s.instances,
                    proxy_switching: s.proxy_switching.into(),
                    dns_hosts: match &s.dns {
                        Dns::System => Vec::new(),
                        Dns::Custom { hosts } => hosts
                            .iter()
                            .map(|(host, address)| HostMapping {
                                host: host.clone(),
                                address: address.to_string(),
                            })
                            .collect(),
                    },
                    marker_header: s.marker_header,
                })
            })
            .collect(),
    }
}

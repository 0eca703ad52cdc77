//! What the site saw: every HTTP request, and every page view as the
//! tracker reported it. Tests assert on these, never on a runner's claims.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The header a runner marks its requests with, so the site's owner can
/// filter the traffic out.
pub const MARKER_HEADER: &str = "x-trafficbuster-job";

/// Everything the site saw, in arrival order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Seen {
    pub requests: Vec<SeenRequest>,
    pub visits: Vec<Visit>,
    /// Beacons that named no page view this site served, or could not be read.
    pub stray_beacons: Vec<StrayBeacon>,
}

impl Seen {
    /// Requests whose Host was `host` (any port, any case).
    pub fn requests_to(&self, host: &str) -> Vec<&SeenRequest> {
        let host = host.to_ascii_lowercase();
        self.requests.iter().filter(|r| r.host == host).collect()
    }

    /// Page views served under `host`.
    pub fn visits_to(&self, host: &str) -> Vec<&Visit> {
        let host = host.to_ascii_lowercase();
        self.visits.iter().filter(|v| v.host == host).collect()
    }

    /// Page views grouped by browser session (the site's session cookie,
    /// one per host and cookie jar), each group in arrival order.
    pub fn sessions(&self) -> Vec<Vec<&Visit>> {
        let mut groups: Vec<Vec<&Visit>> = Vec::new();
        for visit in &self.visits {
            match groups
                .iter_mut()
                .find(|g| g[0].host == visit.host && g[0].session == visit.session)
            {
                Some(group) => group.push(visit),
                None => groups.push(vec![visit]),
            }
        }
        groups
    }
}

/// One HTTP request, as it arrived.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeenRequest {
    /// The request's number, from 0, in arrival order.
    pub seq: u64,
    /// When it arrived, since the site started.
    pub at: Duration,
    /// The Host header's name, lower case, without the port; empty when
    /// there was none.
    pub host: String,
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Every header, names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The status answered; `None` while the answer is still coming (a slow
    /// route) or when the client left before it.
    pub status: Option<u16>,
}

impl SeenRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.header("user-agent")
    }

    pub fn referer(&self) -> Option<&str> {
        self.header("referer")
    }

    /// The job id a runner marked the request with.
    pub fn marker(&self) -> Option<&str> {
        self.header(MARKER_HEADER)
    }
}

/// One page the site served, joined with what its tracker reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Visit {
    /// The page view's id, which the tracker sends back.
    pub view: String,
    pub host: String,
    pub path: String,
    /// The site's session cookie: one per browser cookie jar and host.
    pub session: String,
    /// The page's own request (its Referer, marker, user agent header).
    pub request: SeenRequest,
    /// What the browser said about itself; `None` until the tracker ran.
    pub client: Option<ClientInfo>,
    /// Scroll positions, in the order the page reported them.
    pub scrolls: Vec<ScrollSeen>,
    pub clicks: Vec<ClickSeen>,
    /// The page was left (hidden or unloaded); the last report counts.
    pub left: Option<LeftSeen>,
    /// When the last beacon of this view arrived, since the site started.
    pub last_beacon_at: Option<Duration>,
}

impl Visit {
    /// How long the page was shown, by the page's own clock: until it was
    /// left, or (not left yet, or the report was lost) until its last
    /// report.
    pub fn time_on_page(&self) -> Option<Duration> {
        let last_scroll = self.scrolls.iter().map(|s| s.t_ms).fold(None, max_of);
        let last_click = self.clicks.iter().map(|c| c.t_ms).fold(None, max_of);
        let left = self.left.as_ref().map(|l| l.t_ms);
        [left, last_scroll, last_click]
            .into_iter()
            .fold(None, |a, b| b.map_or(a, |b| max_of(a, b)))
            .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1_000.0))
    }
}

fn max_of(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.max(b)))
}

/// The browser as the page saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub url: String,
    /// `document.referrer`.
    pub referrer: String,
    pub user_agent: String,
    pub viewport_width: u32,
    pub viewport_height: u32,
    pub screen_width: u32,
    pub screen_height: u32,
    pub device_pixel_ratio: f64,
    pub max_touch_points: u32,
    /// `ontouchstart` exists: the browser offers touch events.
    pub touch_events: bool,
    pub timezone: String,
    pub language: String,
    pub languages: Vec<String>,
    /// The page's height when the tracker started, in CSS pixels.
    pub page_height: u32,
    /// When the tracker started, on the page's clock (ms since navigation).
    pub t_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScrollSeen {
    /// `scrollY`, CSS pixels.
    pub y: f64,
    /// On the page's clock (ms since navigation).
    #[serde(rename = "t")]
    pub t_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClickSeen {
    /// The link clicked, resolved; `None` when the click was not on a link.
    pub href: Option<String>,
    pub x: f64,
    pub y: f64,
    /// An input event (a real or CDP-dispatched mouse click), not a
    /// script's `element.click()`.
    pub trusted: bool,
    #[serde(rename = "t")]
    pub t_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftSeen {
    /// `pagehide` or `hidden`.
    pub reason: String,
    pub page_height: u32,
    /// On the page's clock (ms since navigation): the time on page.
    #[serde(rename = "t")]
    pub t_ms: f64,
}

/// A beacon the site could not join to a page view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrayBeacon {
    pub at: Duration,
    pub host: String,
    pub body: String,
    pub why: String,
}

/// A beacon as the tracker sends it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Beacon {
    View {
        view: String,
        #[serde(flatten)]
        client: ClientInfoWire,
    },
    Scroll {
        view: String,
        events: Vec<ScrollSeen>,
    },
    Click {
        view: String,
        #[serde(flatten)]
        click: ClickSeen,
    },
    Leave {
        view: String,
        #[serde(flatten)]
        left: LeftSeen,
    },
}

impl Beacon {
    pub(crate) fn view(&self) -> &str {
        match self {
            Beacon::View { view, .. }
            | Beacon::Scroll { view, .. }
            | Beacon::Click { view, .. }
            | Beacon::Leave { view, .. } => view,
        }
    }

    /// Adds what this beacon says to its page view.
    pub(crate) fn apply(self, visit: &mut Visit, at: Duration) {
        visit.last_beacon_at = Some(at);
        match self {
            Beacon::View { client, .. } => visit.client = Some(client.into()),
            Beacon::Scroll { events, .. } => visit.scrolls.extend(events),
            Beacon::Click { click, .. } => visit.clicks.push(click),
            Beacon::Leave { left, .. } => visit.left = Some(left),
        }
    }
}

/// [`ClientInfo`] as sent: `t` beside the fields, numbers as JavaScript has them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ClientInfoWire {
    url: String,
    referrer: String,
    user_agent: String,
    viewport_width: f64,
    viewport_height: f64,
    screen_width: f64,
    screen_height: f64,
    device_pixel_ratio: f64,
    max_touch_points: f64,
    touch_events: bool,
    timezone: String,
    language: String,
    #[serde(default)]
    languages: Vec<String>,
    page_height: f64,
    t: f64,
}

impl From<ClientInfoWire> for ClientInfo {
    fn from(w: ClientInfoWire) -> Self {
        // Saturating casts: a page can report anything.
        let px = |v: f64| v.max(0.0).min(f64::from(u32::MAX)) as u32;
        ClientInfo {
            url: w.url,
            referrer: w.referrer,
            user_agent: w.user_agent,
            viewport_width: px(w.viewport_width),
            viewport_height: px(w.viewport_height),
            screen_width: px(w.screen_width),
            screen_height: px(w.screen_height),
            device_pixel_ratio: w.device_pixel_ratio,
            max_touch_points: px(w.max_touch_points),
            touch_events: w.touch_events,
            timezone: w.timezone,
            language: w.language,
            languages: w.languages,
            page_height: px(w.page_height),
            t_ms: w.t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trackers_beacons_read_as_what_they_report() {
        let view: Beacon = serde_json::from_str(
            r#"{"kind":"view","view":"v1","t":12.5,"url":"http://a.test:1/","referrer":"",
            "user_agent":"UA","viewport_width":1280,"viewport_height":720.0,"screen_width":1280,
            "screen_height":800,"device_pixel_ratio":2,"max_touch_points":0,"touch_events":false,
            "timezone":"Europe/Berlin","language":"de-DE","languages":["de-DE","en"],"page_height":4100}"#,
        )
        .unwrap();
        let scroll: Beacon = serde_json::from_str(
            r#"{"kind":"scroll","view":"v1","t":900,"events":[{"y":300,"t":850.5}]}"#,
        )
        .unwrap();
        let leave: Beacon = serde_json::from_str(
            r#"{"kind":"leave","view":"v1","t":30500,"reason":"pagehide","page_height":4100}"#,
        )
        .unwrap();
        let mut visit = Visit {
            view: "v1".into(),
            host: "a.test".into(),
            path: "/".into(),
            session: "s1".into(),
            request: SeenRequest {
                seq: 0,
                at: Duration::ZERO,
                host: "a.test".into(),
                method: "GET".into(),
                path: "/".into(),
                headers: vec![],
                status: Some(200),
            },
            client: None,
            scrolls: vec![],
            clicks: vec![],
            left: None,
            last_beacon_at: None,
        };
        assert_eq!(visit.time_on_page(), None);
        for b in [view, scroll] {
            assert_eq!(b.view(), "v1");
            b.apply(&mut visit, Duration::from_secs(1));
        }
        let client = visit.client.clone().unwrap();
        assert_eq!((client.viewport_width, client.viewport_height), (1280, 720));
        assert_eq!(client.device_pixel_ratio, 2.0);
        assert_eq!(client.t_ms, 12.5);
        assert_eq!(visit.time_on_page(), Some(Duration::from_micros(850_500)));
        leave.apply(&mut visit, Duration::from_secs(31));
        assert_eq!(visit.time_on_page(), Some(Duration::from_millis(30_500)));
    }

    #[test]
    fn beacons_of_unknown_kinds_or_shapes_are_refused() {
        for body in [
            r#"{"kind":"teleport","view":"v1"}"#,
            r#"{"kind":"scroll","view":"v1","events":"many"}"#,
            r#"{"view":"v1"}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Beacon>(body).is_err(), "{body}");
        }
    }
}

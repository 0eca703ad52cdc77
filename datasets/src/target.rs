//! A target: a URL to visit, how the visit arrives (direct, from a referring
//! site, from a search) and how many visits and clicks are wanted.

use serde::{Deserialize, Serialize};
use url::Url;

use crate::record::{Column, Fields, Row};
use crate::rows::Rows;

/// How a visit arrives at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficType {
    /// Typed in or bookmarked: no referrer.
    #[default]
    Direct,
    /// From a link on another site (the source).
    Referral,
    /// From a search engine (the source) for a keyword.
    Organic,
}

impl TrafficType {
    fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "direct" => Ok(TrafficType::Direct),
            "referral" | "referal" | "referrer" => Ok(TrafficType::Referral),
            "organic" | "search" => Ok(TrafficType::Organic),
            _ => Err(format!(
                "{s:?} is not a traffic type (direct, referral, organic)"
            )),
        }
    }
}

/// One URL to send visits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub url: Url,
    pub traffic_type: TrafficType,
    /// The referring site's URL (referral) or the search engine's name (organic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What is searched for (organic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// Visits wanted (at least 1).
    pub flow_target: u32,
    /// Clicks wanted, at most one per visit.
    pub click_target: u32,
}

/// Longer URLs are almost surely pasted by mistake, and browsers balk at them.
const MAX_URL: usize = 8_192;
const MAX_TEXT: usize = 256;

static URL: Column =
    Column::new("url", &["link", "address", "target", "target_url", "page"]).required();
static TRAFFIC_TYPE: Column = Column::new("traffic_type", &["type", "traffic"]);
static SOURCE: Column = Column::new(
    "source",
    &["referrer", "referer", "search_engine", "engine"],
);
static KEYWORD: Column = Column::new("keyword", &["keywords", "query", "search_term"]);
static FLOW_TARGET: Column = Column::new("flow_target", &["flows", "visits", "flow_status_target"]);
static CLICK_TARGET: Column = Column::new("click_target", &["clicks", "click_status_target"]);

impl Target {
    pub(crate) const URL: &'static Column = &URL;

    /// Parses an absolute http(s) URL with a host.
    pub fn parse_url(s: &str) -> Result<Url, String> {
        if s.len() > MAX_URL {
            return Err(format!("the URL is longer than {MAX_URL} characters"));
        }
        let url = Url::parse(s).map_err(|e| format!("{s:?} is not an absolute URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{s:?} is not an http or https URL"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{s:?} has no host"));
        }
        Ok(url)
    }
}

/// A referring site: a URL, or a bare host read as https.
fn parse_referrer(s: &str) -> Result<String, String> {
    let url = if s.contains("://") {
        s.to_owned()
    } else {
        format!("https://{s}")
    };
    Target::parse_url(&url)
        .map(String::from)
        .map_err(|_| format!("{s:?} is not a referring site's URL"))
}

/// Free text on one line: runs of white space (a wrapped cell's newline) become one space.
fn parse_text(s: &str) -> Result<String, String> {
    let text = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > MAX_TEXT {
        Err(format!("longer than {MAX_TEXT} characters"))
    } else if text.chars().any(char::is_control) {
        Err("holds control characters".to_owned())
    } else {
        Ok(text)
    }
}

impl Row for Target {
    const COLUMNS: &'static [&'static Column] = &[
        &URL,
        &TRAFFIC_TYPE,
        &SOURCE,
        &KEYWORD,
        &FLOW_TARGET,
        &CLICK_TARGET,
    ];

    fn read(f: &mut Fields<'_>) -> Option<Self> {
        let url = f.required_as(&URL, Target::parse_url);
        let traffic_type = f
            .parsed(&TRAFFIC_TYPE, TrafficType::parse)
            .unwrap_or_default();
        let source = match traffic_type {
            TrafficType::Referral => f.parsed(&SOURCE, parse_referrer),
            _ => f.parsed(&SOURCE, parse_text),
        };
        let keyword = f.parsed(&KEYWORD, parse_text);
        let flow_target = f.uint(&FLOW_TARGET, 1, u32::MAX.into()).unwrap_or(1) as u32;
        let click_target = f.uint(&CLICK_TARGET, 0, u32::MAX.into()).unwrap_or(0) as u32;
        if f.ok() {
            match traffic_type {
                TrafficType::Direct if source.is_some() => f.error(
                    &SOURCE,
                    "direct traffic has no source; set the traffic type to referral or organic",
                ),
                TrafficType::Referral | TrafficType::Organic if source.is_none() => {
                    let what = if traffic_type == TrafficType::Referral {
                        "referral traffic needs the referring site's URL"
                    } else {
                        "organic traffic needs the search engine's name"
                    };
                    f.error(&SOURCE, what)
                }
                _ => {}
            }
            match traffic_type {
                TrafficType::Organic if keyword.is_none() => f.error(
                    &KEYWORD,
                    "organic traffic needs the keyword that is searched for",
                ),
                TrafficType::Direct | TrafficType::Referral if keyword.is_some() => {
                    f.error(&KEYWORD, "only organic traffic searches for a keyword")
                }
                _ => {}
            }
            if click_target > flow_target {
                f.error(
                    &CLICK_TARGET,
                    format!("{click_target} clicks is more than the {flow_target} visits wanted"),
                );
            }
        }
        f.finish(|| {
            Some(Target {
                url: url?,
                traffic_type,
                source,
                keyword,
                flow_target,
                click_target,
            })
        })
    }

    fn into_rows(rows: Vec<Self>) -> Rows {
        Rows::Targets(rows)
    }
}

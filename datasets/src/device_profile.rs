//! A device profile ("platform"): what a browser presents itself as — OS,
//! browser, user agent, viewport, scale, touch, locale and timezone.

use serde::{Deserialize, Serialize};

use crate::record::{Column, Fields, Row, parse_uint};
use crate::rows::Rows;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Windows,
    Macos,
    Linux,
    Android,
    Ios,
    Chromeos,
}

impl Os {
    fn parse(s: &str) -> Result<Self, String> {
        let key: String = s.chars().filter(char::is_ascii_alphanumeric).collect();
        match key.to_ascii_lowercase().as_str() {
            "windows" | "win" => Ok(Os::Windows),
            "macos" | "mac" | "osx" | "macosx" => Ok(Os::Macos),
            "linux" => Ok(Os::Linux),
            "android" => Ok(Os::Android),
            "ios" | "ipados" | "iphone" | "ipad" => Ok(Os::Ios),
            "chromeos" => Ok(Os::Chromeos),
            _ => Err(format!(
                "{s:?} is not an OS (windows, macos, linux, android, ios, chromeos)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Browser {
    Chrome,
    Chromium,
    Edge,
    Firefox,
    Safari,
}

impl Browser {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "chrome" | "google chrome" => Ok(Browser::Chrome),
            "chromium" => Ok(Browser::Chromium),
            "edge" | "microsoft edge" => Ok(Browser::Edge),
            "firefox" => Ok(Browser::Firefox),
            "safari" => Ok(Browser::Safari),
            _ => Err(format!(
                "{s:?} is not a browser (chrome, chromium, edge, firefox, safari)"
            )),
        }
    }
}

/// The page area in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub name: String,
    pub os: Os,
    pub browser: Browser,
    pub user_agent: String,
    pub viewport: Viewport,
    pub device_scale_factor: f64,
    pub touch: bool,
    /// A BCP 47 language tag (`en-US`).
    pub locale: String,
    /// An IANA zone name (`Europe/Paris`) or `UTC`.
    pub timezone: String,
}

const VIEWPORT_WIDTH: (u64, u64) = (240, 7_680);
const VIEWPORT_HEIGHT: (u64, u64) = (240, 4_320);
const MAX_NAME: usize = 100;
const MAX_USER_AGENT: usize = 512;

static NAME: Column = Column::new("name", &["profile", "platform", "device"]).required();
static OS: Column = Column::new("os", &["operating_system", "system"]).required();
static BROWSER: Column = Column::new("browser", &[]).required();
static USER_AGENT: Column = Column::new("user_agent", &["ua", "useragent"]).required();
static WIDTH: Column = Column::new("viewport_width", &["width", "screen_width"]).required();
static HEIGHT: Column = Column::new("viewport_height", &["height", "screen_height"]).required();
static SCALE: Column = Column::new(
    "device_scale_factor",
    &[
        "scale",
        "scale_factor",
        "dpr",
        "device_pixel_ratio",
        "pixel_ratio",
    ],
);
static TOUCH: Column = Column::new("touch", &["has_touch", "touchscreen", "is_mobile"]);
static LOCALE: Column = Column::new("locale", &["language", "lang", "accept_language"]);
static TIMEZONE: Column = Column::new("timezone", &["time_zone", "tz", "timezone_id"]);

pub(crate) fn parse_name(s: &str) -> Result<String, String> {
    if s.chars().count() > MAX_NAME || s.chars().any(char::is_control) {
        Err(format!("a name is at most {MAX_NAME} printable characters"))
    } else {
        Ok(s.to_owned())
    }
}

fn parse_user_agent(s: &str) -> Result<String, String> {
    if s.len() > MAX_USER_AGENT || !s.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        Err(format!(
            "a user agent is at most {MAX_USER_AGENT} printable ASCII characters"
        ))
    } else {
        Ok(s.to_owned())
    }
}

/// A BCP 47-shaped tag: a 2–3 letter language, then subtags of 1–8 letters
/// or digits (`en`, `en-US`, `zh-Hant-TW`, `es-419`). `_` is read as `-`.
pub(crate) fn parse_locale(s: &str) -> Result<String, String> {
    let tag = s.replace('_', "-");
    let mut parts = tag.split('-');
    let language = parts.next().unwrap_or_default();
    let language_ok =
        (2..=3).contains(&language.len()) && language.chars().all(|c| c.is_ascii_alphabetic());
    let rest_ok =
        parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if language_ok && rest_ok {
        Ok(tag)
    } else {
        Err(format!("{s:?} is not a language tag such as en-US"))
    }
}

/// The areas of the IANA time zone database.
const TZ_AREAS: &[&str] = &[
    "Africa",
    "America",
    "Antarctica",
    "Arctic",
    "Asia",
    "Atlantic",
    "Australia",
    "Europe",
    "Indian",
    "Pacific",
    "Etc",
];

/// `UTC`, or Area/Location[/Location] with an IANA area; no database needed.
pub(crate) fn parse_timezone(s: &str) -> Result<String, String> {
    if s == "UTC" {
        return Ok(s.to_owned());
    }
    let mut parts = s.split('/');
    let area_ok = parts.next().is_some_and(|a| TZ_AREAS.contains(&a));
    let places: Vec<&str> = parts.collect();
    let places_ok = (1..=2).contains(&places.len())
        && places.iter().all(|p| {
            (1..=30).contains(&p.len())
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        });
    if area_ok && places_ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a time zone such as Europe/Paris or UTC"
        ))
    }
}

impl Row for DeviceProfile {
    const COLUMNS: &'static [&'static Column] = &[
        &NAME,
        &OS,
        &BROWSER,
        &USER_AGENT,
        &WIDTH,
        &HEIGHT,
        &SCALE,
        &TOUCH,
        &LOCALE,
        &TIMEZONE,
    ];

    fn read(f: &mut Fields<'_>) -> Option<Self> {
        let name = f.required_as(&NAME, parse_name);
        let os = f.required_as(&OS, Os::parse);
        let browser = f.required_as(&BROWSER, Browser::parse);
        let user_agent = f.required_as(&USER_AGENT, parse_user_agent);
        let width = f.required_as(&WIDTH, |s| {
            parse_uint(s, VIEWPORT_WIDTH.0, VIEWPORT_WIDTH.1)
        });
        let height = f.required_as(&HEIGHT, |s| {
            parse_uint(s, VIEWPORT_HEIGHT.0, VIEWPORT_HEIGHT.1)
        });
        let device_scale_factor = f.float(&SCALE, 0.5, 5.0).unwrap_or(1.0);
        let touch = f.bool(&TOUCH).unwrap_or(false);
        let locale = f
            .parsed(&LOCALE, parse_locale)
            .unwrap_or_else(|| "en-US".to_owned());
        let timezone = f
            .parsed(&TIMEZONE, parse_timezone)
            .unwrap_or_else(|| "UTC".to_owned());
        f.finish(|| {
            Some(DeviceProfile {
                name: name?,
                os: os?,
                browser: browser?,
                user_agent: user_agent?,
                viewport: Viewport {
                    width: width? as u32,
                    height: height? as u32,
                },
                device_scale_factor,
                touch,
                locale,
                timezone,
            })
        })
    }

    fn into_rows(rows: Vec<Self>) -> Rows {
        Rows::DeviceProfiles(rows)
    }
}

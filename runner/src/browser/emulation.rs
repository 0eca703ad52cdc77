//! A device profile as DevTools emulation: user agent with its client hints,
//! viewport and scale, touch, locale and time zone. The commands are built
//! by pure functions; [`apply`] sends them to one page.

use chromiumoxide::cdp::browser_protocol::emulation::{
    SetDeviceMetricsOverrideParams, SetLocaleOverrideParams, SetTimezoneOverrideParams,
    SetTouchEmulationEnabledParams, SetUserAgentOverrideParams, UserAgentBrandVersion,
    UserAgentMetadata,
};
use datasets::{Browser, DeviceProfile, Os};

/// The user agent override: the string, `navigator.platform`, the
/// Accept-Language built from the locale, and for Chromium-based browsers
/// the client hints (`Sec-CH-UA-*`, `navigator.userAgentData`) that match
/// the string. Other browsers send no client hints, so none are given.
pub fn user_agent(profile: &DeviceProfile) -> SetUserAgentOverrideParams {
    SetUserAgentOverrideParams {
        user_agent: profile.user_agent.clone(),
        accept_language: Some(accept_language(&profile.locale)),
        platform: Some(navigator_platform(profile.os, &profile.user_agent).to_owned()),
        user_agent_metadata: client_hints(profile),
    }
}

pub fn device_metrics(profile: &DeviceProfile) -> SetDeviceMetricsOverrideParams {
    let width = i64::from(profile.viewport.width);
    let height = i64::from(profile.viewport.height);
    let mut params = SetDeviceMetricsOverrideParams::new(
        width,
        height,
        profile.device_scale_factor,
        is_mobile(profile.os),
    );
    params.screen_width = Some(width);
    params.screen_height = Some(height);
    params
}

pub fn touch(profile: &DeviceProfile) -> SetTouchEmulationEnabledParams {
    SetTouchEmulationEnabledParams {
        enabled: profile.touch,
        max_touch_points: profile.touch.then_some(5),
    }
}

pub fn locale(profile: &DeviceProfile) -> SetLocaleOverrideParams {
    SetLocaleOverrideParams {
        locale: Some(profile.locale.clone()),
    }
}

pub fn timezone(profile: &DeviceProfile) -> SetTimezoneOverrideParams {
    SetTimezoneOverrideParams::new(profile.timezone.clone())
}

fn is_mobile(os: Os) -> bool {
    matches!(os, Os::Android | Os::Ios)
}

/// `en-US` → `en-US,en`: Chromium adds the q-values itself
/// (`en-US,en;q=0.9`).
fn accept_language(locale: &str) -> String {
    match locale.split_once('-') {
        Some((language, _)) => format!("{locale},{language}"),
        None => locale.to_owned(),
    }
}

fn navigator_platform(os: Os, user_agent: &str) -> &'static str {
    match os {
        Os::Windows => "Win32",
        Os::Macos => "MacIntel",
        Os::Linux | Os::Chromeos if user_agent.contains("aarch64") => "Linux aarch64",
        Os::Linux | Os::Chromeos => "Linux x86_64",
        Os::Android => "Linux armv8l",
        Os::Ios if user_agent.contains("iPad") => "iPad",
        Os::Ios => "iPhone",
    }
}

/// The major and full version after `marker` (`Chrome/124.0.6367.91`).
fn version_after<'a>(user_agent: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let start = user_agent.find(marker)? + marker.len();
    let full = user_agent[start..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .filter(|v| !v.is_empty())?;
    let major = full.split('.').next()?;
    Some((major, full))
}

fn client_hints(profile: &DeviceProfile) -> Option<UserAgentMetadata> {
    let ua = profile.user_agent.as_str();
    // Chrome on iOS is WebKit underneath and sends no client hints.
    if profile.os == Os::Ios {
        return None;
    }
    let (chromium_major, chromium_full) = version_after(ua, "Chrome/")?;
    let product = match profile.browser {
        Browser::Chrome => Some(("Google Chrome", chromium_major, chromium_full)),
        Browser::Edge => version_after(ua, "Edg/")
            .or_else(|| version_after(ua, "EdgA/"))
            .map(|(major, full)| ("Microsoft Edge", major, full)),
        Browser::Chromium => None,
        Browser::Firefox | Browser::Safari => return None,
    };
    let mut brands = vec![brand("Chromium", chromium_major)];
    let mut full_versions = vec![brand("Chromium", chromium_full)];
    if let Some((name, major, full)) = product {
        brands.push(brand(name, major));
        full_versions.push(brand(name, full));
    }
    let (platform, platform_version, architecture, bitness) = match profile.os {
        Os::Windows => ("Windows", "10.0.0", "x86", "64"),
        Os::Macos => (
            "macOS",
            "10.15.7",
            if ua.contains("ARM") { "arm" } else { "x86" },
            "64",
        ),
        Os::Linux => (
            "Linux",
            "",
            if ua.contains("aarch64") { "arm" } else { "x86" },
            "64",
        ),
        Os::Chromeos => ("Chrome OS", "", "x86", "64"),
        Os::Android => ("Android", android_version(ua).unwrap_or(""), "", ""),
        Os::Ios => return None,
    };
    let mobile = is_mobile(profile.os);
    Some(UserAgentMetadata {
        brands: Some(brands),
        full_version_list: Some(full_versions),
        platform: platform.to_owned(),
        platform_version: platform_version.to_owned(),
        architecture: architecture.to_owned(),
        model: if mobile {
            android_model(ua).unwrap_or_default()
        } else {
            String::new()
        },
        mobile,
        bitness: Some(bitness.to_owned()),
        wow64: Some(false),
        form_factors: Some(vec![if mobile { "Mobile" } else { "Desktop" }.to_owned()]),
    })
}

fn brand(name: &str, version: &str) -> UserAgentBrandVersion {
    UserAgentBrandVersion {
        brand: name.to_owned(),
        version: version.to_owned(),
    }
}

/// `(Linux; Android 14; Pixel 8)` → `14`.
fn android_version(ua: &str) -> Option<&str> {
    let start = ua.find("Android ")? + "Android ".len();
    ua[start..].split([';', ')']).next()
}

/// `(Linux; Android 14; Pixel 8)` → `Pixel 8`.
fn android_model(ua: &str) -> Option<String> {
    let start = ua.find("Android ")?;
    let inside = ua[start..].split(')').next()?;
    inside.split(';').nth(1).map(|m| m.trim().to_owned())
}

/// Sends the profile's emulation to one page, before it loads anything.
pub(crate) async fn apply(
    page: &chromiumoxide::Page,
    profile: &DeviceProfile,
) -> Result<(), chromiumoxide::error::CdpError> {
    // Sent together; the page applies them in this order.
    tokio::try_join!(
        page.execute(user_agent(profile)),
        page.execute(device_metrics(profile)),
        page.execute(touch(profile)),
        page.execute(locale(profile)),
        page.execute(timezone(profile)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use datasets::Viewport;

    use super::*;

    fn profile(os: Os, browser: Browser, ua: &str) -> DeviceProfile {
        DeviceProfile {
            name: "p".into(),
            os,
            browser,
            user_agent: ua.into(),
            viewport: Viewport {
                width: 412,
                height: 915,
            },
            device_scale_factor: 2.625,
            touch: true,
            locale: "fr-FR".into(),
            timezone: "Europe/Paris".into(),
        }
    }

    const ANDROID_CHROME: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.91 Mobile Safari/537.36";

    #[test]
    fn chrome_on_android_gets_matching_client_hints() {
        let p = profile(Os::Android, Browser::Chrome, ANDROID_CHROME);
        let ua = user_agent(&p);
        assert_eq!(ua.accept_language.as_deref(), Some("fr-FR,fr"));
        let hints = ua.user_agent_metadata.unwrap();
        assert!(hints.mobile);
        assert_eq!(hints.platform, "Android");
        assert_eq!(hints.platform_version, "14");
        assert_eq!(hints.model, "Pixel 8");
        let brands = hints.brands.unwrap();
        assert!(
            brands
                .iter()
                .any(|b| b.brand == "Google Chrome" && b.version == "124")
        );
        let full = hints.full_version_list.unwrap();
        assert!(
            full.iter()
                .any(|b| b.brand == "Chromium" && b.version == "124.0.6367.91")
        );
    }

    #[test]
    fn firefox_and_ios_send_no_client_hints() {
        let firefox = profile(
            Os::Windows,
            Browser::Firefox,
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        );
        assert!(user_agent(&firefox).user_agent_metadata.is_none());
        assert_eq!(user_agent(&firefox).platform.as_deref(), Some("Win32"));
        let iphone = profile(
            Os::Ios,
            Browser::Chrome,
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
        );
        assert!(user_agent(&iphone).user_agent_metadata.is_none());
    }

    #[test]
    fn edge_names_itself_with_its_own_version() {
        let edge = profile(
            Os::Windows,
            Browser::Edge,
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
        );
        let brands = user_agent(&edge)
            .user_agent_metadata
            .unwrap()
            .brands
            .unwrap();
        assert!(
            brands
                .iter()
                .any(|b| b.brand == "Microsoft Edge" && b.version == "124")
        );
        assert!(brands.iter().all(|b| b.brand != "Google Chrome"));
    }

    #[test]
    fn the_viewport_scale_and_touch_are_the_profiles() {
        let p = profile(Os::Android, Browser::Chrome, ANDROID_CHROME);
        let metrics = device_metrics(&p);
        assert_eq!((metrics.width, metrics.height), (412, 915));
        assert_eq!(metrics.device_scale_factor, 2.625);
        assert!(metrics.mobile);
        assert_eq!(touch(&p).max_touch_points, Some(5));
        let desktop = DeviceProfile { touch: false, ..p };
        assert!(!touch(&desktop).enabled);
        assert_eq!(touch(&desktop).max_touch_points, None);
    }
}

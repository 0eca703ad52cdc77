//! The referrer a visit arrives with, by the target's traffic type: none for
//! direct traffic, the referring page for referral traffic, the search
//! engine's result page for the keyword for organic traffic.
//!
//! Pure: no I/O.

use datasets::{Target, TrafficType};
use url::Url;
use url::form_urlencoded::byte_serialize;

use super::PlanError;

/// Where a result-page template takes the keyword.
pub const KEYWORD_PLACEHOLDER: &str = "{keyword}";

/// Search engines known by name, and their result page for a keyword.
pub const SEARCH_ENGINES: &[(&str, &str)] = &[
    ("google", "https://www.google.com/search?q={keyword}"),
    ("bing", "https://www.bing.com/search?q={keyword}"),
    ("duckduckgo", "https://duckduckgo.com/?q={keyword}"),
    ("yahoo", "https://search.yahoo.com/search?p={keyword}"),
    ("yandex", "https://yandex.com/search/?text={keyword}"),
    ("baidu", "https://www.baidu.com/s?wd={keyword}"),
    ("ecosia", "https://www.ecosia.org/search?q={keyword}"),
];

/// The referrer of a visit to `target`.
pub fn referrer(target: &Target) -> Result<Option<Url>, PlanError> {
    match target.traffic_type {
        TrafficType::Direct => Ok(None),
        TrafficType::Referral => {
            let source = source(target)?;
            // Datasets store a bare host as https; a target built elsewhere may not.
            let url = if source.contains("://") {
                source.to_owned()
            } else {
                format!("https://{source}")
            };
            web_url(source, &url).map(Some)
        }
        TrafficType::Organic => {
            let source = source(target)?;
            let keyword = target
                .keyword
                .as_deref()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .ok_or(PlanError::MissingKeyword)?;
            let template = if source.contains("://") {
                source
            } else {
                engine(source).ok_or_else(|| PlanError::UnknownSearchEngine(source.to_owned()))?
            };
            let encoded: String = byte_serialize(keyword.as_bytes()).collect();
            web_url(source, &template.replace(KEYWORD_PLACEHOLDER, &encoded)).map(Some)
        }
    }
}

fn source(target: &Target) -> Result<&str, PlanError> {
    target
        .source
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(PlanError::MissingSource(target.traffic_type))
}

/// The result-page template of an engine named `name` ("Google",
/// "DuckDuckGo", "www.bing.com" …).
fn engine(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("www.").unwrap_or(&name);
    let name = name.strip_suffix(".com").unwrap_or(name);
    let key: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    SEARCH_ENGINES
        .iter()
        .find(|(known, _)| *known == key)
        .map(|(_, template)| *template)
}

fn web_url(source: &str, url: &str) -> Result<Url, PlanError> {
    let bad = |reason: String| PlanError::BadSource {
        given: source.to_owned(),
        reason,
    };
    let url = Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("not an http or https URL".to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".to_owned()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(traffic_type: TrafficType, source: Option<&str>, keyword: Option<&str>) -> Target {
        Target {
            url: Url::parse("https://shop.example/").unwrap(),
            traffic_type,
            source: source.map(str::to_owned),
            keyword: keyword.map(str::to_owned),
            flow_target: 1,
            click_target: 0,
        }
    }

    fn referrer_of(t: TrafficType, source: Option<&str>, keyword: Option<&str>) -> String {
        referrer(&target(t, source, keyword))
            .unwrap()
            .map(String::from)
            .unwrap_or_default()
    }

    #[test]
    fn direct_traffic_has_no_referrer_whatever_its_source() {
        assert_eq!(referrer(&target(TrafficType::Direct, None, None)), Ok(None));
        assert_eq!(
            referrer(&target(
                TrafficType::Direct,
                Some("https://x.example/"),
                None
            )),
            Ok(None)
        );
    }

    #[test]
    fn referral_traffic_comes_from_the_source_page() {
        assert_eq!(
            referrer_of(
                TrafficType::Referral,
                Some("https://blog.example/post?id=3"),
                None
            ),
            "https://blog.example/post?id=3"
        );
        assert_eq!(
            referrer_of(TrafficType::Referral, Some("blog.example"), None),
            "https://blog.example/"
        );
    }

    #[test]
    fn organic_traffic_comes_from_the_engines_result_page_with_the_keyword_encoded() {
        assert_eq!(
            referrer_of(
                TrafficType::Organic,
                Some("google"),
                Some("blue shoes & socks")
            ),
            "https://www.google.com/search?q=blue+shoes+%26+socks"
        );
        assert_eq!(
            referrer_of(TrafficType::Organic, Some("DuckDuckGo"), Some("café #1")),
            "https://duckduckgo.com/?q=caf%C3%A9+%231"
        );
        assert_eq!(
            referrer_of(TrafficType::Organic, Some("www.bing.com"), Some("a/b?c=d")),
            "https://www.bing.com/search?q=a%2Fb%3Fc%3Dd"
        );
    }

    #[test]
    fn an_organic_source_given_as_a_url_is_used_as_is_or_as_a_template() {
        assert_eq!(
            referrer_of(
                TrafficType::Organic,
                Some("https://search.example/results?lang=en"),
                Some("shoes")
            ),
            "https://search.example/results?lang=en"
        );
        assert_eq!(
            referrer_of(
                TrafficType::Organic,
                Some("https://search.example/?s={keyword}&lang=en"),
                Some("red shoes")
            ),
            "https://search.example/?s=red+shoes&lang=en"
        );
    }

    #[test]
    fn missing_or_unknown_sources_and_keywords_are_named() {
        assert_eq!(
            referrer(&target(TrafficType::Organic, Some("altavista"), Some("x"))),
            Err(PlanError::UnknownSearchEngine("altavista".into()))
        );
        assert_eq!(
            referrer(&target(TrafficType::Organic, Some("google"), Some("  "))),
            Err(PlanError::MissingKeyword)
        );
        assert_eq!(
            referrer(&target(TrafficType::Referral, None, None)),
            Err(PlanError::MissingSource(TrafficType::Referral))
        );
        assert!(matches!(
            referrer(&target(
                TrafficType::Referral,
                Some("ftp://files.example/"),
                None
            )),
            Err(PlanError::BadSource { .. })
        ));
        let message = PlanError::UnknownSearchEngine("altavista".into()).to_string();
        assert!(
            message.contains("google") && message.contains("{keyword}"),
            "{message}"
        );
    }
}

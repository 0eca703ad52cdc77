//! How a flow behaves, decided from the settings profile, the target and
//! whether the flow clicks: the referrer it arrives with, how long the
//! session lasts, how many pages it reads, how each page is scrolled and
//! left, which click it makes, and the wait before the next flow.
//!
//! The session is planned up front ([`plan`]); each page's scrolling is a
//! generator ([`PageScript`]) that the executor asks step by step with the
//! page's measured height, since only the browser knows it.
//!
//! Pure: no I/O, no clock, no global random source; the same seed makes the
//! same plan.

mod page;
mod referrer;

use std::time::Duration;

use datasets::{SettingsProfile, Span, Target, TrafficType};
use domain::flow::MAX_PAGES_PER_FLOW;
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
use url::Url;

pub use page::{Exit, LinkKind, Observation, PagePlan, PageScript, Step};
pub use referrer::{KEYWORD_PLACEHOLDER, SEARCH_ENGINES, referrer};

/// A flow's session, decided before its first navigation.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPlan {
    /// The first page's referrer; `None` for direct traffic.
    pub referrer: Option<Url>,
    /// How long the session lasts, from its first navigation until its
    /// last page is left (the click's landing page, if any, comes after).
    pub dwell: Duration,
    /// The pages read, in order: the target first, then internal pages
    /// reached by [`Exit::NextPage`]. Each ends at its share of the dwell.
    pub pages: Vec<PagePlan>,
    /// The flow's click, made on the last page; `None` when the flow does
    /// not click or the settings turn clicks off.
    pub click: Option<LinkKind>,
    /// The wait after this flow before the slot starts its next one.
    pub delay_before_next_flow: Duration,
}

/// A settings profile or target that cannot be planned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{} traffic needs a source: {}",
        traffic_name(*.0),
        match .0 {
            TrafficType::Organic => "the search engine's name or result page URL",
            _ => "the referring page's URL",
        }
    )]
    MissingSource(TrafficType),
    #[error("organic traffic needs the keyword that is searched for")]
    MissingKeyword,
    #[error(
        "{0:?} is not a search engine known by name; name one of {names}, or give the result page's URL (https://…; {KEYWORD_PLACEHOLDER} is replaced by the keyword)",
        names = SEARCH_ENGINES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    UnknownSearchEngine(String),
    #[error("the source {given:?} is not a usable URL: {reason}")]
    BadSource { given: String, reason: String },
    #[error("the {what} range {min}..{max} ends before it starts")]
    ReversedSpan {
        what: &'static str,
        min: u32,
        max: u32,
    },
    #[error("the external click share {0} is not between 0 and 1")]
    ExternalShare(f64),
}

fn traffic_name(t: TrafficType) -> &'static str {
    match t {
        TrafficType::Direct => "direct",
        TrafficType::Referral => "referral",
        TrafficType::Organic => "organic",
    }
}

/// Plans a flow's session. `click`: the gateway wants this flow to click
/// (it still does not when the settings turn clicks off). `seed` picks the
/// random choices; the same inputs and seed make the same plan.
pub fn plan(
    settings: &SettingsProfile,
    target: &Target,
    click: bool,
    seed: u64,
) -> Result<SessionPlan, PlanError> {
    let surfing = &settings.human_surfing;
    let share = surfing.external_click_share;
    if !(0.0..=1.0).contains(&share) {
        return Err(PlanError::ExternalShare(share));
    }
    let session = ordered("session duration", settings.session_duration)?;
    let pages = ordered("pages per session", settings.pages_per_session)?;
    let delay = ordered("delay between flows", settings.delay_between_flows)?;
    let click_delay = ordered("click delay", surfing.click_delay_ms)?;
    let referrer = referrer(target)?;

    let mut rng = SmallRng::seed_from_u64(seed);
    let dwell_ms = seconds_in_ms(&mut rng, session);
    // A report may list at most this many pages; more would be refused.
    let max_pages = MAX_PAGES_PER_FLOW as u32;
    let count = rng.random_range(pages.min.clamp(1, max_pages)..=pages.max.clamp(1, max_pages));
    let click = (click && surfing.clicks).then(|| {
        if rng.random_bool(share) {
            LinkKind::External
        } else {
            LinkKind::Internal
        }
    });
    let delay_before_next_flow = Duration::from_millis(seconds_in_ms(&mut rng, delay));

    let mut ends_at = 0;
    let pages = split(&mut rng, dwell_ms, count)
        .into_iter()
        .enumerate()
        .map(|(i, share_ms)| {
            ends_at += share_ms;
            let last = i + 1 == count as usize;
            PagePlan {
                ends_at: Duration::from_millis(ends_at),
                exit: match (last, click) {
                    (false, _) => Exit::NextPage,
                    (true, Some(kind)) => Exit::Click(kind),
                    (true, None) => Exit::Close,
                },
                scrolling: surfing.random_scrolling,
                click_delay_ms: (click_delay.min, click_delay.max),
                seed: rng.next_u64(),
            }
        })
        .collect();
    Ok(SessionPlan {
        referrer,
        dwell: Duration::from_millis(dwell_ms),
        pages,
        click,
        delay_before_next_flow,
    })
}

fn ordered(what: &'static str, span: Span) -> Result<Span, PlanError> {
    if span.min > span.max {
        return Err(PlanError::ReversedSpan {
            what,
            min: span.min,
            max: span.max,
        });
    }
    Ok(span)
}

/// A time in milliseconds drawn from a range given in seconds.
fn seconds_in_ms(rng: &mut SmallRng, span: Span) -> u64 {
    rng.random_range(u64::from(span.min) * 1_000..=u64::from(span.max) * 1_000)
}

/// `total` split into `parts` uneven shares (each 0.5 to 1.5 of an even
/// one) that add up to `total` exactly.
fn split(rng: &mut SmallRng, total: u64, parts: u32) -> Vec<u64> {
    let weights: Vec<f64> = (0..parts).map(|_| rng.random_range(0.5..1.5)).collect();
    let sum: f64 = weights.iter().sum();
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|w| (total as f64 * w / sum).floor() as u64)
        .collect();
    let rounded: u64 = shares.iter().sum();
    if let Some(last) = shares.last_mut() {
        *last += total.saturating_sub(rounded);
    }
    shares
}

#[cfg(test)]
mod tests {
    use datasets::{Dns, HumanSurfing, ProxySwitching};

    use super::*;

    fn settings() -> SettingsProfile {
        SettingsProfile {
            name: "reader".into(),
            session_duration: Span { min: 30, max: 90 },
            pages_per_session: Span { min: 1, max: 4 },
            delay_between_flows: Span { min: 2, max: 8 },
            human_surfing: HumanSurfing {
                random_scrolling: true,
                clicks: true,
                external_click_share: 0.3,
                click_delay_ms: Span {
                    min: 500,
                    max: 2_000,
                },
            },
            instances: 1,
            proxy_switching: ProxySwitching::PerFlow,
            dns: Dns::System,
            marker_header: true,
        }
    }

    fn target() -> Target {
        Target {
            url: Url::parse("https://shop.example/").unwrap(),
            traffic_type: TrafficType::Organic,
            source: Some("google".into()),
            keyword: Some("red shoes".into()),
            flow_target: 10,
            click_target: 5,
        }
    }

    /// Plans of `given` settings for many seeds.
    fn plans(given: &SettingsProfile, click: bool) -> impl Iterator<Item = SessionPlan> + '_ {
        (0..2_000).map(move |seed| plan(given, &target(), click, seed).unwrap())
    }

    #[test]
    fn the_session_dwell_is_always_inside_the_range_and_the_pages_share_it_exactly() {
        let given = settings();
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for p in plans(&given, true) {
            assert!(
                p.dwell >= Duration::from_secs(30) && p.dwell <= Duration::from_secs(90),
                "{:?}",
                p.dwell
            );
            assert_eq!(p.pages.last().unwrap().ends_at, p.dwell);
            assert!(p.pages.windows(2).all(|w| w[0].ends_at < w[1].ends_at));
            (lo, hi) = (lo.min(p.dwell), hi.max(p.dwell));
        }
        assert!(
            lo < Duration::from_secs(35) && hi > Duration::from_secs(85),
            "{lo:?}..{hi:?}"
        );
    }

    #[test]
    fn a_constant_session_duration_is_kept_to_the_millisecond() {
        let mut given = settings();
        given.session_duration = Span::constant(45);
        assert!(plans(&given, false).all(|p| p.dwell == Duration::from_secs(45)));
    }

    #[test]
    fn pages_are_within_the_range_and_every_value_occurs() {
        let given = settings();
        let mut seen = [0u32; 5];
        for p in plans(&given, true) {
            let n = p.pages.len();
            assert!((1..=4).contains(&n), "{n} pages");
            seen[n] += 1;
        }
        assert!(seen[1..].iter().all(|&c| c > 300), "{seen:?}");
    }

    #[test]
    fn pages_beyond_what_a_report_may_hold_are_capped() {
        let mut given = settings();
        given.pages_per_session = Span {
            min: 80,
            max: 1_000,
        };
        assert!(plans(&given, false).all(|p| p.pages.len() == MAX_PAGES_PER_FLOW));
    }

    #[test]
    fn every_page_but_the_last_leads_on_and_the_last_makes_the_click() {
        for p in plans(&settings(), true) {
            let (last, rest) = p.pages.split_last().unwrap();
            assert!(rest.iter().all(|page| page.exit == Exit::NextPage));
            assert_eq!(last.exit, Exit::Click(p.click.unwrap()));
        }
        for p in plans(&settings(), false) {
            assert_eq!(p.pages.last().unwrap().exit, Exit::Close);
        }
    }

    #[test]
    fn no_click_when_the_flow_should_not_click_or_clicks_are_off() {
        assert!(plans(&settings(), false).all(|p| p.click.is_none()));
        let mut off = settings();
        off.human_surfing.clicks = false;
        for p in plans(&off, true) {
            assert_eq!(p.click, None);
            assert!(
                p.pages
                    .iter()
                    .all(|page| !matches!(page.exit, Exit::Click(_)))
            );
        }
    }

    #[test]
    fn the_external_share_of_clicks_converges_to_the_configured_ratio() {
        for share in [0.0, 0.1, 0.3, 0.5, 0.9, 1.0] {
            let mut given = settings();
            given.human_surfing.external_click_share = share;
            let n = 4_000;
            let external = (0..n)
                .filter(|&seed| {
                    plan(&given, &target(), true, seed).unwrap().click == Some(LinkKind::External)
                })
                .count();
            let seen = external as f64 / n as f64;
            // Four standard deviations of a binomial share.
            let tolerance = 4.0 * (share * (1.0 - share) / n as f64).sqrt();
            assert!(
                (seen - share).abs() <= tolerance,
                "share {share}: saw {seen}"
            );
        }
    }

    #[test]
    fn the_delay_before_the_next_flow_is_inside_its_range_and_varies() {
        let mut delays: Vec<_> = plans(&settings(), true)
            .map(|p| p.delay_before_next_flow)
            .inspect(|d| {
                assert!(
                    *d >= Duration::from_secs(2) && *d <= Duration::from_secs(8),
                    "{d:?}"
                )
            })
            .collect();
        delays.sort();
        delays.dedup();
        assert!(delays.len() > 1_000);
    }

    #[test]
    fn pages_carry_the_scrolling_switch_and_click_delay_of_the_settings() {
        let mut given = settings();
        given.human_surfing.random_scrolling = false;
        let p = plan(&given, &target(), true, 7).unwrap();
        assert!(
            p.pages
                .iter()
                .all(|page| !page.scrolling && page.click_delay_ms == (500, 2_000))
        );
    }

    #[test]
    fn the_referrer_follows_the_traffic_type() {
        let p = plan(&settings(), &target(), false, 1).unwrap();
        assert_eq!(
            p.referrer.unwrap().as_str(),
            "https://www.google.com/search?q=red+shoes"
        );
        let direct = Target {
            traffic_type: TrafficType::Direct,
            source: None,
            keyword: None,
            ..target()
        };
        assert_eq!(plan(&settings(), &direct, false, 1).unwrap().referrer, None);
    }

    #[test]
    fn the_same_seed_makes_the_same_plan_and_others_differ() {
        let a = plan(&settings(), &target(), true, 11).unwrap();
        assert_eq!(a, plan(&settings(), &target(), true, 11).unwrap());
        assert!((12..40).any(|s| plan(&settings(), &target(), true, s).unwrap() != a));
    }

    #[test]
    fn settings_that_cannot_be_planned_are_refused_with_what_to_fix() {
        let mut reversed = settings();
        reversed.session_duration = Span { min: 90, max: 30 };
        let err = plan(&reversed, &target(), true, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the session duration range 90..30 ends before it starts"
        );

        let mut share = settings();
        share.human_surfing.external_click_share = f64::NAN;
        assert!(matches!(
            plan(&share, &target(), true, 0),
            Err(PlanError::ExternalShare(_))
        ));

        let organic_without_source = Target {
            source: None,
            ..target()
        };
        assert_eq!(
            plan(&settings(), &organic_without_source, true, 0)
                .unwrap_err()
                .to_string(),
            "organic traffic needs a source: the search engine's name or result page URL"
        );
    }

    /// The whole session played by an executor that takes each step as
    /// long as asked and loads each page in 300 ms.
    #[test]
    fn a_played_session_lasts_its_dwell_and_leaves_each_page_as_planned() {
        for seed in 0..200 {
            let p = plan(&settings(), &target(), true, seed).unwrap();
            let mut now = Duration::ZERO;
            let mut exits = Vec::new();
            for page in &p.pages {
                now += Duration::from_millis(300);
                let mut script = page.script();
                let mut y = 0;
                loop {
                    let seen = Observation {
                        elapsed: now,
                        page_height: 4_000,
                        viewport_height: 900,
                        scroll_y: y,
                    };
                    match script.next(&seen) {
                        Step::Scroll { to, duration } => {
                            y = to;
                            now += duration;
                        }
                        Step::Pause(d) => now += d,
                        Step::Exit(exit) => {
                            exits.push(exit);
                            break;
                        }
                    }
                }
            }
            let planned: Vec<_> = p.pages.iter().map(|page| page.exit).collect();
            assert_eq!(exits, planned, "seed {seed}");
            // Page loads eat into the pages' time; only a load longer than
            // a page's whole share pushes the end past the dwell.
            assert!(now >= p.dwell, "seed {seed}");
            assert!(
                now <= p.dwell + Duration::from_millis(300),
                "seed {seed}: {now:?}"
            );
        }
    }
}

//! One page's timeline, decided step by step: the executor measures the
//! page (its real height, the viewport, where it is scrolled to, the
//! session's clock) and asks for the next step; the script answers with a
//! scroll, a pause, or how the page is left. Scrolls vary in distance,
//! speed and direction, with reading pauses between them and no fixed
//! interval, and never aim past the page's measured bottom.
//!
//! Pure: no I/O, no clock of its own, no global random source.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// How a page is left once its time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Follow a visible internal link to the session's next page. A way
    /// between pages, not the flow's counted click (report it in `pages`,
    /// not in `clicks`).
    NextPage,
    /// Make the flow's click, then wait for the landing page; the session
    /// ends there.
    Click(LinkKind),
    /// The session ends on this page.
    Close,
}

/// Which links a click may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A link within the target's site.
    Internal,
    /// A link to another site; only to domains the job may click to.
    External,
}

/// What the executor measured just before asking for the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Time since the session started (its first navigation), on the
    /// executor's clock.
    pub elapsed: Duration,
    /// The page's full height in CSS pixels (`scrollHeight`).
    pub page_height: u32,
    /// The viewport's height in CSS pixels (`innerHeight`).
    pub viewport_height: u32,
    /// Where the page is scrolled to (`scrollY`).
    pub scroll_y: u32,
}

impl Observation {
    /// The lowest a page can be scrolled to.
    pub fn max_scroll(&self) -> u32 {
        self.page_height.saturating_sub(self.viewport_height)
    }
}

/// What to do next on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Scroll to `to` (a `scrollY` within `0..=page height - viewport`),
    /// taking `duration` (which sets the speed).
    Scroll { to: u32, duration: Duration },
    /// Stay still: reading, or aiming at a link before clicking it.
    Pause(Duration),
    /// Leave the page this way. Terminal: asked again, the script says the
    /// same.
    Exit(Exit),
}

/// A page's behaviour: where it ends on the session's clock and how it is
/// left. Make its [`PageScript`] once the page has loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct PagePlan {
    /// When the page's time is up, on the session's clock.
    pub ends_at: Duration,
    pub exit: Exit,
    /// Scroll while on the page (otherwise only pause).
    pub scrolling: bool,
    /// The wait before a link is followed or clicked, in milliseconds.
    pub click_delay_ms: (u32, u32),
    pub(super) seed: u64,
}

impl PagePlan {
    /// The step-by-step script of this page; the same plan always makes
    /// the same script.
    pub fn script(&self) -> PageScript {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let (lo, hi) = self.click_delay_ms;
        let aim = match self.exit {
            Exit::Close => Duration::ZERO,
            Exit::NextPage | Exit::Click(_) => {
                Duration::from_millis(rng.random_range(lo..=hi.max(lo)).into())
            }
        };
        PageScript {
            rng,
            ends_at: self.ends_at,
            exit: self.exit,
            scrolling: self.scrolling,
            aim,
            phase: Phase::Reading,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Next: a scroll (or a pause when nothing can scroll).
    Scrolling,
    /// Next: a reading pause.
    Reading,
    /// The aiming pause was given; next: the exit.
    Aimed,
    Done,
}

/// A page's behaviour as a generator: ask [`PageScript::next`] after each
/// step, with fresh measurements.
#[derive(Debug, Clone)]
pub struct PageScript {
    rng: SmallRng,
    ends_at: Duration,
    exit: Exit,
    scrolling: bool,
    /// The wait before the exit's click, drawn once; cut short only when
    /// the page has less time left than it.
    aim: Duration,
    phase: Phase,
}

/// Shorter scrolls read as jumps rather than scrolling.
const MIN_SCROLL: Duration = Duration::from_millis(120);
const MAX_SCROLL: Duration = Duration::from_millis(2_500);
/// Scroll speeds, in pixels per second.
const SPEED: (f64, f64) = (500.0, 2_600.0);
/// Time left below this is not worth a scroll: pause it out.
const LAST_MOMENT: Duration = Duration::from_millis(150);

impl PageScript {
    /// The next step, given what the page looks like now.
    pub fn next(&mut self, now: &Observation) -> Step {
        if self.phase == Phase::Done {
            return Step::Exit(self.exit);
        }
        let left = self.ends_at.saturating_sub(now.elapsed);
        if self.phase == Phase::Aimed || left.is_zero() {
            self.phase = Phase::Done;
            return Step::Exit(self.exit);
        }
        if left <= self.aim {
            self.phase = Phase::Aimed;
            return Step::Pause(left);
        }
        let browsing = left - self.aim;
        let can_scroll = self.scrolling && now.max_scroll() > 0 && browsing > LAST_MOMENT;
        if self.phase == Phase::Scrolling && can_scroll {
            self.phase = Phase::Reading;
            return self.scroll(now, browsing);
        }
        self.phase = Phase::Scrolling;
        Step::Pause(self.reading_pause().min(browsing))
    }

    /// A pause between scrolls: mostly a few seconds of reading, now and
    /// then a long read or a quick follow-up scroll.
    fn reading_pause(&mut self) -> Duration {
        let ms = match self.rng.random_range(0..100u32) {
            0..8 => self.rng.random_range(150..600),
            8..75 => self.rng.random_range(600..3_500),
            _ => self.rng.random_range(3_500..9_000),
        };
        Duration::from_millis(ms)
    }

    fn scroll(&mut self, now: &Observation, time: Duration) -> Step {
        let max = now.max_scroll();
        let y = now.scroll_y.min(max);
        let viewport = f64::from(now.viewport_height.max(1));
        // Mostly a part of a screen; sometimes a flick of several.
        let screens = if self.rng.random_bool(0.12) {
            self.rng.random_range(1.5..3.0)
        } else {
            self.rng.random_range(0.2..1.2)
        };
        let distance = (screens * viewport).round().max(1.0) as u32;
        let down = match (y, max - y) {
            (0, _) => true,
            (_, 0) => false,
            // Readers go down, and glance back up now and then.
            _ => self.rng.random_bool(0.78),
        };
        let to = if down {
            y.saturating_add(distance).min(max)
        } else {
            y.saturating_sub(distance)
        };
        let speed = self.rng.random_range(SPEED.0..SPEED.1);
        let moved = f64::from(to.abs_diff(y));
        let duration = Duration::from_secs_f64(moved / speed)
            .clamp(MIN_SCROLL, MAX_SCROLL)
            .min(time);
        Step::Scroll { to, duration }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64, ends_at_ms: u64, exit: Exit, scrolling: bool) -> PagePlan {
        PagePlan {
            ends_at: Duration::from_millis(ends_at_ms),
            exit,
            scrolling,
            click_delay_ms: (500, 2_000),
            seed,
        }
    }

    /// A page played by an executor that takes each step exactly as long
    /// as asked, starting at `start` on the session clock.
    struct Played {
        steps: Vec<(Duration, Step)>,
        end: Duration,
    }

    fn play(plan: &PagePlan, start: Duration, height: u32, viewport: u32) -> Played {
        play_with(plan, start, |_| (height, viewport), Duration::ZERO)
    }

    /// `page(i)` gives the page's (height, viewport) as measured before
    /// step `i`; each step also costs `lag` of executor overhead.
    fn play_with(
        plan: &PagePlan,
        start: Duration,
        mut page: impl FnMut(usize) -> (u32, u32),
        lag: Duration,
    ) -> Played {
        let mut script = plan.script();
        let (mut now, mut y, mut steps) = (start, 0u32, Vec::new());
        for i in 0..10_000 {
            let (page_height, viewport_height) = page(i);
            let seen = Observation {
                elapsed: now,
                page_height,
                viewport_height,
                scroll_y: y.min(page_height.saturating_sub(viewport_height)),
            };
            let step = script.next(&seen);
            steps.push((now, step));
            match step {
                Step::Scroll { to, duration } => {
                    y = to;
                    now += duration;
                }
                Step::Pause(d) => now += d,
                Step::Exit(_) => return Played { steps, end: now },
            }
            now += lag;
        }
        panic!("the script never left the page");
    }

    fn scrolls(p: &Played) -> Vec<(Duration, u32, Duration)> {
        p.steps
            .iter()
            .filter_map(|&(at, s)| match s {
                Step::Scroll { to, duration } => Some((at, to, duration)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_page_is_left_exactly_when_its_time_is_up_the_way_it_was_planned() {
        for seed in 0..300 {
            let exit =
                [Exit::Close, Exit::NextPage, Exit::Click(LinkKind::External)][seed as usize % 3];
            let plan = plan(seed, 5_000 + seed * 97, exit, seed % 2 == 0);
            let start = Duration::from_millis(seed * 7);
            let played = play(&plan, start, 4_000, 800);
            assert_eq!(played.end, plan.ends_at, "seed {seed}");
            assert_eq!(played.steps.last().unwrap().1, Step::Exit(exit));
        }
    }

    #[test]
    fn scroll_targets_stay_within_the_measured_page() {
        for seed in 0..400 {
            let (height, viewport) = (
                300 + (seed * 7_919 % 12_000) as u32,
                200 + (seed * 104_729 % 1_200) as u32,
            );
            let played = play(
                &plan(seed, 30_000, Exit::Close, true),
                Duration::ZERO,
                height,
                viewport,
            );
            for (_, to, _) in scrolls(&played) {
                assert!(
                    to <= height.saturating_sub(viewport),
                    "seed {seed}: scrolled to {to} on a {height} px page in a {viewport} px viewport"
                );
            }
        }
    }

    #[test]
    fn a_page_that_grows_or_shrinks_while_read_bounds_each_scroll_by_its_height_then() {
        for seed in 0..200 {
            let heights = |i: usize| (if i % 4 < 2 { 6_000 } else { 1_100 }, 900);
            let played = play_with(
                &plan(seed, 40_000, Exit::Close, true),
                Duration::ZERO,
                heights,
                Duration::from_millis(30),
            );
            for (i, (_, step)) in played.steps.iter().enumerate() {
                if let Step::Scroll { to, .. } = step {
                    let (h, v) = heights(i);
                    assert!(*to <= h - v, "seed {seed}: step {i} to {to}");
                }
            }
        }
    }

    #[test]
    fn a_page_no_taller_than_the_viewport_is_never_scrolled() {
        for seed in 0..100 {
            let played = play(
                &plan(seed, 20_000, Exit::Close, true),
                Duration::ZERO,
                700,
                800,
            );
            assert!(scrolls(&played).is_empty(), "seed {seed}");
            assert_eq!(played.end, Duration::from_secs(20));
        }
    }

    #[test]
    fn without_random_scrolling_the_page_only_pauses() {
        let played = play(
            &plan(9, 20_000, Exit::NextPage, false),
            Duration::ZERO,
            9_000,
            800,
        );
        assert!(scrolls(&played).is_empty());
        assert_eq!(played.end, Duration::from_secs(20));
    }

    #[test]
    fn scrolls_vary_in_interval_distance_speed_and_direction() {
        let (mut downs, mut ups, mut glances) = (0, 0, 0);
        for seed in 0..50 {
            let played = play(
                &plan(seed, 90_000, Exit::Close, true),
                Duration::ZERO,
                8_000,
                800,
            );
            let s = scrolls(&played);
            assert!(
                s.len() >= 8,
                "seed {seed}: only {} scrolls in 90 s",
                s.len()
            );
            let gaps: Vec<_> = s
                .windows(2)
                .map(|w| (w[1].0 - w[0].0).as_millis())
                .collect();
            let mean = gaps.iter().sum::<u128>() as f64 / gaps.len() as f64;
            let spread = (gaps.iter().map(|&g| (g as f64 - mean).powi(2)).sum::<f64>()
                / gaps.len() as f64)
                .sqrt();
            assert!(
                spread / mean > 0.25,
                "seed {seed}: intervals too regular {gaps:?}"
            );
            let mut y = 0;
            let mut distances = Vec::new();
            let mut speeds = Vec::new();
            for &(_, to, d) in &s {
                if to > y {
                    downs += 1;
                } else {
                    ups += 1;
                    // Back up from mid-page, not only bounced off the bottom.
                    glances += usize::from(y < 8_000 - 800);
                }
                distances.push(to.abs_diff(y));
                speeds.push(f64::from(to.abs_diff(y)) / d.as_secs_f64());
                y = to;
            }
            distances.sort();
            distances.dedup();
            assert!(distances.len() >= s.len() / 2, "seed {seed}: {distances:?}");
            let (lo, hi) = speeds
                .iter()
                .fold((f64::MAX, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(hi > 1.5 * lo, "seed {seed}: speeds {lo}..{hi}");
        }
        assert!(
            downs > 2 * ups && glances > 0,
            "{downs} down, {ups} up, {glances} mid-page"
        );
    }

    #[test]
    fn a_link_is_followed_after_an_aiming_pause_drawn_from_the_click_delay() {
        let mut aims = Vec::new();
        for seed in 0..200 {
            let played = play(
                &plan(seed, 30_000, Exit::NextPage, true),
                Duration::ZERO,
                5_000,
                800,
            );
            let n = played.steps.len();
            let Step::Pause(aim) = played.steps[n - 2].1 else {
                panic!(
                    "seed {seed}: no pause before the exit: {:?}",
                    &played.steps[n - 2..]
                );
            };
            assert!(
                (500..=2_000).contains(&aim.as_millis()),
                "seed {seed}: aimed {aim:?}"
            );
            aims.push(aim);
        }
        aims.sort();
        aims.dedup();
        assert!(aims.len() > 100, "the aiming pause hardly varies");
    }

    #[test]
    fn a_slow_executor_still_leaves_the_page_once_its_time_is_up() {
        let played = play_with(
            &plan(3, 10_000, Exit::Close, true),
            Duration::ZERO,
            |_| (5_000, 800),
            Duration::from_millis(900),
        );
        // Overshoot is at most one step's lag.
        assert!(
            played.end <= Duration::from_millis(10_900),
            "{:?}",
            played.end
        );
        assert!(played.end >= Duration::from_secs(10));
    }

    #[test]
    fn a_page_whose_time_is_already_up_is_left_at_once_and_stays_left() {
        let mut script = plan(1, 1_000, Exit::Click(LinkKind::Internal), true).script();
        let late = Observation {
            elapsed: Duration::from_secs(5),
            page_height: 5_000,
            viewport_height: 800,
            scroll_y: 0,
        };
        assert_eq!(
            script.next(&late),
            Step::Exit(Exit::Click(LinkKind::Internal))
        );
        assert_eq!(
            script.next(&late),
            Step::Exit(Exit::Click(LinkKind::Internal))
        );
    }

    #[test]
    fn the_same_plan_makes_the_same_script() {
        let p = plan(42, 25_000, Exit::NextPage, true);
        let a = play(&p, Duration::ZERO, 6_000, 700).steps;
        let b = play(&p, Duration::ZERO, 6_000, 700).steps;
        assert_eq!(a, b);
    }
}

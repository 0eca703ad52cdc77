//! A job's pass/fail thresholds and its auto-abort: the figures they judge
//! and the verdict, written once for the job decider (auto-abort) and the
//! job view (the live verdict).
//!
//! Rates are whole thousandths, compared in integers: no float in an event
//! or a state, so a rebuilt view equals the live one to the last digit.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A share in thousandths: 25 is 2.5 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct PerMille(u16);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a share is given in thousandths, 0 to 1000; {0} is more than the whole")]
pub struct PerMilleError(pub u16);

impl PerMille {
    pub fn new(thousandths: u16) -> Result<Self, PerMilleError> {
        if thousandths <= 1000 {
            Ok(Self(thousandths))
        } else {
            Err(PerMilleError(thousandths))
        }
    }

    pub fn thousandths(self) -> u16 {
        self.0
    }

    /// Is `part` of `whole` more than this share? Nothing of nothing is not.
    pub fn exceeded_by(self, part: u64, whole: u64) -> bool {
        u128::from(part) * 1000 > u128::from(self.0) * u128::from(whole)
    }

    /// `part` of `whole`, rounded down to a thousandth (0 of nothing).
    pub fn of(part: u64, whole: u64) -> Self {
        if whole == 0 {
            return Self(0);
        }
        let share = (u128::from(part.min(whole)) * 1000 / u128::from(whole)) as u16;
        Self(share)
    }
}

impl TryFrom<u16> for PerMille {
    type Error = PerMilleError;
    fn try_from(v: u16) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}

impl From<PerMille> for u16 {
    fn from(p: PerMille) -> u16 {
        p.0
    }
}

impl fmt::Display for PerMille {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 % 10 {
            0 => write!(f, "{}%", self.0 / 10),
            tenth => write!(f, "{}.{tenth}%", self.0 / 10),
        }
    }
}

/// Stops a job to protect a site whose error rate (5xx, no answer) passes
/// `error_rate` once at least `min_pages` pages of it were loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoAbort {
    pub error_rate: PerMille,
    pub min_pages: u64,
}

impl AutoAbort {
    /// Do these figures stop the job?
    pub fn trips(self, errors: u64, pages: u64) -> bool {
        pages >= self.min_pages && self.error_rate.exceeded_by(errors, pages)
    }
}

/// What a job must stay within to pass; every one optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_page_load_ms: Option<u32>,
    /// Pages answered with a 5xx or not at all, of all pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<PerMille>,
    /// Failed flows, of finished flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_flows: Option<PerMille>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_abort: Option<AutoAbort>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    #[error("thresholds.p95_page_load_ms must be at least 1 ms")]
    ZeroPageLoad,
    #[error(
        "thresholds.auto_abort.min_pages must be at least 1, so that one unlucky page cannot stop a job: give a sample size such as 100"
    )]
    ZeroSample,
}

impl Thresholds {
    pub fn check(&self) -> Result<(), ThresholdError> {
        if self.p95_page_load_ms == Some(0) {
            return Err(ThresholdError::ZeroPageLoad);
        }
        if self.auto_abort.is_some_and(|a| a.min_pages == 0) {
            return Err(ThresholdError::ZeroSample);
        }
        Ok(())
    }

    /// How a job with these figures stands against each threshold set.
    pub fn verdict(&self, figures: &Figures) -> Verdict {
        let mut checks = Vec::new();
        if let Some(limit_ms) = self.p95_page_load_ms {
            checks.push(Check::P95PageLoad {
                limit_ms,
                actual_ms: figures.p95_page_load_ms,
                passed: figures.p95_page_load_ms.is_none_or(|p95| p95 <= limit_ms),
            });
        }
        if let Some(limit) = self.max_error_rate {
            checks.push(Check::ErrorRate {
                limit,
                errors: figures.page_errors,
                pages: figures.pages,
                passed: !limit.exceeded_by(figures.page_errors, figures.pages),
            });
        }
        if let Some(limit) = self.max_failed_flows {
            checks.push(Check::FailedFlows {
                limit,
                failed: figures.failed,
                finished: figures.finished,
                passed: !limit.exceeded_by(figures.failed, figures.finished),
            });
        }
        Verdict { checks }
    }
}

/// A job's figures as the thresholds judge them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// `None` before any page loaded.
    pub p95_page_load_ms: Option<u32>,
    pub pages: u64,
    pub page_errors: u64,
    pub finished: u64,
    pub failed: u64,
}

/// One threshold against its figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    P95PageLoad {
        limit_ms: u32,
        actual_ms: Option<u32>,
        passed: bool,
    },
    ErrorRate {
        limit: PerMille,
        errors: u64,
        pages: u64,
        passed: bool,
    },
    FailedFlows {
        limit: PerMille,
        failed: u64,
        finished: u64,
        passed: bool,
    },
}

impl Check {
    pub fn passed(&self) -> bool {
        match self {
            Check::P95PageLoad { passed, .. }
            | Check::ErrorRate { passed, .. }
            | Check::FailedFlows { passed, .. } => *passed,
        }
    }
}

/// Every threshold's check; a job without thresholds passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(v: u16) -> PerMille {
        PerMille::new(v).unwrap()
    }

    #[test]
    fn shares_are_thousandths_and_read_as_percentages() {
        assert_eq!(pm(25).to_string(), "2.5%");
        assert_eq!(pm(50).to_string(), "5%");
        assert!(PerMille::new(1001).is_err());
        assert!(serde_json::from_str::<PerMille>("1200").is_err());
        assert_eq!(PerMille::of(1, 3), pm(333));
        assert_eq!(PerMille::of(5, 0), pm(0));
    }

    #[test]
    fn a_share_is_exceeded_only_by_more_than_it() {
        assert!(!pm(50).exceeded_by(5, 100));
        assert!(pm(50).exceeded_by(6, 100));
        assert!(!pm(0).exceeded_by(0, 0));
        assert!(pm(0).exceeded_by(1, 1_000_000));
        assert!(!pm(1000).exceeded_by(u64::MAX, u64::MAX));
    }

    #[test]
    fn auto_abort_waits_for_its_sample() {
        let abort = AutoAbort {
            error_rate: pm(100),
            min_pages: 50,
        };
        assert!(!abort.trips(49, 49), "below the sample nothing trips");
        assert!(abort.trips(6, 50));
        assert!(!abort.trips(5, 50));
    }

    #[test]
    fn the_verdict_checks_each_threshold_set_and_passes_without_any() {
        let figures = Figures {
            p95_page_load_ms: Some(1800),
            pages: 1000,
            page_errors: 30,
            finished: 200,
            failed: 4,
        };
        assert!(Thresholds::default().verdict(&figures).passed());
        let thresholds = Thresholds {
            p95_page_load_ms: Some(2000),
            max_error_rate: Some(pm(20)),
            max_failed_flows: Some(pm(20)),
            auto_abort: None,
        };
        let verdict = thresholds.verdict(&figures);
        let passed: Vec<bool> = verdict.checks.iter().map(Check::passed).collect();
        assert_eq!(passed, [true, false, true]);
        assert!(!verdict.passed());
        assert!(
            thresholds.verdict(&Figures::default()).passed(),
            "nothing measured yet fails nothing"
        );
    }

    #[test]
    fn senseless_thresholds_are_refused() {
        let zero = Thresholds {
            p95_page_load_ms: Some(0),
            ..Thresholds::default()
        };
        assert_eq!(zero.check(), Err(ThresholdError::ZeroPageLoad));
        let no_sample = Thresholds {
            auto_abort: Some(AutoAbort {
                error_rate: pm(100),
                min_pages: 0,
            }),
            ..Thresholds::default()
        };
        assert_eq!(no_sample.check(), Err(ThresholdError::ZeroSample));
    }
}

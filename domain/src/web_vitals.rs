//! Web Vitals as a flow reports them per page: time to first byte, first
//! and largest contentful paint, cumulative layout shift and interaction to
//! next paint, each where the page gave a measure.
//!
//! Pure data. Whole numbers only (times in ms, CLS in thousandths), as
//! everything in an event is, so a rebuilt view equals the live one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One page's Web Vitals; `None` where it gave no measure (no paint, no
/// interaction, a browser without the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageVitals {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fcp_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lcp_ms: Option<u32>,
    /// Cumulative layout shift in thousandths (a score of 0.1 is 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls_milli: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inp_ms: Option<u32>,
}

/// One of the Web Vitals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vital {
    Ttfb,
    Fcp,
    Lcp,
    Cls,
    Inp,
}

impl Vital {
    pub const ALL: [Vital; 5] = [Vital::Ttfb, Vital::Fcp, Vital::Lcp, Vital::Cls, Vital::Inp];

    /// Its name as stored and shown, e.g. `lcp`.
    pub fn name(self) -> &'static str {
        match self {
            Vital::Ttfb => "ttfb",
            Vital::Fcp => "fcp",
            Vital::Lcp => "lcp",
            Vital::Cls => "cls",
            Vital::Inp => "inp",
        }
    }

    /// The vital named `name`.
    pub fn named(name: &str) -> Option<Vital> {
        Vital::ALL.into_iter().find(|v| v.name() == name)
    }
}

impl fmt::Display for Vital {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PageVitals {
    pub fn is_empty(&self) -> bool {
        *self == PageVitals::default()
    }

    /// The page's measure of `vital`, if it gave one.
    pub fn get(&self, vital: Vital) -> Option<u32> {
        match vital {
            Vital::Ttfb => self.ttfb_ms,
            Vital::Fcp => self.fcp_ms,
            Vital::Lcp => self.lcp_ms,
            Vital::Cls => self.cls_milli,
            Vital::Inp => self.inp_ms,
        }
    }

    /// The vitals the page measured, with their values.
    pub fn measured(&self) -> impl Iterator<Item = (Vital, u32)> + '_ {
        Vital::ALL
            .into_iter()
            .filter_map(|v| self.get(v).map(|value| (v, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_measured_vitals_are_written_and_listed() {
        let v = PageVitals {
            ttfb_ms: Some(12),
            lcp_ms: Some(340),
            cls_milli: Some(0),
            ..PageVitals::default()
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"ttfb_ms":12,"lcp_ms":340,"cls_milli":0}"#
        );
        assert_eq!(
            v.measured().collect::<Vec<_>>(),
            [(Vital::Ttfb, 12), (Vital::Lcp, 340), (Vital::Cls, 0)]
        );
        assert!(PageVitals::default().is_empty());
        assert!(
            Vital::ALL
                .iter()
                .all(|v| Vital::named(v.name()) == Some(*v))
        );
    }
}

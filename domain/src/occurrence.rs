//! When a schedule comes due: once at a time, every interval, or on a cron
//! expression, computed in the schedule's IANA time zone so that local
//! times stay put across daylight saving changes. Also the occurrence in
//! words, for the schedule table.
//!
//! Pure: every function takes the instant it reasons from; nothing reads
//! a clock.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Shortest interval between occurrences.
pub const MIN_INTERVAL_SECONDS: u64 = 1;
/// Longest interval: a year of days.
pub const MAX_INTERVAL_SECONDS: u64 = 366 * 24 * 3600;

/// An IANA time zone name that the zone database knows, e.g. `Europe/Berlin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Zone(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown time zone {0:?}: give an IANA name such as Europe/Berlin, America/New_York or UTC"
)]
pub struct ZoneError(pub String);

impl Zone {
    pub fn parse(raw: &str) -> Result<Self, ZoneError> {
        let tz = Tz::from_str(raw.trim()).map_err(|_| ZoneError(raw.to_owned()))?;
        Ok(Self(tz.name().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn tz(&self) -> Tz {
        // Parsed on the way in; a name the database no longer has reads as UTC.
        Tz::from_str(&self.0).unwrap_or(Tz::UTC)
    }
}

impl TryFrom<String> for Zone {
    type Error = ZoneError;
    fn try_from(raw: String) -> Result<Self, ZoneError> {
        Self::parse(&raw)
    }
}

impl From<Zone> for String {
    fn from(z: Zone) -> String {
        z.0
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cron expression of five fields (minute hour day-of-month month
/// day-of-week) or six (seconds first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cron(String);

/// Why a cron expression was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error(
        "a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first); {0:?} has {1}"
    )]
    FieldCount(String, usize),
    #[error("cron field {position} ({field}) {value:?} is invalid: {why}")]
    Field {
        position: usize,
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("cron expression {0:?} is invalid: {1}")]
    Whole(String, String),
}

const FIVE: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const SIX: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

impl Cron {
    /// Checks the expression, naming the first field at fault.
    pub fn parse(raw: &str) -> Result<Self, CronError> {
        let fields: Vec<&str> = raw.split_whitespace().collect();
        let names: &[&str] = match fields.len() {
            5 => &FIVE,
            6 => &SIX,
            n => return Err(CronError::FieldCount(raw.trim().to_owned(), n)),
        };
        let normalized = fields.join(" ");
        let Err(whole) = parser().parse(&normalized) else {
            return Ok(Self(normalized));
        };
        // croner says what is wrong, not where: try each field alone
        // among wildcards to find the one at fault.
        for (i, value) in fields.iter().enumerate() {
            let alone: Vec<&str> = (0..fields.len())
                .map(|j| if j == i { *value } else { "*" })
                .collect();
            if let Err(e) = parser().parse(&alone.join(" ")) {
                return Err(CronError::Field {
                    position: i + 1,
                    field: names[i],
                    value: (*value).to_owned(),
                    why: e.to_string(),
                });
            }
        }
        Err(CronError::Whole(normalized, whole.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn compiled(&self) -> Option<croner::Cron> {
        parser().parse(&self.0).ok()
    }
}

impl TryFrom<String> for Cron {
    type Error = CronError;
    fn try_from(raw: String) -> Result<Self, CronError> {
        Self::parse(&raw)
    }
}

impl From<Cron> for String {
    fn from(c: Cron) -> String {
        c.0
    }
}

/// When a schedule comes due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Occurrence {
    /// Once, at this instant.
    Once {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// Every so many seconds from the schedule's start.
    Every { seconds: u64 },
    /// Whenever the expression matches the zone's wall clock.
    Cron { expression: Cron },
}

fn to_chrono(at: OffsetDateTime, tz: Tz) -> Option<DateTime<Tz>> {
    DateTime::<Utc>::from_timestamp(at.unix_timestamp(), at.nanosecond())
        .map(|utc| utc.with_timezone(&tz))
}

fn from_chrono(at: &DateTime<Tz>) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.timestamp_nanos_opt()?)).ok()
}

impl Occurrence {
    /// Checks an interval's bounds.
    pub fn every(seconds: u64) -> Result<Self, String> {
        if (MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&seconds) {
            Ok(Self::Every { seconds })
        } else {
            Err(format!(
                "an interval is {MIN_INTERVAL_SECONDS} second to {MAX_INTERVAL_SECONDS} seconds (366 days); {seconds} is not"
            ))
        }
    }

    /// The first occurrence at or after `from` (`inclusive`) or strictly
    /// after it, for a schedule that starts at `anchor`; none if it never
    /// comes again.
    pub fn next(
        &self,
        zone: &Zone,
        anchor: OffsetDateTime,
        from: OffsetDateTime,
        inclusive: bool,
    ) -> Option<OffsetDateTime> {
        // Nothing comes before the anchor; the anchor itself may.
        let (from, inclusive) = if from < anchor {
            (anchor, true)
        } else {
            (from, inclusive)
        };
        match self {
            Occurrence::Once { at } => {
                (if inclusive { *at >= from } else { *at > from }).then_some(*at)
            }
            Occurrence::Every { seconds } => {
                let step = i128::from(*seconds) * 1_000_000_000;
                let since = (from - anchor).whole_nanoseconds();
                let mut k = since / step;
                if anchor + time::Duration::nanoseconds_i128(k * step) < from
                    || (!inclusive && k * step == since)
                {
                    k += 1;
                }
                Some(anchor + time::Duration::nanoseconds_i128(k * step))
            }
            Occurrence::Cron { expression } => {
                let cron = expression.compiled()?;
                let start = to_chrono(from, zone.tz())?;
                let next = cron.find_next_occurrence(&start, inclusive).ok()?;
                from_chrono(&next)
            }
        }
    }

    /// The occurrence in words, e.g. `every weekday at 09:00 Europe/Berlin`.
    pub fn words(&self, zone: &Zone) -> String {
        match self {
            Occurrence::Once { at } => {
                let local = to_chrono(*at, zone.tz())
                    .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| at.format(&Rfc3339).unwrap_or_default());
                format!("once at {local} {zone}")
            }
            Occurrence::Every { seconds } => format!("every {}", interval_words(*seconds)),
            Occurrence::Cron { expression } => match daily_words(expression.as_str()) {
                Some(words) => format!("{words} {zone}"),
                None => {
                    let described = expression
                        .compiled()
                        .map(|c| c.describe())
                        .unwrap_or_default();
                    format!("{} ({}) {zone}", expression.as_str(), described)
                }
            },
        }
    }
}

fn interval_words(seconds: u64) -> String {
    let units = [
        (86_400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    for (size, unit) in units {
        if seconds.is_multiple_of(size) {
            let n = seconds / size;
            return if n == 1 {
                unit.to_owned()
            } else {
                format!("{n} {unit}s")
            };
        }
    }
    format!("{seconds} seconds")
}

/// Words for the common five-field form `M H * * DAYS`: a time of day on
/// every day, on weekdays, or on named days.
fn daily_words(expression: &str) -> Option<String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let [minute, hour, "*", "*", days] = fields.as_slice() else {
        return None;
    };
    let minute: u32 = minute.parse().ok().filter(|m| *m < 60)?;
    let hour: u32 = hour.parse().ok().filter(|h| *h < 24)?;
    const NAMES: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let day_name = |d: &str| -> Option<&str> {
        let d = d.to_ascii_uppercase();
        NAMES
            .iter()
            .enumerate()
            .find(|(i, n)| {
                d == i.to_string()
                    || (d == "7" && *i == 0)
                    || n.to_ascii_uppercase().starts_with(&d) && d.len() == 3
            })
            .map(|(_, n)| *n)
    };
    let when = match days.to_ascii_uppercase().as_str() {
        "*" => "every day".to_owned(),
        "1-5" | "MON-FRI" => "every weekday".to_owned(),
        "0,6" | "6,0" | "SAT,SUN" | "SUN,SAT" => "every weekend day".to_owned(),
        list => {
            let names: Option<Vec<&str>> = list.split(',').map(day_name).collect();
            format!("every {}", names?.join(" and "))
        }
    };
    Some(format!("{when} at {hour:02}:{minute:02}"))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn berlin() -> Zone {
        Zone::parse("Europe/Berlin").unwrap()
    }

    fn cron(expr: &str) -> Occurrence {
        Occurrence::Cron {
            expression: Cron::parse(expr).unwrap(),
        }
    }

    #[test]
    fn a_cron_expression_has_five_or_six_fields() {
        assert!(Cron::parse("0 9 * * 1-5").is_ok());
        assert!(Cron::parse("*/5 0 9 * * MON-FRI").is_ok());
        let err = Cron::parse("0 9 * *").unwrap_err();
        assert_eq!(
            err.to_string(),
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first); \"0 9 * *\" has 4"
        );
        assert!(matches!(
            Cron::parse("0 0 9 * * 1 2026"),
            Err(CronError::FieldCount(_, 7))
        ));
    }

    #[test]
    fn an_invalid_cron_field_is_named_with_its_position_and_why() {
        let err = Cron::parse("0 25 * * *").unwrap_err();
        let CronError::Field {
            position,
            field,
            value,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!((*position, *field, value.as_str()), (2, "hour", "25"));
        assert!(
            err.to_string()
                .starts_with("cron field 2 (hour) \"25\" is invalid: "),
            "{err}"
        );
        let err = Cron::parse("61 0 9 * * *").unwrap_err();
        assert!(
            err.to_string().starts_with("cron field 1 (second)"),
            "{err}"
        );
        let err = Cron::parse("0 9 * * FUNDAY").unwrap_err();
        assert!(err.to_string().contains("(day-of-week)"), "{err}");
    }

    #[test]
    fn an_unknown_time_zone_is_refused_by_name() {
        assert_eq!(
            Zone::parse("Mars/Olympus").unwrap_err().to_string(),
            "unknown time zone \"Mars/Olympus\": give an IANA name such as Europe/Berlin, America/New_York or UTC"
        );
        assert_eq!(berlin().as_str(), "Europe/Berlin");
    }

    #[test]
    fn a_weekday_cron_runs_at_local_nine_in_winter_and_summer() {
        let start = datetime!(2026-03-27 12:00 UTC);
        let o = cron("0 9 * * 1-5");
        // Monday 30 March is after the spring change: 09:00 CEST is 07:00 UTC.
        let next = o.next(&berlin(), start, start, false).unwrap();
        assert_eq!(next, datetime!(2026-03-30 07:00 UTC));
        // Monday 12 January, in winter: 09:00 CET is 08:00 UTC.
        let january = datetime!(2026-01-09 12:00 UTC);
        let winter = o.next(&berlin(), january, january, false).unwrap();
        assert_eq!(winter, datetime!(2026-01-12 08:00 UTC));
    }

    #[test]
    fn a_two_thirty_cron_fires_once_at_three_on_the_spring_forward_day() {
        // 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 never is.
        let o = cron("30 2 * * *");
        let from = datetime!(2026-03-28 12:00 UTC);
        let first = o.next(&berlin(), from, from, false).unwrap();
        assert_eq!(first, datetime!(2026-03-29 01:00 UTC), "03:00 CEST");
        let second = o.next(&berlin(), from, first, false).unwrap();
        assert_eq!(
            second,
            datetime!(2026-03-30 00:30 UTC),
            "02:30 CEST next day"
        );
    }

    #[test]
    fn a_two_thirty_cron_fires_once_on_the_fall_back_day() {
        // 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 is twice.
        let o = cron("30 2 * * *");
        let from = datetime!(2026-10-24 12:00 UTC);
        let first = o.next(&berlin(), from, from, false).unwrap();
        assert_eq!(
            first,
            datetime!(2026-10-25 00:30 UTC),
            "the first 02:30 (CEST)"
        );
        let second = o.next(&berlin(), from, first, false).unwrap();
        assert_eq!(
            second,
            datetime!(2026-10-26 01:30 UTC),
            "02:30 CET next day"
        );
    }

    #[test]
    fn an_interval_counts_from_its_anchor_whatever_the_wall_clock() {
        let anchor = datetime!(2026-03-29 00:10 UTC);
        let o = Occurrence::every(3600).unwrap();
        assert_eq!(o.next(&berlin(), anchor, anchor, true), Some(anchor));
        assert_eq!(
            o.next(&berlin(), anchor, anchor, false),
            Some(datetime!(2026-03-29 01:10 UTC))
        );
        assert_eq!(
            o.next(&berlin(), anchor, datetime!(2026-03-29 02:00 UTC), false),
            Some(datetime!(2026-03-29 02:10 UTC))
        );
        assert_eq!(
            o.next(&berlin(), anchor, datetime!(2026-03-29 02:10 UTC), false),
            Some(datetime!(2026-03-29 03:10 UTC))
        );
        assert!(Occurrence::every(0).is_err());
    }

    #[test]
    fn once_comes_once() {
        let at = datetime!(2026-05-01 10:00 UTC);
        let o = Occurrence::Once { at };
        let anchor = datetime!(2026-04-01 00:00 UTC);
        assert_eq!(o.next(&berlin(), anchor, anchor, false), Some(at));
        assert_eq!(o.next(&berlin(), anchor, at, false), None);
    }

    #[test]
    fn occurrences_read_as_words() {
        assert_eq!(
            cron("0 9 * * 1-5").words(&berlin()),
            "every weekday at 09:00 Europe/Berlin"
        );
        assert_eq!(
            cron("30 7 * * *").words(&berlin()),
            "every day at 07:30 Europe/Berlin"
        );
        assert_eq!(
            cron("0 18 * * MON,FRI").words(&berlin()),
            "every Monday and Friday at 18:00 Europe/Berlin"
        );
        assert_eq!(
            Occurrence::every(900).unwrap().words(&berlin()),
            "every 15 minutes"
        );
        assert_eq!(
            Occurrence::every(3600).unwrap().words(&berlin()),
            "every hour"
        );
        assert_eq!(
            Occurrence::Once {
                at: datetime!(2026-07-01 07:00 UTC)
            }
            .words(&berlin()),
            "once at 2026-07-01 09:00 Europe/Berlin"
        );
        assert!(
            cron("*/10 * * * *")
                .words(&berlin())
                .starts_with("*/10 * * * * (")
        );
    }
}

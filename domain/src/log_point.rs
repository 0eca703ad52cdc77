//! A point of the log, as auditors name one: now, a global position
//! (`COMMIT` or `COMMIT:PREPARE`), or an RFC 3339 time.

use std::str::FromStr;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::envelope::{Position, RecordedEvent};

/// A point of the log: now, a position, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogPoint {
    /// Everything recorded so far.
    Now,
    /// Up to and including the event at this global position.
    Position(Position),
    /// Up to and including events recorded at this instant.
    Time(OffsetDateTime),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is neither a position (COMMIT or COMMIT:PREPARE) nor an RFC 3339 time such as 2026-11-23T14:03:00Z"
)]
pub struct LogPointParseError(String);

impl FromStr for LogPoint {
    type Err = LogPointParseError;
    fn from_str(text: &str) -> Result<LogPoint, LogPointParseError> {
        let text = text.trim();
        if let Ok(position) = text.parse::<Position>() {
            return Ok(LogPoint::Position(position));
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .map(LogPoint::Time)
            .map_err(|_| LogPointParseError(text.to_owned()))
    }
}

impl LogPoint {
    /// Was `event` recorded by this point?
    pub fn includes(self, event: &RecordedEvent) -> bool {
        match self {
            LogPoint::Now => true,
            LogPoint::Position(p) => event.position <= p,
            LogPoint::Time(t) => event.recorded_at <= t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_a_position_or_a_time() {
        assert_eq!(
            "12".parse::<LogPoint>(),
            Ok(LogPoint::Position(Position::new(12, 0)))
        );
        assert_eq!(
            "12:3".parse::<LogPoint>(),
            Ok(LogPoint::Position(Position::new(12, 3)))
        );
        assert_eq!(
            "2026-11-23T14:03:00Z".parse::<LogPoint>(),
            Ok(LogPoint::Time(
                OffsetDateTime::from_unix_timestamp(1795442580).unwrap()
            ))
        );
        let e = "yesterday".parse::<LogPoint>().unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }
}

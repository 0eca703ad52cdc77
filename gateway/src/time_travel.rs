//! A stream as it stood at a point of the log: its events up to a position
//! or a time, folded by its own decider ([`domain::replay`]). Read only:
//! nothing here appends or touches a view.

use std::str::FromStr;

use domain::replay::{ReplayError, StreamFold};
use domain::{EventRegistry, Position, RecordedEvent, StreamId};
use store::{Direction, EventStore, StoreError, StreamFrom};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Events read per page while folding.
const PAGE: usize = 500;

/// The point to travel to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
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
pub struct AtParseError(String);

impl FromStr for At {
    type Err = AtParseError;
    fn from_str(text: &str) -> Result<At, AtParseError> {
        let text = text.trim();
        if let Ok(position) = text.parse::<Position>() {
            return Ok(At::Position(position));
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .map(At::Time)
            .map_err(|_| AtParseError(text.to_owned()))
    }
}

impl At {
    /// Was `event` recorded by this point?
    fn includes(self, event: &RecordedEvent) -> bool {
        match self {
            At::Now => true,
            At::Position(p) => event.position <= p,
            At::Time(t) => event.recorded_at <= t,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TimeTravelError {
    #[error("stream {stream} had no events by then")]
    NoEvents { stream: StreamId },
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("cannot read stream {stream}: {source}")]
    Store {
        stream: StreamId,
        source: StoreError,
    },
}

/// A stream's state at a point.
pub struct StreamAt {
    pub fold: StreamFold,
    /// The last event folded: its version, position and time say where the
    /// state stands.
    pub last: RecordedEvent,
}

/// Folds `stream` up to `at`, handing each folded event to `each` (to list
/// or print them) without keeping them all.
pub async fn stream_at(
    store: &dyn EventStore,
    registry: &EventRegistry,
    stream: &StreamId,
    at: At,
    mut each: impl FnMut(&RecordedEvent),
) -> Result<StreamAt, TimeTravelError> {
    let mut fold: Option<StreamFold> = None;
    let mut last: Option<RecordedEvent> = None;
    let mut from = StreamFrom::Start;
    'pages: loop {
        let page = store
            .read_stream(stream, from, Direction::Forward, PAGE)
            .await
            .map_err(|source| TimeTravelError::Store {
                stream: stream.clone(),
                source,
            })?;
        let full = page.len() == PAGE;
        for event in page {
            if !at.includes(&event) {
                break 'pages;
            }
            let f = match &mut fold {
                Some(f) => f,
                None => fold.insert(StreamFold::for_first(&event.event_type)?),
            };
            f.apply(registry, &event)?;
            each(&event);
            from = StreamFrom::Version(event.stream_version + 1);
            last = Some(event);
        }
        if !full {
            break;
        }
    }
    match (fold, last) {
        (Some(fold), Some(last)) => Ok(StreamAt { fold, last }),
        _ => Err(TimeTravelError::NoEvents {
            stream: stream.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_a_position_or_a_time() {
        assert_eq!("12".parse::<At>(), Ok(At::Position(Position::new(12, 0))));
        assert_eq!("12:3".parse::<At>(), Ok(At::Position(Position::new(12, 3))));
        assert_eq!(
            "2026-11-23T14:03:00Z".parse::<At>(),
            Ok(At::Time(
                OffsetDateTime::from_unix_timestamp(1795442580).unwrap()
            ))
        );
        let e = "yesterday".parse::<At>().unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }
}

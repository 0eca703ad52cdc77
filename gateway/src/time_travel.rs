//! A stream as it stood at a point of the log: its events up to a position
//! or a time, folded by its own decider ([`domain::replay`]). Read only:
//! nothing here appends or touches a view.

use domain::log_point::LogPoint;
use domain::replay::{ReplayError, StreamFold};
use domain::{EventRegistry, RecordedEvent, StreamId};
use store::{Direction, EventStore, StoreError, StreamFrom};

/// Events read per page while folding.
const PAGE: usize = 500;

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
    at: LogPoint,
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

//! The `event_counts` view: how many events of each type the system has
//! recorded, and when the last one was. An operational view of what
//! happens in the system, and how often.

use domain::RecordedEvent;

use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::{SqlValue, Statement};

/// Counts events per type.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventCounts;

/// The view's table.
pub const TABLE: &str = "view_event_counts";

const SCHEMA: &[&str] = &["CREATE TABLE view_event_counts (
    event_type       TEXT PRIMARY KEY,
    count            BIGINT NOT NULL,
    last_commit      BIGINT NOT NULL,
    last_prepare     BIGINT NOT NULL,
    last_recorded_at BIGINT NOT NULL
)"];

const COUNT: &str = "INSERT INTO view_event_counts \
     (event_type, count, last_commit, last_prepare, last_recorded_at) \
     VALUES ($1, 1, $2, $3, $4) \
     ON CONFLICT (event_type) DO UPDATE SET \
     count = view_event_counts.count + 1, \
     last_commit = excluded.last_commit, \
     last_prepare = excluded.last_prepare, \
     last_recorded_at = excluded.last_recorded_at";

impl Projection for EventCounts {
    fn name(&self) -> &'static str {
        "event_counts"
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        out.push(
            Statement::new(COUNT)
                .bind(event.event_type.as_str())
                .bind(SqlValue::try_from(event.position.commit)?)
                .bind(SqlValue::try_from(event.position.prepare)?)
                .bind(event.recorded_at),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use domain::{EventId, Metadata, Position, StreamId};
    use time::OffsetDateTime;

    use super::*;

    #[test]
    fn each_event_adds_one_to_its_type_and_records_where_it_was() {
        let event = RecordedEvent {
            id: EventId::new(),
            stream_id: StreamId::parse("job-1").unwrap(),
            stream_version: 0,
            position: Position::new(7, 2),
            event_type: "JobStarted".into(),
            schema_version: 1,
            recorded_at: OffsetDateTime::UNIX_EPOCH + time::Duration::microseconds(5),
            metadata: Metadata::default(),
            data: "{}".into(),
        };
        let mut out = Vec::new();
        EventCounts.apply(&event, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].params,
            [
                SqlValue::Text("JobStarted".into()),
                SqlValue::Int(7),
                SqlValue::Int(2),
                SqlValue::Int(5),
            ]
        );
    }
}

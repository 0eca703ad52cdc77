//! A view as it stood at a point of the log: its projection applied to the
//! events up to that point in scratch storage of its own (a temporary
//! SQLite file, say), then read out. The live view is never touched.

use domain::Position;
use domain::log_point::LogPoint;
use domain::replay::redact_secrets;
use serde_json::{Map, Value};
use store::{EventStore, StoreError};

use crate::error::{ProjectionError, ViewError};
use crate::projection::Projection;
use crate::sql::SqlValue;
use crate::view_store::ViewStore;

/// Events applied per commit.
const PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AsOfError {
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("cannot read the event log: {0}")]
    Store(#[from] StoreError),
    #[error("view {view} cannot apply event {event_type} at position {position}: {error}")]
    Apply {
        view: &'static str,
        position: Position,
        event_type: String,
        error: ProjectionError,
    },
}

/// Builds `projection` in `scratch` from the first event up to `point`
/// (the log's head when it began, at the latest), calling `progress` with
/// the events applied so far; returns how many.
pub async fn rebuild_to(
    events: &dyn EventStore,
    scratch: &ViewStore,
    projection: &dyn Projection,
    point: LogPoint,
    mut progress: impl FnMut(u64),
) -> Result<u64, AsOfError> {
    let mut checkpoint = scratch.reset(projection).await?;
    let head = events.head().await?.after;
    let end = match point {
        LogPoint::Position(p) => p.min(head),
        _ => head,
    };
    let filter = projection.filter();
    let mut applied = 0;
    while checkpoint.position < end {
        let page = events.read_all(checkpoint.position, &filter, PAGE).await?;
        let mut writes = Vec::new();
        for event in &page.events {
            if event.position > end || !point.includes(event) {
                continue;
            }
            projection
                .apply(event, &mut writes)
                .map_err(|error| AsOfError::Apply {
                    view: projection.name(),
                    position: event.position,
                    event_type: event.event_type.clone(),
                    error,
                })?;
            applied += 1;
        }
        let to = page.next.min(end);
        let short = page.events.len() < PAGE;
        scratch
            .commit(projection.name(), checkpoint, to, writes)
            .await?;
        checkpoint.position = to;
        progress(applied);
        // Everything up to the head is safe to read: a short page is the end.
        if short {
            break;
        }
    }
    Ok(applied)
}

/// The view's tables as JSON: each table's rows (at most `limit` of them)
/// as objects, secrets redacted, and whether rows were left out.
pub async fn tables(
    scratch: &ViewStore,
    projection: &dyn Projection,
    limit: usize,
) -> Result<Map<String, Value>, ViewError> {
    let mut out = Map::new();
    for table in projection.tables() {
        // Table names were checked as identifiers when the view was reset.
        let sql = format!("SELECT * FROM {table} LIMIT $1");
        let rows = scratch
            .query(&sql, vec![SqlValue::Int(limit as i64 + 1)])
            .await?;
        let truncated = rows.len() > limit;
        let rows: Vec<Value> = rows
            .iter()
            .take(limit)
            .map(|row| {
                let fields = row
                    .columns()
                    .iter()
                    .zip(row.values())
                    .map(|(column, value)| (column.clone(), json(value)))
                    .collect();
                let mut row = Value::Object(fields);
                redact_secrets(&mut row);
                row
            })
            .collect();
        out.insert(
            (*table).to_owned(),
            serde_json::json!({ "rows": rows, "truncated": truncated }),
        );
    }
    Ok(out)
}

fn json(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Int(i) => Value::from(*i),
        SqlValue::Float(f) => Value::from(*f),
        SqlValue::Text(t) => Value::from(t.as_str()),
        SqlValue::Bool(b) => Value::from(*b),
    }
}

#[cfg(test)]
mod tests {
    use domain::{NewEvent, Payload, StreamId};
    use store::ExpectedVersion;
    use store::testing::TestStore;

    use super::*;
    use crate::EventCounts;

    #[tokio::test]
    async fn a_view_is_rebuilt_aside_to_any_point_across_pages() {
        let live = TestStore::sqlite();
        let events = live.open().await;
        let stream = StreamId::parse("counted-1").unwrap();
        for _ in 0..25 {
            let batch = (0..100)
                .map(|n| NewEvent::new("Counted", 1, Payload::to_json(&n).unwrap()))
                .collect();
            events
                .append(&stream, ExpectedVersion::Any, batch)
                .await
                .unwrap();
        }
        let page = events
            .read_all(Position::START, &store::Filter::all(), 1234)
            .await
            .unwrap();
        let mid = page.events.last().unwrap().position;
        let scratch_store = TestStore::sqlite();
        let scratch = ViewStore::open(&scratch_store.open_backend().await)
            .await
            .unwrap();
        let count = |tables: Map<String, Value>| {
            tables["view_event_counts"]["rows"][0]["count"]
                .as_i64()
                .unwrap()
        };
        let mut seen = Vec::new();
        let applied = rebuild_to(
            events.as_ref(),
            &scratch,
            &EventCounts,
            LogPoint::Position(mid),
            |n| seen.push(n),
        )
        .await
        .unwrap();
        assert_eq!(applied, 1234);
        assert_eq!(seen.last(), Some(&1234), "{seen:?}");
        assert_eq!(
            count(tables(&scratch, &EventCounts, 10).await.unwrap()),
            1234
        );
        // Again, to now: the scratch view is rebuilt from the start.
        let applied = rebuild_to(
            events.as_ref(),
            &scratch,
            &EventCounts,
            LogPoint::Now,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(applied, 2500);
        assert_eq!(
            count(tables(&scratch, &EventCounts, 10).await.unwrap()),
            2500
        );
        live.cleanup().await;
        scratch_store.cleanup().await;
    }
}

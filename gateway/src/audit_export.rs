//! The log as auditors take it away: `GET /audit/export.jsonl` and
//! `trafficbuster audit export` write each event's envelope and stored
//! payload (hashes and tokens redacted) as one JSON line, in global order,
//! read page by page so a log of any size goes out in bounded memory.
//! Every line carries its position: pass the last one as `from` to resume.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::replay::redact_secrets;
use domain::{Position, RecordedEvent};
use futures_util::{Stream, StreamExt, stream};
use serde_json::json;
use store::{EventStore, Filter, StoreError};
use time::format_description::well_known::Rfc3339;

use crate::graphql::AUDITORS;
use crate::http_auth::{bearer_principal, refused};
use crate::state::AppState;
use domain::log_point::LogPoint;

/// Events read per page.
const PAGE: usize = 1000;

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportRange {
    /// Export events after this position (the start by default).
    pub after: Position,
    /// The last point to export; the log's head when the export began by
    /// default, so an export has an end.
    pub until: Option<LogPoint>,
    pub filter: Filter,
}

impl ExportRange {
    /// From query pairs or options: `from`, `to`, `stream` (repeatable),
    /// `type` (repeatable). Errors name the parameter.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ExportRange, String> {
        let mut range = ExportRange::default();
        for (key, value) in pairs {
            match key {
                "from" => {
                    range.after = value
                        .parse()
                        .map_err(|e| format!("from: {e} (a position from an earlier export)"))?;
                }
                "to" => range.until = Some(value.parse().map_err(|e| format!("to: {e}"))?),
                "stream" => range.filter.stream_prefixes.push(value.to_owned()),
                "type" => range.filter.event_types.push(value.to_owned()),
                other => {
                    return Err(format!(
                        "{other}: not a parameter of the export (from, to, stream, type)"
                    ));
                }
            }
        }
        Ok(range)
    }
}

/// One event as an export line (with its newline).
pub fn line(event: &RecordedEvent) -> String {
    let mut data: serde_json::Value =
        serde_json::from_str(&event.data).unwrap_or(serde_json::Value::Null);
    redact_secrets(&mut data);
    let line = json!({
        "position": event.position.to_string(),
        "event_id": event.id.0,
        "stream_id": event.stream_id.as_str(),
        "stream_version": event.stream_version,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "recorded_at": event.recorded_at.format(&Rfc3339).unwrap_or_default(),
        "actor": event.metadata.actor,
        "correlation_id": event.metadata.correlation_id,
        "causation_id": event.metadata.causation_id,
        "source": event.metadata.source,
        "summary": projections::audit_view::summarize(event),
        "data": data,
    });
    let mut text = line.to_string();
    text.push('\n');
    text
}

/// A page of the export: its lines, and how many.
pub struct ExportPage {
    pub text: String,
    pub events: u64,
}

struct Reading {
    store: Arc<dyn EventStore>,
    range: ExportRange,
    /// Where the export ends: the head when it began, or `to` if earlier.
    end: Option<Position>,
    done: bool,
}

/// The export, a page of lines at a time.
pub fn pages(
    store: Arc<dyn EventStore>,
    range: ExportRange,
) -> impl Stream<Item = Result<ExportPage, StoreError>> {
    let reading = Reading {
        store,
        range,
        end: None,
        done: false,
    };
    stream::try_unfold(reading, |mut r| async move {
        while !r.done {
            let end = match r.end {
                Some(end) => end,
                None => {
                    let head = r.store.head().await?.after;
                    let end = match r.range.until {
                        Some(LogPoint::Position(p)) => p.min(head),
                        _ => head,
                    };
                    *r.end.insert(end)
                }
            };
            if r.range.after >= end {
                break;
            }
            let page = r
                .store
                .read_all(r.range.after, &r.range.filter, PAGE)
                .await?;
            // Everything up to the head is safe to read, so a short page
            // means the range is exhausted.
            r.done = page.events.len() < PAGE || page.next >= end;
            r.range.after = page.next.min(end);
            let mut out = ExportPage {
                text: String::new(),
                events: 0,
            };
            for event in &page.events {
                let within = event.position <= end
                    && match r.range.until {
                        Some(LogPoint::Time(t)) => event.recorded_at <= t,
                        _ => true,
                    };
                if within {
                    out.text.push_str(&line(event));
                    out.events += 1;
                }
            }
            if out.events > 0 {
                return Ok(Some((out, r)));
            }
        }
        Ok(None)
    })
}

/// `GET /audit/export.jsonl?from=&to=&stream=&type=` (auditors and admins).
pub async fn download(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let principal = match bearer_principal(&app, &headers).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    if !AUDITORS.iter().any(|r| principal.roles.contains(r)) {
        return refused(
            StatusCode::FORBIDDEN,
            "exporting the log needs the auditor or admin role",
        );
    }
    let query = query.unwrap_or_default();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let range = match ExportRange::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(range) => range,
        Err(why) => return refused(StatusCode::BAD_REQUEST, why),
    };
    // A store error mid-way ends the body with an error, so the client sees
    // a cut download, never a short one that looks whole.
    let body = pages(app.store.clone(), range).map(|item| {
        item.map(|page| page.text).map_err(|e| {
            tracing::error!(error = %e, "log export cut short");
            std::io::Error::other(e.to_string())
        })
    });
    (
        [
            (CONTENT_TYPE, "application/x-ndjson"),
            (
                CONTENT_DISPOSITION,
                "attachment; filename=\"trafficbuster-log.jsonl\"",
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use domain::{NewEvent, Payload, StreamId};
    use futures_util::TryStreamExt;
    use store::ExpectedVersion;
    use store::testing::TestStore;

    use super::*;

    /// Every line of an export, in order.
    async fn exported(store: &Arc<dyn EventStore>, range: ExportRange) -> Vec<serde_json::Value> {
        let pages: Vec<ExportPage> = pages(store.clone(), range).try_collect().await.unwrap();
        let lines: Vec<serde_json::Value> = pages
            .iter()
            .flat_map(|p| p.text.lines())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.len() as u64,
            pages.iter().map(|p| p.events).sum::<u64>()
        );
        lines
    }

    #[tokio::test]
    async fn an_export_pages_through_a_long_filtered_log_to_its_end() {
        let test = TestStore::sqlite();
        let store = test.open().await;
        let event = |n: u64| NewEvent::new("Counted", 1, Payload::to_json(&n).unwrap());
        // Three pages of job events, interleaved with others.
        for batch in 0..25u64 {
            for (stream, n) in [("job-1", batch), ("account-x", 1000 + batch)] {
                let events = (0..100).map(|i| event(n * 100 + i)).collect();
                let id = StreamId::parse(stream).unwrap();
                store
                    .append(&id, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
            }
        }
        let jobs = exported(
            &store,
            ExportRange {
                filter: Filter::stream_prefix("job-"),
                ..ExportRange::default()
            },
        )
        .await;
        let numbers: Vec<u64> = jobs.iter().map(|l| l["data"].as_u64().unwrap()).collect();
        assert_eq!(numbers, (0..2500).collect::<Vec<_>>());
        // Up to a position mid-way, then resumed from it: the whole again.
        let mid: Position = jobs[1234]["position"].as_str().unwrap().parse().unwrap();
        let head = exported(
            &store,
            ExportRange {
                until: Some(LogPoint::Position(mid)),
                filter: Filter::stream_prefix("job-"),
                ..ExportRange::default()
            },
        )
        .await;
        let tail = exported(
            &store,
            ExportRange {
                after: mid,
                filter: Filter::stream_prefix("job-"),
                ..ExportRange::default()
            },
        )
        .await;
        assert_eq!(head.len(), 1235);
        assert_eq!([head, tail].concat(), jobs);
        test.cleanup().await;
    }

    #[test]
    fn export_parameters_are_parsed_and_a_bad_one_is_named() {
        let range = ExportRange::parse([
            ("from", "12:3"),
            ("to", "2026-11-23T14:03:00Z"),
            ("stream", "job-"),
            ("stream", "account-"),
            ("type", "JobStarted"),
        ])
        .unwrap();
        assert_eq!(range.after, Position::new(12, 3));
        assert!(matches!(range.until, Some(LogPoint::Time(_))));
        assert_eq!(range.filter.stream_prefixes, ["job-", "account-"]);
        assert_eq!(range.filter.event_types, ["JobStarted"]);
        let e = ExportRange::parse([("from", "yesterday")]).unwrap_err();
        assert!(e.starts_with("from: "), "{e}");
        let e = ExportRange::parse([("limit", "5")]).unwrap_err();
        assert!(e.starts_with("limit: "), "{e}");
    }
}

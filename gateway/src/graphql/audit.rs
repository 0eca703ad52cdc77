//! The audit log over GraphQL: pages of the `audit` view, and new entries
//! live (auditors and admins).

use std::sync::LazyLock;

use async_graphql::{Context, Object, SimpleObject, Subscription};
use futures_util::{Stream, StreamExt};
use projections::{SqlValue, audit_view};
use store::Filter;
use time::OffsetDateTime;

use crate::graphql::cursor;
use crate::graphql::error;
use crate::graphql::session_watch::{Seen, under_session};
use crate::graphql::{AUDITORS, app, check_first, from_micros, principal_with, row_err};

#[derive(SimpleObject)]
pub struct AuditEntry {
    /// The event's global position; also the cursor.
    pub position: String,
    pub recorded_at: OffsetDateTime,
    pub actor: Option<String>,
    pub stream_id: String,
    pub event_type: String,
    pub summary: String,
}

#[derive(SimpleObject)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// The audit log, newest first, by cursor (auditors and admins).
    #[allow(clippy::too_many_arguments)]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] first: i32,
        after: Option<String>,
        actor: Option<String>,
        stream_id: Option<String>,
        event_type: Option<String>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> async_graphql::Result<AuditPage> {
        principal_with(ctx, AUDITORS, "reading the audit log")?;
        check_first(first)?;
        let (cursor_commit, cursor_prepare) = match cursor("after", after.as_deref())? {
            None => (SqlValue::Null, SqlValue::Null),
            Some(p) => (
                SqlValue::Int(p.commit as i64),
                SqlValue::Int(p.prepare as i64),
            ),
        };
        let text = |v: Option<String>| v.map_or(SqlValue::Null, SqlValue::from);
        let time = |v: Option<OffsetDateTime>| v.map_or(SqlValue::Null, SqlValue::micros);
        static AUDIT_PAGE: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT commit_pos, prepare_pos, recorded_at, actor, stream_id, event_type, summary FROM {} \
                 WHERE ($1 IS NULL OR commit_pos < $1 OR (commit_pos = $1 AND prepare_pos < $2)) \
                 AND ($3 IS NULL OR actor = $3) AND ($4 IS NULL OR stream_id = $4) \
                 AND ($5 IS NULL OR event_type = $5) AND ($6 IS NULL OR recorded_at >= $6) \
                 AND ($7 IS NULL OR recorded_at < $7) \
                 ORDER BY commit_pos DESC, prepare_pos DESC LIMIT $8",
                audit_view::TABLE
            )
        });
        let rows = app(ctx)
            .views
            .query(
                &AUDIT_PAGE,
                vec![
                    cursor_commit,
                    cursor_prepare,
                    text(actor),
                    text(stream_id),
                    text(event_type),
                    time(since),
                    time(until),
                    SqlValue::Int(i64::from(first) + 1),
                ],
            )
            .await
            .map_err(|e| error::internal("cannot read the audit log", &e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows.iter().take(first as usize) {
            let commit: i64 = row.get("commit_pos").map_err(row_err)?;
            let prepare: i64 = row.get("prepare_pos").map_err(row_err)?;
            entries.push(AuditEntry {
                position: domain::Position::new(commit as u64, prepare as u64).to_string(),
                recorded_at: from_micros(row.get("recorded_at").map_err(row_err)?),
                actor: row.get("actor").map_err(row_err)?,
                stream_id: row.get("stream_id").map_err(row_err)?,
                event_type: row.get("event_type").map_err(row_err)?,
                summary: row.get("summary").map_err(row_err)?,
            });
        }
        let next_cursor = (rows.len() > first as usize)
            .then(|| entries.last().map(|e| e.position.clone()))
            .flatten();
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }
}

#[derive(Default)]
pub struct AuditSubscription;

#[Subscription]
impl AuditSubscription {
    /// New audit entries as they happen (auditors and admins); with
    /// `after` (an entry's `position`), first every entry after it, oldest
    /// first, so a client that reconnects misses none and sees none twice.
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = AuditEntry>> {
        let p = principal_with(ctx, AUDITORS, "watching the audit log")?.clone();
        let after = cursor("after", after.as_deref())?;
        Ok(
            under_session(app(ctx).clone(), p, Some(Filter::all()), after).filter_map(
                |seen| async move {
                    match seen {
                        Seen::Event(e) => Some(AuditEntry {
                            position: e.position.to_string(),
                            recorded_at: e.recorded_at,
                            actor: e.metadata.actor.clone(),
                            stream_id: e.stream_id.to_string(),
                            event_type: e.event_type.clone(),
                            summary: projections::audit_view::summarize(&e),
                        }),
                        Seen::Refreshed(_) | Seen::Ended(_) => None,
                    }
                },
            ),
        )
    }
}

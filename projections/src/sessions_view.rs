//! The `sessions` view: every session, live or ended, with why it ended.

use domain::RecordedEvent;
use domain::account::AccountEvent;
use store::Filter;

use crate::decode::{ACCOUNT_PREFIX, account_event, username_of};
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::{SqlValue, Statement};

pub struct SessionsView;

pub const TABLE: &str = "view_sessions";

const SCHEMA: &[&str] = &[
    "CREATE TABLE view_sessions (
    session_id        TEXT PRIMARY KEY,
    username          TEXT NOT NULL,
    client_ip         TEXT,
    user_agent        TEXT,
    started_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    refresh_until     BIGINT NOT NULL,
    last_refreshed_at BIGINT,
    ended_at          BIGINT,
    end_reason        TEXT
)",
    "CREATE INDEX view_sessions_username ON view_sessions (username, started_at)",
    "CREATE INDEX view_sessions_live ON view_sessions (ended_at, refresh_until)",
];

impl Projection for SessionsView {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec![ACCOUNT_PREFIX.into()],
            event_types: ["SessionStarted", "SessionRefreshed", "SessionEnded"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let Some(e) = account_event(event)? else {
            return Ok(());
        };
        let at = event.recorded_at;
        match e {
            AccountEvent::SessionStarted(s) => out.push(
                Statement::new(
                    "INSERT INTO view_sessions (session_id, username, client_ip, user_agent, started_at, expires_at, refresh_until) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(s.session_id.to_string())
                .bind(username_of(event))
                .bind(s.client_ip.map_or(SqlValue::Null, SqlValue::from))
                .bind(s.user_agent.map_or(SqlValue::Null, SqlValue::from))
                .bind(at)
                .bind(s.tokens.expires_at)
                .bind(s.tokens.refresh_until),
            ),
            AccountEvent::SessionRefreshed(r) => out.push(
                Statement::new(
                    "UPDATE view_sessions SET last_refreshed_at = $2, expires_at = $3, refresh_until = $4 WHERE session_id = $1",
                )
                .bind(r.session_id.to_string())
                .bind(at)
                .bind(r.tokens.expires_at)
                .bind(r.tokens.refresh_until),
            ),
            AccountEvent::SessionEnded(x) => out.push(
                Statement::new("UPDATE view_sessions SET ended_at = $2, end_reason = $3 WHERE session_id = $1")
                    .bind(x.session_id.to_string())
                    .bind(at)
                    .bind(x.reason.to_string()),
            ),
            _ => {}
        }
        Ok(())
    }
}

//! The `metrics` view: running totals of logins, failed logins (wrong
//! passwords, disabled accounts, and names that match no account) and live
//! sessions, for dashboards and `/metrics`.

use domain::RecordedEvent;
use domain::account::AccountEvent;
use domain::login_attempts::{self, LoginAttemptEvent};
use store::Filter;

use crate::decode::{ACCOUNT_PREFIX, account_event, registry};
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::Statement;

pub struct MetricsView;

pub const TABLE: &str = "view_metrics";

pub const LOGINS: &str = "logins";
pub const FAILED_LOGINS: &str = "failed_logins";
pub const ACTIVE_SESSIONS: &str = "active_sessions";

const SCHEMA: &[&str] =
    &["CREATE TABLE view_metrics (name TEXT PRIMARY KEY, value BIGINT NOT NULL)"];

const ADD: &str = "INSERT INTO view_metrics (name, value) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET value = view_metrics.value + excluded.value";

fn add(out: &mut Vec<Statement>, name: &'static str, delta: i64) {
    out.push(Statement::new(ADD).bind(name).bind(delta));
}

impl Projection for MetricsView {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    /// 2: failed logins include those naming no account.
    fn version(&self) -> u32 {
        2
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec![ACCOUNT_PREFIX.into(), login_attempts::STREAM_PREFIX.into()],
            event_types: [
                "SessionStarted",
                "SessionEnded",
                "LoginFailed",
                "UnknownAccountLoginFailed",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        if event
            .stream_id
            .as_str()
            .starts_with(login_attempts::STREAM_PREFIX)
        {
            match registry().decode::<LoginAttemptEvent>(event)? {
                LoginAttemptEvent::UnknownAccountLoginFailed(_) => add(out, FAILED_LOGINS, 1),
            }
            return Ok(());
        }
        match account_event(event)? {
            Some(AccountEvent::SessionStarted(_)) => {
                add(out, LOGINS, 1);
                add(out, ACTIVE_SESSIONS, 1);
            }
            Some(AccountEvent::SessionEnded(_)) => add(out, ACTIVE_SESSIONS, -1),
            Some(AccountEvent::LoginFailed(_)) => add(out, FAILED_LOGINS, 1),
            _ => {}
        }
        Ok(())
    }
}

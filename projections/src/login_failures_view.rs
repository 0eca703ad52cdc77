//! The `login_failures` view: each failed login's client address and time,
//! for the last hour, whichever gateway took it. Gateways sharing a store
//! count an address's recent failures here, so its limit holds across them.

use domain::RecordedEvent;
use domain::account::AccountEvent;
use domain::login_attempts::{LoginAttemptEvent, STREAM_PREFIX};
use store::Filter;
use time::Duration;

use crate::decode::{ACCOUNT_PREFIX, account_event, registry};
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::Statement;

pub struct LoginFailuresView;

/// The view's name, in the projections' status and checkpoints.
pub const NAME: &str = "login_failures";
pub const TABLE: &str = "view_login_failures";
/// How long a failure is kept: longer than any limit's window.
pub const KEPT: Duration = Duration::hours(1);

const SCHEMA: &[&str] = &[
    "CREATE TABLE view_login_failures (
    event_id   TEXT NOT NULL PRIMARY KEY,
    client_ip  TEXT NOT NULL,
    at         BIGINT NOT NULL
)",
    "CREATE INDEX view_login_failures_ip ON view_login_failures (client_ip, at)",
    "CREATE INDEX view_login_failures_at ON view_login_failures (at)",
];

/// An address's failed logins since `$2` (microseconds), and the oldest's time.
pub const SINCE: &str = "SELECT count(*) AS failures, min(at) AS oldest FROM view_login_failures \
     WHERE client_ip = $1 AND at > $2";

impl Projection for LoginFailuresView {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefixes: vec![ACCOUNT_PREFIX.into(), STREAM_PREFIX.into()],
            event_types: vec!["LoginFailed".into(), "UnknownAccountLoginFailed".into()],
        }
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let client_ip = if let Some(e) = account_event(event)? {
            match e {
                AccountEvent::LoginFailed(f) => f.client_ip,
                _ => return Ok(()),
            }
        } else if event.stream_id.as_str().starts_with(STREAM_PREFIX) {
            match registry().decode::<LoginAttemptEvent>(event)? {
                LoginAttemptEvent::UnknownAccountLoginFailed(f) => f.client_ip,
            }
        } else {
            return Ok(());
        };
        let Some(client_ip) = client_ip else {
            return Ok(());
        };
        let at = event.recorded_at;
        out.push(
            Statement::new(
                "INSERT INTO view_login_failures (event_id, client_ip, at) VALUES ($1, $2, $3) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event.id.to_string())
            .bind(client_ip)
            .bind(at),
        );
        // What no window needs any more goes, as of this event's time.
        out.push(Statement::new("DELETE FROM view_login_failures WHERE at < $1").bind(at - KEPT));
        Ok(())
    }
}

//! The `accounts` view: one row per account, for admin screens.

use domain::RecordedEvent;
use domain::account::AccountEvent;
use store::Filter;

use crate::decode::{ACCOUNT_PREFIX, account_event, username_of};
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::Statement;

pub struct AccountsView;

pub const TABLE: &str = "view_accounts";

const SCHEMA: &[&str] = &["CREATE TABLE view_accounts (
    username          TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL,
    roles             TEXT NOT NULL,
    disabled          BOOLEAN NOT NULL,
    disabled_reason   TEXT,
    created_at        BIGINT NOT NULL,
    created_by        TEXT NOT NULL,
    password_changed_at BIGINT,
    last_login_at     BIGINT,
    failed_logins     BIGINT NOT NULL
)"];

impl Projection for AccountsView {
    fn name(&self) -> &'static str {
        "accounts"
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn filter(&self) -> Filter {
        Filter::stream_prefix(ACCOUNT_PREFIX)
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let Some(e) = account_event(event)? else {
            return Ok(());
        };
        let user = username_of(event);
        let at = event.recorded_at;
        let statement = match e {
            AccountEvent::AccountCreated(c) => {
                let roles: Vec<String> = c.roles.iter().map(ToString::to_string).collect();
                Statement::new(
                    "INSERT INTO view_accounts (username, account_id, roles, disabled, created_at, created_by, failed_logins) \
                     VALUES ($1, $2, $3, FALSE, $4, $5, 0)",
                )
                .bind(user)
                .bind(c.account_id.to_string())
                .bind(roles.join(","))
                .bind(at)
                .bind(c.by)
            }
            AccountEvent::PasswordChanged(_) => {
                Statement::new("UPDATE view_accounts SET password_changed_at = $2 WHERE username = $1").bind(user).bind(at)
            }
            AccountEvent::AccountDisabled(d) => {
                Statement::new("UPDATE view_accounts SET disabled = TRUE, disabled_reason = $2 WHERE username = $1")
                    .bind(user)
                    .bind(d.reason)
            }
            AccountEvent::LoginFailed(_) => {
                Statement::new("UPDATE view_accounts SET failed_logins = failed_logins + 1 WHERE username = $1").bind(user)
            }
            AccountEvent::SessionStarted(_) => {
                Statement::new("UPDATE view_accounts SET last_login_at = $2 WHERE username = $1").bind(user).bind(at)
            }
            AccountEvent::SessionRefreshed(_) | AccountEvent::SessionEnded(_) => return Ok(()),
        };
        out.push(statement);
        Ok(())
    }
}

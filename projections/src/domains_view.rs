//! The `domains` view: every account's claim on a target domain with how
//! its verification stands, and every allow-listed domain.
//!
//! `last_failure` holds the failed check as JSON (the domain's `Failure`:
//! method, reason, detail), `failed_at` when it was recorded.
//!
//! An allow-listing is every account's, so its row has the empty account
//! (`ALL_ACCOUNTS`; no username is empty), which keeps one row per
//! (domain, account) and one key order for paging.

use domain::RecordedEvent;
use domain::target_domain::{Failure, TargetDomainEvent, VerificationMethod};
use store::Filter;

use crate::decode::registry;
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::{SqlValue, Statement};

pub struct DomainsView;

pub const TABLE: &str = "view_domains";

/// The view's name, as its checkpoint is kept under.
pub const NAME: &str = "domains";

/// The account of an allow-listing's row.
pub const ALL_ACCOUNTS: &str = "";

const PREFIX: &str = "target-";

const SCHEMA: &[&str] = &["CREATE TABLE view_domains (
    domain        TEXT NOT NULL,
    account       TEXT NOT NULL,
    status        TEXT NOT NULL,
    method        TEXT,
    verified_at   BIGINT,
    expires_at    BIGINT,
    last_failure  TEXT,
    failed_at     BIGINT,
    listed_by     TEXT,
    listed_reason TEXT,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (domain, account)
)"];

impl Projection for DomainsView {
    fn name(&self) -> &'static str {
        NAME
    }

    // 2: the last failure as JSON, with when it was recorded.
    fn version(&self) -> u32 {
        2
    }

    fn schema(&self) -> &'static [&'static str] {
        SCHEMA
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn filter(&self) -> Filter {
        Filter::stream_prefix(PREFIX)
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        out: &mut Vec<Statement>,
    ) -> Result<(), ProjectionError> {
        let Some(domain) = event.stream_id.as_str().strip_prefix(PREFIX) else {
            return Ok(());
        };
        let at = event.recorded_at;
        let statement = match registry().decode::<TargetDomainEvent>(event)? {
            // A new claim starts afresh, as the aggregate's does.
            TargetDomainEvent::DomainClaimed(c) => Statement::new(
                "INSERT INTO view_domains (domain, account, status, updated_at) VALUES ($1, $2, 'claimed', $3) \
                 ON CONFLICT (domain, account) DO UPDATE SET status = 'claimed', method = NULL, \
                 verified_at = NULL, expires_at = NULL, last_failure = NULL, failed_at = NULL, \
                 updated_at = excluded.updated_at",
            )
            .bind(domain)
            .bind(c.account.as_str())
            .bind(at),
            TargetDomainEvent::DomainVerified(v) => Statement::new(
                "UPDATE view_domains SET status = 'verified', method = $3, verified_at = $4, expires_at = $5, \
                 last_failure = NULL, failed_at = NULL, updated_at = $4 WHERE domain = $1 AND account = $2",
            )
            .bind(domain)
            .bind(v.account.as_str())
            .bind(method_name(v.method)?)
            .bind(at)
            .bind(v.valid_until),
            // An earlier success still counts until it expires, so a
            // verified claim stays verified and only notes the failure.
            TargetDomainEvent::DomainVerificationFailed(f) => Statement::new(
                "UPDATE view_domains SET status = CASE WHEN verified_at IS NULL THEN 'failed' ELSE status END, \
                 last_failure = $3, failed_at = $4, updated_at = $4 WHERE domain = $1 AND account = $2",
            )
            .bind(domain)
            .bind(f.account.as_str())
            .bind(serde_json::to_string(&Failure {
                method: f.method,
                reason: f.reason,
                detail: f.detail,
            })?)
            .bind(at),
            TargetDomainEvent::DomainAllowListed(a) => Statement::new(
                "INSERT INTO view_domains (domain, account, status, listed_by, listed_reason, updated_at) \
                 VALUES ($1, $2, 'allow_listed', $3, $4, $5) ON CONFLICT (domain, account) DO UPDATE SET \
                 listed_by = excluded.listed_by, listed_reason = excluded.listed_reason, updated_at = excluded.updated_at",
            )
            .bind(domain)
            .bind(ALL_ACCOUNTS)
            .bind(a.by)
            .bind(a.reason.as_str())
            .bind(at),
            TargetDomainEvent::DomainRemovedFromAllowList(_) => {
                Statement::new("DELETE FROM view_domains WHERE domain = $1 AND account = $2")
                    .bind(domain)
                    .bind(ALL_ACCOUNTS)
            }
        };
        out.push(statement);
        Ok(())
    }
}

/// The method's serde name (`well_known`), which the GraphQL face reads back.
fn method_name(method: VerificationMethod) -> Result<SqlValue, ProjectionError> {
    match serde_json::to_value(method)? {
        serde_json::Value::String(name) => Ok(SqlValue::Text(name)),
        other => Err(ProjectionError::Invalid(format!(
            "verification method {other} is not a name"
        ))),
    }
}

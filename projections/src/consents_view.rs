//! The `consents` view: each account's external-click grants, one row per
//! (account, domain) in force.

use domain::RecordedEvent;
use domain::click_consent::ClickConsentEvent;
use store::Filter;

use crate::decode::registry;
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::sql::Statement;

pub struct ConsentsView;

pub const TABLE: &str = "view_consents";

const PREFIX: &str = "consent-";

const SCHEMA: &[&str] = &["CREATE TABLE view_consents (
    account       TEXT NOT NULL,
    domain        TEXT NOT NULL,
    granted_by    TEXT NOT NULL,
    reason        TEXT NOT NULL,
    granted_at    BIGINT NOT NULL,
    PRIMARY KEY (account, domain)
)"];

impl Projection for ConsentsView {
    fn name(&self) -> &'static str {
        "consents"
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
        let Some(account) = event.stream_id.as_str().strip_prefix(PREFIX) else {
            return Ok(());
        };
        out.push(match registry().decode::<ClickConsentEvent>(event)? {
            ClickConsentEvent::ExternalClicksGranted(g) => Statement::new(
                "INSERT INTO view_consents (account, domain, granted_by, reason, granted_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account, domain) DO UPDATE SET \
                 granted_by = excluded.granted_by, reason = excluded.reason, granted_at = excluded.granted_at",
            )
            .bind(account)
            .bind(g.domain.as_str())
            .bind(g.by)
            .bind(g.reason.as_str())
            .bind(event.recorded_at),
            ClickConsentEvent::ExternalClicksRevoked(r) => {
                Statement::new("DELETE FROM view_consents WHERE account = $1 AND domain = $2")
                    .bind(account)
                    .bind(r.domain.as_str())
            }
        });
        Ok(())
    }
}

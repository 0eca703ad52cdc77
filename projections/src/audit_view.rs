//! The `audit` view: every event, as time, actor, stream, type and a
//! one-line summary, for auditors. Summaries are built from decoded fields
//! chosen per type, never from raw payloads, so no hash or token can leak.

use domain::RecordedEvent;
use domain::account::AccountEvent;
use domain::licence::LicenceEvent;
use domain::login_attempts::LoginAttemptEvent;

use crate::error::ProjectionError;
use crate::identity::registry;
use crate::projection::Projection;
use crate::sql::{SqlValue, Statement};

pub struct AuditView;

pub const TABLE: &str = "view_audit";

const SCHEMA: &[&str] = &[
    "CREATE TABLE view_audit (
    commit_pos  BIGINT NOT NULL,
    prepare_pos BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    actor       TEXT,
    stream_id   TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    summary     TEXT NOT NULL,
    PRIMARY KEY (commit_pos, prepare_pos)
)",
    "CREATE INDEX view_audit_actor ON view_audit (actor, commit_pos, prepare_pos)",
    "CREATE INDEX view_audit_stream ON view_audit (stream_id, commit_pos, prepare_pos)",
    "CREATE INDEX view_audit_type ON view_audit (event_type, commit_pos, prepare_pos)",
    "CREATE INDEX view_audit_time ON view_audit (recorded_at)",
];

/// One line saying what happened, without secrets.
pub fn summarize(event: &RecordedEvent) -> String {
    let stream = event.stream_id.as_str();
    if let Ok(e) = registry().decode::<AccountEvent>(event) {
        let user = stream.strip_prefix("account-").unwrap_or(stream);
        return match e {
            AccountEvent::AccountCreated(c) => {
                let roles: Vec<String> = c.roles.iter().map(ToString::to_string).collect();
                format!(
                    "account {user} created by {} with roles {}",
                    c.by,
                    roles.join(", ")
                )
            }
            AccountEvent::PasswordChanged(p) => format!("password of {user} changed by {}", p.by),
            AccountEvent::AccountDisabled(d) => {
                format!("account {user} disabled by {}: {}", d.by, d.reason)
            }
            AccountEvent::LoginFailed(f) => format!(
                "failed login to {user} from {} ({:?})",
                f.client_ip.as_deref().unwrap_or("an unknown address"),
                f.reason
            ),
            AccountEvent::SessionStarted(s) => format!(
                "{user} logged in from {} (session {})",
                s.client_ip.as_deref().unwrap_or("an unknown address"),
                s.session_id
            ),
            AccountEvent::SessionRefreshed(r) => {
                format!("session {} of {user} refreshed", r.session_id)
            }
            AccountEvent::SessionEnded(x) => {
                format!("session {} of {user} ended: {}", x.session_id, x.reason)
            }
        };
    }
    if let Ok(e) = registry().decode::<LicenceEvent>(event) {
        return match e {
            LicenceEvent::LicenceIssued(l) => format!(
                "licence issued to {} by {}, valid until {}",
                l.username, l.by, l.terms.expires_at
            ),
            LicenceEvent::LicenceRevoked(l) => {
                format!("licence of {} revoked by {}", l.username, l.by)
            }
        };
    }
    if let Ok(e) = registry().decode::<LoginAttemptEvent>(event) {
        return match e {
            LoginAttemptEvent::UnknownAccountLoginFailed(f) => format!(
                "failed login naming no account from {} (name fingerprint {})",
                f.client_ip.as_deref().unwrap_or("an unknown address"),
                f.name_fingerprint
            ),
        };
    }
    format!("{} on {stream}", event.event_type)
}

impl Projection for AuditView {
    fn name(&self) -> &'static str {
        "audit"
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
            Statement::new(
                "INSERT INTO view_audit (commit_pos, prepare_pos, recorded_at, actor, stream_id, event_type, summary) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(SqlValue::try_from(event.position.commit)?)
            .bind(SqlValue::try_from(event.position.prepare)?)
            .bind(event.recorded_at)
            .bind(event.metadata.actor.clone().map_or(SqlValue::Null, SqlValue::from))
            .bind(event.stream_id.as_str())
            .bind(event.event_type.as_str())
            .bind(summarize(event)),
        );
        Ok(())
    }
}

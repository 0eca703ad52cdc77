//! The `audit` view: every event, as time, actor, stream, type and a
//! one-line summary, for auditors. Each event set writes its own summaries
//! from decoded fields, never from raw payloads, so no hash or token can
//! leak ([`domain::Summary`]).

use domain::RecordedEvent;

use crate::decode::registry;
use crate::error::ProjectionError;
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

/// One line saying what happened, without secrets: the event's own
/// [`domain::Summary`], or its type and stream when no registered set holds
/// it or it does not decode.
pub fn summarize(event: &RecordedEvent) -> String {
    registry()
        .summarize(event)
        .unwrap_or_else(|_| format!("{} on {}", event.event_type, event.stream_id))
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

#[cfg(test)]
mod tests {
    use domain::account::AccountEvent;
    use domain::account::{
        AccountCreated, AccountDisabled, EndReason, LoginFailed, LoginFailure, PasswordChanged,
        PasswordHash, SessionEnded, SessionId, SessionRefreshed, SessionStarted, SessionTokens,
        TokenHash, Username,
    };
    use domain::licence::LicenceEvent;
    use domain::licence::{Allowances, LicenceIssued, LicenceRevoked, LicenceTerms};
    use domain::login_attempts::LoginAttemptEvent;
    use domain::login_attempts::{NameFingerprint, UnknownAccountLoginFailed};
    use domain::{EventSet, Metadata, Position, Role, StreamId};
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::*;

    fn recorded(stream: &str, event: &impl EventSet) -> RecordedEvent {
        event.to_new_event(Metadata::default()).unwrap().recorded(
            StreamId::parse(stream).unwrap(),
            0,
            Position::new(1, 0),
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn every_event_type_has_its_one_line_summary_without_secrets() {
        let session = SessionId(Uuid::from_u128(7));
        let tokens = SessionTokens {
            refresh_token_hash: TokenHash("token-hash".into()),
            expires_at: OffsetDateTime::UNIX_EPOCH,
            refresh_until: OffsetDateTime::UNIX_EPOCH,
        };
        let account = |e: AccountEvent| summarize(&recorded("account-ada", &e));
        let cases = [
            (
                account(AccountEvent::AccountCreated(AccountCreated {
                    account_id: Uuid::from_u128(1),
                    username: Username::parse("ada").unwrap(),
                    roles: [Role::Admin, Role::User].into(),
                    password_hash: PasswordHash("$argon2id$hash".into()),
                    by: "root".into(),
                })),
                "account ada created by root with roles user, admin",
            ),
            (
                account(AccountEvent::PasswordChanged(PasswordChanged {
                    password_hash: PasswordHash("$argon2id$hash".into()),
                    by: "root".into(),
                })),
                "password of ada changed by root",
            ),
            (
                account(AccountEvent::AccountDisabled(AccountDisabled {
                    reason: "left".into(),
                    by: "root".into(),
                })),
                "account ada disabled by root: left",
            ),
            (
                account(AccountEvent::LoginFailed(LoginFailed {
                    client_ip: None,
                    reason: LoginFailure::WrongPassword,
                    at: None,
                })),
                "failed login to ada from an unknown address (WrongPassword)",
            ),
            (
                account(AccountEvent::SessionStarted(SessionStarted {
                    session_id: session,
                    client_ip: Some("10.0.0.1".into()),
                    user_agent: None,
                    tokens: tokens.clone(),
                })),
                "ada logged in from 10.0.0.1 (session 00000000-0000-0000-0000-000000000007)",
            ),
            (
                account(AccountEvent::SessionRefreshed(SessionRefreshed {
                    session_id: session,
                    tokens,
                })),
                "session 00000000-0000-0000-0000-000000000007 of ada refreshed",
            ),
            (
                account(AccountEvent::SessionEnded(SessionEnded {
                    session_id: session,
                    reason: EndReason::Expired,
                })),
                "session 00000000-0000-0000-0000-000000000007 of ada ended: expired",
            ),
            (
                summarize(&recorded(
                    "licence-ada",
                    &LicenceEvent::LicenceIssued(LicenceIssued {
                        username: "ada".into(),
                        terms: LicenceTerms {
                            allows: Allowances {
                                max_instances: 1,
                                human_surfing: false,
                                import_proxy: false,
                                scheduler: false,
                                external_clicks: false,
                                max_targets: 1,
                                max_flows_per_day: 1,
                            },
                            expires_at: OffsetDateTime::UNIX_EPOCH,
                        },
                        by: "root".into(),
                    }),
                )),
                "licence issued to ada by root, valid until 1970-01-01 0:00:00.0 +00:00:00",
            ),
            (
                summarize(&recorded(
                    "licence-ada",
                    &LicenceEvent::LicenceRevoked(LicenceRevoked {
                        username: "ada".into(),
                        by: "root".into(),
                    }),
                )),
                "licence of ada revoked by root",
            ),
            (
                summarize(&recorded(
                    "login-attempts-10.0.0.1",
                    &LoginAttemptEvent::UnknownAccountLoginFailed(UnknownAccountLoginFailed {
                        client_ip: Some("10.0.0.1".into()),
                        name_fingerprint: NameFingerprint("f00d".into()),
                    }),
                )),
                "failed login naming no account from 10.0.0.1 (name fingerprint f00d)",
            ),
        ];
        for (summary, expected) in cases {
            assert_eq!(summary, expected);
            assert!(!summary.contains("hash"), "{summary}");
        }
    }

    #[test]
    fn an_event_no_set_holds_is_summarized_by_its_type_and_stream() {
        let mut event = recorded(
            "job-1",
            &LicenceEvent::LicenceRevoked(LicenceRevoked {
                username: "ada".into(),
                by: "root".into(),
            }),
        );
        // A type no event set holds (JobStarted was one until jobs landed).
        event.event_type = "SomethingNoSetHolds".into();
        assert_eq!(summarize(&event), "SomethingNoSetHolds on job-1");
    }
}

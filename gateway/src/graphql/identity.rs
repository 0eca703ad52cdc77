//! Identity over GraphQL: who am I, what may I use, sessions, the audit
//! log; logging in and out; account, licence and session administration.

use std::sync::LazyLock;

use async_graphql::{Context, Enum, Object, SimpleObject};
use domain::account::{Account, AccountCommand, SessionId, Username};
use domain::licence::{Allowances, Licence, LicenceCommand, LicenceTerms};
use domain::{Context as DecisionContext, Role, StreamId};
use projections::{Row, SqlValue, audit_view, sessions_view};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::password;
use crate::auth::sessions::IssuedTokens;
use crate::command_handler::CommandMeta;
use crate::graphql::error::{self, Code};
use crate::graphql::{app, check_first, from_micros, now, principal, principal_with, request};

const ADMINS: &[Role] = &[Role::Admin, Role::SuperAdmin];
const AUDITORS: &[Role] = &[Role::Auditor, Role::Admin, Role::SuperAdmin];

// `remote` derives the conversions to and from the domain's `Role`, so a
// role added there fails to compile until it is added here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "domain::Role")]
pub enum RoleName {
    User,
    Admin,
    SuperAdmin,
    Auditor,
}

/// The logged-in account.
#[derive(SimpleObject)]
pub struct Me {
    pub username: String,
    pub account_id: Uuid,
    pub roles: Vec<RoleName>,
    pub session_id: Uuid,
}

/// The licence's feature matrix, for gating every card and input of the UI.
#[derive(SimpleObject, Default)]
pub struct Features {
    /// False when no licence is in force: then every feature is off.
    pub licensed: bool,
    pub expires_at: Option<OffsetDateTime>,
    #[graphql(flatten)]
    pub allows: Allowances,
}

impl Features {
    fn from_terms(t: &LicenceTerms, now: OffsetDateTime) -> Self {
        let licensed = now < t.expires_at;
        Features {
            licensed,
            expires_at: Some(t.expires_at),
            // An expired licence allows nothing.
            allows: if licensed {
                t.allows.clone()
            } else {
                Allowances::default()
            },
        }
    }
}

/// Tokens for a session. Keep the refresh token secret.
#[derive(SimpleObject)]
pub struct Tokens {
    pub session_id: Uuid,
    pub access_token: String,
    pub access_expires_at: OffsetDateTime,
    pub refresh_token: String,
    /// After this, refreshing fails and the user must log in again.
    pub refresh_until: OffsetDateTime,
}

impl From<IssuedTokens> for Tokens {
    fn from(t: IssuedTokens) -> Self {
        Tokens {
            session_id: t.session_id.0,
            access_token: t.access_token,
            access_expires_at: t.access_expires_at,
            refresh_token: t.refresh_token,
            refresh_until: t.refresh_until,
        }
    }
}

#[derive(SimpleObject)]
pub struct Session {
    pub session_id: String,
    pub username: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub started_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub refresh_until: OffsetDateTime,
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<String>,
}

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

fn row_err(e: impl std::fmt::Display) -> async_graphql::Error {
    error::internal("a view row did not read back", &e)
}

fn session_from(row: &Row) -> async_graphql::Result<Session> {
    Ok(Session {
        session_id: row.get("session_id").map_err(row_err)?,
        username: row.get("username").map_err(row_err)?,
        client_ip: row.get("client_ip").map_err(row_err)?,
        user_agent: row.get("user_agent").map_err(row_err)?,
        started_at: from_micros(row.get("started_at").map_err(row_err)?),
        expires_at: from_micros(row.get("expires_at").map_err(row_err)?),
        refresh_until: from_micros(row.get("refresh_until").map_err(row_err)?),
        ended_at: row
            .get::<Option<i64>>("ended_at")
            .map_err(row_err)?
            .map(from_micros),
        end_reason: row.get("end_reason").map_err(row_err)?,
    })
}

fn parse_username(field: &str, raw: &str) -> async_graphql::Result<Username> {
    Username::parse(raw).map_err(|e| error::error(Code::Validation, format!("{field}: {e}")))
}

fn stream_of(username: &Username) -> async_graphql::Result<StreamId> {
    username
        .stream()
        .map_err(|e| error::error(Code::Validation, e.to_string()))
}

fn licence_stream(username: &Username) -> async_graphql::Result<StreamId> {
    StreamId::for_aggregate("licence", username)
        .map_err(|e| error::error(Code::Validation, e.to_string()))
}

/// Metadata for a command from this request.
fn meta(idempotency_key: Option<String>) -> CommandMeta {
    CommandMeta {
        idempotency_key,
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
        source: Some("gateway".into()),
    }
}

fn decision(ctx: &Context<'_>) -> async_graphql::Result<DecisionContext> {
    Ok(DecisionContext::new(now(), principal(ctx)?.actor()))
}

/// Runs an account command as the logged-in principal.
async fn account_command(
    ctx: &Context<'_>,
    username: &Username,
    command: AccountCommand,
    idempotency_key: Option<String>,
) -> async_graphql::Result<()> {
    app(ctx)
        .handler
        .handle::<Account>(
            &stream_of(username)?,
            command,
            &decision(ctx)?,
            &meta(idempotency_key),
        )
        .await
        .map_err(|e| error::command(e, error::account))?;
    Ok(())
}

#[derive(Default)]
pub struct IdentityQuery;

#[Object]
impl IdentityQuery {
    /// The logged-in account.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let p = principal(ctx)?;
        Ok(Me {
            username: p.username.to_string(),
            account_id: p.account_id,
            roles: p.roles.iter().copied().map(RoleName::from).collect(),
            session_id: p.session_id.0,
        })
    }

    /// What the logged-in account's licence allows.
    async fn features(&self, ctx: &Context<'_>) -> async_graphql::Result<Features> {
        let p = principal(ctx)?;
        let (_, state) = app(ctx)
            .handler
            .load::<Licence>(&licence_stream(&p.username)?)
            .await
            .map_err(|e| error::internal("cannot read the licence", &e))?;
        Ok(state
            .terms
            .map(|t| Features::from_terms(&t, now()))
            .unwrap_or_default())
    }

    /// Sessions, newest first (admins).
    async fn sessions(
        &self,
        ctx: &Context<'_>,
        username: Option<String>,
        #[graphql(default = true)] live_only: bool,
        #[graphql(default = 50)] first: i32,
    ) -> async_graphql::Result<Vec<Session>> {
        principal_with(ctx, ADMINS, "listing sessions")?;
        check_first(first)?;
        let username = match username {
            Some(u) => SqlValue::from(parse_username("username", &u)?.to_string()),
            None => SqlValue::Null,
        };
        static SESSIONS: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT * FROM {} WHERE ($1 IS NULL OR username = $1) \
                 AND ($2 = FALSE OR ended_at IS NULL) ORDER BY started_at DESC LIMIT $3",
                sessions_view::TABLE
            )
        });
        let rows = app(ctx)
            .views
            .query(
                &SESSIONS,
                vec![
                    username,
                    SqlValue::Bool(live_only),
                    SqlValue::Int(i64::from(first)),
                ],
            )
            .await
            .map_err(|e| error::internal("cannot read sessions", &e))?;
        rows.iter().map(session_from).collect()
    }

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
        let (cursor_commit, cursor_prepare) = match &after {
            None => (SqlValue::Null, SqlValue::Null),
            Some(c) => {
                let p: domain::Position = c.parse().map_err(|_| {
                    error::error(
                        Code::Validation,
                        format!("after: {c:?} is not a cursor returned by auditLog"),
                    )
                })?;
                (
                    SqlValue::Int(p.commit as i64),
                    SqlValue::Int(p.prepare as i64),
                )
            }
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
pub struct IdentityMutation;

#[Object]
impl IdentityMutation {
    /// Starts a session; a newer login ends the account's older session.
    async fn login(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> async_graphql::Result<Tokens> {
        let req = request(ctx);
        app(ctx)
            .limiter
            .check(req.client_ip, &username)
            .map_err(error::rate_limited)?;
        let tokens = app(ctx)
            .sessions
            .login(
                &username,
                password,
                req.client_ip.map(|ip| ip.to_string()),
                req.user_agent.clone(),
                &meta(None),
                now(),
            )
            .await
            .map_err(error::auth)?;
        Ok(tokens.into())
    }

    /// New tokens for the session named in the refresh token, within its grace period.
    async fn refresh(
        &self,
        ctx: &Context<'_>,
        refresh_token: String,
    ) -> async_graphql::Result<Tokens> {
        let tokens = app(ctx)
            .sessions
            .refresh(&refresh_token, &meta(None), now())
            .await
            .map_err(error::auth)?;
        Ok(tokens.into())
    }

    /// Ends the current session.
    async fn logout(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        let p = principal(ctx)?;
        app(ctx)
            .sessions
            .logout(p, &meta(None), now())
            .await
            .map_err(error::auth)?;
        Ok(true)
    }

    /// Changes the logged-in account's password.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> async_graphql::Result<bool> {
        let p = principal(ctx)?;
        let state = app(ctx);
        // Each call is a guess at the current password: limited like logins.
        state
            .limiter
            .check_password_change(p.username.as_str())
            .map_err(error::rate_limited)?;
        let stream = stream_of(&p.username)?;
        let (_, account) = state
            .handler
            .load::<Account>(&stream)
            .await
            .map_err(|e| error::internal("cannot read the account", &e))?;
        let hash = account
            .account
            .map(|a| a.password_hash)
            .ok_or_else(|| error::error(Code::NotFound, "no such account"))?;
        let matches = password::verify(current_password, hash.clone())
            .await
            .map_err(|e| error::password("currentPassword", e))?;
        if !matches {
            return Err(error::error(
                Code::Unauthenticated,
                "currentPassword is wrong",
            ));
        }
        let new_password_hash = password::hash(new_password)
            .await
            .map_err(|e| error::password("newPassword", e))?;
        let command = AccountCommand::ChangePassword {
            new_password_hash,
            // A change made meanwhile makes this one stale, not lost.
            verified_against: Some(hash),
        };
        account_command(ctx, &p.username, command, None).await?;
        Ok(true)
    }

    /// Creates an account (admins; only super-admins grant admin roles).
    async fn create_account(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
        roles: Vec<RoleName>,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<String> {
        principal_with(ctx, ADMINS, "creating accounts")?;
        let username = parse_username("username", &username)?;
        let password_hash = password::hash(password)
            .await
            .map_err(|e| error::password("password", e))?;
        let command = AccountCommand::Create {
            account_id: Uuid::now_v7(),
            username: username.clone(),
            roles: roles.into_iter().map(Role::from).collect(),
            password_hash,
        };
        account_command(ctx, &username, command, idempotency_key).await?;
        Ok(username.to_string())
    }

    /// Disables an account and ends its session (admins).
    async fn disable_account(
        &self,
        ctx: &Context<'_>,
        username: String,
        reason: String,
    ) -> async_graphql::Result<bool> {
        principal_with(ctx, ADMINS, "disabling accounts")?;
        let username = parse_username("username", &username)?;
        account_command(ctx, &username, AccountCommand::Disable { reason }, None).await?;
        Ok(true)
    }

    /// Issues or replaces an account's licence (admins).
    async fn issue_licence(
        &self,
        ctx: &Context<'_>,
        username: String,
        licence: LicenceTerms,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<Features> {
        principal_with(ctx, ADMINS, "issuing licences")?;
        let username = parse_username("username", &username)?;
        let (_, account) = app(ctx)
            .handler
            .load::<Account>(&stream_of(&username)?)
            .await
            .map_err(|e| error::internal("cannot read the account", &e))?;
        if account.account.is_none() {
            return Err(error::error(
                Code::NotFound,
                format!("username: no account {username}"),
            ));
        }
        let terms = licence;
        let command = LicenceCommand::Issue {
            username: username.to_string(),
            terms: terms.clone(),
        };
        app(ctx)
            .handler
            .handle::<Licence>(
                &licence_stream(&username)?,
                command,
                &decision(ctx)?,
                &meta(idempotency_key),
            )
            .await
            .map_err(|e| error::command(e, error::licence))?;
        Ok(Features::from_terms(&terms, now()))
    }

    /// Ends a session (admins).
    async fn revoke_session(
        &self,
        ctx: &Context<'_>,
        username: String,
        session_id: Uuid,
    ) -> async_graphql::Result<bool> {
        principal_with(ctx, ADMINS, "revoking sessions")?;
        let username = parse_username("username", &username)?;
        let command = AccountCommand::RevokeSession {
            session_id: SessionId(session_id),
        };
        account_command(ctx, &username, command, None).await?;
        Ok(true)
    }
}

//! Sessions over GraphQL: logging in and out, refreshing, the admins'
//! session list and revocation, and the live `sessionEvents`.

use std::sync::LazyLock;

use async_graphql::{Context, Object, SimpleObject, Subscription, Union};
use domain::account::{AccountCommand, SessionId};
use futures_util::{Stream, StreamExt};
use projections::{Row, SqlValue, sessions_view};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::sessions::IssuedTokens;
use crate::graphql::account::{account_command, parse_username};
use crate::graphql::error;
use crate::graphql::session_watch::{Seen, under_session};
use crate::graphql::{
    ADMINS, app, check_first, from_micros, meta, now, principal, principal_with, request, row_err,
};

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

#[derive(SimpleObject, Clone)]
pub struct SessionRefreshed {
    pub session_id: Uuid,
    pub access_expires_at: OffsetDateTime,
    pub refresh_until: OffsetDateTime,
}

#[derive(SimpleObject, Clone)]
pub struct SessionEnded {
    pub session_id: Uuid,
    pub reason: String,
}

#[derive(Union, Clone)]
pub enum SessionEvent {
    SessionRefreshed(SessionRefreshed),
    SessionEnded(SessionEnded),
}

#[derive(Default)]
pub struct SessionQuery;

#[Object]
impl SessionQuery {
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
}

#[derive(Default)]
pub struct SessionMutation;

#[Object]
impl SessionMutation {
    /// Starts a session; a newer login ends the account's older session.
    async fn login(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> async_graphql::Result<Tokens> {
        let req = request(ctx);
        let limiter = &app(ctx).limiter;
        limiter
            .check(req.client_ip, &username)
            .map_err(error::rate_limited)?;
        if let Some(ip) = req.client_ip {
            // Failures through every gateway of the store, not only this one.
            let limit = limiter.limits().per_address;
            crate::auth::rate_limit::address_failures(&app(ctx).views, ip, limit, now())
                .await
                .map_err(error::rate_limited)?;
        }
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

#[derive(Default)]
pub struct SessionSubscription;

#[Subscription]
impl SessionSubscription {
    /// The current session's changes; the last one is `SessionEnded`.
    async fn session_events(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = SessionEvent>> {
        let p = principal(ctx)?.clone();
        Ok(
            under_session(app(ctx).clone(), p, None, None).filter_map(|seen| async move {
                match seen {
                    Seen::Refreshed(r) => Some(SessionEvent::SessionRefreshed(r)),
                    Seen::Ended(e) => Some(SessionEvent::SessionEnded(e)),
                    Seen::Event(_) => None,
                }
            }),
        )
    }
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

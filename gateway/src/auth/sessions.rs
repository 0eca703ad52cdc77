//! Logging in, refreshing, logging out, and turning a bearer token into the
//! principal behind it. Composes the command handler (the account decider
//! holds the rules), argon2 and tokens.
//!
//! A failed login says only "wrong username or password", whatever the
//! cause (unknown account, wrong password, disabled account), so logins
//! cannot be used to probe which accounts exist; unknown usernames still
//! cost one argon2 verification so timing does not tell either.

use std::collections::BTreeSet;
use std::sync::Arc;

use domain::account::{
    Account, AccountCommand, AccountError, AccountEvent, AccountRecord, PasswordCheck,
    PasswordHash, SessionId, SessionTokens, Username,
};
use domain::login_attempts::{self, LoginAttemptCommand, LoginAttempts};
use domain::{Actor, Context, Role};
use secrecy::{ExposeSecret, SecretSlice};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::auth::fingerprint::Fingerprints;
use crate::auth::password::{self, PasswordError};
use crate::auth::rate_limit::RateLimited;
use crate::auth::tokens::{self, TokenError, TokenKeys};
use crate::command_handler::{CommandError, CommandHandler, CommandMeta};

/// How long tokens live.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// Lifetime of an access token.
    pub access_ttl: Duration,
    /// How long after an access token expires a refresh still keeps the session.
    pub grace: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            access_ttl: Duration::minutes(15),
            grace: Duration::hours(12),
        }
    }
}

/// What a client receives on login and refresh.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    pub session_id: SessionId,
    pub access_token: String,
    pub access_expires_at: OffsetDateTime,
    pub refresh_token: String,
    pub refresh_until: OffsetDateTime,
}

/// The account behind a valid access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub account_id: Uuid,
    pub username: Username,
    pub roles: BTreeSet<Role>,
    pub session_id: SessionId,
}

impl Principal {
    pub fn actor(&self) -> Actor {
        Actor::Account {
            account_id: self.account_id,
            username: self.username.to_string(),
            roles: self.roles.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("wrong username or password")]
    WrongCredentials,
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The session is over; the client must log in again.
    #[error("the session has ended: {0}")]
    SessionEnded(String),
    #[error(transparent)]
    Account(AccountError),
    /// Too many password checks at once: retry later.
    #[error(transparent)]
    RateLimited(RateLimited),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<PasswordError> for AuthError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy(r) => AuthError::RateLimited(r),
            other => AuthError::Internal(other.to_string()),
        }
    }
}

impl<E: std::error::Error> From<CommandError<E>> for AuthError {
    fn from(e: CommandError<E>) -> Self {
        AuthError::Internal(e.to_string())
    }
}

/// Compared against when the username is unknown, to spend the same time.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$dW5rbm93bi11c2Vy$W0S8wLD3u+Z3NN6bsl8aSFnYQDfUDlzR5Y95blsv1Oo";

pub struct Sessions {
    handler: Arc<CommandHandler>,
    keys: TokenKeys,
    fingerprints: Fingerprints,
    policy: SessionPolicy,
    /// Failed logins an account may have in a minute, counted from its
    /// stream: the same on every gateway of a store.
    failed_logins_per_minute: u32,
}

impl Sessions {
    /// Sessions whose tokens are signed with `secret` (at least 32 bytes).
    pub fn new(
        handler: Arc<CommandHandler>,
        secret: &SecretSlice<u8>,
        policy: SessionPolicy,
    ) -> Result<Self, TokenError> {
        Ok(Self {
            handler,
            keys: TokenKeys::from_secret(secret.expose_secret())?,
            fingerprints: Fingerprints::from_secret(secret.expose_secret()),
            policy,
            failed_logins_per_minute: crate::auth::rate_limit::PER_ACCOUNT_PER_MINUTE,
        })
    }

    /// Sets how many failed logins an account may have in a minute before
    /// its logins are refused for the rest of that minute, on any gateway.
    pub fn with_failed_login_limit(mut self, per_minute: u32) -> Self {
        self.failed_logins_per_minute = per_minute;
        self
    }

    /// Refused when `account` failed to log in too often in the last minute,
    /// as its stream records it (whichever gateway took the attempts).
    fn check_recent_failures(
        &self,
        account: &AccountRecord,
        now: OffsetDateTime,
    ) -> Result<(), AuthError> {
        let window = Duration::minutes(1);
        let (failures, oldest) = account.failures_since(now - window);
        if failures < self.failed_logins_per_minute as usize {
            return Ok(());
        }
        let free_at = oldest.map_or(now + window, |at| at + window);
        Err(AuthError::RateLimited(RateLimited {
            scope: "failed logins for this account",
            retry_after: (free_at - now)
                .try_into()
                .unwrap_or(std::time::Duration::from_secs(1)),
        }))
    }

    fn tokens_at(&self, now: OffsetDateTime) -> (String, SessionTokens) {
        let (refresh_token, refresh_token_hash) = tokens::new_refresh_token();
        let expires_at = now + self.policy.access_ttl;
        let terms = SessionTokens {
            refresh_token_hash,
            expires_at,
            refresh_until: expires_at + self.policy.grace,
        };
        (refresh_token, terms)
    }

    fn issue(
        &self,
        username: &Username,
        session_id: SessionId,
        refresh_token: String,
        terms: &SessionTokens,
        now: OffsetDateTime,
    ) -> Result<IssuedTokens, AuthError> {
        let (access_token, access_expires_at) =
            self.keys
                .issue(username.as_str(), session_id, now, self.policy.access_ttl)?;
        Ok(IssuedTokens {
            session_id,
            access_token,
            access_expires_at,
            // One opaque string for the client; only the secret's hash is stored.
            refresh_token: format!("{session_id}.{username}.{refresh_token}"),
            refresh_until: terms.refresh_until,
        })
    }

    /// Checks the password and starts a session, superseding any older one.
    pub async fn login(
        &self,
        name: &str,
        password: String,
        client_ip: Option<String>,
        user_agent: Option<String>,
        meta: &CommandMeta,
        now: OffsetDateTime,
    ) -> Result<IssuedTokens, AuthError> {
        let Ok(username) = Username::parse(name) else {
            return self
                .refuse_unknown(name, password, client_ip, meta, now)
                .await;
        };
        let stream = username
            .stream()
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        // A password changed between our check and the decision makes the
        // decision stale; check again against the new hash, once.
        for _ in 0..2 {
            let (_, state) = self.handler.load::<Account>(&stream).await?;
            let Some(account) = state.account else {
                return self
                    .refuse_unknown(name, password, client_ip, meta, now)
                    .await;
            };
            // Before the password is checked: a guess refused here tells nothing.
            self.check_recent_failures(&account, now)?;
            let matched = password::verify(password.clone(), account.password_hash.clone()).await?;
            let check = if matched {
                PasswordCheck::Matched(account.password_hash)
            } else {
                PasswordCheck::Mismatched
            };
            let session_id = SessionId(Uuid::now_v7());
            let (refresh_token, terms) = self.tokens_at(now);
            let command = AccountCommand::Login {
                session_id,
                client_ip: client_ip.clone(),
                user_agent: user_agent.clone(),
                password: check,
                tokens: terms.clone(),
            };
            let ctx = Context::new(now, Actor::Anonymous);
            match self
                .handler
                .handle::<Account>(&stream, command, &ctx, meta)
                .await
            {
                Ok(done) => {
                    if done
                        .events
                        .iter()
                        .any(|e| matches!(e, AccountEvent::LoginFailed(_)))
                    {
                        return Err(AuthError::WrongCredentials);
                    }
                    return self.issue(&username, session_id, refresh_token, &terms, now);
                }
                Err(CommandError::Rejected(AccountError::StaleCredentials)) => continue,
                Err(CommandError::Rejected(AccountError::NotFound)) => {
                    return Err(AuthError::WrongCredentials);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Account(AccountError::StaleCredentials))
    }

    /// Refuses a login that names no account as any other failed login is
    /// refused, after the same argon2 work, and records it (the name only
    /// as a fingerprint) against the client's address.
    async fn refuse_unknown(
        &self,
        name: &str,
        password: String,
        client_ip: Option<String>,
        meta: &CommandMeta,
        now: OffsetDateTime,
    ) -> Result<IssuedTokens, AuthError> {
        // Refused when too busy, as a known account's check would be.
        password::verify(password, PasswordHash(DUMMY_HASH.into())).await?;
        let stream = login_attempts::stream(client_ip.as_deref())
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let command = LoginAttemptCommand::RecordUnknownAccount {
            client_ip,
            name_fingerprint: self.fingerprints.of_login_name(name),
        };
        let ctx = Context::new(now, Actor::Anonymous);
        self.handler
            .handle::<LoginAttempts>(&stream, command, &ctx, meta)
            .await?;
        Err(AuthError::WrongCredentials)
    }

    /// Exchanges a refresh token (as issued: `session.username.secret`) for
    /// new tokens, within the grace period.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        meta: &CommandMeta,
        now: OffsetDateTime,
    ) -> Result<IssuedTokens, AuthError> {
        let malformed = || AuthError::Token(TokenError::Invalid("malformed refresh token".into()));
        // The session id (a UUID) and the secret (hex) hold no dot; a
        // username may, so it is what lies between the first and last dot.
        let (sid, rest) = refresh_token.trim().split_once('.').ok_or_else(malformed)?;
        let (user, secret) = rest.rsplit_once('.').ok_or_else(malformed)?;
        let session_id = SessionId(sid.parse::<Uuid>().map_err(|_| malformed())?);
        let username = Username::parse(user).map_err(|_| malformed())?;
        let refresh_token = secret;
        let stream = username
            .stream()
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let (new_refresh, terms) = self.tokens_at(now);
        let command = AccountCommand::Refresh {
            session_id,
            presented: tokens::hash_refresh_token(refresh_token),
            tokens: terms.clone(),
        };
        let ctx = Context::new(now, Actor::Anonymous);
        match self
            .handler
            .handle::<Account>(&stream, command, &ctx, meta)
            .await
        {
            Ok(_) => self.issue(&username, session_id, new_refresh, &terms, now),
            Err(CommandError::Rejected(e)) => Err(match e {
                AccountError::SessionNotLive(_)
                | AccountError::RefreshWindowClosed(_)
                | AccountError::Disabled
                | AccountError::NotFound => AuthError::SessionEnded(e.to_string()),
                other => AuthError::Account(other),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the principal's session.
    pub async fn logout(
        &self,
        principal: &Principal,
        meta: &CommandMeta,
        now: OffsetDateTime,
    ) -> Result<(), AuthError> {
        let stream = principal
            .username
            .stream()
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let ctx = Context::new(now, principal.actor());
        let command = AccountCommand::Logout {
            session_id: principal.session_id,
        };
        self.handler
            .handle::<Account>(&stream, command, &ctx, meta)
            .await
            .map_err(|e| match e {
                CommandError::Rejected(a) => AuthError::Account(a),
                other => other.into(),
            })?;
        Ok(())
    }

    /// The principal behind an access token, if its session is still live.
    pub async fn authenticate(
        &self,
        access_token: &str,
        now: OffsetDateTime,
    ) -> Result<Principal, AuthError> {
        let claims = self.keys.verify(access_token, now)?;
        let username = Username::parse(&claims.sub)
            .map_err(|e| AuthError::Token(TokenError::Invalid(e.to_string())))?;
        let stream = username
            .stream()
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let (_, state) = self.handler.load::<Account>(&stream).await?;
        let account = state
            .live(claims.sid)
            .map_err(|gone| AuthError::SessionEnded(gone.to_string()))?;
        Ok(Principal {
            account_id: account.account_id,
            username,
            roles: account.roles.clone(),
            session_id: claims.sid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_dummy_hash_is_a_real_argon2id_hash_so_unknown_users_cost_the_same() {
        let started = std::time::Instant::now();
        let matched =
            password::verify("some password".into(), PasswordHash(DUMMY_HASH.into())).await;
        assert!(matches!(matched, Ok(false)), "{matched:?}");
        // A real verification takes milliseconds; a parse failure takes microseconds.
        assert!(started.elapsed() > std::time::Duration::from_millis(1));
    }
}

//! The account: identity, roles, password, and its one live session.
//! Stream `account-<username>`.
//!
//! Sessions live in the account's stream because login is single: a new
//! login ends the older session in the same decision, atomically. Passwords
//! are checked at the edge (argon2 is slow); a login names the hash it was
//! checked against, so a password changed meanwhile makes the decision stale
//! rather than wrong. No secret enters an event: passwords appear only as
//! argon2id hashes, refresh tokens only as SHA-256 hashes.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::decider::{Context, Decider, Role};
use crate::envelope::{StreamId, StreamIdError};

/// A login name: 3 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "username {0:?} must be 3 to 64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
)]
pub struct UsernameError(pub String);

impl Username {
    /// Lower-cases, then checks the form.
    pub fn parse(raw: &str) -> Result<Self, UsernameError> {
        let name = raw.trim().to_ascii_lowercase();
        let ok = (3..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if ok {
            Ok(Self(name))
        } else {
            Err(UsernameError(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The account's stream: `account-<username>`.
    pub fn stream(&self) -> Result<StreamId, StreamIdError> {
        StreamId::for_aggregate("account", &self.0)
    }
}

impl TryFrom<String> for Username {
    type Error = UsernameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An argon2id hash in PHC string form. Not a secret, but never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PasswordHash(pub String);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

/// 32 to 128 URL- and TXT-safe characters (A-Z, a-z, 0-9, '-', '_'): the
/// shape of every random token the gateway hands out, so it can be pasted
/// into a file, a DNS record or a header unchanged.
pub(crate) fn is_token_text(raw: &str) -> bool {
    (32..=128).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// The SHA-256 (hex) of a bearer secret (a refresh token, a runner key); the
/// secret itself is never stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(pub String);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// Names a session; access tokens carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The token terms of a session, fixed at login and at each refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTokens {
    pub refresh_token_hash: TokenHash,
    /// When the access token issued with these terms expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The last moment a refresh keeps the session: `expires_at` plus the
    /// grace period. After it the session is over; the user logs in again.
    #[serde(with = "time::serde::rfc3339")]
    pub refresh_until: OffsetDateTime,
}

/// Why a session ended. Clients are told this reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EndReason {
    LoggedOut,
    /// A newer login of the same account.
    Superseded {
        by_session: SessionId,
    },
    /// Not refreshed within its grace period.
    Expired,
    Revoked {
        by: String,
    },
    AccountDisabled,
    /// An admin set a new password.
    PasswordReset,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::LoggedOut => f.write_str("logged out"),
            EndReason::Superseded { .. } => f.write_str("superseded by a newer login"),
            EndReason::Expired => f.write_str("expired"),
            EndReason::Revoked { by } => write!(f, "revoked by {by}"),
            EndReason::AccountDisabled => f.write_str("account disabled"),
            EndReason::PasswordReset => f.write_str("password reset by an admin"),
        }
    }
}

/// Why a login failed (recorded without the password).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    WrongPassword,
    AccountDisabled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountCreated {
    pub account_id: Uuid,
    pub username: Username,
    pub roles: BTreeSet<Role>,
    pub password_hash: PasswordHash,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasswordChanged {
    pub password_hash: PasswordHash,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountDisabled {
    pub reason: String,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginFailed {
    pub client_ip: Option<String>,
    pub reason: LoginFailure,
    /// When it failed: the account's recent failures, counted from its
    /// stream, limit logins on every gateway alike. Older events lack it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStarted {
    pub session_id: SessionId,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub tokens: SessionTokens,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRefreshed {
    pub session_id: SessionId,
    pub tokens: SessionTokens,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub session_id: SessionId,
    pub reason: EndReason,
}

crate::event_set! {
    /// What happens to an account and its sessions.
    pub enum AccountEvent {
        AccountCreated(AccountCreated) = 1,
        PasswordChanged(PasswordChanged) = 1,
        AccountDisabled(AccountDisabled) = 1,
        LoginFailed(LoginFailed) = 1,
        SessionStarted(SessionStarted) = 1,
        SessionRefreshed(SessionRefreshed) = 1,
        SessionEnded(SessionEnded) = 1,
    }
}

impl crate::registry::Summary for AccountEvent {
    fn summary(&self, stream: &StreamId) -> String {
        let user = stream
            .as_str()
            .strip_prefix("account-")
            .unwrap_or(stream.as_str());
        let from = |ip: &Option<String>| ip.as_deref().unwrap_or("an unknown address").to_owned();
        match self {
            Self::AccountCreated(c) => {
                let roles: Vec<String> = c.roles.iter().map(ToString::to_string).collect();
                format!(
                    "account {user} created by {} with roles {}",
                    c.by,
                    roles.join(", ")
                )
            }
            Self::PasswordChanged(p) => format!("password of {user} changed by {}", p.by),
            Self::AccountDisabled(d) => {
                format!("account {user} disabled by {}: {}", d.by, d.reason)
            }
            Self::LoginFailed(f) => format!(
                "failed login to {user} from {} ({:?})",
                from(&f.client_ip),
                f.reason
            ),
            Self::SessionStarted(s) => format!(
                "{user} logged in from {} (session {})",
                from(&s.client_ip),
                s.session_id
            ),
            Self::SessionRefreshed(r) => format!("session {} of {user} refreshed", r.session_id),
            Self::SessionEnded(x) => {
                format!("session {} of {user} ended: {}", x.session_id, x.reason)
            }
        }
    }
}

/// The outcome of checking a password at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordCheck {
    /// It matched this hash (the one the edge read from the account).
    Matched(PasswordHash),
    Mismatched,
}

/// Commands on an account.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountCommand {
    Create {
        account_id: Uuid,
        username: Username,
        roles: BTreeSet<Role>,
        password_hash: PasswordHash,
    },
    ChangePassword {
        new_password_hash: PasswordHash,
        /// The account's own change: the hash its current password was
        /// checked against at the edge. `None` for a reset by an admin.
        verified_against: Option<PasswordHash>,
    },
    Disable {
        reason: String,
    },
    Login {
        session_id: SessionId,
        client_ip: Option<String>,
        user_agent: Option<String>,
        password: PasswordCheck,
        tokens: SessionTokens,
    },
    Refresh {
        session_id: SessionId,
        presented: TokenHash,
        tokens: SessionTokens,
    },
    Logout {
        session_id: SessionId,
    },
    RevokeSession {
        session_id: SessionId,
    },
    ExpireSession {
        session_id: SessionId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("no such account")]
    NotFound,
    #[error("account {0} already exists")]
    AlreadyExists(Username),
    #[error("an account needs at least one role")]
    NoRoles,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("the account is disabled")]
    Disabled,
    #[error("the password changed meanwhile; check the current password again")]
    StaleCredentials,
    #[error("session {0} is not the account's live session")]
    SessionNotLive(SessionId),
    #[error("the refresh token does not match the session's")]
    InvalidRefreshToken,
    #[error("the session could be refreshed until {0}; log in again")]
    RefreshWindowClosed(OffsetDateTime),
    #[error("the session may still be refreshed until {0}")]
    NotExpired(OffsetDateTime),
}

/// The live session, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSession {
    pub session_id: SessionId,
    pub tokens: SessionTokens,
}

/// An existing account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub account_id: Uuid,
    pub username: Username,
    pub roles: BTreeSet<Role>,
    pub password_hash: PasswordHash,
    pub disabled: bool,
    pub session: Option<LiveSession>,
    /// The times of its latest failed logins, oldest first, at most
    /// [`RECENT_FAILURES`].
    #[serde(default)]
    pub recent_failures: Vec<OffsetDateTime>,
}

/// Failed logins an account remembers: more than any per-minute limit.
pub const RECENT_FAILURES: usize = 64;

impl AccountRecord {
    /// Its failed logins after `since`, and when the oldest of them was.
    pub fn failures_since(&self, since: OffsetDateTime) -> (usize, Option<OffsetDateTime>) {
        let recent: Vec<&OffsetDateTime> = self
            .recent_failures
            .iter()
            .filter(|at| **at > since)
            .collect();
        (recent.len(), recent.first().map(|at| **at))
    }
}

/// `None` until the account is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub account: Option<AccountRecord>,
}

impl AccountState {
    /// The account, if `session_id` is its live session (and the account is
    /// enabled); otherwise why not. The one rule for "is this session live".
    pub fn live(&self, session_id: SessionId) -> Result<&AccountRecord, SessionGone> {
        let account = self.account.as_ref().ok_or(SessionGone::NoAccount)?;
        if account.disabled {
            return Err(SessionGone::AccountDisabled);
        }
        match &account.session {
            Some(s) if s.session_id == session_id => Ok(account),
            _ => Err(SessionGone::NotLive),
        }
    }
}

/// Why a session is not live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionGone {
    #[error("the account no longer exists")]
    NoAccount,
    #[error("{}", EndReason::AccountDisabled)]
    AccountDisabled,
    #[error("the session is no longer live")]
    NotLive,
}

pub struct Account;

inventory::submit! { crate::replay::Replayer::of::<Account>() }

impl Decider for Account {
    const SNAPSHOT_KIND: &'static str = "account/2";
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn evolve(mut state: AccountState, event: &AccountEvent) -> AccountState {
        if let AccountEvent::AccountCreated(e) = event {
            state.account = Some(AccountRecord {
                account_id: e.account_id,
                username: e.username.clone(),
                roles: e.roles.clone(),
                password_hash: e.password_hash.clone(),
                disabled: false,
                session: None,
                recent_failures: vec![],
            });
            return state;
        }
        let Some(account) = state.account.as_mut() else {
            return state;
        };
        match event {
            AccountEvent::AccountCreated(_) => {}
            AccountEvent::LoginFailed(e) => {
                if let Some(at) = e.at {
                    account.recent_failures.push(at);
                    let over = account
                        .recent_failures
                        .len()
                        .saturating_sub(RECENT_FAILURES);
                    account.recent_failures.drain(..over);
                }
            }
            AccountEvent::PasswordChanged(e) => account.password_hash = e.password_hash.clone(),
            AccountEvent::AccountDisabled(_) => account.disabled = true,
            AccountEvent::SessionStarted(e) => {
                account.session = Some(LiveSession {
                    session_id: e.session_id,
                    tokens: e.tokens.clone(),
                });
            }
            AccountEvent::SessionRefreshed(e) => {
                if let Some(s) = account
                    .session
                    .as_mut()
                    .filter(|s| s.session_id == e.session_id)
                {
                    s.tokens = e.tokens.clone();
                }
            }
            AccountEvent::SessionEnded(e) => {
                if account
                    .session
                    .as_ref()
                    .is_some_and(|s| s.session_id == e.session_id)
                {
                    account.session = None;
                }
            }
        }
        state
    }

    fn decide(
        state: &AccountState,
        command: AccountCommand,
        ctx: &Context,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand as C;
        // Only `Create` needs no account; every other command acts on one.
        match (command, state.account.as_ref()) {
            (
                C::Create {
                    account_id,
                    username,
                    roles,
                    password_hash,
                },
                _,
            ) => create(state, account_id, username, roles, password_hash, ctx),
            (_, None) => Err(AccountError::NotFound),
            (
                C::ChangePassword {
                    new_password_hash,
                    verified_against,
                },
                Some(account),
            ) => change_password(account, new_password_hash, verified_against, ctx),
            (C::Disable { reason }, Some(account)) => disable(account, reason, ctx),
            (
                C::Login {
                    session_id,
                    client_ip,
                    user_agent,
                    password,
                    tokens,
                },
                Some(account),
            ) => login(
                account, session_id, client_ip, user_agent, password, tokens, ctx.now,
            ),
            (
                C::Refresh {
                    session_id,
                    presented,
                    tokens,
                },
                Some(account),
            ) => refresh(account, session_id, presented, tokens, ctx),
            (C::Logout { session_id }, Some(account)) => logout(account, session_id, ctx),
            (C::RevokeSession { session_id }, Some(account)) => revoke(account, session_id, ctx),
            (C::ExpireSession { session_id }, Some(account)) => expire(account, session_id, ctx),
        }
    }
}

fn logout(
    account: &AccountRecord,
    session_id: SessionId,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, AccountError> {
    if !(ctx.actor.is_account(account.username.as_str()) || administers(ctx, account)) {
        return Err(AccountError::Forbidden(
            "only the account itself, or an admin above it, may log it out",
        ));
    }
    Ok(end_if_live(account, session_id, EndReason::LoggedOut))
}

fn revoke(
    account: &AccountRecord,
    session_id: SessionId,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, AccountError> {
    if !administers(ctx, account) {
        return Err(AccountError::Forbidden(
            "admins revoke sessions of user and auditor accounts; only a super-admin revokes an admin's",
        ));
    }
    live(account, session_id)?;
    let by = ctx.actor.name();
    Ok(end_if_live(account, session_id, EndReason::Revoked { by }))
}

fn expire(
    account: &AccountRecord,
    session_id: SessionId,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, AccountError> {
    let Ok(session) = live(account, session_id) else {
        return Ok(vec![]); // already over
    };
    if ctx.now <= session.tokens.refresh_until {
        return Err(AccountError::NotExpired(session.tokens.refresh_until));
    }
    Ok(end_if_live(account, session_id, EndReason::Expired))
}

/// May `ctx.actor` give an account these roles?
fn may_grant(ctx: &Context, roles: &BTreeSet<Role>) -> bool {
    if ctx.actor.has(Role::SuperAdmin) {
        return true; // includes the system
    }
    ctx.actor.has(Role::Admin)
        && roles
            .iter()
            .all(|r| matches!(r, Role::User | Role::Auditor))
}

fn create(
    state: &AccountState,
    account_id: Uuid,
    username: Username,
    roles: BTreeSet<Role>,
    password_hash: PasswordHash,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, AccountError> {
    if !may_grant(ctx, &roles) {
        return Err(AccountError::Forbidden(
            "admins create user and auditor accounts; only a super-admin grants admin or super_admin",
        ));
    }
    if roles.is_empty() {
        return Err(AccountError::NoRoles);
    }
    if state.account.is_some() {
        return Err(AccountError::AlreadyExists(username));
    }
    Ok(vec![AccountEvent::AccountCreated(AccountCreated {
        account_id,
        username,
        roles,
        password_hash,
        by: ctx.actor.name(),
    })])
}

/// Is the actor allowed to act on this account as its administrator?
/// Admins manage users and auditors; super-admins manage everyone. The one
/// rule for every administrative command (password reset, disable, logout,
/// revoke), so they cannot drift apart.
fn administers(ctx: &Context, account: &AccountRecord) -> bool {
    ctx.actor.has(Role::SuperAdmin)
        || (ctx.actor.has(Role::Admin)
            && !account.roles.contains(&Role::Admin)
            && !account.roles.contains(&Role::SuperAdmin))
}

fn change_password(
    account: &AccountRecord,
    new_password_hash: PasswordHash,
    verified_against: Option<PasswordHash>,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, AccountError> {
    if account.disabled {
        return Err(AccountError::Disabled);
    }
    let own = ctx.actor.is_account(account.username.as_str());
    if !own && !administers(ctx, account) {
        return Err(AccountError::Forbidden(
            "only the account itself, or an admin above it, may set its password",
        ));
    }
    match verified_against {
        // Checked against a hash that has since been replaced: the change
        // would overwrite a password its author never proved knowing.
        Some(hash) if hash != account.password_hash => {
            return Err(AccountError::StaleCredentials);
        }
        Some(_) => {}
        None if own => {
            return Err(AccountError::Forbidden(
                "changing one's own password needs the current password",
            ));
        }
        None => {}
    }
    let mut events = vec![AccountEvent::PasswordChanged(PasswordChanged {
        password_hash: new_password_hash,
        by: ctx.actor.name(),
    })];
    if !own && let Some(s) = &account.session {
        events.push(AccountEvent::SessionEnded(SessionEnded {
            session_id: s.session_id,
            reason: EndReason::PasswordReset,
        }));
    }
    Ok(events)
}

fn disable(
    account: &AccountRecord,
    reason: String,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, AccountError> {
    if ctx.actor.is_account(account.username.as_str()) {
        return Err(AccountError::Forbidden("an account cannot disable itself"));
    }
    if !administers(ctx, account) {
        return Err(AccountError::Forbidden(
            "admins disable user and auditor accounts; only a super-admin disables admins",
        ));
    }
    if account.disabled {
        return Ok(vec![]);
    }
    let mut events = vec![AccountEvent::AccountDisabled(AccountDisabled {
        reason,
        by: ctx.actor.name(),
    })];
    if let Some(s) = &account.session {
        events.push(AccountEvent::SessionEnded(SessionEnded {
            session_id: s.session_id,
            reason: EndReason::AccountDisabled,
        }));
    }
    Ok(events)
}

fn login(
    account: &AccountRecord,
    session_id: SessionId,
    client_ip: Option<String>,
    user_agent: Option<String>,
    password: PasswordCheck,
    tokens: SessionTokens,
    now: OffsetDateTime,
) -> Result<Vec<AccountEvent>, AccountError> {
    let failed = |reason| {
        Ok(vec![AccountEvent::LoginFailed(LoginFailed {
            client_ip: client_ip.clone(),
            reason,
            at: Some(now),
        })])
    };
    if account.disabled {
        return failed(LoginFailure::AccountDisabled);
    }
    match password {
        PasswordCheck::Mismatched => return failed(LoginFailure::WrongPassword),
        PasswordCheck::Matched(hash) if hash != account.password_hash => {
            return Err(AccountError::StaleCredentials);
        }
        PasswordCheck::Matched(_) => {}
    }
    let mut events = Vec::with_capacity(2);
    if let Some(old) = &account.session {
        events.push(AccountEvent::SessionEnded(SessionEnded {
            session_id: old.session_id,
            reason: EndReason::Superseded {
                by_session: session_id,
            },
        }));
    }
    events.push(AccountEvent::SessionStarted(SessionStarted {
        session_id,
        client_ip,
        user_agent,
        tokens,
    }));
    Ok(events)
}

fn live(account: &AccountRecord, session_id: SessionId) -> Result<&LiveSession, AccountError> {
    account
        .session
        .as_ref()
        .filter(|s| s.session_id == session_id)
        .ok_or(AccountError::SessionNotLive(session_id))
}

fn end_if_live(
    account: &AccountRecord,
    session_id: SessionId,
    reason: EndReason,
) -> Vec<AccountEvent> {
    match live(account, session_id) {
        Ok(_) => vec![AccountEvent::SessionEnded(SessionEnded {
            session_id,
            reason,
        })],
        Err(_) => vec![],
    }
}

fn refresh(
    account: &AccountRecord,
    session_id: SessionId,
    presented: TokenHash,
    tokens: SessionTokens,
    ctx: &Context,
) -> Result<Vec<AccountEvent>, AccountError> {
    if account.disabled {
        return Err(AccountError::Disabled);
    }
    let session = live(account, session_id)?;
    if presented != session.tokens.refresh_token_hash {
        return Err(AccountError::InvalidRefreshToken);
    }
    if ctx.now > session.tokens.refresh_until {
        return Err(AccountError::RefreshWindowClosed(
            session.tokens.refresh_until,
        ));
    }
    Ok(vec![AccountEvent::SessionRefreshed(SessionRefreshed {
        session_id,
        tokens,
    })])
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::decider::Actor;
    use crate::spec::Spec;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn ada() -> Username {
        Username::parse("ada").unwrap()
    }

    fn as_account(name: &str, roles: &[Role], now: OffsetDateTime) -> Context {
        Context::new(
            now,
            Actor::Account {
                account_id: Uuid::nil(),
                username: name.into(),
                roles: roles.iter().copied().collect(),
            },
        )
    }

    fn anonymous(now: OffsetDateTime) -> Context {
        Context::new(now, Actor::Anonymous)
    }

    fn hash(n: u8) -> PasswordHash {
        PasswordHash(format!("$argon2id$v=19$m=19456,t=2,p=1$salt{n}$hash{n}"))
    }

    fn tokens(n: u8, at: OffsetDateTime) -> SessionTokens {
        SessionTokens {
            refresh_token_hash: TokenHash(format!("refresh{n}")),
            expires_at: at + Duration::minutes(15),
            refresh_until: at + Duration::minutes(45),
        }
    }

    fn sid(n: u128) -> SessionId {
        SessionId(Uuid::from_u128(n))
    }

    fn created(roles: &[Role]) -> AccountEvent {
        AccountEvent::AccountCreated(AccountCreated {
            account_id: Uuid::from_u128(7),
            username: ada(),
            roles: roles.iter().copied().collect(),
            password_hash: hash(1),
            by: "system".into(),
        })
    }

    fn started(n: u128) -> AccountEvent {
        AccountEvent::SessionStarted(SessionStarted {
            session_id: sid(n),
            client_ip: Some("127.0.0.1".into()),
            user_agent: None,
            tokens: tokens(n as u8, t0()),
        })
    }

    fn ended(n: u128, reason: EndReason) -> AccountEvent {
        AccountEvent::SessionEnded(SessionEnded {
            session_id: sid(n),
            reason,
        })
    }

    fn login(n: u128, password: PasswordCheck) -> AccountCommand {
        AccountCommand::Login {
            session_id: sid(n),
            client_ip: Some("127.0.0.1".into()),
            user_agent: None,
            password,
            tokens: tokens(n as u8, t0()),
        }
    }

    fn create(roles: &[Role]) -> AccountCommand {
        AccountCommand::Create {
            account_id: Uuid::from_u128(7),
            username: ada(),
            roles: roles.iter().copied().collect(),
            password_hash: hash(1),
        }
    }

    #[test]
    fn a_session_is_live_only_while_it_is_the_enabled_accounts_current_one() {
        let state = |events: &[AccountEvent]| Account::fold(events);
        assert_eq!(state(&[]).live(sid(1)).unwrap_err(), SessionGone::NoAccount);
        let user = created(&[Role::User]);
        assert_eq!(
            state(std::slice::from_ref(&user)).live(sid(1)).unwrap_err(),
            SessionGone::NotLive
        );
        let live = [user.clone(), started(1)];
        assert_eq!(state(&live).live(sid(1)).unwrap().username, ada());
        assert_eq!(state(&live).live(sid(2)).unwrap_err(), SessionGone::NotLive);
        let superseded = [
            user.clone(),
            started(1),
            ended(1, EndReason::LoggedOut),
            started(2),
        ];
        assert_eq!(
            state(&superseded).live(sid(1)).unwrap_err(),
            SessionGone::NotLive
        );
        let disabled = [
            user,
            started(1),
            AccountEvent::AccountDisabled(AccountDisabled {
                reason: "left".into(),
                by: "root".into(),
            }),
        ];
        assert_eq!(
            state(&disabled).live(sid(1)).unwrap_err(),
            SessionGone::AccountDisabled
        );
        assert_eq!(SessionGone::AccountDisabled.to_string(), "account disabled");
    }

    #[test]
    fn usernames_are_lower_cased_and_checked() {
        assert_eq!(Username::parse(" Ada.L ").unwrap().as_str(), "ada.l");
        for bad in ["ab", "-ada", "ada lovelace", "adä", &"a".repeat(65)] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ada().stream().unwrap().as_str(), "account-ada");
    }

    #[test]
    fn the_system_bootstraps_a_super_admin() {
        Spec::<Account>::given([])
            .when(create(&[Role::SuperAdmin]))
            .then([created(&[Role::SuperAdmin])]);
    }

    #[test]
    fn an_admin_creates_users_but_not_admins() {
        let admin = as_account("root", &[Role::Admin], t0());
        Spec::<Account>::given([])
            .in_context(admin.clone())
            .when(create(&[Role::User, Role::Auditor]))
            .then([AccountEvent::AccountCreated(AccountCreated {
                account_id: Uuid::from_u128(7),
                username: ada(),
                roles: [Role::User, Role::Auditor].into(),
                password_hash: hash(1),
                by: "root".into(),
            })]);
        Spec::<Account>::given([])
            .in_context(admin)
            .when(create(&[Role::Admin]))
            .then_err(|e| matches!(e, AccountError::Forbidden(_)));
    }

    #[test]
    fn a_user_cannot_create_accounts() {
        Spec::<Account>::given([])
            .in_context(as_account("bob", &[Role::User], t0()))
            .when(create(&[Role::User]))
            .then_err(|e| matches!(e, AccountError::Forbidden(_)));
    }

    #[test]
    fn an_account_is_created_once_and_with_a_role() {
        Spec::<Account>::given([created(&[Role::User])])
            .when(create(&[Role::User]))
            .then_err(|e| matches!(e, AccountError::AlreadyExists(_)));
        Spec::<Account>::given([])
            .when(create(&[]))
            .then_err(|e| *e == AccountError::NoRoles);
    }

    #[test]
    fn a_matching_password_starts_a_session() {
        let state = Spec::<Account>::given([created(&[Role::User])])
            .in_context(anonymous(t0()))
            .when(login(1, PasswordCheck::Matched(hash(1))))
            .then([started(1)]);
        assert_eq!(state.account.unwrap().session.unwrap().session_id, sid(1));
    }

    #[test]
    fn a_second_login_supersedes_the_first_session() {
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(anonymous(t0()))
            .when(login(2, PasswordCheck::Matched(hash(1))))
            .then([
                ended(1, EndReason::Superseded { by_session: sid(2) }),
                started(2),
            ]);
    }

    #[test]
    fn a_wrong_password_is_recorded_without_the_password() {
        Spec::<Account>::given([created(&[Role::User])])
            .in_context(anonymous(t0()))
            .when(login(1, PasswordCheck::Mismatched))
            .then([AccountEvent::LoginFailed(LoginFailed {
                client_ip: Some("127.0.0.1".into()),
                reason: LoginFailure::WrongPassword,
                at: Some(t0()),
            })]);
    }

    #[test]
    fn an_account_remembers_when_its_latest_logins_failed() {
        let failed_at = |seconds: i64| {
            AccountEvent::LoginFailed(LoginFailed {
                client_ip: None,
                reason: LoginFailure::WrongPassword,
                at: Some(t0() + time::Duration::seconds(seconds)),
            })
        };
        let mut history = vec![created(&[Role::User])];
        history.extend((0..70).map(failed_at));
        // An event from before failures had times counts for nothing.
        history.push(AccountEvent::LoginFailed(LoginFailed {
            client_ip: None,
            reason: LoginFailure::WrongPassword,
            at: None,
        }));
        let state = Account::fold(&history);
        let account = state.account.unwrap();
        assert_eq!(account.recent_failures.len(), RECENT_FAILURES);
        assert_eq!(
            account.failures_since(t0() + time::Duration::seconds(64)),
            (5, Some(t0() + time::Duration::seconds(65)))
        );
        assert_eq!(
            account.failures_since(t0() + time::Duration::hours(1)),
            (0, None)
        );
    }

    #[test]
    fn a_disabled_account_cannot_log_in() {
        let disabled = AccountEvent::AccountDisabled(AccountDisabled {
            reason: "left".into(),
            by: "root".into(),
        });
        Spec::<Account>::given([created(&[Role::User]), disabled])
            .in_context(anonymous(t0()))
            .when(login(1, PasswordCheck::Matched(hash(1))))
            .then([AccountEvent::LoginFailed(LoginFailed {
                client_ip: Some("127.0.0.1".into()),
                reason: LoginFailure::AccountDisabled,
                at: Some(t0()),
            })]);
    }

    #[test]
    fn a_password_changed_during_login_makes_it_stale() {
        let changed = AccountEvent::PasswordChanged(PasswordChanged {
            password_hash: hash(2),
            by: "ada".into(),
        });
        Spec::<Account>::given([created(&[Role::User]), changed])
            .in_context(anonymous(t0()))
            .when(login(1, PasswordCheck::Matched(hash(1))))
            .then_err(|e| *e == AccountError::StaleCredentials);
    }

    #[test]
    fn logging_in_to_a_missing_account_is_not_found() {
        Spec::<Account>::given([])
            .in_context(anonymous(t0()))
            .when(login(1, PasswordCheck::Mismatched))
            .then_err(|e| *e == AccountError::NotFound);
    }

    fn refresh(n: u128, presented: u8, at: OffsetDateTime) -> AccountCommand {
        AccountCommand::Refresh {
            session_id: sid(n),
            presented: TokenHash(format!("refresh{presented}")),
            tokens: tokens(9, at),
        }
    }

    #[test]
    fn a_refresh_within_the_grace_period_keeps_the_session() {
        // The access token expired at +15 min; grace runs to +45 min.
        let at = t0() + Duration::minutes(40);
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(as_account("ada", &[Role::User], at))
            .when(refresh(1, 1, at))
            .then([AccountEvent::SessionRefreshed(SessionRefreshed {
                session_id: sid(1),
                tokens: tokens(9, at),
            })]);
    }

    #[test]
    fn a_refresh_after_the_grace_period_needs_a_new_login() {
        let at = t0() + Duration::minutes(46);
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(as_account("ada", &[Role::User], at))
            .when(refresh(1, 1, at))
            .then_err(|e| matches!(e, AccountError::RefreshWindowClosed(_)));
    }

    #[test]
    fn a_refresh_with_an_old_or_foreign_token_is_refused() {
        let at = t0() + Duration::minutes(1);
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(as_account("ada", &[Role::User], at))
            .when(refresh(1, 2, at))
            .then_err(|e| *e == AccountError::InvalidRefreshToken);
        Spec::<Account>::given([created(&[Role::User]), started(1), started(2)])
            .in_context(as_account("ada", &[Role::User], at))
            .when(refresh(1, 1, at))
            .then_err(|e| *e == AccountError::SessionNotLive(sid(1)));
    }

    #[test]
    fn logout_ends_the_session_once() {
        let me = as_account("ada", &[Role::User], t0());
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(me.clone())
            .when(AccountCommand::Logout { session_id: sid(1) })
            .then([ended(1, EndReason::LoggedOut)]);
        Spec::<Account>::given([
            created(&[Role::User]),
            started(1),
            ended(1, EndReason::LoggedOut),
        ])
        .in_context(me)
        .when(AccountCommand::Logout { session_id: sid(1) })
        .then([]);
    }

    #[test]
    fn an_idle_session_expires_only_after_its_grace_period() {
        let ctx = |m| Context::new(t0() + Duration::minutes(m), Actor::System);
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(ctx(30))
            .when(AccountCommand::ExpireSession { session_id: sid(1) })
            .then_err(|e| matches!(e, AccountError::NotExpired(_)));
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(ctx(46))
            .when(AccountCommand::ExpireSession { session_id: sid(1) })
            .then([ended(1, EndReason::Expired)]);
    }

    #[test]
    fn disabling_an_account_ends_its_session() {
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(as_account("root", &[Role::Admin], t0()))
            .when(AccountCommand::Disable {
                reason: "left the company".into(),
            })
            .then([
                AccountEvent::AccountDisabled(AccountDisabled {
                    reason: "left the company".into(),
                    by: "root".into(),
                }),
                ended(1, EndReason::AccountDisabled),
            ]);
    }

    #[test]
    fn an_admin_cannot_disable_another_admin_or_itself() {
        Spec::<Account>::given([created(&[Role::Admin])])
            .in_context(as_account("root", &[Role::Admin], t0()))
            .when(AccountCommand::Disable { reason: "x".into() })
            .then_err(|e| matches!(e, AccountError::Forbidden(_)));
        Spec::<Account>::given([created(&[Role::SuperAdmin])])
            .in_context(as_account("ada", &[Role::SuperAdmin], t0()))
            .when(AccountCommand::Disable { reason: "x".into() })
            .then_err(|e| matches!(e, AccountError::Forbidden(_)));
    }

    fn change_password(verified_against: Option<PasswordHash>) -> AccountCommand {
        AccountCommand::ChangePassword {
            new_password_hash: hash(2),
            verified_against,
        }
    }

    fn password_changed(by: &str) -> AccountEvent {
        AccountEvent::PasswordChanged(PasswordChanged {
            password_hash: hash(2),
            by: by.into(),
        })
    }

    #[test]
    fn a_password_reset_by_an_admin_ends_the_session_but_ones_own_change_does_not() {
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(as_account("ada", &[Role::User], t0()))
            .when(change_password(Some(hash(1))))
            .then([password_changed("ada")]);
        Spec::<Account>::given([created(&[Role::User]), started(1)])
            .in_context(as_account("root", &[Role::Admin], t0()))
            .when(change_password(None))
            .then([password_changed("root"), ended(1, EndReason::PasswordReset)]);
        Spec::<Account>::given([created(&[Role::User])])
            .in_context(as_account("bob", &[Role::User], t0()))
            .when(change_password(None))
            .then_err(|e| matches!(e, AccountError::Forbidden(_)));
    }

    #[test]
    fn a_password_changed_since_the_current_one_was_checked_makes_the_change_stale() {
        Spec::<Account>::given([created(&[Role::User]), password_changed("root")])
            .in_context(as_account("ada", &[Role::User], t0()))
            .when(AccountCommand::ChangePassword {
                new_password_hash: hash(3),
                verified_against: Some(hash(1)),
            })
            .then_err(|e| *e == AccountError::StaleCredentials);
    }

    #[test]
    fn ones_own_password_change_needs_the_current_password() {
        Spec::<Account>::given([created(&[Role::User])])
            .in_context(as_account("ada", &[Role::User], t0()))
            .when(change_password(None))
            .then_err(|e| matches!(e, AccountError::Forbidden(_)));
    }

    /// Who administers whom, written out rather than derived from
    /// `administers`: rows are actors, columns the account's role
    /// (user, auditor, admin, super_admin).
    const ADMINISTERS: [(&str, &[Role], [bool; 4]); 5] = [
        ("a user", &[Role::User], [false, false, false, false]),
        ("an auditor", &[Role::Auditor], [false, false, false, false]),
        ("an admin", &[Role::Admin], [true, true, false, false]),
        (
            "a super-admin",
            &[Role::SuperAdmin],
            [true, true, true, true],
        ),
        ("the system", &[], [true, true, true, true]),
    ];
    const TARGETS: [Role; 4] = [Role::User, Role::Auditor, Role::Admin, Role::SuperAdmin];

    /// Runs `check(actor, target role, allowed)` for every actor and account role.
    fn for_every_role_pair(check: impl Fn(Context, &str, Role, bool)) {
        for (who, roles, allowed) in ADMINISTERS {
            let ctx = if roles.is_empty() {
                Context::new(t0(), Actor::System)
            } else {
                as_account("root", roles, t0())
            };
            for (target, allowed) in TARGETS.into_iter().zip(allowed) {
                println!("{who} acting on an account with the role {target} (allowed: {allowed})");
                check(ctx.clone(), &ctx.actor.name(), target, allowed);
            }
        }
    }

    #[test]
    fn a_session_is_revoked_only_by_an_admin_above_its_account() {
        for_every_role_pair(|ctx, by, target, allowed| {
            let spec = Spec::<Account>::given([created(&[target]), started(1)])
                .in_context(ctx)
                .when(AccountCommand::RevokeSession { session_id: sid(1) });
            if allowed {
                spec.then([ended(1, EndReason::Revoked { by: by.into() })]);
            } else {
                spec.then_err(|e| matches!(e, AccountError::Forbidden(_)));
            }
        });
    }

    #[test]
    fn an_account_is_disabled_only_by_an_admin_above_it() {
        for_every_role_pair(|ctx, by, target, allowed| {
            let spec = Spec::<Account>::given([created(&[target])])
                .in_context(ctx)
                .when(AccountCommand::Disable { reason: "x".into() });
            if allowed {
                spec.then([AccountEvent::AccountDisabled(AccountDisabled {
                    reason: "x".into(),
                    by: by.into(),
                })]);
            } else {
                spec.then_err(|e| matches!(e, AccountError::Forbidden(_)));
            }
        });
    }

    #[test]
    fn a_password_is_reset_only_by_an_admin_above_its_account() {
        for_every_role_pair(|ctx, by, target, allowed| {
            let spec = Spec::<Account>::given([created(&[target])])
                .in_context(ctx)
                .when(change_password(None));
            if allowed {
                spec.then([password_changed(by)]);
            } else {
                spec.then_err(|e| matches!(e, AccountError::Forbidden(_)));
            }
        });
    }

    #[test]
    fn another_accounts_session_is_logged_out_only_by_an_admin_above_it() {
        for_every_role_pair(|ctx, _, target, allowed| {
            let spec = Spec::<Account>::given([created(&[target]), started(1)])
                .in_context(ctx)
                .when(AccountCommand::Logout { session_id: sid(1) });
            if allowed {
                spec.then([ended(1, EndReason::LoggedOut)]);
            } else {
                spec.then_err(|e| matches!(e, AccountError::Forbidden(_)));
            }
        });
    }

    #[test]
    fn debug_output_never_shows_password_or_token_hashes() {
        let printed = format!(
            "{:?} {:?} {:?}",
            created(&[Role::User]),
            started(1),
            login(1, PasswordCheck::Matched(hash(1)))
        );
        assert!(
            printed.contains("PasswordHash(..)") && printed.contains("TokenHash(..)"),
            "{printed}"
        );
        assert!(
            !printed.contains("argon2id") && !printed.contains("refresh1"),
            "{printed}"
        );
    }
}

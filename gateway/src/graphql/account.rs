//! Accounts over GraphQL: who am I; creating, disabling and listing
//! accounts (admins, from the `accounts` view); changing one's password.

use std::sync::LazyLock;

use async_graphql::{Context, Enum, Object, SimpleObject};
use domain::account::{Account, AccountCommand, AccountError, Username};
use domain::{Role, StreamId};
use projections::{Row, SqlValue, accounts_view};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::password;
use crate::graphql::error::{self, Code, Coded};
use crate::graphql::{
    ADMINS, app, check_first, decision, from_micros, principal, principal_with, row_err,
};

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

/// A page of accounts after a username (every username sorts after ''),
/// in username order.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM {} WHERE username > $1 ORDER BY username LIMIT $2",
        accounts_view::TABLE
    )
});

/// An account as the admin screen lists it. No password hash: the view
/// holds none.
#[derive(SimpleObject)]
#[graphql(name = "Account")]
pub struct AccountListing {
    pub username: String,
    pub account_id: Uuid,
    pub roles: Vec<RoleName>,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub password_changed_at: Option<OffsetDateTime>,
    pub last_login_at: Option<OffsetDateTime>,
    /// Wrong passwords and logins to the disabled account, ever.
    pub failed_logins: i64,
}

#[derive(Default)]
pub struct AccountQuery;

#[Object]
impl AccountQuery {
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

    /// Accounts in username order, `first` after the username `after` (admins).
    async fn accounts(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<Vec<AccountListing>> {
        principal_with(ctx, ADMINS, "listing accounts")?;
        check_first(first)?;
        let rows = app(ctx)
            .views
            .query(
                &PAGE,
                vec![
                    SqlValue::from(after.unwrap_or_default()),
                    SqlValue::Int(i64::from(first)),
                ],
            )
            .await
            .map_err(|e| error::internal("cannot read accounts", &e))?;
        rows.iter().map(account_from).collect()
    }
}

#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
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
}

pub(crate) fn parse_username(field: &str, raw: &str) -> async_graphql::Result<Username> {
    Username::parse(raw).map_err(|e| error::invalid(field, e))
}

pub(crate) fn stream_of(username: &Username) -> async_graphql::Result<StreamId> {
    username
        .stream()
        .map_err(|e| error::error(Code::Validation, e.to_string()))
}

/// Runs an account command as the logged-in principal.
pub(crate) async fn account_command(
    ctx: &Context<'_>,
    username: &Username,
    command: AccountCommand,
    idempotency_key: Option<String>,
) -> async_graphql::Result<()> {
    crate::graphql::handle::<Account>(
        ctx,
        &stream_of(username)?,
        command,
        &decision(ctx)?,
        idempotency_key,
    )
    .await?;
    Ok(())
}

impl Coded for AccountError {
    fn code(&self) -> Code {
        match self {
            AccountError::NotFound => Code::NotFound,
            AccountError::AlreadyExists(_)
            | AccountError::StaleCredentials
            | AccountError::NotExpired(_) => Code::Conflict,
            AccountError::NoRoles => Code::Validation,
            AccountError::Forbidden(_) | AccountError::Disabled => Code::Forbidden,
            AccountError::SessionNotLive(_)
            | AccountError::InvalidRefreshToken
            | AccountError::RefreshWindowClosed(_) => Code::Unauthenticated,
        }
    }
}

fn account_from(row: &Row) -> async_graphql::Result<AccountListing> {
    let time = |column: &str| -> async_graphql::Result<Option<OffsetDateTime>> {
        Ok(row
            .get::<Option<i64>>(column)
            .map_err(row_err)?
            .map(from_micros))
    };
    let roles: String = row.get("roles").map_err(row_err)?;
    Ok(AccountListing {
        username: row.get("username").map_err(row_err)?,
        account_id: row
            .get::<String>("account_id")
            .map_err(row_err)?
            .parse()
            .map_err(row_err)?,
        roles: roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(role_named)
            .collect::<Result<_, _>>()?,
        disabled: row.get("disabled").map_err(row_err)?,
        disabled_reason: row.get("disabled_reason").map_err(row_err)?,
        created_at: from_micros(row.get("created_at").map_err(row_err)?),
        created_by: row.get("created_by").map_err(row_err)?,
        password_changed_at: time("password_changed_at")?,
        last_login_at: time("last_login_at")?,
        failed_logins: row.get("failed_logins").map_err(row_err)?,
    })
}

/// The view keeps roles by their display names, which are their serde names.
fn role_named(name: &str) -> async_graphql::Result<RoleName> {
    serde_json::from_value::<Role>(serde_json::Value::from(name))
        .map(RoleName::from)
        .map_err(row_err)
}

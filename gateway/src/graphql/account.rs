//! Accounts over GraphQL: the admins' list of accounts, read from the
//! `accounts` view.

use std::sync::LazyLock;

use async_graphql::{Context, Object, SimpleObject};
use domain::Role;
use projections::{Row, SqlValue, accounts_view};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::graphql::error;
use crate::graphql::identity::RoleName;
use crate::graphql::{app, check_first, from_micros, principal_with};

const ADMINS: &[Role] = &[Role::Admin, Role::SuperAdmin];

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

fn row_err(e: impl std::fmt::Display) -> async_graphql::Error {
    error::internal("an accounts row did not read back", &e)
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

//! Target domains over GraphQL: claiming a domain (its verification token
//! and where to publish it), allow-listing (super-admins), and the
//! `domains` view. The verification check itself is not here yet: it needs
//! the SSRF-guarded fetch and a resolver.

use std::sync::LazyLock;

use async_graphql::{Context, Enum, Object, SimpleObject};
use domain::DomainName;
use domain::account::Username;
use domain::target_domain::{
    self, TargetDomain, TargetDomainCommand, TargetDomainError, VerificationMethod,
    VerificationToken,
};
use projections::domains_view::{self, ALL_ACCOUNTS};
use projections::{Row, SqlValue};
use time::OffsetDateTime;

use crate::auth::tokens::random_secret;
use crate::graphql::error::{self, Code, Coded};
use crate::graphql::system_settings::parse_reason;
use crate::graphql::{ADMINS, app, check_first, decision, from_micros, principal, row_err};

/// Where the owner serves the token, under the domain.
const WELL_KNOWN_PATH: &str = "/.well-known/trafficbuster-verification.txt";
/// The TXT record's name, before the domain.
const DNS_LABEL: &str = "_trafficbuster";

/// A claim: the token to publish, and the two places it may go.
#[derive(SimpleObject)]
pub struct DomainClaim {
    pub domain: String,
    pub token: String,
    pub well_known_url: String,
    pub dns_record_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum DomainStatus {
    /// Claimed, not checked yet.
    Claimed,
    /// The latest success counts until `expiresAt`.
    Verified,
    /// Checked, never successfully.
    Failed,
    /// Allowed for every account by a super-admin.
    AllowListed,
}

// `remote` derives the conversions, so a method added in the domain fails
// to compile until it is added here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "domain::target_domain::VerificationMethod")]
pub enum VerificationMethodName {
    WellKnown,
    DnsTxt,
}

/// A row of the `domains` view: an account's claim, or an allow-listing.
#[derive(SimpleObject)]
#[graphql(name = "Domain")]
pub struct DomainListing {
    pub domain: String,
    /// The claiming account; null for an allow-listing (every account's).
    pub account: Option<String>,
    pub status: DomainStatus,
    pub method: Option<VerificationMethodName>,
    pub verified_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    pub last_failure: Option<String>,
    /// Who allow-listed it, and why.
    pub allow_listed_by: Option<String>,
    pub allow_listed_reason: Option<String>,
    pub updated_at: OffsetDateTime,
    /// Pass as `after` for the rows after this one.
    pub cursor: String,
}

#[derive(SimpleObject)]
pub struct DomainPage {
    /// In domain order, then account.
    pub entries: Vec<DomainListing>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

// Keyset paging on (domain, account); `$3` limits rows to one account's
// claims and the allow-listings.
static ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM {} WHERE (domain > $1 OR (domain = $1 AND account > $2)) \
         ORDER BY domain, account LIMIT $3",
        domains_view::TABLE
    )
});
static OWN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM {} WHERE (domain > $1 OR (domain = $1 AND account > $2)) \
         AND (account = $4 OR account = $5) ORDER BY domain, account LIMIT $3",
        domains_view::TABLE
    )
});

#[derive(Default)]
pub struct TargetDomainQuery;

#[Object]
impl TargetDomainQuery {
    /// Target domains: the logged-in account's claims and every
    /// allow-listed domain; admins see every account's claims.
    async fn domains(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<DomainPage> {
        let p = principal(ctx)?;
        check_first(first)?;
        let (domain, account) = match &after {
            None => (String::new(), String::new()),
            Some(cursor) => parse_cursor(cursor)?,
        };
        let mut params = vec![
            SqlValue::from(domain),
            SqlValue::from(account),
            SqlValue::Int(i64::from(first) + 1),
        ];
        let admin = ADMINS.iter().any(|r| p.roles.contains(r));
        let sql: &str = if admin {
            &ALL
        } else {
            params.push(SqlValue::from(p.username.as_str()));
            params.push(SqlValue::from(ALL_ACCOUNTS));
            &OWN
        };
        let rows = app(ctx)
            .views
            .query(sql, params)
            .await
            .map_err(|e| error::internal("cannot read domains", &e))?;
        let entries = rows
            .iter()
            .take(first as usize)
            .map(listing_from)
            .collect::<async_graphql::Result<Vec<_>>>()?;
        let next_cursor = (rows.len() > first as usize)
            .then(|| entries.last().map(|e| e.cursor.clone()))
            .flatten();
        Ok(DomainPage {
            entries,
            next_cursor,
        })
    }
}

#[derive(Default)]
pub struct TargetDomainMutation;

#[Object]
impl TargetDomainMutation {
    /// Claims a domain for the logged-in account: the token to publish at
    /// the well-known URL or in the DNS TXT record. Claiming again returns
    /// the same token.
    async fn claim_domain(
        &self,
        ctx: &Context<'_>,
        domain: String,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<DomainClaim> {
        let account = principal(ctx)?.username.clone();
        let domain = parse_domain("domain", &domain)?;
        let token = VerificationToken::parse(&random_secret())
            .map_err(|e| error::internal("a fresh token is not a verification token", &e))?;
        let command = TargetDomainCommand::Claim {
            account: account.clone(),
            token,
        };
        domain_command(ctx, &domain, command, idempotency_key).await?;
        // The state, not the fresh token: a repeated claim keeps its first.
        let (_, state) = app(ctx)
            .handler
            .load::<TargetDomain>(&stream(&domain)?)
            .await
            .map_err(|e| error::internal("cannot read the domain", &e))?;
        let token = claimed_token(&state, &account)?;
        Ok(DomainClaim {
            well_known_url: format!("https://{domain}{WELL_KNOWN_PATH}"),
            dns_record_name: format!("{DNS_LABEL}.{domain}"),
            domain: domain.to_string(),
            token,
        })
    }

    /// Allows traffic to a domain for every account without verification
    /// (super-admins), saying why.
    async fn allow_list_domain(
        &self,
        ctx: &Context<'_>,
        domain: String,
        reason: String,
    ) -> async_graphql::Result<bool> {
        let domain = parse_domain("domain", &domain)?;
        let reason = parse_reason("reason", &reason)?;
        domain_command(
            ctx,
            &domain,
            TargetDomainCommand::AllowList { reason },
            None,
        )
        .await?;
        Ok(true)
    }

    /// Takes a domain off the allow-list (super-admins), saying why.
    async fn remove_from_allow_list(
        &self,
        ctx: &Context<'_>,
        domain: String,
        reason: String,
    ) -> async_graphql::Result<bool> {
        let domain = parse_domain("domain", &domain)?;
        let reason = parse_reason("reason", &reason)?;
        let command = TargetDomainCommand::RemoveFromAllowList { reason };
        domain_command(ctx, &domain, command, None).await?;
        Ok(true)
    }
}

/// A domain name, or VALIDATION naming the field and the problem.
pub(crate) fn parse_domain(field: &str, raw: &str) -> async_graphql::Result<DomainName> {
    DomainName::parse(raw).map_err(|e| error::invalid(field, e))
}

fn stream(domain: &DomainName) -> async_graphql::Result<domain::StreamId> {
    target_domain::stream(domain).map_err(|e| error::error(Code::Validation, e.to_string()))
}

async fn domain_command(
    ctx: &Context<'_>,
    domain: &DomainName,
    command: TargetDomainCommand,
    idempotency_key: Option<String>,
) -> async_graphql::Result<()> {
    crate::graphql::handle::<TargetDomain>(
        ctx,
        &stream(domain)?,
        command,
        &decision(ctx)?,
        idempotency_key,
    )
    .await?;
    Ok(())
}

fn claimed_token(
    state: &target_domain::TargetDomainState,
    account: &Username,
) -> async_graphql::Result<String> {
    state
        .claims
        .get(account)
        .map(|claim| claim.token.as_str().to_owned())
        .ok_or_else(|| error::internal("the claim is not in the domain's state", &account))
}

/// A cursor is a row's domain and account, apart by a space (neither holds one).
fn cursor_of(domain: &str, account: &str) -> String {
    format!("{domain} {account}")
}

fn parse_cursor(cursor: &str) -> async_graphql::Result<(String, String)> {
    cursor
        .split_once(' ')
        .map(|(d, a)| (d.to_owned(), a.to_owned()))
        .ok_or_else(|| {
            error::invalid(
                "after",
                format!("{cursor:?} is not a cursor returned by domains"),
            )
        })
}

fn listing_from(row: &Row) -> async_graphql::Result<DomainListing> {
    let time = |column: &str| -> async_graphql::Result<Option<OffsetDateTime>> {
        Ok(row
            .get::<Option<i64>>(column)
            .map_err(row_err)?
            .map(from_micros))
    };
    let domain: String = row.get("domain").map_err(row_err)?;
    let account: String = row.get("account").map_err(row_err)?;
    let status: String = row.get("status").map_err(row_err)?;
    let method = row
        .get::<Option<String>>("method")
        .map_err(row_err)?
        .map(|m| {
            serde_json::from_value::<VerificationMethod>(serde_json::Value::from(m))
                .map(VerificationMethodName::from)
                .map_err(row_err)
        })
        .transpose()?;
    Ok(DomainListing {
        cursor: cursor_of(&domain, &account),
        status: match status.as_str() {
            "claimed" => DomainStatus::Claimed,
            "verified" => DomainStatus::Verified,
            "failed" => DomainStatus::Failed,
            "allow_listed" => DomainStatus::AllowListed,
            other => return Err(row_err(format!("unknown domain status {other:?}"))),
        },
        domain,
        account: (account != ALL_ACCOUNTS).then_some(account),
        method,
        verified_at: time("verified_at")?,
        expires_at: time("expires_at")?,
        last_failure: row.get("last_failure").map_err(row_err)?,
        allow_listed_by: row.get("listed_by").map_err(row_err)?,
        allow_listed_reason: row.get("listed_reason").map_err(row_err)?,
        updated_at: from_micros(row.get("updated_at").map_err(row_err)?),
    })
}

impl Coded for TargetDomainError {
    fn code(&self) -> Code {
        match self {
            TargetDomainError::Forbidden(_) => Code::Forbidden,
            TargetDomainError::NotClaimed(_) => Code::NotFound,
            TargetDomainError::ValidityNotInFuture(_) => Code::Validation,
        }
    }
}

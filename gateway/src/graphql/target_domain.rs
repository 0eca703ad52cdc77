//! Target domains over GraphQL: claiming a domain (its verification token
//! and where to publish it), verifying it (the check is `crate::verification`;
//! the decider records what it found), allow-listing (super-admins), the
//! `domains` view, and its rows live as they change.

use std::sync::LazyLock;

use async_graphql::{Context, Enum, Object, SimpleObject, Subscription};
use domain::account::Username;
use domain::target_domain::{
    self, Failure, FailureReason, TargetDomain, TargetDomainCommand, TargetDomainError,
    TargetDomainEvent, VerificationMethod, VerificationOutcome, VerificationToken,
};
use domain::{DomainName, RecordedEvent};
use futures_util::{Stream, StreamExt};
use projections::domains_view::{self, ALL_ACCOUNTS};
use projections::{Row, SqlValue};
use store::Filter;
use time::OffsetDateTime;

use crate::auth::sessions::Principal;
use crate::auth::tokens::random_secret;
use crate::graphql::account::parse_username;
use crate::graphql::cursor;
use crate::graphql::error::{self, Code, Coded};
use crate::graphql::session_watch::{Seen, under_session};
use crate::graphql::system_settings::parse_reason;
use crate::graphql::{
    ADMINS, app, check_first, decision, from_micros, handle, now, principal, row_err,
};
use crate::live::view_reached;
use crate::state::AppState;
use crate::verification::DNS_LABEL;
use crate::verification::fetch::WELL_KNOWN_PATH;

/// The domain streams' prefix: `target-<domain>`.
const STREAM_PREFIX: &str = "target-";

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
    /// The latest success stopped counting at `expiresAt`: verify again.
    Expired,
    /// Checked, never successfully.
    Failed,
    /// Allowed for every account by a super-admin.
    AllowListed,
}

/// Why a check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum VerificationFailureReason {
    /// No file at the well-known URL, or no TXT record.
    NotFound,
    /// Found, but without this account's token.
    WrongToken,
    Timeout,
    TlsError,
    DnsError,
    RedirectToOtherHost,
    /// Nothing answered at the site's addresses.
    Unreachable,
    /// The name resolves to an address the check may not reach
    /// (loopback, private, link-local, metadata).
    RefusedAddress,
    TooLarge,
    /// Something else; `message` says what.
    Other,
}

impl From<&FailureReason> for VerificationFailureReason {
    fn from(reason: &FailureReason) -> Self {
        match reason {
            FailureReason::NotFound => Self::NotFound,
            FailureReason::WrongToken => Self::WrongToken,
            FailureReason::Timeout => Self::Timeout,
            FailureReason::TlsError => Self::TlsError,
            FailureReason::DnsError => Self::DnsError,
            FailureReason::RedirectToOtherHost => Self::RedirectToOtherHost,
            FailureReason::Unreachable => Self::Unreachable,
            FailureReason::RefusedAddress => Self::RefusedAddress,
            FailureReason::TooLarge => Self::TooLarge,
            FailureReason::Other(_) => Self::Other,
        }
    }
}

/// The latest failed check since the latest success.
#[derive(SimpleObject)]
pub struct VerificationFailure {
    pub method: VerificationMethodName,
    pub reason: VerificationFailureReason,
    /// What the check saw (never the token).
    pub detail: String,
    /// The failure in words, to show as it is.
    pub message: String,
    pub at: OffsetDateTime,
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
    pub last_failure: Option<VerificationFailure>,
    /// Who allow-listed it, and why.
    pub allow_listed_by: Option<String>,
    pub allow_listed_reason: Option<String>,
    pub updated_at: OffsetDateTime,
    /// Pass as `after` for the rows after this one.
    pub cursor: String,
}

/// A row of the `domains` view that changed.
#[derive(SimpleObject)]
pub struct DomainStatusChange {
    /// The position of the event that changed it; pass as `after` to resume.
    pub position: String,
    pub domain: String,
    /// The claiming account; null for an allow-listing.
    pub account: Option<String>,
    /// The row as it now stands; null once it is gone (taken off the allow-list).
    pub row: Option<DomainListing>,
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
static ONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM {} WHERE domain = $1 AND account = $2",
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
        let sql: &str = if is_admin(p) {
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
        let now = now();
        let entries = rows
            .iter()
            .take(first as usize)
            .map(|row| listing_from(row, now))
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

    /// Checks that the domain publishes the claim's token: in the
    /// well-known file or the DNS TXT record (`method`), or without one
    /// in the file, then the record. Records the success (valid for the
    /// gateway's set period) or the failure with its reason, and returns
    /// the domain's row as it now stands. `account` lets an admin verify
    /// another account's claim; it defaults to the logged-in account.
    async fn verify_domain(
        &self,
        ctx: &Context<'_>,
        domain: String,
        method: Option<VerificationMethodName>,
        account: Option<String>,
    ) -> async_graphql::Result<DomainListing> {
        let p = principal(ctx)?;
        let domain = parse_domain("domain", &domain)?;
        let account = match account {
            Some(raw) => parse_username("account", &raw)?,
            None => p.username.clone(),
        };
        let stream = stream(&domain)?;
        let app = app(ctx);
        // Refused before the site is contacted, as the record would be.
        let (_, state) = app
            .handler
            .load::<TargetDomain>(&stream)
            .await
            .map_err(|e| error::internal("cannot read the domain", &e))?;
        let token = target_domain::token_to_check(&state, &account, &p.actor())
            .map_err(|e| error::refused(&e))?
            .clone();
        let _in_flight = app
            .verifier
            .admit(p.username.as_str())
            .map_err(error::rate_limited)?;
        let (method, found) = app
            .verifier
            .verify(&domain, &token, method.map(Into::into))
            .await;
        // The check may have taken seconds: the decision's time is now.
        let decision = decision(ctx)?;
        let outcome = match found {
            Ok(()) => VerificationOutcome::Verified {
                valid_until: decision.now + app.verifier.valid_for(),
            },
            Err(failed) => VerificationOutcome::Failed {
                reason: failed.reason,
                detail: failed.detail,
            },
        };
        let command = TargetDomainCommand::RecordVerification {
            account: account.clone(),
            method,
            outcome,
        };
        let handled = handle::<TargetDomain>(ctx, &stream, command, &decision, None).await?;
        let position = handled
            .position
            .ok_or_else(|| error::internal("the check was not recorded", &domain))?;
        if !view_reached(app, domains_view::NAME, position).await {
            return Err(error::internal(
                "the check is recorded, but the domains view has not caught up",
                &domain,
            ));
        }
        listing(app, domain.as_str(), account.as_str())
            .await?
            .ok_or_else(|| {
                error::internal("the verified claim is not in the domains view", &domain)
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

#[derive(Default)]
pub struct TargetDomainSubscription;

#[Subscription]
impl TargetDomainSubscription {
    /// A `domains` row each time a claim, a check, an allow-listing or its
    /// removal lands: the logged-in account's claims and every
    /// allow-listing; admins get every account's.
    /// With `after` (a change's `position`), the changes since then first.
    async fn domain_status_changed(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = DomainStatusChange>> {
        let p = principal(ctx)?.clone();
        let after = cursor("after", after.as_deref())?;
        let app = app(ctx).clone();
        let watch = under_session(
            app.clone(),
            p.clone(),
            Some(Filter::stream_prefix(STREAM_PREFIX)),
            after,
        );
        Ok(watch.filter_map(move |seen| {
            let app = app.clone();
            let p = p.clone();
            async move {
                match seen {
                    Seen::Event(event) => change(&app, &p, &event).await,
                    Seen::Refreshed(_) | Seen::Ended(_) => None,
                }
            }
        }))
    }
}

/// The row `event` changed, if `p` may see it, once the view shows it.
async fn change(
    app: &AppState,
    p: &Principal,
    event: &RecordedEvent,
) -> Option<DomainStatusChange> {
    let domain = event.stream_id.as_str().strip_prefix(STREAM_PREFIX)?;
    let decoded = app.handler.registry().decode::<TargetDomainEvent>(event);
    let account = match decoded {
        Ok(TargetDomainEvent::DomainClaimed(e)) => e.account.to_string(),
        Ok(TargetDomainEvent::DomainVerified(e)) => e.account.to_string(),
        Ok(TargetDomainEvent::DomainVerificationFailed(e)) => e.account.to_string(),
        Ok(
            TargetDomainEvent::DomainAllowListed(_)
            | TargetDomainEvent::DomainRemovedFromAllowList(_),
        ) => ALL_ACCOUNTS.to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "domainStatusChanged cannot read an event");
            return None;
        }
    };
    let visible = account == ALL_ACCOUNTS || account == p.username.as_str() || is_admin(p);
    if !visible {
        return None;
    }
    if !view_reached(app, domains_view::NAME, event.position).await {
        tracing::warn!(
            domain,
            "domainStatusChanged: the domains view has not caught up"
        );
        return None;
    }
    let row = match listing(app, domain, &account).await {
        Ok(row) => row,
        Err(e) => {
            tracing::warn!(error = ?e.message, "domainStatusChanged cannot read the row");
            return None;
        }
    };
    Some(DomainStatusChange {
        position: event.position.to_string(),
        domain: domain.to_owned(),
        account: (account != ALL_ACCOUNTS).then_some(account),
        row,
    })
}

/// The row of `account`'s claim on `domain` (or of its allow-listing).
async fn listing(
    app: &AppState,
    domain: &str,
    account: &str,
) -> async_graphql::Result<Option<DomainListing>> {
    let rows = app
        .views
        .query(&ONE, vec![SqlValue::from(domain), SqlValue::from(account)])
        .await
        .map_err(|e| error::internal("cannot read domains", &e))?;
    let now = now();
    rows.first().map(|row| listing_from(row, now)).transpose()
}

/// Admins see every account's claims.
fn is_admin(p: &Principal) -> bool {
    ADMINS.iter().any(|r| p.roles.contains(r))
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
    handle::<TargetDomain>(
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

/// A view row as the API shows it at `now`: a verification past its
/// expiry is EXPIRED.
fn listing_from(row: &Row, now: OffsetDateTime) -> async_graphql::Result<DomainListing> {
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
    let expires_at = time("expires_at")?;
    let last_failure = match (
        row.get::<Option<String>>("last_failure").map_err(row_err)?,
        time("failed_at")?,
    ) {
        (Some(json), Some(at)) => {
            let failure: Failure = serde_json::from_str(&json).map_err(row_err)?;
            Some(VerificationFailure {
                method: failure.method.into(),
                reason: (&failure.reason).into(),
                message: failure.to_string(),
                detail: failure.detail,
                at,
            })
        }
        _ => None,
    };
    Ok(DomainListing {
        cursor: cursor_of(&domain, &account),
        status: status_at(&status, expires_at, now)?,
        domain,
        account: (account != ALL_ACCOUNTS).then_some(account),
        method,
        verified_at: time("verified_at")?,
        expires_at,
        last_failure,
        allow_listed_by: row.get("listed_by").map_err(row_err)?,
        allow_listed_reason: row.get("listed_reason").map_err(row_err)?,
        updated_at: from_micros(row.get("updated_at").map_err(row_err)?),
    })
}

/// The status the view stored, as it stands at `now`: a verification
/// counts until its expiry, excluded (as consent judges it).
fn status_at(
    stored: &str,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> async_graphql::Result<DomainStatus> {
    Ok(match stored {
        "claimed" => DomainStatus::Claimed,
        "verified" if expires_at.is_some_and(|at| at <= now) => DomainStatus::Expired,
        "verified" => DomainStatus::Verified,
        "failed" => DomainStatus::Failed,
        "allow_listed" => DomainStatus::AllowListed,
        other => return Err(row_err(format!("unknown domain status {other:?}"))),
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

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    #[test]
    fn a_verification_shows_expired_from_its_expiry_on() {
        let now = OffsetDateTime::now_utc();
        let status = |expires: OffsetDateTime| status_at("verified", Some(expires), now).unwrap();
        assert_eq!(status(now + Duration::seconds(1)), DomainStatus::Verified);
        assert_eq!(status(now), DomainStatus::Expired);
        assert_eq!(status(now - Duration::days(1)), DomainStatus::Expired);
        // Other statuses show as stored.
        assert_eq!(
            status_at("failed", None, now).unwrap(),
            DomainStatus::Failed
        );
        assert!(status_at("gone", None, now).is_err());
    }
}

//! External-click consents over GraphQL: the logged-in account grants and
//! revokes the domains its flows may follow an external link to (granting
//! needs the `externalClicks` feature of its licence), and lists its own
//! from the `consents` view.

use std::sync::LazyLock;

use async_graphql::{Context, ErrorExtensionValues, Object, SimpleObject};
use domain::click_consent::{self, ClickConsent, ClickConsentCommand, ClickConsentError};
use projections::{Row, SqlValue, consents_view};
use time::OffsetDateTime;

use crate::graphql::error::{self, Code, Coded};
use crate::graphql::licence::licensed_decision;
use crate::graphql::system_settings::parse_reason;
use crate::graphql::target_domain::parse_domain;
use crate::graphql::{app, check_first, from_micros, principal, row_err};

/// A domain the account's flows may follow external links to (and its
/// subdomains).
#[derive(SimpleObject)]
pub struct ExternalClickConsent {
    pub domain: String,
    pub granted_by: String,
    pub reason: String,
    pub granted_at: OffsetDateTime,
}

/// One account's grants in domain order, `$3` after the domain `$2`.
static OWN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM {} WHERE account = $1 AND domain > $2 ORDER BY domain LIMIT $3",
        consents_view::TABLE
    )
});

#[derive(Default)]
pub struct ClickConsentQuery;

#[Object]
impl ClickConsentQuery {
    /// The logged-in account's external-click consents, `first` after the
    /// domain `after`.
    async fn external_click_consents(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<Vec<ExternalClickConsent>> {
        let p = principal(ctx)?;
        check_first(first)?;
        let rows = app(ctx)
            .views
            .query(
                &OWN,
                vec![
                    SqlValue::from(p.username.as_str()),
                    SqlValue::from(after.unwrap_or_default()),
                    SqlValue::Int(i64::from(first)),
                ],
            )
            .await
            .map_err(|e| error::internal("cannot read consents", &e))?;
        rows.iter().map(consent_from).collect()
    }
}

#[derive(Default)]
pub struct ClickConsentMutation;

#[Object]
impl ClickConsentMutation {
    /// Lets the logged-in account's flows follow external links to a
    /// domain and its subdomains, saying why (needs `externalClicks`).
    async fn grant_external_clicks(
        &self,
        ctx: &Context<'_>,
        domain: String,
        reason: String,
    ) -> async_graphql::Result<bool> {
        let account = principal(ctx)?.username.clone();
        let command = ClickConsentCommand::Grant {
            domain: parse_domain("domain", &domain)?,
            reason: parse_reason("reason", &reason)?,
            account,
        };
        consent_command(ctx, command).await
    }

    /// Withdraws a grant, saying why (always allowed, licensed or not).
    async fn revoke_external_clicks(
        &self,
        ctx: &Context<'_>,
        domain: String,
        reason: String,
    ) -> async_graphql::Result<bool> {
        let account = principal(ctx)?.username.clone();
        let command = ClickConsentCommand::Revoke {
            domain: parse_domain("domain", &domain)?,
            reason: parse_reason("reason", &reason)?,
            account,
        };
        consent_command(ctx, command).await
    }
}

async fn consent_command(
    ctx: &Context<'_>,
    command: ClickConsentCommand,
) -> async_graphql::Result<bool> {
    let account = match &command {
        ClickConsentCommand::Grant { account, .. }
        | ClickConsentCommand::Revoke { account, .. } => account,
    };
    let stream = click_consent::stream(account)
        .map_err(|e| error::error(Code::Validation, e.to_string()))?;
    let decision = licensed_decision(ctx, account).await?;
    crate::graphql::handle::<ClickConsent>(ctx, &stream, command, &decision, None).await?;
    Ok(true)
}

fn consent_from(row: &Row) -> async_graphql::Result<ExternalClickConsent> {
    Ok(ExternalClickConsent {
        domain: row.get("domain").map_err(row_err)?,
        granted_by: row.get("granted_by").map_err(row_err)?,
        reason: row.get("reason").map_err(row_err)?,
        granted_at: from_micros(row.get("granted_at").map_err(row_err)?),
    })
}

impl Coded for ClickConsentError {
    fn code(&self) -> Code {
        match self {
            ClickConsentError::Forbidden(_) => Code::Forbidden,
            ClickConsentError::NotLicensed(n) => n.code(),
            ClickConsentError::CoveredByParent { .. } => Code::Conflict,
        }
    }

    fn extend(&self, x: &mut ErrorExtensionValues) {
        if let ClickConsentError::NotLicensed(n) = self {
            n.extend(x);
        }
    }
}

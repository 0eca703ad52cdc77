//! Licences over GraphQL: what the logged-in account may use, and issuing
//! licences (admins).

use async_graphql::ErrorExtensionValues;
use async_graphql::{Context, Object, SimpleObject};
use domain::account::{Account, Username};
use domain::licence::{
    Allowances, Licence, LicenceCommand, LicenceError, LicenceTerms, NotLicensed,
};
use domain::{Context as DecisionContext, StreamId};
use time::OffsetDateTime;

use crate::graphql::account::{parse_username, stream_of};
use crate::graphql::error::{self, Code, Coded};
use crate::graphql::{ADMINS, app, decision, now, principal, principal_with};
use crate::state::AppState;

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

#[derive(Default)]
pub struct LicenceQuery;

#[Object]
impl LicenceQuery {
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
}

#[derive(Default)]
pub struct LicenceMutation;

#[Object]
impl LicenceMutation {
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
        crate::graphql::handle::<Licence>(
            ctx,
            &licence_stream(&username)?,
            command,
            &decision(ctx)?,
            idempotency_key,
        )
        .await?;
        Ok(Features::from_terms(&terms, now()))
    }
}

/// What a decision needs, with the licence of `account` (the account the
/// command is for) in force, so its decider can check features and limits.
pub(crate) async fn licensed_decision(
    ctx: &Context<'_>,
    account: &Username,
) -> async_graphql::Result<DecisionContext> {
    let decision = decision(ctx)?;
    Ok(match terms_of(app(ctx), account).await? {
        Some(terms) => decision.with_licence(terms),
        None => decision,
    })
}

/// The licence terms of `account`, if it was ever issued one.
pub(crate) async fn terms_of(
    app: &AppState,
    account: &Username,
) -> async_graphql::Result<Option<LicenceTerms>> {
    let (_, state) = app
        .handler
        .load::<Licence>(&licence_stream(account)?)
        .await
        .map_err(|e| error::internal("cannot read the licence", &e))?;
    Ok(state.terms)
}

fn licence_stream(username: &Username) -> async_graphql::Result<StreamId> {
    StreamId::for_aggregate("licence", username)
        .map_err(|e| error::error(Code::Validation, e.to_string()))
}

impl Coded for LicenceError {
    fn code(&self) -> Code {
        match self {
            LicenceError::Forbidden => Code::Forbidden,
            LicenceError::ExpiresInThePast(_) => Code::Validation,
            LicenceError::NoLicence(_) => Code::NotFound,
        }
    }
}

/// FEATURE_NOT_LICENSED, naming what was refused: `{feature}`, or for a
/// limit `{limit, allowed, requested}`.
impl Coded for NotLicensed {
    fn code(&self) -> Code {
        Code::FeatureNotLicensed
    }

    fn extend(&self, x: &mut ErrorExtensionValues) {
        match self.limit {
            None => x.set("feature", self.feature),
            Some(over) => {
                x.set("limit", self.feature);
                x.set("allowed", over.allowed);
                x.set("requested", over.requested);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::licence::{Feature, Limit};
    use serde_json::json;

    use super::*;
    use crate::graphql::error::refused;

    fn extensions(e: &NotLicensed) -> serde_json::Value {
        let server = refused(e).into_server_error(async_graphql::Pos::default());
        serde_json::to_value(server.extensions).unwrap()
    }

    #[test]
    fn a_refused_feature_is_named_in_the_extensions() {
        let e = NotLicensed::feature(Feature::ExternalClicks, "the licence does not include it");
        assert_eq!(
            extensions(&e),
            json!({ "code": "FEATURE_NOT_LICENSED", "feature": "externalClicks" })
        );
        assert_eq!(
            refused(&e).message,
            "externalClicks is not licensed: the licence does not include it"
        );
    }

    #[test]
    fn a_refused_limit_says_what_is_allowed_and_what_was_requested() {
        let e = NotLicensed::limit(Limit::MaxTargets, 500, 1200, "too many");
        assert_eq!(
            extensions(&e),
            json!({ "code": "FEATURE_NOT_LICENSED", "limit": "maxTargets", "allowed": 500, "requested": 1200 })
        );
    }
}

//! The GraphQL API: the UI's one API. Queries read views, mutations issue
//! commands, subscriptions push changes. Every error carries
//! `extensions.code`.

pub mod account;
pub mod audit;
pub mod click_consent;
pub mod dataset;
pub mod dataset_rows;
pub mod depth;
pub mod error;
pub mod job;
pub mod job_vitals;
pub mod licence;
pub mod proxy_pool;
pub mod runner;
pub mod runner_key;
pub mod schedule;
pub mod session;
pub mod session_watch;
pub mod stream_events;
pub mod system_settings;
pub mod target_domain;
pub mod upload;
pub mod view_watch;
pub mod webhook;

use std::collections::BTreeSet;
use std::net::IpAddr;

use async_graphql::{Context, MergedObject, MergedSubscription, Schema};
use domain::{Context as DecisionContext, Decider, Position, Role, StreamId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::sessions::Principal;
use crate::command_handler::{CommandMeta, Handled};
use crate::graphql::error::{Code, error};
use crate::state::AppState;

/// Deepest query accepted (`ofType` chains in introspection count once: see `depth`).
pub const MAX_DEPTH: usize = 12;
/// Most complex query accepted (roughly: fields selected, lists weighted).
pub const MAX_COMPLEXITY: usize = 1000;
/// Largest page a list query returns.
pub const MAX_PAGE: i32 = 500;

// One part per concept; a part left out here is missing from the schema,
// which the drift test on `gateway/schema.graphql` shows.
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    account::AccountQuery,
    licence::LicenceQuery,
    session::SessionQuery,
    audit::AuditQuery,
    system_settings::SystemSettingsQuery,
    target_domain::TargetDomainQuery,
    click_consent::ClickConsentQuery,
    dataset::DatasetQuery,
    upload::UploadQuery,
    stream_events::StreamEventsQuery,
    runner_key::RunnerKeyQuery,
    runner::RunnerQuery,
    job::JobQuery,
    proxy_pool::ProxyPoolQuery,
    schedule::ScheduleQuery,
    webhook::WebhookQuery,
);

#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    session::SessionMutation,
    account::AccountMutation,
    licence::LicenceMutation,
    system_settings::SystemSettingsMutation,
    target_domain::TargetDomainMutation,
    click_consent::ClickConsentMutation,
    upload::UploadMutation,
    dataset::DatasetMutation,
    runner_key::RunnerKeyMutation,
    runner::RunnerMutation,
    job::JobMutation,
    schedule::ScheduleMutation,
    webhook::WebhookMutation,
);

#[derive(MergedSubscription, Default)]
#[graphql(name = "Subscription")]
pub struct SubscriptionRoot(
    session::SessionSubscription,
    audit::AuditSubscription,
    dataset::DatasetSubscription,
    runner::RunnerSubscription,
    job::JobSubscription,
    proxy_pool::ProxyPoolSubscription,
    target_domain::TargetDomainSubscription,
    stream_events::StreamEventsSubscription,
    schedule::ScheduleSubscription,
);

/// Who may administer accounts, licences and sessions.
pub const ADMINS: &[Role] = &[Role::Admin, Role::SuperAdmin];
/// Who may read the audit log.
pub const AUDITORS: &[Role] = &[Role::Auditor, Role::Admin, Role::SuperAdmin];

pub type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema with its limits. Resolvers find the state in each request's data.
pub fn schema() -> ApiSchema {
    Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        SubscriptionRoot::default(),
    )
    .extension(depth::DepthLimit(MAX_DEPTH))
    .limit_complexity(MAX_COMPLEXITY)
    .finish()
}

/// The SDL, as written to `gateway/schema.graphql`.
pub fn sdl() -> String {
    schema().sdl()
}

/// Who sent this request, as established from its token.
#[derive(Debug, Clone, Default)]
pub struct RequestAuth {
    pub principal: Option<Principal>,
    /// Why a presented token was not accepted, to say so when it matters.
    pub rejected: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

pub fn app<'a>(ctx: &Context<'a>) -> &'a AppState {
    ctx.data_unchecked::<AppState>()
}

pub fn request<'a>(ctx: &Context<'a>) -> &'a RequestAuth {
    static ANONYMOUS: std::sync::OnceLock<RequestAuth> = std::sync::OnceLock::new();
    ctx.data_opt::<RequestAuth>()
        .unwrap_or_else(|| ANONYMOUS.get_or_init(RequestAuth::default))
}

/// The logged-in principal, or UNAUTHENTICATED saying why not.
pub fn principal<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Principal> {
    let auth = request(ctx);
    auth.principal.as_ref().ok_or_else(|| match &auth.rejected {
        Some(why) => error(Code::Unauthenticated, why.clone()),
        None => error(
            Code::Unauthenticated,
            "log in first: send `Authorization: Bearer <accessToken>`",
        ),
    })
}

/// The principal, if it holds one of `roles` (or FORBIDDEN).
pub fn principal_with<'a>(
    ctx: &Context<'a>,
    roles: &[Role],
    what: &str,
) -> async_graphql::Result<&'a Principal> {
    let p = principal(ctx)?;
    if roles.iter().any(|r| p.roles.contains(r)) {
        Ok(p)
    } else {
        let names: BTreeSet<String> = roles.iter().map(ToString::to_string).collect();
        Err(error(
            Code::Forbidden,
            format!(
                "{what} needs one of the roles: {}",
                names.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ))
    }
}

/// A list query's `first`: 1 to [`MAX_PAGE`], else VALIDATION saying so.
pub fn check_first(first: i32) -> async_graphql::Result<()> {
    if (1..=MAX_PAGE).contains(&first) {
        Ok(())
    } else {
        Err(error(
            Code::Validation,
            format!("first must be between 1 and {MAX_PAGE}"),
        ))
    }
}

/// A cursor argument: a position some list or subscription returned, or
/// VALIDATION naming `field`.
pub fn cursor(field: &str, value: Option<&str>) -> async_graphql::Result<Option<Position>> {
    value
        .map(|c| {
            c.parse().map_err(|_| {
                error::invalid(
                    field,
                    format!(
                        "{c:?} is not a cursor (an event's `position`, COMMIT or COMMIT:PREPARE)"
                    ),
                )
            })
        })
        .transpose()
}

/// Metadata for a command from this request.
pub fn meta(idempotency_key: Option<String>) -> CommandMeta {
    CommandMeta {
        idempotency_key,
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
        source: Some("gateway".into()),
    }
}

/// Runs a command of decider `D` on `stream` as decided in `decision`,
/// with this request's metadata: the one way every mutation issues a
/// command, so a refusal always reaches the client with its code.
pub async fn handle<D: Decider>(
    ctx: &Context<'_>,
    stream: &StreamId,
    command: D::Command,
    decision: &DecisionContext,
    idempotency_key: Option<String>,
) -> async_graphql::Result<Handled<D::Event>>
where
    D::Command: Clone,
    D::Error: error::Coded,
{
    app(ctx)
        .handler
        .handle::<D>(stream, command, decision, &meta(idempotency_key))
        .await
        .map_err(error::command)
}

/// What a decision needs from this request: the time and the principal.
pub fn decision(ctx: &Context<'_>) -> async_graphql::Result<DecisionContext> {
    Ok(DecisionContext::new(now(), principal(ctx)?.actor()))
}

/// A view row that does not read back as its query promised.
pub fn row_err(e: impl std::fmt::Display) -> async_graphql::Error {
    error::internal("a view row did not read back", &e)
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A view timestamp (microseconds) as a date-time.
pub fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_that_is_not_a_position_names_its_field() {
        let err = cursor("after", Some("yesterday")).unwrap_err();
        assert!(err.message.starts_with("after: "), "{}", err.message);
        assert_eq!(
            cursor("after", Some("12:3")).unwrap(),
            Some(Position::new(12, 3))
        );
        assert_eq!(cursor("after", None).unwrap(), None);
    }
}

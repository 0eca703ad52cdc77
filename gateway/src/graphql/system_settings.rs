//! System settings over GraphQL: whether SAFE_MODE is on, since when and
//! why (any logged-in user: the UI says why runs are blocked), and turning
//! it off (super-admins) or on (admins).
//!
//! Read from the aggregate through the command handler, not from a view:
//! it is one short stream the handler keeps cached, a switch shows at once
//! to whoever made it, and job starts will decide on this same state. Its
//! history is in the audit view.

use async_graphql::{Context, Object, SimpleObject};
use domain::Reason;
use domain::StreamId;
use domain::system_settings::{
    self, SystemSettings as Settings, SystemSettingsCommand, SystemSettingsError,
    SystemSettingsState,
};
use time::OffsetDateTime;

use crate::graphql::error::{self, Code, Coded};
use crate::graphql::{app, decision, principal};

/// Why no job runs while safe mode is on, as the UI shows it.
const FRESH_INSTALL: &str = "a fresh install starts in safe mode";

/// The system-wide settings.
#[derive(SimpleObject)]
#[graphql(name = "SystemSettings")]
pub struct SystemSettingsView {
    pub safe_mode: SafeMode,
}

/// SAFE_MODE: while on, no job may start.
#[derive(SimpleObject)]
pub struct SafeMode {
    pub on: bool,
    /// When it was last switched; null: on since the install.
    pub since: Option<OffsetDateTime>,
    /// Why it was last switched (or that a fresh install starts on).
    pub reason: String,
    /// Who last switched it; null: nobody yet.
    pub by: Option<String>,
}

impl From<SystemSettingsState> for SystemSettingsView {
    fn from(state: SystemSettingsState) -> Self {
        let switch = state.safe_mode_switch;
        SystemSettingsView {
            safe_mode: SafeMode {
                on: state.safe_mode,
                since: switch.as_ref().map(|s| s.at),
                reason: switch
                    .as_ref()
                    .map_or_else(|| FRESH_INSTALL.to_owned(), |s| s.reason.to_string()),
                by: switch.map(|s| s.by),
            },
        }
    }
}

#[derive(Default)]
pub struct SystemSettingsQuery;

#[Object]
impl SystemSettingsQuery {
    /// The system settings (any logged-in user).
    async fn system_settings(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<SystemSettingsView> {
        principal(ctx)?;
        load(ctx).await
    }
}

#[derive(Default)]
pub struct SystemSettingsMutation;

#[Object]
impl SystemSettingsMutation {
    /// Lets jobs start again (super-admins), saying why.
    async fn turn_safe_mode_off(
        &self,
        ctx: &Context<'_>,
        reason: String,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<SystemSettingsView> {
        let reason = parse_reason("reason", &reason)?;
        let command = SystemSettingsCommand::TurnSafeModeOff { reason };
        settings_command(ctx, command, idempotency_key).await
    }

    /// Stops every job start (admins and super-admins), saying why.
    async fn turn_safe_mode_on(
        &self,
        ctx: &Context<'_>,
        reason: String,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<SystemSettingsView> {
        let reason = parse_reason("reason", &reason)?;
        let command = SystemSettingsCommand::TurnSafeModeOn { reason };
        settings_command(ctx, command, idempotency_key).await
    }
}

/// A stated reason, or VALIDATION naming the field.
pub(crate) fn parse_reason(field: &str, raw: &str) -> async_graphql::Result<Reason> {
    Reason::parse(raw).map_err(|e| error::invalid(field, e))
}

async fn settings_command(
    ctx: &Context<'_>,
    command: SystemSettingsCommand,
    idempotency_key: Option<String>,
) -> async_graphql::Result<SystemSettingsView> {
    crate::graphql::handle::<Settings>(ctx, &stream()?, command, &decision(ctx)?, idempotency_key)
        .await?;
    load(ctx).await
}

async fn load(ctx: &Context<'_>) -> async_graphql::Result<SystemSettingsView> {
    let (_, state) = app(ctx)
        .handler
        .load::<Settings>(&stream()?)
        .await
        .map_err(|e| error::internal("cannot read the system settings", &e))?;
    Ok(state.into())
}

fn stream() -> async_graphql::Result<StreamId> {
    system_settings::stream().map_err(|e| error::internal("no system settings stream", &e))
}

impl Coded for SystemSettingsError {
    fn code(&self) -> Code {
        match self {
            SystemSettingsError::Forbidden(_) => Code::Forbidden,
        }
    }
}

//! Runner keys over GraphQL (admins): `createRunnerKey` makes a key and
//! shows it once (only its SHA-256 is recorded), `revokeRunnerKey` stops it
//! letting runners in (and drops the runners connected with it), and
//! `runnerKeys` lists them without their secrets.

use async_graphql::{Context, ID, Object, SimpleObject};
use base64::Engine;
use domain::runner_key::{
    self, RunnerKey, RunnerKeyCommand, RunnerKeyError, RunnerKeyId, RunnerKeys,
};
use uuid::Uuid;

use crate::graphql::error::{self, Code, Coded};
use crate::graphql::{ADMINS, app, decision, principal_with};

/// A runner key as listed: never the key itself.
#[derive(SimpleObject)]
pub struct RunnerKeyInfo {
    pub id: ID,
    pub name: String,
    pub revoked: bool,
}

/// A key just made. `key` is shown this once; store it in the runner's
/// configuration.
#[derive(SimpleObject)]
pub struct NewRunnerKey {
    pub id: ID,
    pub name: String,
    pub key: String,
}

/// A fresh key: `tbr_` and 256 random bits, URL-safe.
pub(crate) fn make_key() -> RunnerKey {
    let bytes: [u8; 32] = rand::random();
    let raw = format!(
        "tbr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    RunnerKey::parse(&raw).expect("tbr_ and 43 base64url characters make a valid key")
}

pub(crate) fn parse_runner_key_id(field: &str, raw: &str) -> async_graphql::Result<RunnerKeyId> {
    Uuid::parse_str(raw.trim())
        .map(RunnerKeyId)
        .map_err(|e| error::invalid(field, format!("not a runner key id: {e}")))
}

fn keys_stream() -> async_graphql::Result<domain::StreamId> {
    runner_key::stream().map_err(|e| error::internal("runner keys", &e))
}

#[derive(Default)]
pub struct RunnerKeyQuery;

#[Object]
impl RunnerKeyQuery {
    /// Every runner key, revoked ones included (admins).
    async fn runner_keys(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<RunnerKeyInfo>> {
        principal_with(ctx, ADMINS, "listing runner keys")?;
        let (_, state) = app(ctx)
            .handler
            .load::<RunnerKeys>(&keys_stream()?)
            .await
            .map_err(|e| error::internal("cannot read the runner keys", &e))?;
        Ok(state
            .keys
            .into_iter()
            .map(|(id, record)| RunnerKeyInfo {
                id: ID(id.to_string()),
                name: record.name,
                revoked: record.revoked,
            })
            .collect())
    }
}

#[derive(Default)]
pub struct RunnerKeyMutation;

#[Object]
impl RunnerKeyMutation {
    /// Makes a runner key named `name` (admins). The key is in the answer
    /// and nowhere else: copy it now.
    async fn create_runner_key(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<NewRunnerKey> {
        principal_with(ctx, ADMINS, "creating runner keys")?;
        let key = make_key();
        let id = RunnerKeyId(Uuid::now_v7());
        let command = RunnerKeyCommand::Create {
            key: id,
            name,
            hash: key.hash(),
        };
        let handled = crate::graphql::handle::<RunnerKeys>(
            ctx,
            &keys_stream()?,
            command,
            &decision(ctx)?,
            None,
        )
        .await?;
        let name = handled
            .events
            .iter()
            .find_map(|e| match e {
                domain::runner_key::RunnerKeyEvent::RunnerKeyCreated(c) => Some(c.name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(NewRunnerKey {
            id: ID(id.to_string()),
            name,
            key: key.expose().to_owned(),
        })
    }

    /// Revokes a runner key (admins): no runner gets in with it any more,
    /// and those connected with it are disconnected.
    async fn revoke_runner_key(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        principal_with(ctx, ADMINS, "revoking runner keys")?;
        let key = parse_runner_key_id("id", &id)?;
        crate::graphql::handle::<RunnerKeys>(
            ctx,
            &keys_stream()?,
            RunnerKeyCommand::Revoke { key },
            &decision(ctx)?,
            None,
        )
        .await?;
        Ok(true)
    }
}

impl Coded for RunnerKeyError {
    fn code(&self) -> Code {
        match self {
            RunnerKeyError::Forbidden => Code::Forbidden,
            RunnerKeyError::BadName => Code::Validation,
            RunnerKeyError::Exists(_) => Code::Conflict,
            RunnerKeyError::NotFound(_) => Code::NotFound,
        }
    }
}

//! The key of the runner a `serve` process starts within itself. The
//! gateway mints it as the system when it starts, and revokes the keys its
//! earlier runs minted, so a key never outlives the process that held it
//! (only its hash is recorded, as for any key).

use domain::runner_key::{RunnerKey, RunnerKeyCommand, RunnerKeyId, RunnerKeys};
use domain::{Actor, Context};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::command_handler::CommandMeta;
use crate::graphql::runner_key::make_key;
use crate::state::AppState;

/// The name in-process runners' keys go by in the key list.
pub const NAME: &str = "in-process runner";

/// A fresh key for this process's own runner; earlier ones are revoked.
pub async fn mint(app: &AppState) -> Result<RunnerKey, String> {
    let stream = domain::runner_key::stream().map_err(|e| e.to_string())?;
    let ctx = || Context::new(OffsetDateTime::now_utc(), Actor::System);
    let meta = CommandMeta {
        source: Some("gateway".into()),
        ..CommandMeta::default()
    };
    let (_, keys) = app
        .handler
        .load::<RunnerKeys>(&stream)
        .await
        .map_err(|e| e.to_string())?;
    for (id, record) in keys.keys {
        if record.name == NAME && !record.revoked {
            app.handler
                .handle::<RunnerKeys>(&stream, RunnerKeyCommand::Revoke { key: id }, &ctx(), &meta)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let key = make_key();
    let command = RunnerKeyCommand::Create {
        key: RunnerKeyId(Uuid::now_v7()),
        name: NAME.into(),
        hash: key.hash(),
    };
    app.handler
        .handle::<RunnerKeys>(&stream, command, &ctx(), &meta)
        .await
        .map_err(|e| e.to_string())?;
    Ok(key)
}

//! `trafficbuster admin …`: account administration straight against the
//! store, through the same command handler and deciders as the gateway.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use domain::account::{Account, AccountCommand, Username};
use domain::{Actor, Context, Role};
use gateway::auth::password;
use gateway::{CommandHandler, CommandMeta};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cli::CreateUserArgs;
use crate::commands::open_store;
use crate::configuration::Settings;

/// The first line of standard input, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!(
            "no password on standard input (pipe it in, e.g. `printf '%s' \"$PW\" | trafficbuster admin create-user …`)"
        );
    }
    Ok(password)
}

pub async fn create_user(settings: &Settings, args: &CreateUserArgs) -> anyhow::Result<()> {
    let username = Username::parse(&args.username)?;
    let password = read_password()?;
    password::check_policy(&password)?;
    let (store, _) = open_store(&settings.store).await?;
    let handler = CommandHandler::new(store, Arc::new(domain::event_registry()));
    let roles = args.roles.iter().copied().collect();
    create_account(&handler, &username, roles, password, "cli").await?;
    let granted: Vec<String> = args.roles.iter().map(ToString::to_string).collect();
    println!("created account {username} ({})", granted.join(", "));
    Ok(())
}

/// Creates an account straight through `handler`, as the system: how the
/// first super-admin comes to be, from `admin create-user` or the demo.
/// `source` names the caller in the events' metadata.
pub async fn create_account(
    handler: &CommandHandler,
    username: &Username,
    roles: BTreeSet<Role>,
    password: String,
    source: &str,
) -> anyhow::Result<()> {
    let hash = password::hash(password).await?;
    let stream = username.stream()?;
    let ctx = Context::new(OffsetDateTime::now_utc(), Actor::System);
    let meta = CommandMeta {
        source: Some(source.into()),
        correlation_id: Some(Uuid::now_v7()),
        ..CommandMeta::default()
    };
    let command = AccountCommand::Create {
        account_id: Uuid::now_v7(),
        username: username.clone(),
        roles,
        password_hash: hash,
    };
    handler
        .handle::<Account>(&stream, command, &ctx, &meta)
        .await
        .with_context(|| format!("cannot create account {username}"))?;
    Ok(())
}

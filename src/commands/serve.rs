//! `trafficbuster serve`: open the store, apply migrations, run projections
//! and serve the gateway.

use std::sync::Arc;

use anyhow::Context;
use gateway::{Gateway, GatewayConfig};
use runner::state_dir::StateDir;
use secrecy::SecretString;

use crate::cli::ServeArgs;
use crate::commands::runner as runner_command;
use crate::commands::shutdown_signal;
use crate::configuration::Settings;

pub async fn run(settings: &Settings, args: &ServeArgs) -> anyhow::Result<()> {
    // Every setting is checked before the store is touched, and before the
    // token secret may be created beside it.
    let addr = settings.listen(args.listen.as_deref())?;
    let session_policy = settings.session_policy(args.access_token_ttl, args.refresh_grace)?;
    let login_limits =
        settings.login_limits(args.login_limit_per_address, args.login_limit_per_account)?;
    let trusted_proxies = settings.trusted_proxies(&args.trusted_proxies)?;
    let upload_ttl = settings.upload_ttl(args.upload_ttl)?;
    let runner_terms = settings.runner_terms(args.runner_heartbeat_ms, args.lease_ttl_ms)?;
    let secret = |name: &str| std::env::var(name).ok().map(SecretString::from);
    let verification = settings.verification(&args.verification)?;
    let config = GatewayConfig {
        jwt_secret: settings.jwt_secret(secret("TB_JWT_SECRET"))?,
        session_policy,
        login_limits,
        trusted_proxies,
        data_key: settings.data_key(secret("TB_DATA_KEY"))?.map(Arc::new),
        upload_ttl,
        verification,
    };
    let (backend, report) = store::open_backend(&settings.store)
        .await
        .with_context(|| format!("cannot open store {}", settings.store))?;
    for name in &report.applied {
        tracing::info!(migration = name, "applied migration");
    }
    let gateway = Gateway::start(addr, &backend, config)
        .await?
        .with_runner_terms(runner_terms);
    let bound = gateway.local_addr()?;
    tracing::info!(store = %settings.store, "gateway listening on http://{bound}");
    let runner = if args.no_runner {
        None
    } else {
        in_process_runner(&gateway, bound, settings, args).await
    };
    // On a stop signal the runner drains first (its flows finish or go
    // back to the pool) while the gateway still serves it.
    let stopping = async move {
        shutdown_signal().await;
        if let Some((stop, runner)) = runner {
            let _ = stop.send(());
            let _ = runner.await;
        }
    };
    gateway.serve(stopping).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

type RunnerHandle = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<runner::worker::Totals>,
);

/// Starts the browser runner of this process on its own minted key; a
/// machine without a browser (or without room for the runner's state)
/// serves without it, saying why.
async fn in_process_runner(
    gateway: &Gateway,
    bound: std::net::SocketAddr,
    settings: &Settings,
    args: &ServeArgs,
) -> Option<RunnerHandle> {
    let state = match settings
        .runner_state_dir(args.runner_state_dir.as_deref())
        .and_then(|dir| Ok(StateDir::open(&dir)?))
    {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!("no in-process runner: {e:#}");
            return None;
        }
    };
    let executor = match runner_command::start_browser(&args.browser).await {
        Ok(executor) => executor,
        Err(e) => {
            tracing::warn!("no in-process runner: {e}");
            return None;
        }
    };
    let key = match gateway::runner_link::local_key::mint(gateway.state()).await {
        Ok(key) => key,
        Err(e) => {
            tracing::error!("no in-process runner: cannot make its key: {e}");
            return None;
        }
    };
    let url = format!("ws://{bound}/runner");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let browser = args.browser.clone();
    let task = tokio::spawn(async move {
        let identity = runner_command::Identity {
            state,
            key,
            name: gateway::runner_link::local_key::NAME.into(),
            labels: Default::default(),
        };
        runner_command::work(&url, identity, executor, &browser, async move {
            let _ = stopped.await;
        })
        .await
    });
    tracing::info!("in-process runner started");
    Some((stop, task))
}

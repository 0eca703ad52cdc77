//! `trafficbuster serve`: open the store, apply migrations, serve the gateway.

use anyhow::Context;
use gateway::Gateway;

use crate::cli::ServeArgs;
use crate::commands::{open_store, shutdown_signal};
use crate::configuration::Settings;

pub async fn run(settings: &Settings, args: &ServeArgs) -> anyhow::Result<()> {
    let addr = settings.listen(args.listen.as_deref())?;
    let (store, report) = open_store(&settings.store).await?;
    for name in &report.applied {
        tracing::info!(migration = name, "applied migration");
    }
    let gateway = Gateway::bind(addr, store)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = gateway.local_addr()?;
    tracing::info!(store = %settings.store, "gateway listening on http://{bound}");
    gateway.serve(shutdown_signal()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

//! `trafficbuster serve`: open the store, apply migrations, run projections
//! and serve the gateway.

use anyhow::Context;
use gateway::{Gateway, GatewayConfig};
use secrecy::SecretString;

use crate::cli::ServeArgs;
use crate::commands::shutdown_signal;
use crate::configuration::Settings;

pub async fn run(settings: &Settings, args: &ServeArgs) -> anyhow::Result<()> {
    let addr = settings.listen(args.listen.as_deref())?;
    let jwt_secret =
        settings.jwt_secret(std::env::var("TB_JWT_SECRET").ok().map(SecretString::from))?;
    let (backend, report) = store::open_backend(&settings.store)
        .await
        .with_context(|| format!("cannot open store {}", settings.store))?;
    for name in &report.applied {
        tracing::info!(migration = name, "applied migration");
    }
    let config = GatewayConfig {
        jwt_secret,
        session_policy: settings.session_policy(args.access_token_ttl, args.refresh_grace)?,
        login_limits: settings
            .login_limits(args.login_limit_per_address, args.login_limit_per_account)?,
        trusted_proxies: settings.trusted_proxies(&args.trusted_proxies)?,
    };
    let gateway = Gateway::start(addr, &backend, config).await?;
    let bound = gateway.local_addr()?;
    tracing::info!(store = %settings.store, "gateway listening on http://{bound}");
    gateway.serve(shutdown_signal()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

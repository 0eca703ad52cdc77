//! What the benches that drive a gateway share: an in-process gateway on
//! 127.0.0.1 over a scratch store, a command handler beside it for set-up,
//! and accounts. Clients speak to it with [`crate::graphql_client`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use domain::account::{Account, AccountCommand, PasswordHash, Username};
use domain::{Actor, Context, Role};
use gateway::auth::rate_limit::LoginLimits;
use gateway::auth::sessions::SessionPolicy;
use gateway::client_addr::TrustedProxies;
use gateway::state::AppState;
use gateway::{CommandHandler, CommandMeta, Gateway, GatewayConfig};
use store::{Backend, EventStore};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::bench::Scratch;
use crate::graphql_client::PATIENCE;

/// Signs the bench gateway's tokens; it never leaves this process.
pub(crate) const JWT_SECRET: &[u8] = b"trafficbuster bench gateway secret, 32+ bytes";
/// Every bench account's password.
pub(crate) const PASSWORD: &str = "bench password, long enough";

/// A gateway serving on 127.0.0.1 inside this process, and a command
/// handler of the bench's own on the same store (for set-up and appends).
pub(crate) struct LiveGateway {
    pub(crate) addr: SocketAddr,
    pub(crate) handler: Arc<CommandHandler>,
    /// The gateway's own state, to set data up through its paths.
    pub(crate) app: AppState,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
}

impl LiveGateway {
    pub(crate) async fn start(scratch: &Scratch) -> anyhow::Result<Self> {
        Self::on(&scratch.backend).await
    }

    /// A gateway on `backend`, which may be one of several on one store.
    pub(crate) async fn on(backend: &Backend) -> anyhow::Result<Self> {
        let config = GatewayConfig {
            jwt_secret: JWT_SECRET.to_vec().into(),
            session_policy: SessionPolicy::default(),
            login_limits: LoginLimits::default(),
            trusted_proxies: TrustedProxies::default(),
            data_key: None,
            upload_ttl: gateway::startup::DEFAULT_UPLOAD_TTL,
            verification: gateway::verification::VerificationSettings::default(),
        };
        let gateway = Gateway::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), backend, config)
            .await
            .context("cannot start the gateway")?;
        let addr = gateway.local_addr()?;
        let app = gateway.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            handler: Arc::new(new_handler(backend.event_store())),
            app,
            stop,
            serving,
        })
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(PATIENCE, self.serving).await {
            Ok(served) => Ok(served??),
            Err(_) => bail!("the gateway did not stop within {PATIENCE:?}"),
        }
    }
}

pub(crate) fn new_handler(store: Arc<dyn EventStore>) -> CommandHandler {
    CommandHandler::new(store, Arc::new(domain::event_registry()))
}

pub(crate) fn bench_meta() -> CommandMeta {
    CommandMeta {
        source: Some("bench".into()),
        ..CommandMeta::default()
    }
}

pub(crate) fn system() -> Context {
    Context::new(OffsetDateTime::now_utc(), Actor::System)
}

pub(crate) async fn create_account(
    handler: &CommandHandler,
    name: &str,
    role: Role,
    hash: &PasswordHash,
) -> anyhow::Result<()> {
    let username = Username::parse(name)?;
    let command = AccountCommand::Create {
        account_id: Uuid::now_v7(),
        username: username.clone(),
        roles: [role].into(),
        password_hash: hash.clone(),
    };
    handler
        .handle::<Account>(&username.stream()?, command, &system(), &bench_meta())
        .await
        .with_context(|| format!("cannot create account {name}"))?;
    Ok(())
}

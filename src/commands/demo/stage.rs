//! What the demo runs on, all in this process and on loopback: a scratch
//! SQLite store, the demo site, a DNS server that resolves the site's name
//! to 127.0.0.1 for the gateway's domain verification, the gateway, and its
//! browser runner. [`Stage::stop`] takes it all down, Chromium included.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use gateway::auth::rate_limit::LoginLimits;
use gateway::auth::sessions::SessionPolicy;
use gateway::client_addr::TrustedProxies;
use gateway::verification::VerificationSettings;
use gateway::verification::fetch::Ports;
use gateway::{Gateway, GatewayConfig};
use site::dns::DnsServer;
use site::{RunningSite, SiteOptions};
use store::StoreUrl;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cli::DemoArgs;
use crate::commands::runner::{InProcess, start_browser};
use runner::state_dir::StateDir;

/// The demo site's name: `.test` is reserved (RFC 6761), so it can never
/// be someone else's domain.
pub const DOMAIN: &str = "shop.demo.test";
/// Longest the gateway takes to finish its requests once told to stop.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// Everything the demo started; stopped by [`Stage::stop`].
pub struct Stage {
    /// Where the gateway listens.
    pub addr: SocketAddr,
    /// The scratch directory with the store (removed on stop).
    pub dir: tempfile::TempDir,
    pub store: StoreUrl,
    pub site: RunningSite,
    /// The gateway, for the demo's first account (made as `admin
    /// create-user` makes one, through its command handler).
    pub gateway: gateway::state::AppState,
    runner: InProcess,
    stop_gateway: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
    _dns: DnsServer,
    /// Bound and never listening: the verification's HTTPS attempt is
    /// refused at once, so it falls back to plain HTTP (as for a site
    /// without TLS), and no other program can take the port meanwhile.
    _no_https: TcpSocket,
}

impl Stage {
    /// Starts the browser first, so that a machine without one hears it in
    /// one line before anything else is made.
    pub async fn start(args: &DemoArgs) -> anyhow::Result<Self> {
        let executor = start_browser(&args.browser)
            .await
            .map_err(|e| anyhow!("the demo needs a browser: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("trafficbuster-demo-")
            .tempdir()
            .context("cannot create the demo's scratch directory")?;
        let store = StoreUrl::Sqlite(dir.path().join("trafficbuster.db"));
        let (backend, _) = store::open_backend(&store)
            .await
            .with_context(|| format!("cannot open the demo's store {store}"))?;
        let site = site::start(SiteOptions::new([DOMAIN]))
            .await
            .context("cannot start the demo site")?;
        let dns = DnsServer::start()
            .await
            .context("cannot start the demo's DNS server")?;
        dns.a(DOMAIN, Ipv4Addr::LOCALHOST);
        let no_https = refusing_port()?;
        let config = GatewayConfig {
            jwt_secret: gateway::auth::tokens::random_secret().into_bytes().into(),
            session_policy: SessionPolicy::default(),
            login_limits: LoginLimits::default(),
            trusted_proxies: TrustedProxies::default(),
            // The demo imports no proxies, so it seals no passwords.
            data_key: None,
            upload_ttl: gateway::startup::DEFAULT_UPLOAD_TTL,
            verification: VerificationSettings {
                // The demo site is on loopback: a private address the
                // check refuses unless told, as on a private network.
                allow_private_addresses: true,
                dns_server: Some(dns.addr()),
                ports: Ports {
                    https: no_https.local_addr()?.port(),
                    http: site.port(),
                },
                ..VerificationSettings::default()
            },
        };
        let gateway = Gateway::start(args.listen, &backend, config).await?;
        let addr = gateway.local_addr()?;
        let runner_state = StateDir::open(&dir.path().join("runner"))
            .context("cannot make the demo runner's state directory")?;
        let Some(runner) = InProcess::start(&gateway, executor, &args.browser, runner_state).await
        else {
            bail!("the demo's runner could not start (the log above says why)");
        };
        let state = gateway.state().clone();
        let (stop_gateway, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            dir,
            store,
            site,
            gateway: state,
            runner,
            stop_gateway,
            serving,
            _dns: dns,
            _no_https: no_https,
        })
    }

    /// The runner drains first (its Chromium goes with it) while the
    /// gateway still serves it; then the gateway, the site, and the scratch
    /// directory.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.runner.stop().await;
        let _ = self.stop_gateway.send(());
        let served = tokio::time::timeout(STOP_PATIENCE, self.serving).await;
        self.site.stop().await;
        let dir = self.dir.path().display().to_string();
        self.dir
            .close()
            .with_context(|| format!("cannot remove the scratch directory {dir}"))?;
        match served {
            Ok(served) => Ok(served??),
            Err(_) => bail!("the gateway did not stop within {STOP_PATIENCE:?}"),
        }
    }
}

/// A port of 127.0.0.1 bound and not listening: connections are refused.
fn refusing_port() -> anyhow::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(socket)
}

//! One flow's browser context: its own cookies, storage and cache, its own
//! proxy, its device emulation and its consent policy, with one page.
//! Closing it (or dropping it) disposes of the context in Chromium.

use std::sync::{Arc, Mutex};

use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::log::EnableParams as LogEnable;
use chromiumoxide::cdp::browser_protocol::network::EnableParams as NetworkEnable;
use chromiumoxide::cdp::browser_protocol::page::{
    AddScriptToEvaluateOnNewDocumentParams, SetLifecycleEventsEnabledParams,
};
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams, DisposeBrowserContextParams,
};
use chromiumoxide::cdp::js_protocol::runtime::EnableParams as RuntimeEnable;
use datasets::{DeviceProfile, ProxyScheme};
use futures_util::TryFutureExt;
use secrecy::SecretString;

use super::artifacts::{self, PageLog};
use super::consent::{AllowedHosts, BlockedRequest};
use super::emulation;
use super::error::FlowError;
use super::instance::Instance;
use super::interception::{ContextPolicy, ProxyAuth};
use super::launch::Timeouts;
use super::page::FlowPage;
use super::vitals;

/// Everything a flow's context is made from.
#[derive(Debug, Clone)]
pub struct FlowSpec {
    /// The only hosts the flow may reach (and their subdomains).
    pub allowed_hosts: AllowedHosts,
    pub device: DeviceProfile,
    pub proxy: Option<ProxyEndpoint>,
    /// The job id sent as `X-TrafficBuster-Job` on every request; `None`
    /// sends no marker.
    pub marker: Option<String>,
}

/// A proxy a context goes through. Its password is never logged.
#[derive(Debug, Clone)]
pub struct ProxyEndpoint {
    pub scheme: ProxyScheme,
    /// A domain name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

impl ProxyEndpoint {
    /// `host:port`, IPv6 in brackets: how the proxy is named in errors.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn server(&self) -> String {
        let scheme = match self.scheme {
            ProxyScheme::Http => "http",
            ProxyScheme::Https => "https",
            ProxyScheme::Socks5 => "socks5",
        };
        format!("{scheme}://{}", self.address())
    }

    fn auth(&self) -> Result<Option<ProxyAuth>, FlowError> {
        let Some(username) = &self.username else {
            return Ok(None);
        };
        if self.scheme == ProxyScheme::Socks5 {
            return Err(FlowError::Invalid(format!(
                "proxy {}: Chromium cannot log in to a SOCKS5 proxy; use an http proxy or one without credentials",
                self.address()
            )));
        }
        Ok(Some(ProxyAuth {
            address: self.address(),
            username: username.clone(),
            password: self
                .password
                .clone()
                .unwrap_or_else(|| SecretString::from("")),
        }))
    }
}

/// A flow's isolated context and its page.
pub struct FlowContext {
    page: FlowPage,
    // Declared after the page, so the page goes first.
    disposer: Disposer,
}

impl FlowContext {
    pub(crate) async fn open(
        instance: Arc<Instance>,
        spec: FlowSpec,
        timeouts: Timeouts,
    ) -> Result<FlowContext, FlowError> {
        let auth = spec
            .proxy
            .as_ref()
            .map(ProxyEndpoint::auth)
            .transpose()?
            .flatten();
        let mut params = CreateBrowserContextParams::default();
        if let Some(proxy) = &spec.proxy {
            params.proxy_server = Some(proxy.server());
            // Everything through the proxy, loopback included: no exceptions.
            params.proxy_bypass_list = Some("<-loopback>".into());
        }
        let id = instance
            .guarded(
                "Target.createBrowserContext",
                timeouts.command,
                instance.cdp.execute(params),
            )
            .await?
            .result
            .browser_context_id;
        let websocket_guard = spec.allowed_hosts.websocket_guard();
        let policy = Arc::new(ContextPolicy::new(spec.allowed_hosts, spec.marker, auth));
        // The gate knows the context before anything in it can make a request.
        instance.guard.register(id.as_ref(), policy.clone());
        // From here on, a failure disposes of the context again.
        let disposer = Disposer {
            instance: instance.clone(),
            id: id.clone(),
            timeouts,
            done: false,
        };
        let target = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(id.clone())
            .build()
            .map_err(FlowError::Invalid)?;
        let page = instance
            .guarded(
                "Target.createTarget",
                timeouts.command,
                instance.cdp.new_page(target),
            )
            .await?;
        instance
            .guard
            .note_frame(page.target_id().as_ref(), id.as_ref());
        let log = Arc::new(Mutex::new(PageLog::default()));
        let follower = instance
            .guarded(
                "page event subscription",
                timeouts.command,
                artifacts::follow(
                    &page,
                    log.clone(),
                    instance.guard.clone(),
                    id.as_ref().to_owned(),
                ),
            )
            .await?;
        let flow_page = FlowPage {
            page: page.clone(),
            instance: instance.clone(),
            policy,
            proxy: spec.proxy.as_ref().map(ProxyEndpoint::address),
            log,
            follower,
            timeouts,
        };
        // The set-up commands go out together, not one round trip each:
        // the session runs them in the order sent, and the context is
        // handed out only once all have answered.
        let setup = async {
            let sent = |what: &'static str| {
                move |e: chromiumoxide::error::CdpError| format!("{what}: {e}")
            };
            tokio::try_join!(
                page.execute(NetworkEnable::default())
                    .map_err(sent("Network.enable")),
                page.execute(RuntimeEnable::default())
                    .map_err(sent("Runtime.enable")),
                // Loads are told apart by their loader id in lifecycle events.
                page.execute(SetLifecycleEventsEnabledParams::new(true))
                    .map_err(sent("Page.setLifecycleEventsEnabled")),
                page.execute(LogEnable::default())
                    .map_err(sent("Log.enable")),
                // Fetch never pauses a WebSocket handshake: a script refuses those.
                page.execute(AddScriptToEvaluateOnNewDocumentParams::new(websocket_guard))
                    .map_err(sent("the WebSocket guard script")),
                emulation::apply(&page, &spec.device).map_err(sent("emulation")),
                page.execute(AddScriptToEvaluateOnNewDocumentParams::new(vitals::OBSERVE))
                    .map_err(sent("the Web Vitals script")),
            )
        };
        instance
            .guarded("page set-up", timeouts.command, setup)
            .await?;
        Ok(FlowContext {
            page: flow_page,
            disposer,
        })
    }

    /// The flow's page.
    pub fn page(&self) -> &FlowPage {
        &self.page
    }

    /// The distinct requests consent refused so far, and how many in all.
    pub fn blocked(&self) -> (Vec<BlockedRequest>, u64) {
        self.page.policy.blocked()
    }

    /// Disposes of the context (its page, cookies, storage and cache).
    pub async fn close(mut self) -> Result<(), FlowError> {
        self.disposer.dispose().await
    }
}

/// Takes a context out of the gate and disposes of it in Chromium: on
/// close, or in the background when dropped without one.
struct Disposer {
    instance: Arc<Instance>,
    id: BrowserContextId,
    timeouts: Timeouts,
    done: bool,
}

impl Disposer {
    async fn dispose(&mut self) -> Result<(), FlowError> {
        self.done = true;
        self.instance.guard.unregister(self.id.as_ref());
        if self.instance.dead().is_some() {
            return Ok(());
        }
        let dispose = DisposeBrowserContextParams::new(self.id.clone());
        self.instance
            .guarded(
                "Target.disposeBrowserContext",
                self.timeouts.command,
                self.instance.cdp.execute(dispose),
            )
            .await
            .map(drop)
    }
}

impl Drop for Disposer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.instance.guard.unregister(self.id.as_ref());
        if self.instance.dead().is_some() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let cdp = self.instance.cdp.clone();
            let dispose = DisposeBrowserContextParams::new(self.id.clone());
            let after = self.timeouts.command;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(after, cdp.execute(dispose)).await;
            });
        }
    }
}

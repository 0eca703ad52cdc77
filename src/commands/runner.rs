//! `trafficbuster runner`: a browser runner that connects out to a gateway,
//! and the same runner started inside `trafficbuster serve`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use domain::runner::{Browser, Capabilities, Os, Platform};
use domain::runner_key::RunnerKey;
use domain::runner_protocol::VersionRange;
use runner::ClientConfig;
use runner::browser::{LaunchError, LaunchOptions};
use runner::browser_executor::BrowserExecutor;
use runner::state_dir::StateDir;
use runner::worker::{self, Totals, WorkerOptions};

use crate::cli::{BrowserArgs, RunnerArgs};
use crate::commands::shutdown_signal;

/// Flows at once when not configured.
const DEFAULT_INSTANCES: u32 = 4;
/// How long a stopping runner lets its running flows finish.
const GRACE: Duration = Duration::from_secs(30);

pub async fn run(args: &RunnerArgs) -> anyhow::Result<()> {
    let key = read_key(args)?;
    let labels = args
        .labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| format!("--label {l:?}: write it as KEY=VALUE"))
        })
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => user_state_dir()?,
    };
    let state = StateDir::open(&dir)?;
    let executor = start_browser(&args.browser).await?;
    let name = args.name.clone().unwrap_or_else(host_name);
    tracing::info!(gateway = %args.gateway, %name, runner = %state.id(), state = %dir.display(), "runner starting");
    let identity = Identity {
        state,
        key,
        name,
        labels,
    };
    let totals = work(
        &args.gateway,
        identity,
        executor,
        &args.browser,
        shutdown_signal(),
    )
    .await;
    tracing::info!(
        flows = totals.flows_run,
        recorded = totals.recorded,
        cancelled = totals.cancelled,
        devtools_parse_errors = runner::browser::parse_errors(),
        "runner stopped"
    );
    Ok(())
}

/// `$XDG_STATE_HOME/trafficbuster/runner`, else
/// `~/.local/state/trafficbuster/runner`: where a runner keeps its state
/// when not told.
pub fn user_state_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .context("no place for the runner's state: set --state-dir (or TB_RUNNER_STATE_DIR)")?;
    Ok(base.join("trafficbuster").join("runner"))
}

/// The key from TB_RUNNER_KEY or the key file, never from a flag.
fn read_key(args: &RunnerArgs) -> anyhow::Result<RunnerKey> {
    let raw = match (&args.key_file, std::env::var("TB_RUNNER_KEY")) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the runner key file {}", path.display()))?,
        (None, Ok(key)) => key,
        (None, Err(_)) => bail!(
            "no runner key: set TB_RUNNER_KEY or --key-file (an admin makes one with createRunnerKey)"
        ),
    };
    RunnerKey::parse(raw.trim()).map_err(|e| anyhow::anyhow!("the runner key is not valid: {e}"))
}

/// Launches the runner's browser, proving it runs before the runner
/// registers a platform it could not serve.
pub async fn start_browser(args: &BrowserArgs) -> Result<Arc<BrowserExecutor>, LaunchError> {
    let launch = LaunchOptions {
        chrome: args.chrome.clone(),
        ..LaunchOptions::default()
    };
    let executor =
        BrowserExecutor::start(launch, args.max_instances.unwrap_or(DEFAULT_INSTANCES)).await?;
    Ok(Arc::new(executor))
}

/// Who a runner is to its gateway.
pub struct Identity {
    /// Its state directory: its id, kept across starts.
    pub state: StateDir,
    pub key: RunnerKey,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Works for the gateway at `url` as `identity` until `stop`, then drains.
pub async fn work(
    url: &str,
    identity: Identity,
    executor: Arc<BrowserExecutor>,
    browser: &BrowserArgs,
    stop: impl Future<Output = ()>,
) -> Totals {
    let Identity {
        state,
        key,
        name,
        labels,
    } = identity;
    let version = executor.version().await.unwrap_or_default();
    let config = ClientConfig {
        url: url.to_owned(),
        runner: state.id(),
        key,
        name,
        software: format!("trafficbuster {}", env!("CARGO_PKG_VERSION")),
        capabilities: Capabilities {
            platform: Platform {
                os: this_os(),
                browser: browser_kind(browser, &version),
            },
            browser_version: version,
            max_instances: browser.max_instances.unwrap_or(DEFAULT_INSTANCES),
            labels,
        },
        protocol: VersionRange::THIS_BUILD,
    };
    worker::run(
        state,
        config,
        WorkerOptions::default(),
        executor,
        stop,
        GRACE,
    )
    .await
}

fn this_os() -> Os {
    match std::env::consts::OS {
        "macos" => Os::Macos,
        "windows" => Os::Windows,
        _ => Os::Linux,
    }
}

/// Chrome when the browser says so, else Chromium.
fn browser_kind(args: &BrowserArgs, version: &str) -> Browser {
    let path = args
        .chrome
        .as_ref()
        .map(|p| p.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if version.contains("HeadlessChrome") && path.contains("chrome") && !path.contains("chromium") {
        Browser::Chrome
    } else {
        Browser::Chromium
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "runner".into())
}

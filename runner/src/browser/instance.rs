//! One running Chromium and its DevTools connection: the handler polled to
//! its end (never stopping at an error), the network gate, and one death
//! signal that every flow in it listens to (process exit, connection closed,
//! or the watchdog's verdict that it hangs).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chromiumoxide::handler::HandlerConfig;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::{FlowError, LaunchError};
use super::interception::{self, Guard};
use super::launch::{ChromeProcess, LaunchOptions};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closed connection waits for Chromium's exit status.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// chromey's own cap on a command; ours are shorter and fire first.
const HANDLER_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) struct Instance {
    pub cdp: Arc<chromiumoxide::Browser>,
    pub guard: Arc<Guard>,
    pub version: String,
    process: ChromeProcess,
    death: watch::Sender<Option<String>>,
    handler_errors: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Instance {
    pub async fn launch(
        path: PathBuf,
        options: &LaunchOptions,
    ) -> Result<Arc<Instance>, LaunchError> {
        let (process, ws_url) = ChromeProcess::spawn(path, options).await?;
        let connect_error = |reason: String| LaunchError::Connect {
            url: ws_url.clone(),
            reason,
        };
        let (cdp, mut handler) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            chromiumoxide::Browser::connect_with_config(ws_url.clone(), handler_config()),
        )
        .await
        .map_err(|_| connect_error("no answer".into()))?
        .map_err(|e| connect_error(e.to_string()))?;
        let cdp = Arc::new(cdp);
        let (death, _) = watch::channel(None::<String>);
        let handler_errors = Arc::new(AtomicU64::new(0));

        // The handler drives the connection: polled until it ends, counting
        // (not stopping at) errors.
        let errors = handler_errors.clone();
        let closed = death.clone();
        let poll = tokio::spawn(async move {
            while let Some(item) = handler.next().await {
                if let Err(e) = item {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "DevTools handler error");
                }
            }
            // A Chromium that dies closes its connection first and is
            // reaped a moment later: its exit status (a signal, a crash),
            // recorded by the exit watcher below, says why; the closing
            // does not. Commands sent meanwhile wait in the handler,
            // dropped only once a reason is set.
            let mut dead = closed.subscribe();
            let _ = tokio::time::timeout(EXIT_GRACE, dead.wait_for(Option::is_some)).await;
            closed.send_if_modified(|d| {
                d.get_or_insert_with(|| "the DevTools connection closed".into());
                true
            });
            drop(handler);
        });

        let mut exited = process.exited();
        let gone = death.clone();
        let pid = process.pid();
        let exit = tokio::spawn(async move {
            if let Ok(status) = exited.wait_for(Option::is_some).await {
                let status = status.clone().unwrap_or_default();
                gone.send_if_modified(|d| {
                    d.get_or_insert_with(|| format!("Chromium (pid {pid}) {status}"));
                    true
                });
            }
        });

        let guard = Arc::new(Guard::default());
        let mut tasks = vec![poll, exit];
        let gate = interception::start(cdp.clone(), guard.clone()).await;
        let version = match gate {
            Ok(task) => {
                tasks.push(task);
                tokio::time::timeout(CONNECT_TIMEOUT, cdp.version())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|v| v.product)
                    .unwrap_or_default()
            }
            Err(e) => {
                tasks.iter().for_each(JoinHandle::abort);
                return Err(e);
            }
        };
        Ok(Arc::new(Instance {
            cdp,
            guard,
            version,
            process,
            death,
            handler_errors,
            tasks,
        }))
    }

    /// Why this browser is dead, if it is.
    pub fn dead(&self) -> Option<String> {
        self.death.borrow().clone()
    }

    /// Resolves with the reason once this browser is dead.
    pub async fn died(&self) -> String {
        let mut rx = self.death.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives in self: cannot happen while we are borrowed.
            Err(_) => "the browser is gone".into(),
        }
    }

    /// Kills the whole process group, recording why first.
    pub fn kill(&self, reason: &str) {
        self.death.send_if_modified(|d| {
            d.get_or_insert_with(|| reason.to_owned());
            true
        });
        self.process.kill();
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn profile(&self) -> std::path::PathBuf {
        self.process.profile().to_path_buf()
    }

    pub fn handler_errors(&self) -> u64 {
        self.handler_errors.load(Ordering::Relaxed)
    }

    pub fn stderr_tail(&self) -> String {
        self.process.stderr_tail()
    }

    /// Runs one DevTools call under `after`, failing with this browser's
    /// reason if it dies meanwhile (or had died already).
    pub async fn guarded<T, E: std::fmt::Display>(
        &self,
        what: &'static str,
        after: Duration,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, FlowError> {
        if let Some(reason) = self.dead() {
            return Err(FlowError::Browser(reason));
        }
        tokio::select! {
            result = tokio::time::timeout(after, fut) => match result {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(match self.dead() {
                    Some(reason) => FlowError::Browser(reason),
                    None => FlowError::page(what, e),
                }),
                Err(_) => Err(FlowError::Timeout { what, after }),
            },
            reason = self.died() => Err(FlowError::Browser(reason)),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        // ChromeProcess's own drop kills the group.
    }
}

/// No default viewport (each flow emulates its device), no request
/// blocking of chromey's own: the page loads what a real visitor's would.
fn handler_config() -> HandlerConfig {
    HandlerConfig {
        viewport: None,
        request_intercept: false,
        cache_enabled: true,
        service_worker_enabled: true,
        ignore_visuals: false,
        ignore_stylesheets: false,
        ignore_javascript: false,
        ignore_analytics: false,
        ignore_prefetch: false,
        ignore_ads: false,
        only_html: false,
        request_timeout: HANDLER_REQUEST_TIMEOUT,
        ..HandlerConfig::default()
    }
}

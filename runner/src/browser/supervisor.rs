//! The runner's browser, supervised: a watchdog notices a Chromium that
//! crashed, closed its connection or stopped answering, fails the flows it
//! held with that reason (they listen to its death), and launches a new one;
//! new flows wait for it. Dropping the last handle kills Chromium's group.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::capacity::{self, MemorySample};
use super::context::{FlowContext, FlowSpec};
use super::error::{FlowError, LaunchError};
use super::executable::find_chrome;
use super::instance::Instance;
use super::launch::LaunchOptions;

/// How often the watchdog asks Chromium for a sign of life, and how long
/// an answer may take; two missed answers in a row mean it hangs.
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const MISSED_PINGS: u32 = 2;
const RELAUNCH_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(30));

/// A handle on the runner's one browser; clones share it.
#[derive(Clone)]
pub struct Browser {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    options: LaunchOptions,
    /// The live instance; `None` while a dead one is being replaced.
    current: watch::Sender<Option<Arc<Instance>>>,
    relaunches: AtomicU64,
    last_death: Mutex<Option<String>>,
    watchdog: Mutex<Option<JoinHandle<()>>>,
}

impl Browser {
    /// Finds and starts Chromium. Fails (with one line saying how to
    /// install it) when there is none: a runner without a browser must not
    /// announce a platform.
    pub async fn launch(options: LaunchOptions) -> Result<Browser, LaunchError> {
        let path = find_chrome(options.chrome.as_deref())?;
        let first = Instance::launch(path.clone(), &options).await?;
        tracing::info!(pid = first.pid(), version = %first.version, "Chromium started");
        let shared = Arc::new(Shared {
            path,
            options,
            current: watch::channel(Some(first)).0,
            relaunches: AtomicU64::new(0),
            last_death: Mutex::new(None),
            watchdog: Mutex::new(None),
        });
        let task = tokio::spawn(watchdog(Arc::downgrade(&shared)));
        *shared.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(Browser { shared })
    }

    /// A fresh context for one flow, in the live browser (waiting for a
    /// relaunch in progress, up to the launch timeout).
    pub async fn new_context(&self, spec: FlowSpec) -> Result<FlowContext, FlowError> {
        let instance = self.instance().await?;
        FlowContext::open(instance, spec, self.shared.options.timeouts).await
    }

    async fn instance(&self) -> Result<Arc<Instance>, FlowError> {
        let mut rx = self.shared.current.subscribe();
        let wait = self
            .shared
            .options
            .launch_timeout
            .max(Duration::from_secs(20))
            + PING_TIMEOUT;
        let live = tokio::time::timeout(
            wait,
            rx.wait_for(|i| i.as_ref().is_some_and(|i| i.dead().is_none())),
        )
        .await;
        match live {
            Ok(Ok(instance)) => Ok(instance.clone().expect("waited for Some")),
            _ => Err(FlowError::Browser(format!(
                "no live browser after {wait:?}; the last one {}",
                self.last_death()
                    .unwrap_or_else(|| "is still starting".into())
            ))),
        }
    }

    /// The live Chromium's process id (also its process group's).
    pub fn pid(&self) -> Option<u32> {
        self.shared.current.borrow().as_ref().map(|i| i.pid())
    }

    /// The live Chromium's throwaway profile directory, which each of its
    /// processes names on its command line.
    pub fn profile_dir(&self) -> Option<PathBuf> {
        self.shared.current.borrow().as_ref().map(|i| i.profile())
    }

    /// `Chrome/156.0.…` as Chromium names itself.
    pub fn version(&self) -> Option<String> {
        self.shared
            .current
            .borrow()
            .as_ref()
            .map(|i| i.version.clone())
    }

    /// How many times the browser was relaunched after dying.
    pub fn relaunches(&self) -> u64 {
        self.shared.relaunches.load(Ordering::Relaxed)
    }

    /// Why the last browser died, if one did.
    pub fn last_death(&self) -> Option<String> {
        self.shared
            .last_death
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Errors the DevTools handler reported on the live connection.
    pub fn handler_errors(&self) -> u64 {
        self.shared
            .current
            .borrow()
            .as_ref()
            .map_or(0, |i| i.handler_errors())
    }

    /// The browser's memory now: PSS of its whole process group.
    pub fn memory(&self) -> std::io::Result<MemorySample> {
        let pid = self
            .pid()
            .ok_or_else(|| std::io::Error::other("no live browser"))?;
        Ok(MemorySample {
            pss_bytes: capacity::group_pss(pid)?,
            contexts: self
                .shared
                .current
                .borrow()
                .as_ref()
                .map_or(0, |i| i.guard.contexts()),
        })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        // Contexts may still hold the instance: kill the group regardless.
        if let Some(instance) = self.current.borrow().as_ref() {
            instance.kill("the browser was shut down");
        }
    }
}

async fn watchdog(shared: Weak<Shared>) {
    loop {
        let Some(instance) = shared.upgrade().and_then(|s| s.current.borrow().clone()) else {
            return;
        };
        let reason = tokio::select! {
            reason = instance.died() => reason,
            reason = hangs(&instance) => {
                instance.kill(&reason);
                reason
            }
        };
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let tail = instance.stderr_tail();
        tracing::warn!(pid = instance.pid(), %reason, stderr = %tail, "Chromium died; relaunching");
        *strong.last_death.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        strong.current.send_replace(None);
        strong.relaunches.fetch_add(1, Ordering::Relaxed);
        let (path, options) = (strong.path.clone(), strong.options.clone());
        drop(strong);
        drop(instance);
        let mut backoff = RELAUNCH_BACKOFF.0;
        loop {
            match Instance::launch(path.clone(), &options).await {
                Ok(fresh) => {
                    let Some(strong) = shared.upgrade() else {
                        return;
                    };
                    tracing::info!(pid = fresh.pid(), "Chromium relaunched");
                    strong.current.send_replace(Some(fresh));
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "Chromium relaunch failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RELAUNCH_BACKOFF.1);
                    if shared.strong_count() == 0 {
                        return;
                    }
                }
            }
        }
    }
}

/// Resolves when Chromium stops answering.
async fn hangs(instance: &Instance) -> String {
    let mut missed = 0;
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(PING_TIMEOUT, instance.cdp.version()).await {
            Ok(Ok(_)) => missed = 0,
            _ => {
                missed += 1;
                if missed >= MISSED_PINGS {
                    return format!(
                        "Chromium (pid {}) stopped answering: {missed} pings of {PING_TIMEOUT:?} unanswered",
                        instance.pid()
                    );
                }
            }
        }
    }
}

//! Starting Chromium: its flags, and the process that must never outlive
//! the runner. Chromium runs in a process group of its own; dropping
//! [`ChromeProcess`] kills the whole group, and the kernel sends Chromium
//! SIGKILL if the thread that started it dies (so does the runner's
//! SIGKILL). Its renderers and helpers exit when the browser process goes.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::error::LaunchError;

/// How the runner's browser is started.
#[derive(Debug, Clone, Default)]
pub struct LaunchOptions {
    /// The browser binary (`--chrome PATH`); `None` looks in `CHROME` and
    /// the usual install paths.
    pub chrome: Option<PathBuf>,
    /// Host names resolved to fixed addresses (the settings profile's custom
    /// DNS). A launch flag, so a property of the whole browser: flows with
    /// different mappings need different browsers.
    pub host_rules: BTreeMap<String, IpAddr>,
    /// Longest wait for the DevTools socket; 20 s when zero.
    pub launch_timeout: Duration,
    pub timeouts: Timeouts,
}

/// Our own caps on DevTools calls (chromey's fixed one is longer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One command: evaluate, input, emulation…
    pub command: Duration,
    /// A navigation, from the request to the load event.
    pub navigation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(10),
            navigation: Duration::from_secs(30),
        }
    }
}

const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Chromium's flags as (name, value) pairs, rendered `--name` or
/// `--name=value` in one place (no string is ever split or re-joined).
pub fn server_flags(
    options: &LaunchOptions,
    profile: &str,
    root: bool,
) -> Vec<(String, Option<String>)> {
    let mut flags: Vec<(&str, Option<String>)> = vec![
        ("headless", None),
        ("remote-debugging-port", Some("0".into())),
        ("remote-debugging-address", Some("127.0.0.1".into())),
        ("user-data-dir", Some(profile.into())),
        ("no-first-run", None),
        ("no-default-browser-check", None),
        ("disable-background-networking", None),
        ("disable-component-update", None),
        ("disable-sync", None),
        ("disable-default-apps", None),
        ("disable-extensions", None),
        ("disable-breakpad", None),
        ("disable-crash-reporter", None),
        ("disable-client-side-phishing-detection", None),
        ("disable-domain-reliability", None),
        ("metrics-recording-only", None),
        ("password-store", Some("basic".into())),
        ("use-mock-keychain", None),
        ("mute-audio", None),
        ("hide-scrollbars", None),
        // Containers' /dev/shm is often 64 MB: shared memory goes to /tmp.
        ("disable-dev-shm-usage", None),
        ("disable-gpu", None),
        // Flows run side by side: none of them may be throttled as "hidden".
        ("disable-background-timer-throttling", None),
        ("disable-backgrounding-occluded-windows", None),
        ("disable-renderer-backgrounding", None),
        // No speculative lookups of hosts a flow may not reach.
        ("dns-prefetch-disable", None),
        // No traffic of Chromium's own, and no http→https retries the
        // flow did not ask for. The omnibox popups are WebUI pages each new
        // context preloads in a renderer of its own: headless never shows
        // them, and they cost about half a flow's CPU (bench runner).
        (
            "disable-features",
            Some(
                "Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,\
                 HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,AutofillServerCommunication,\
                 CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,\
                 WebUIOmniboxPopup,WebUIOmniboxAimPopup"
                    .into(),
            ),
        ),
    ];
    // The sandbox needs user namespaces that root in a container rarely has;
    // anyone else keeps it.
    if root {
        flags.push(("no-sandbox", None));
    }
    if !options.host_rules.is_empty() {
        let rules = options
            .host_rules
            .iter()
            .map(|(host, ip)| match ip {
                IpAddr::V6(v6) => format!("MAP {host} [{v6}]"),
                IpAddr::V4(v4) => format!("MAP {host} {v4}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        flags.push(("host-resolver-rules", Some(rules)));
    }
    flags.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn render(flags: &[(String, Option<String>)]) -> Vec<String> {
    flags
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("--{k}={v}"),
            None => format!("--{k}"),
        })
        .collect()
}

/// A running Chromium, in its own process group.
pub struct ChromeProcess {
    pid: u32,
    path: PathBuf,
    exited: watch::Receiver<Option<String>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    // Dropped after the kill (fields drop after Drop::drop), so the
    // profile goes once Chromium is gone.
    profile: tempfile::TempDir,
}

const STDERR_TAIL: usize = 20;

impl ChromeProcess {
    /// Starts Chromium and waits for its DevTools socket's address.
    pub async fn spawn(
        path: PathBuf,
        options: &LaunchOptions,
    ) -> Result<(ChromeProcess, String), LaunchError> {
        let start_error = |reason: String| LaunchError::Start {
            path: path.display().to_string(),
            reason,
        };
        let profile = tempfile::Builder::new()
            .prefix("trafficbuster-chromium-")
            .tempdir()
            .map_err(|e| start_error(format!("no temporary profile directory: {e}")))?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let args = render(&server_flags(
            options,
            &profile.path().display().to_string(),
            root,
        ));

        let (started_tx, started_rx) = oneshot::channel::<std::io::Result<u32>>();
        let (url_tx, url_rx) = oneshot::channel::<String>();
        let (exit_tx, exit_rx) = watch::channel(None);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let keeper_tail = tail.clone();
        let exe = path.clone();
        let home = profile.path().to_path_buf();
        // The keeper thread starts Chromium and lives exactly as long as it:
        // PR_SET_PDEATHSIG fires when the *thread* that forked dies.
        std::thread::Builder::new()
            .name("chromium-keeper".into())
            .spawn(move || keep(exe, args, home, started_tx, url_tx, exit_tx, keeper_tail))
            .map_err(|e| start_error(e.to_string()))?;

        let pid = started_rx
            .await
            .map_err(|_| start_error("the keeper thread ended".into()))?
            .map_err(|e| start_error(e.to_string()))?;
        let process = ChromeProcess {
            pid,
            path: path.clone(),
            exited: exit_rx,
            stderr_tail: tail,
            profile,
        };
        let timeout = if options.launch_timeout.is_zero() {
            DEFAULT_LAUNCH_TIMEOUT
        } else {
            options.launch_timeout
        };
        match tokio::time::timeout(timeout, url_rx).await {
            Ok(Ok(url)) => Ok((process, url)),
            // stderr closed without the line: Chromium exited.
            Ok(Err(_)) | Err(_) => Err(LaunchError::NoDevTools {
                path: path.display().to_string(),
                after: timeout,
                stderr: process.stderr_tail(),
            }),
        }
    }

    /// The browser process's id, which is also its process group's.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves with how Chromium ended, once it has.
    pub fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }

    /// Chromium's last lines on stderr, for a crash report.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// SIGKILL to every process of Chromium's group.
    pub fn kill(&self) {
        // SAFETY: killpg has no memory preconditions; a group that is
        // already gone only yields ESRCH.
        unsafe {
            libc::killpg(self.pid as libc::pid_t, libc::SIGKILL);
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The throwaway profile directory: every process of this Chromium,
    /// including its crash handler, names it on its command line.
    pub fn profile(&self) -> &std::path::Path {
        self.profile.path()
    }
}

impl Drop for ChromeProcess {
    fn drop(&mut self) {
        self.kill();
        // Give the keeper a moment to reap it before the profile goes.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.exited.borrow().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn keep(
    exe: PathBuf,
    args: Vec<String>,
    home: PathBuf,
    started: oneshot::Sender<std::io::Result<u32>>,
    url: oneshot::Sender<String>,
    exited: watch::Sender<Option<String>>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut command = Command::new(&exe);
    command
        .args(&args)
        .arg("about:blank")
        // Chromium's config, cache and crash database (its crashpad handler
        // runs outside the process group) stay in the throwaway profile,
        // not in the runner's home.
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork
    // and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The runner died between fork and prctl: nobody will signal us.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the runner is gone"));
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = started.send(Err(e));
            let _ = exited.send(Some("never started".into()));
            return;
        }
    };
    let _ = started.send(Ok(child.id()));
    if let Some(stderr) = child.stderr.take() {
        let _ = std::thread::Builder::new()
            .name("chromium-stderr".into())
            .spawn(move || read_stderr(stderr, url, tail));
    }
    let status = match child.wait() {
        Ok(status) => describe(status),
        Err(e) => format!("could not be waited for: {e}"),
    };
    let _ = exited.send(Some(status));
}

fn read_stderr(
    stderr: std::process::ChildStderr,
    url: oneshot::Sender<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut url = Some(url);
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(ws) = line.trim().strip_prefix("DevTools listening on ") {
            if let Some(tx) = url.take() {
                let _ = tx.send(ws.to_owned());
            }
            continue;
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(options: &LaunchOptions, root: bool) -> Vec<String> {
        render(&server_flags(options, "/tmp/p", root))
    }

    #[test]
    fn the_sandbox_is_dropped_only_for_root() {
        let options = LaunchOptions::default();
        assert!(rendered(&options, true).contains(&"--no-sandbox".to_owned()));
        assert!(!rendered(&options, false).contains(&"--no-sandbox".to_owned()));
    }

    #[test]
    fn server_flags_are_headless_quiet_and_keep_their_values_whole() {
        let flags = rendered(&LaunchOptions::default(), false);
        for expected in [
            "--headless",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--user-data-dir=/tmp/p",
            "--remote-debugging-port=0",
        ] {
            assert!(
                flags.contains(&expected.to_owned()),
                "{expected} missing: {flags:?}"
            );
        }
        let features = flags
            .iter()
            .find(|f| f.starts_with("--disable-features="))
            .unwrap();
        assert!(features.contains("HttpsUpgrades,"), "{features}");
    }

    #[test]
    fn host_mappings_become_one_host_resolver_rules_flag() {
        let options = LaunchOptions {
            host_rules: BTreeMap::from([
                ("shop.test".to_owned(), "127.0.0.1".parse().unwrap()),
                ("v6.test".to_owned(), "::1".parse().unwrap()),
            ]),
            ..LaunchOptions::default()
        };
        let flags = rendered(&options, false);
        assert!(
            flags.contains(
                &"--host-resolver-rules=MAP shop.test 127.0.0.1, MAP v6.test [::1]".to_owned()
            ),
            "{flags:?}"
        );
    }
}

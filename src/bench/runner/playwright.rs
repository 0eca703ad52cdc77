//! The baseline's Playwright: playwright-core at a pinned version,
//! installed with the machine's npm into a cache directory the first time
//! (never a browser download: the script drives the machine's Chromium),
//! and the flow script kept in the repo (`bench/playwright-flow.mjs`),
//! written next to it on every run so the binary needs no checkout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// The playwright-core the baseline runs; a new pin installs beside the old.
pub const VERSION: &str = "1.65.1";
const SCRIPT: &str = include_str!("../../../bench/playwright-flow.mjs");
const SCRIPT_NAME: &str = "playwright-flow.mjs";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const INSTALL_HINT: &str = "install it (Debian: `apt-get install nodejs npm`) or pass --node PATH";

/// Node with playwright-core installed and the flow script beside it.
pub struct Playwright {
    pub node: PathBuf,
    /// `v20.20.2`, as node says.
    pub node_version: String,
    dir: PathBuf,
}

impl Playwright {
    /// Finds node (`explicit`, else on PATH), installs playwright-core into
    /// the cache when it is not there yet, and writes the script.
    pub async fn prepare(explicit: Option<&Path>) -> anyhow::Result<Playwright> {
        let node = match explicit {
            Some(path) if is_executable(path) => path.to_path_buf(),
            Some(path) => bail!(
                "--node names {}, which is not an executable file; {INSTALL_HINT}",
                path.display()
            ),
            None => on_path("node")
                .with_context(|| format!("no Node.js (`node`) on PATH; {INSTALL_HINT}"))?,
        };
        let node_version = version_of(&node).await?;
        let dir = cache_dir()?.join(format!("playwright-core-{VERSION}"));
        if !installed(&dir) {
            install(&node, &dir).await?;
        }
        let script = dir.join(SCRIPT_NAME);
        std::fs::write(&script, SCRIPT)
            .with_context(|| format!("cannot write {}", script.display()))?;
        Ok(Playwright {
            node,
            node_version,
            dir,
        })
    }

    /// The command that runs the flow script with `spec` (JSON).
    pub fn command(&self, spec: &str) -> Command {
        let mut command = Command::new(&self.node);
        command
            .arg(self.dir.join(SCRIPT_NAME))
            .arg(spec)
            .current_dir(&self.dir);
        command
    }
}

/// `$XDG_CACHE_HOME/trafficbuster/playwright`, else `~/.cache/…`.
fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .context(
            "neither XDG_CACHE_HOME nor HOME is set: no cache directory for playwright-core",
        )?;
    Ok(base.join("trafficbuster").join("playwright"))
}

fn installed(dir: &Path) -> bool {
    let manifest = dir.join("node_modules/playwright-core/package.json");
    std::fs::read_to_string(manifest)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|m| m["version"] == VERSION)
}

/// npm install into a directory of its own, renamed into place when
/// complete, so an interrupted install is never taken for a finished one.
async fn install(node: &Path, dir: &Path) -> anyhow::Result<()> {
    // npm is installed beside node (Debian, nvm, the official tarballs).
    let npm = node
        .parent()
        .map(|d| d.join("npm"))
        .filter(|p| is_executable(p))
        .or_else(|| on_path("npm"))
        .with_context(|| {
            format!(
                "no npm beside {} or on PATH; {INSTALL_HINT}",
                node.display()
            )
        })?;
    let parent = dir.parent().context("the cache directory has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".installing-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    let manifest = serde_json::json!({
        "name": "trafficbuster-bench-playwright",
        "private": true,
        "dependencies": { "playwright-core": VERSION },
    });
    std::fs::write(staging.path().join("package.json"), manifest.to_string())?;
    println!(
        "  installing playwright-core {VERSION} into {} (once)",
        dir.display()
    );
    let run = Command::new(&npm)
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--omit=dev",
        ])
        .current_dir(staging.path())
        // playwright-core downloads nothing itself; this keeps it so.
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(INSTALL_TIMEOUT, run)
        .await
        .map_err(|_| {
            anyhow::anyhow!("npm install playwright-core@{VERSION} took over {INSTALL_TIMEOUT:?}")
        })?
        .with_context(|| format!("cannot run {}", npm.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        bail!(
            "npm install playwright-core@{VERSION} failed ({}): {last}",
            output.status
        );
    }
    if !installed(staging.path()) {
        bail!("npm install finished but playwright-core {VERSION} is not in its node_modules");
    }
    let staged = staging.keep();
    // A directory left by an older or broken install goes first.
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Err(e) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        // Another bench installed it meanwhile: theirs will do.
        if !installed(dir) {
            return Err(e).with_context(|| format!("cannot move the install to {}", dir.display()));
        }
    }
    Ok(())
}

async fn version_of(node: &Path) -> anyhow::Result<String> {
    let output = Command::new(node)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .map_err(|_| anyhow::anyhow!("{} --version did not answer", node.display()))?
        .with_context(|| format!("cannot run {}", node.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| is_executable(p))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

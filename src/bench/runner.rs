//! `trafficbuster bench runner`: our Chromium driver against plain
//! Playwright on one standard flow (new context, a ~50 KB page with images,
//! three scrolls 200 ms apart, one internal click, its load, close), at
//! several concurrencies, side by side in one run: flows a minute and peak
//! memory (PSS summed over the driving process and all its Chromium
//! processes), and their ratios against the goal.
//!
//! Each side runs in a process of its own, so each is measured alone: ours
//! is this binary's hidden `bench runner-flows`, Playwright's is node with
//! `bench/playwright-flow.mjs`. Both drive the same Chromium against the
//! same recording site on 127.0.0.1, which also checks the counts: every
//! flow counted must have been seen as two page views. Figures, not
//! assertions: a missed goal fails nothing; a side that cannot run does.

mod playwright;
mod process_tree;
mod standard_flow;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use site::{RunningSite, SiteOptions};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use self::playwright::Playwright;
use self::process_tree::{Kind, TreeWatch};
use crate::bench::spinner;
use crate::cli::{BenchRunnerArgs, BenchRunnerFlowsArgs};

/// The site's one host name; the browsers map it to the site's address.
const HOST: &str = "shop.bench.test";
/// How often the process trees are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Beyond its seconds, how long one side may take: the browser's start and
/// the flows under way at the end (each bounded by the navigation timeout).
const GRACE: Duration = Duration::from_secs(90);
const MIB: f64 = 1024.0 * 1024.0;
const FLOWS_GOAL: f64 = 1.1;
const PSS_GOAL: f64 = 1.0;
/// The flow's steps, as both sides name them in their timings.
const STEPS: [&str; 6] = [
    "open",
    "load",
    "scrolls",
    "find link",
    "click and load",
    "close",
];

/// What each side runs: the same for both, handed over as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub chrome: PathBuf,
    /// The page each flow starts on.
    pub url: String,
    /// Host names and their addresses (ours: launch options).
    pub hosts: BTreeMap<String, IpAddr>,
    /// The same, as Chromium's `--host-resolver-rules` (Playwright's).
    pub host_rules: String,
    pub concurrency: u32,
    /// New flows start until this many seconds have passed.
    pub seconds: f64,
    pub device: Device,
}

/// The device both sides emulate in every context.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub width: u32,
    pub height: u32,
    pub scale: f64,
    pub user_agent: String,
    pub locale: String,
    pub timezone: String,
}

impl Device {
    fn desktop() -> Device {
        Device {
            width: 1280,
            height: 720,
            scale: 1.0,
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                         Chrome/156.0.0.0 Safari/537.36"
                .to_owned(),
            locale: "en-US".to_owned(),
            timezone: "UTC".to_owned(),
        }
    }
}

/// What a side reports on its last line of output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Flows that went through every step.
    pub flows: u64,
    pub failed: u64,
    /// From the browser's start to the last flow's end.
    pub seconds: f64,
    /// The first few distinct errors.
    pub errors: Vec<String>,
    /// Milliseconds spent in each step, summed over the flows counted.
    #[serde(default)]
    pub step_ms: BTreeMap<String, f64>,
}

impl Outcome {
    fn per_minute(&self) -> f64 {
        self.flows as f64 * 60.0 / self.seconds.max(f64::EPSILON)
    }
}

/// One side's run at one concurrency, as measured from outside.
struct Measured {
    outcome: Outcome,
    peak_pss: u64,
    peak_processes: usize,
    cpu: BTreeMap<Kind, f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Playwright,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Playwright => "Playwright",
        }
    }
}

pub async fn run(args: &BenchRunnerArgs) -> anyhow::Result<()> {
    let chrome = runner::browser::executable::find_chrome(args.chrome.as_deref())?;
    let playwright = Playwright::prepare(args.node.as_deref()).await?;
    let site = site::start(SiteOptions::new([HOST]))
        .await
        .context("cannot start the bench's site")?;
    let result = compare(args, chrome, &playwright, &site).await;
    site.stop().await;
    result
}

async fn compare(
    args: &BenchRunnerArgs,
    chrome: PathBuf,
    playwright: &Playwright,
    site: &RunningSite,
) -> anyhow::Result<()> {
    let hosts = BTreeMap::from([(HOST.to_owned(), site.addr().ip())]);
    println!(
        "runner bench: standard flow (new context, ~50 KB page with images, 3 scrolls 200 ms apart, \
         1 internal click and its load, close), {} s per side at each concurrency",
        args.seconds
    );
    println!(
        "  ours: this binary's Chromium driver; baseline: playwright-core {} on node {}; both drive {}",
        playwright::VERSION,
        playwright.node_version,
        chrome.display()
    );
    if cfg!(debug_assertions) {
        println!("  note: a debug build drives our side; measure with `cargo run --release`");
    }
    let load_before = load_average();
    let mut rows = Vec::new();
    for (i, &concurrency) in args.concurrency.iter().enumerate() {
        let spec = Spec {
            chrome: chrome.clone(),
            url: site.url(HOST, "/"),
            hosts: hosts.clone(),
            host_rules: site.host_resolver_rules(),
            concurrency,
            seconds: args.seconds,
            device: Device::desktop(),
        };
        let json = serde_json::to_string(&spec)?;
        // Alternate who goes first, so drift on a shared machine falls on both.
        let order = if i % 2 == 0 {
            [Side::Ours, Side::Playwright]
        } else {
            [Side::Playwright, Side::Ours]
        };
        let mut ours = None;
        let mut theirs = None;
        for side in order {
            let command = match side {
                Side::Ours => ours_command(&json)?,
                Side::Playwright => playwright.command(&json),
            };
            let label = format!("{}, {concurrency} at once", side.name());
            let measured = measure(command, &label, args.seconds, site).await?;
            match side {
                Side::Ours => ours = Some(measured),
                Side::Playwright => theirs = Some(measured),
            }
        }
        let (Some(ours), Some(theirs)) = (ours, theirs) else {
            unreachable!("both sides ran");
        };
        rows.push((concurrency, ours, theirs));
    }
    print_table(&rows);
    print_cpu(&rows);
    print_steps(&rows);
    for (concurrency, ours, theirs) in &rows {
        for (side, m) in [(Side::Ours, ours), (Side::Playwright, theirs)] {
            if m.outcome.failed > 0 {
                println!(
                    "  note: {} at {concurrency} had {} failed flow{} (not counted): {}",
                    side.name(),
                    m.outcome.failed,
                    if m.outcome.failed == 1 { "" } else { "s" },
                    m.outcome.errors.join("; ")
                );
            }
        }
    }
    println!(
        "  machine: {} cores, load average {} before and {} after (other work on it slows both sides)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before,
        load_average()
    );
    Ok(())
}

/// This binary's hidden `bench runner-flows`: our side, in a process of its own.
fn ours_command(spec: &str) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let mut command = Command::new(exe);
    command.args(["bench", "runner-flows", spec]);
    Ok(command)
}

/// Runs one side to its end, reading its process tree meanwhile, and
/// checks its count against the page views the site saw.
async fn measure(
    mut command: Command,
    label: &str,
    seconds: f64,
    site: &RunningSite,
) -> anyhow::Result<Measured> {
    site.clear();
    let bar = spinner(label);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("{label}: cannot start"))?;
    let pid = child
        .id()
        .context("the child exited before it could be watched")?;
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let mut watch = TreeWatch::new(pid);
    let limit = Duration::from_secs_f64(seconds) + GRACE;
    let started = Instant::now();
    let status = loop {
        watch.sample();
        tokio::select! {
            status = child.wait() => break status.with_context(|| format!("{label}: cannot wait for it"))?,
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        if started.elapsed() > limit {
            let _ = child.kill().await;
            bar.finish_and_clear();
            bail!("{label}: still running after {limit:?}; stopped");
        }
    };
    bar.finish_and_clear();
    let (stdout, stderr) = (stdout.await?, stderr.await?);
    let last_line = |text: &str| {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_owned()
    };
    if !status.success() {
        bail!("{label}: {status}: {}", last_line(&stderr));
    }
    let outcome: Outcome = serde_json::from_str(&last_line(&stdout)).with_context(|| {
        format!(
            "{label}: no outcome line on its output: {stdout}{}",
            last_line(&stderr)
        )
    })?;
    if outcome.flows == 0 {
        bail!(
            "{label}: no flow completed ({} failed: {})",
            outcome.failed,
            outcome.errors.join("; ")
        );
    }
    let views = site.visits().len() as u64;
    if views < 2 * outcome.flows {
        bail!(
            "{label}: {} flows reported but the site saw only {views} page views (each flow is two)",
            outcome.flows
        );
    }
    Ok(Measured {
        outcome,
        peak_pss: watch.peak_pss(),
        peak_processes: watch.peak_processes(),
        cpu: watch.cpu_by_kind(),
    })
}

/// A pipe read to its end in the background.
fn read_all(
    pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes).await;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn ratio_cell(ratio: f64, met: bool) -> String {
    format!("{ratio:.2}× {}", if met { "✓" } else { "✗" })
}

fn print_table(rows: &[(u32, Measured, Measured)]) {
    println!();
    println!(
        "  {:>7} │ {:>24} {:>8} │ {:>24} {:>8}",
        "flows", "flows/min", "", "peak PSS (MiB)", ""
    );
    println!(
        "  {:>7} │ {:>8} {:>11} {:>12} │ {:>8} {:>11} {:>12}",
        "at once", "ours", "Playwright", "ratio", "ours", "Playwright", "ratio"
    );
    for (concurrency, ours, theirs) in rows {
        let (ours_rate, their_rate) = (ours.outcome.per_minute(), theirs.outcome.per_minute());
        let rate_ratio = ours_rate / their_rate;
        let pss_ratio = ours.peak_pss as f64 / theirs.peak_pss.max(1) as f64;
        println!(
            "  {:>7} │ {:>8.1} {:>11.1} {:>12} │ {:>8.0} {:>11.0} {:>12}",
            concurrency,
            ours_rate,
            their_rate,
            ratio_cell(rate_ratio, rate_ratio >= FLOWS_GOAL),
            ours.peak_pss as f64 / MIB,
            theirs.peak_pss as f64 / MIB,
            ratio_cell(pss_ratio, pss_ratio <= PSS_GOAL),
        );
    }
    println!(
        "  goal: ≥ {FLOWS_GOAL:.1}× Playwright's flows/min and ≤ {PSS_GOAL:.1}× its peak PSS at every concurrency"
    );
}

/// Where the CPU went, per flow, by kind of process.
fn print_cpu(rows: &[(u32, Measured, Measured)]) {
    println!();
    println!(
        "  CPU seconds per flow by process (read every {} ms):",
        SAMPLE_EVERY.as_millis()
    );
    for (concurrency, ours, theirs) in rows {
        for (side, m) in [(Side::Ours, ours), (Side::Playwright, theirs)] {
            let flows = m.outcome.flows.max(1) as f64;
            let total: f64 = m.cpu.values().sum();
            let parts: Vec<String> = Kind::ALL
                .iter()
                .filter_map(|k| {
                    m.cpu
                        .get(k)
                        .map(|s| format!("{} {:.3}", k.name(), s / flows))
                })
                .collect();
            println!(
                "  {:>7} {:<10} total {:.3}: {} ({} processes at most)",
                concurrency,
                side.name(),
                total / flows,
                parts.join(", "),
                m.peak_processes
            );
        }
    }
}

/// Where a flow's time went, in mean milliseconds per step.
fn print_steps(rows: &[(u32, Measured, Measured)]) {
    println!();
    println!("  milliseconds per flow by step (mean):");
    for (concurrency, ours, theirs) in rows {
        for (side, m) in [(Side::Ours, ours), (Side::Playwright, theirs)] {
            let flows = m.outcome.flows.max(1) as f64;
            let parts: Vec<String> = STEPS
                .iter()
                .map(|step| {
                    let ms = m.outcome.step_ms.get(*step).copied().unwrap_or(f64::NAN);
                    format!("{step} {:.0}", ms / flows)
                })
                .collect();
            println!(
                "  {:>7} {:<10} {}",
                concurrency,
                side.name(),
                parts.join(", ")
            );
        }
    }
}

/// The 1-minute load average, as /proc says it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The hidden `bench runner-flows`: our side of one run.
pub async fn run_flows(args: &BenchRunnerFlowsArgs) -> anyhow::Result<()> {
    let spec: Spec =
        serde_json::from_str(&args.spec).context("the run's spec is not valid JSON")?;
    let outcome = standard_flow::run(&spec).await?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

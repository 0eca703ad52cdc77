//! A process and all its descendants, read from /proc: their memory (PSS
//! summed, from `smaps_rollup`) and their CPU time by kind of process
//! (the driver, Chromium's browser process, renderers, GPU, network…).
//! Linux only; read-only.

use std::collections::{BTreeMap, HashMap};
use std::fs;

/// Clock ticks per second of /proc's CPU times (`USER_HZ`, 100 on every
/// Linux architecture this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// What a process of the tree is, for the CPU breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The tree's root: our runner, or node running Playwright.
    Driver,
    /// Chromium's browser process (no `--type`).
    Browser,
    Renderer,
    Gpu,
    /// The network service (a utility process).
    Network,
    /// Any other utility process (storage, audio…).
    Utility,
    Zygote,
    /// Anything else under the root.
    Other,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Driver,
        Kind::Browser,
        Kind::Renderer,
        Kind::Gpu,
        Kind::Network,
        Kind::Utility,
        Kind::Zygote,
        Kind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Driver => "driver",
            Kind::Browser => "browser",
            Kind::Renderer => "renderer",
            Kind::Gpu => "gpu",
            Kind::Network => "network",
            Kind::Utility => "utility",
            Kind::Zygote => "zygote",
            Kind::Other => "other",
        }
    }

    /// From a process's command line as /proc shows it: NUL-separated, or
    /// one space-separated string once Chromium has retitled the process.
    fn of(cmdline: &str, is_root: bool) -> Kind {
        if is_root {
            return Kind::Driver;
        }
        let args: Vec<&str> = cmdline.split(['\0', ' ']).collect();
        let value = |name: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        };
        let program = args.first().copied().unwrap_or_default();
        let chromium = program.contains("chrom") || value("--type").is_some();
        match value("--type") {
            Some("renderer") => Kind::Renderer,
            Some("gpu-process") => Kind::Gpu,
            Some("zygote") => Kind::Zygote,
            Some("utility")
                if value("--utility-sub-type").is_some_and(|s| s.starts_with("network.")) =>
            {
                Kind::Network
            }
            Some(_) => Kind::Utility,
            None if chromium => Kind::Browser,
            None => Kind::Other,
        }
    }
}

/// One look at the tree.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// PSS summed over the tree's live processes, in bytes.
    pub pss_bytes: u64,
    pub processes: usize,
}

/// Follows one tree over time: its peak PSS, and the CPU each process used
/// (its last reading: a process that exits between two samples loses the
/// time since the last one, so sample often).
#[derive(Debug)]
pub struct TreeWatch {
    root: u32,
    peak_pss: u64,
    peak_processes: usize,
    /// pid → (kind, CPU ticks at its last reading).
    seen: HashMap<u32, (Kind, u64)>,
}

impl TreeWatch {
    pub fn new(root: u32) -> Self {
        TreeWatch {
            root,
            peak_pss: 0,
            peak_processes: 0,
            seen: HashMap::new(),
        }
    }

    /// Reads the tree once now.
    pub fn sample(&mut self) -> Snapshot {
        let members = descendants(self.root);
        let mut snapshot = Snapshot::default();
        for (pid, stat) in members {
            // A process may exit between the listing and the reads: skip it.
            let Ok(pss) = pss_of(pid) else { continue };
            snapshot.pss_bytes += pss;
            snapshot.processes += 1;
            // Read every time: a process forked by the zygote shows the
            // zygote's command line until it retitles itself; a zombie
            // shows none, and keeps what it was.
            let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let entry = self.seen.entry(pid).or_insert((Kind::Other, 0));
            if !cmdline.is_empty() {
                entry.0 = Kind::of(&cmdline, pid == self.root);
            }
            entry.1 = entry.1.max(stat.cpu_ticks);
        }
        self.peak_pss = self.peak_pss.max(snapshot.pss_bytes);
        self.peak_processes = self.peak_processes.max(snapshot.processes);
        snapshot
    }

    pub fn peak_pss(&self) -> u64 {
        self.peak_pss
    }

    pub fn peak_processes(&self) -> usize {
        self.peak_processes
    }

    /// CPU seconds (user + system) by kind of process, so far.
    pub fn cpu_by_kind(&self) -> BTreeMap<Kind, f64> {
        let mut by_kind = BTreeMap::new();
        for (kind, ticks) in self.seen.values() {
            *by_kind.entry(*kind).or_insert(0.0) += *ticks as f64 / TICKS_PER_SECOND;
        }
        by_kind
    }
}

/// What /proc/PID/stat says that matters here.
#[derive(Debug, Clone, Copy)]
struct Stat {
    parent: u32,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn stat_of(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. After it: state(3) ppid(4) … utime(14) stime(15).
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        parent: u32::try_from(field(4)?).ok()?,
        cpu_ticks: field(14)? + field(15)?,
    })
}

/// `root` and every process descending from it, with their stats.
fn descendants(root: u32) -> Vec<(u32, Stat)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: HashMap<u32, Stat> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| stat_of(pid).map(|s| (pid, s)))
        .collect();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, stat) in &all {
        children.entry(stat.parent).or_default().push(*pid);
    }
    let mut tree = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(stat) = all.get(&pid) {
            tree.push((pid, *stat));
        }
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids);
        }
    }
    tree
}

/// One process's PSS in bytes.
fn pss_of(pid: u32) -> std::io::Result<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/smaps_rollup has no Pss line")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis() {
        let line = "4242 (Web Content (x)) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 1 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.parent, 17);
        assert_eq!(stat.cpu_ticks, 325);
    }

    #[test]
    fn processes_are_told_apart_by_their_command_line() {
        let of = |args: &[&str]| Kind::of(&args.join("\0"), false);
        assert_eq!(
            of(&["/usr/lib/chromium/chromium", "--headless"]),
            Kind::Browser
        );
        assert_eq!(
            of(&["/usr/lib/chromium/chromium", "--type=renderer"]),
            Kind::Renderer
        );
        assert_eq!(
            of(&["/usr/lib/chromium/chromium", "--type=gpu-process"]),
            Kind::Gpu
        );
        assert_eq!(
            of(&[
                "chromium",
                "--type=utility",
                "--utility-sub-type=network.mojom.NetworkService"
            ]),
            Kind::Network
        );
        assert_eq!(
            of(&[
                "chromium",
                "--type=utility",
                "--utility-sub-type=storage.mojom.StorageService"
            ]),
            Kind::Utility
        );
        assert_eq!(
            of(&["/usr/lib/chromium/chromium", "--type=zygote"]),
            Kind::Zygote
        );
        assert_eq!(
            Kind::of(
                "/usr/lib/chromium/chromium --type=renderer --crashpad-handler-pid=0",
                false
            ),
            Kind::Renderer
        );
        assert_eq!(of(&["/bin/sh", "-c", "true"]), Kind::Other);
        assert_eq!(Kind::of("node\0flow.mjs", true), Kind::Driver);
    }

    #[test]
    fn this_process_and_a_child_are_one_tree_with_memory_and_cpu() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut watch = TreeWatch::new(std::process::id());
        let snapshot = watch.sample();
        let _ = child.kill();
        let _ = child.wait();
        assert!(snapshot.processes >= 2, "{snapshot:?}");
        assert!(snapshot.pss_bytes > 0);
        assert_eq!(watch.peak_pss(), snapshot.pss_bytes);
        let cpu = watch.cpu_by_kind();
        assert!(cpu.contains_key(&Kind::Driver), "{cpu:?}");
        assert!(cpu.contains_key(&Kind::Other), "{cpu:?}");
    }
}

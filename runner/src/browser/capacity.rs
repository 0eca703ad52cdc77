//! How many flows this machine can really serve: the browser's memory (PSS
//! of Chromium's process group, from /proc/PID/smaps_rollup), the cost of
//! one more context learnt from samples, and free memory (MemAvailable).

use std::io;

use serde::{Deserialize, Serialize};

/// The browser's memory at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Proportional set size of every process in Chromium's group.
    pub pss_bytes: u64,
    /// Flow contexts open at that moment.
    pub contexts: usize,
}

/// PSS summed over the processes of process group `pgid`.
pub fn group_pss(pgid: u32) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read: skip it.
        if process_group(pid).ok() != Some(pgid) {
            continue;
        }
        if let Ok(pss) = pss_of(pid) {
            total += pss;
        }
    }
    Ok(total)
}

/// The live (not zombie) process ids in process group `pgid`.
pub fn group_members(pgid: u32) -> io::Result<Vec<u32>> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            && process_group(pid).ok() == Some(pgid)
        {
            members.push(pid);
        }
    }
    Ok(members)
}

/// The process group of a live process; an error for a zombie, which
/// holds no memory and runs nothing (it only waits to be reaped).
/// Live processes whose command line mentions `needle` (a browser's
/// profile directory finds all its processes, in its group or not).
pub fn processes_mentioning(needle: &str) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) && process_group(pid).is_ok() {
            found.push(pid);
        }
    }
    Ok(found)
}

fn process_group(pid: u32) -> io::Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let mut fields = rest.split_whitespace();
    if fields.next() == Some("Z") {
        return Err(io::Error::other(format!("process {pid} is a zombie")));
    }
    fields
        .nth(1)
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no process group")))
}

/// One process's PSS in bytes.
pub fn pss_of(pid: u32) -> io::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    kilobytes(&rollup, "Pss:")
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/smaps_rollup has no Pss line")))
}

/// The memory the kernel says can be used without swapping.
pub fn available_memory() -> io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    kilobytes(&meminfo, "MemAvailable:")
        .ok_or_else(|| io::Error::other("/proc/meminfo has no MemAvailable line"))
}

fn kilobytes(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Slots to announce: the configured maximum, capped by the contexts
/// already open plus as many more as free memory holds.
pub fn slots(configured: u32, available_bytes: u64, per_context_bytes: u64, open: usize) -> u32 {
    let fits = available_bytes / per_context_bytes.max(1) + open as u64;
    configured.min(u32::try_from(fits).unwrap_or(u32::MAX))
}

/// The memory one more context costs, learnt from the browser's samples:
/// the idle browser's PSS is the baseline, and each sample with contexts
/// open gives (pss − baseline) / contexts, smoothed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityModel {
    baseline: Option<u64>,
    per_context: f64,
}

/// A real page's context costs more than a blank one; until measured, assume this.
pub const PRIOR_PER_CONTEXT: u64 = 96 * 1024 * 1024;
const SMOOTHING: f64 = 0.3;

impl Default for CapacityModel {
    fn default() -> Self {
        CapacityModel::new(PRIOR_PER_CONTEXT)
    }
}

impl CapacityModel {
    pub fn new(prior_per_context: u64) -> Self {
        CapacityModel {
            baseline: None,
            per_context: prior_per_context as f64,
        }
    }

    /// Learns from one sample of the browser.
    pub fn observe(&mut self, sample: MemorySample) {
        if sample.contexts == 0 {
            self.baseline = Some(
                self.baseline
                    .map_or(sample.pss_bytes, |b| b.min(sample.pss_bytes)),
            );
            return;
        }
        let Some(baseline) = self.baseline else {
            return;
        };
        let estimate = sample.pss_bytes.saturating_sub(baseline) as f64 / sample.contexts as f64;
        self.per_context += SMOOTHING * (estimate - self.per_context);
    }

    /// Memory per context as currently estimated, in bytes.
    pub fn per_context(&self) -> u64 {
        self.per_context.max(1.0) as u64
    }

    /// Slots to announce now, given free memory and the contexts open.
    pub fn slots(&self, configured: u32, available_bytes: u64, open: usize) -> u32 {
        slots(configured, available_bytes, self.per_context(), open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn slots_are_capped_by_memory_and_by_configuration() {
        assert_eq!(slots(8, 1000 * MIB, 100 * MIB, 0), 8);
        assert_eq!(slots(8, 350 * MIB, 100 * MIB, 0), 3);
        assert_eq!(slots(8, 350 * MIB, 100 * MIB, 2), 5);
        assert_eq!(slots(8, 50 * MIB, 100 * MIB, 0), 0);
        assert_eq!(slots(0, 1000 * MIB, 100 * MIB, 0), 0);
    }

    #[test]
    fn the_cost_per_context_is_learnt_from_samples_above_the_idle_baseline() {
        let mut model = CapacityModel::new(10 * MIB);
        // Contexts before any idle sample teach nothing: no baseline yet.
        model.observe(MemorySample {
            pss_bytes: 900 * MIB,
            contexts: 3,
        });
        assert_eq!(model.per_context(), 10 * MIB);
        model.observe(MemorySample {
            pss_bytes: 300 * MIB,
            contexts: 0,
        });
        for _ in 0..30 {
            model.observe(MemorySample {
                pss_bytes: 500 * MIB,
                contexts: 2,
            });
        }
        let per = model.per_context() as f64 / MIB as f64;
        assert!((per - 100.0).abs() < 1.0, "{per}");
        assert_eq!(model.slots(16, 1000 * MIB, 2), 12);
    }

    #[test]
    fn this_process_has_a_pss_and_the_machine_free_memory() {
        let me = std::process::id();
        assert!(pss_of(me).unwrap() > 0);
        assert!(available_memory().unwrap() > 0);
        let own_group = process_group(me).unwrap();
        assert!(group_members(own_group).unwrap().contains(&me));
        assert!(group_pss(own_group).unwrap() >= pss_of(me).unwrap());
    }
}

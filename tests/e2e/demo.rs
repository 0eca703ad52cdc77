//! `trafficbuster demo`: the first run a new user watches, end to end
//! with the real binary, Chromium and all. Its job must end with exact
//! counts, its own site must have seen the visits, and no Chromium of its
//! own may outlive it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::browser_runs::chromium_present;
use crate::helpers::{Process, bin, run};

/// A live process (zombies are dead; an init that does not reap them
/// keeps them listed).
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
    cmdline: String,
}

fn processes() -> Vec<Proc> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(&state), Some(ppid)) = (rest.first(), rest.get(1)) else {
            continue;
        };
        if state == "Z" {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        all.push(Proc {
            pid,
            ppid: ppid.parse().unwrap_or(0),
            comm: stat[open + 1..close].to_owned(),
            cmdline,
        });
    }
    all
}

/// The profile directories of the Chromiums `pid` started: every process
/// of one (its crash handler too) names it on its command line.
fn browser_profiles_of(pid: u32) -> BTreeSet<String> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == pid && p.comm.starts_with("chrom"))
        .filter_map(|p| {
            p.cmdline
                .split(' ')
                .find_map(|arg| arg.strip_prefix("--user-data-dir="))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_verifies_its_site_runs_its_job_to_exact_counts_and_leaves_no_browser() {
    if !chromium_present() {
        return;
    }
    let mut cmd = bin();
    cmd.args(["--log-format", "json", "demo", "--exit-when-done"]);
    let mut demo = Process::spawn(cmd);
    let pid = demo.pid();
    // Every browser the demo starts (one per host-mapping set), seen while it runs.
    let profiles = Arc::new(Mutex::new(BTreeSet::new()));
    let watching = tokio::spawn({
        let profiles = profiles.clone();
        async move {
            loop {
                profiles.lock().unwrap().extend(browser_profiles_of(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let status = demo.wait(Duration::from_secs(240)).await;
    watching.abort();
    let out = demo.stdout();
    assert!(status.success(), "{status}\n{out}\n{}", demo.log());

    for step in [
        "super-admin root created",
        "user demo created with a licence",
        "shop.demo.test claimed and verified: the gateway fetched /.well-known/trafficbuster-verification.txt",
        "safe mode turned off",
        "datasets published",
        "created and running: 12 flows",
    ] {
        assert!(out.contains(step), "no {step:?} in\n{out}");
    }
    assert!(
        out.contains(" DONE: 12 of 12 flows finished (12 succeeded, 0 failed), 4 clicked"),
        "{out}"
    );
    assert!(
        out.contains("the demo site saw 12 browser sessions marked with the job's id"),
        "{out}"
    );
    assert!(out.contains("/graphiql?query=mutation"), "{out}");

    // The scratch data goes with the demo.
    let dir = out
        .lines()
        .find_map(|l| l.split_once("scratch data in ").map(|(_, d)| d.trim()))
        .unwrap_or_else(|| panic!("no scratch directory in\n{out}"));
    assert!(!std::path::Path::new(dir).exists(), "{dir} is left behind");

    let profiles = profiles.lock().unwrap().clone();
    assert!(!profiles.is_empty(), "the demo's Chromium was never seen");
    let left: Vec<String> = processes()
        .into_iter()
        .filter(|p| profiles.iter().any(|dir| p.cmdline.contains(dir.as_str())))
        .map(|p| format!("{} {}", p.pid, p.cmdline))
        .collect();
    assert!(left.is_empty(), "Chromium outlived the demo: {left:#?}");
}

#[tokio::test]
async fn the_demo_without_a_browser_says_in_one_line_how_to_install_one() {
    let (ok, _, stderr) = run(&["demo", "--chrome", "/nonexistent/chromium"]).await;
    assert!(!ok);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("apt-get install chromium"), "{stderr}");
}

//! The Chromium processes a `trafficbuster serve` runs, as /proc shows
//! them: each browser is a child of serve (its renderers and helpers are
//! the browser's own), named by its throwaway profile directory, which
//! every one of its processes carries on its command line.

/// One Chromium browser process.
#[derive(Debug, Clone)]
pub struct Chromium {
    pub pid: u32,
    pub args: Vec<String>,
}

impl Chromium {
    /// The value of `--name=value` on its command line.
    pub fn flag(&self, name: &str) -> Option<&str> {
        let prefix = format!("--{name}=");
        self.args.iter().find_map(|a| a.strip_prefix(&prefix))
    }

    pub fn profile(&self) -> &str {
        self.flag("user-data-dir")
            .expect("the runner gives Chromium a profile directory")
    }
}

/// (pid, parent pid, command line) of every live process (zombies left out).
fn processes() -> Vec<(u32, u32, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Processes come and go while we read: a vanished one is skipped.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if state == "Z" {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, ppid.parse().unwrap_or(0), args));
    }
    out
}

/// The Chromium browsers process `parent` runs now.
pub fn browsers_of(parent: u32) -> Vec<Chromium> {
    processes()
        .into_iter()
        .filter(|(_, ppid, args)| {
            *ppid == parent
                && args.iter().any(|a| a.starts_with("--user-data-dir="))
                && !args.iter().any(|a| a.starts_with("--type="))
        })
        .map(|(pid, _, args)| Chromium { pid, args })
        .collect()
}

/// The one browser of `parent` launched with the job's host mappings: the
/// one its flows run in.
pub fn flows_browser(parent: u32) -> Chromium {
    let mapped: Vec<Chromium> = browsers_of(parent)
        .into_iter()
        .filter(|b| b.flag("host-resolver-rules").is_some())
        .collect();
    assert_eq!(
        mapped.len(),
        1,
        "one browser with host mappings: {mapped:?}"
    );
    mapped.into_iter().next().unwrap()
}

//! The Chromium processes a `trafficbuster serve` runs, as /proc shows
//! them: each browser is a child of serve (its renderers and helpers are
//! the browser's own), named by its throwaway profile directory, which
//! every one of its processes carries on its command line.

use serde_json::Value;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    /// The URLs of its open pages, from its DevTools endpoint.
    pub async fn open_pages(&self) -> Vec<String> {
        // Chromium writes the port it chose (remote-debugging-port=0) here.
        let active = std::fs::read_to_string(format!("{}/DevToolsActivePort", self.profile()))
            .expect("Chromium wrote its DevTools port");
        let port = active.lines().next().unwrap_or_default();
        let body = devtools_get(port, "/json/list").await;
        let targets: Value = serde_json::from_str(&body).unwrap();
        targets
            .as_array()
            .unwrap_or_else(|| panic!("{targets}"))
            .iter()
            .filter(|t| t["type"] == "page")
            .map(|t| t["url"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// A GET on Chromium's DevTools HTTP endpoint: its body. That server keeps
/// the connection open whatever the request says, so the body is read by
/// its Content-Length, not to the end of the stream.
async fn devtools_get(port: &str, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("Chromium's DevTools endpoint accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "DevTools closed the connection mid-answer");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .expect("DevTools says its body's length");
        if body.len() >= length {
            return body[..length].to_owned();
        }
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

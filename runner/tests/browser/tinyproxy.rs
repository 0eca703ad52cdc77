//! A tinyproxy of the test's own (Debian's `tinyproxy`): a temporary config
//! and log, killed on drop. Shared by the runner's browser tests and the
//! end-to-end tests (which include this file), so there is one way to start it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Is tinyproxy installed? If not, why, and how to install it.
pub fn installed() -> Result<(), String> {
    std::process::Command::new("tinyproxy")
        .arg("-v")
        .output()
        .map(drop)
        .map_err(|e| format!("{e}; install it (Debian: apt-get install tinyproxy)"))
}

pub struct Tinyproxy {
    pub port: u16,
    log: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts one on a free loopback port, asking clients for `basic_auth`
    /// if given. Requests for hosts under each `(domain, addr)` of
    /// `upstream` go to `addr` as to an upstream proxy (absolute-form
    /// request lines, which the recording site answers): so the proxy
    /// reaches the test's made-up host names without resolving them, as a
    /// proxy inside a staging network would.
    pub fn start(basic_auth: Option<(&str, &str)>, upstream: &[(&str, SocketAddr)]) -> Tinyproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("tinyproxy.log");
        let mut config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 50\nAllow 127.0.0.1\n",
            log.display()
        );
        if let Some((user, password)) = basic_auth {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        for (domain, addr) in upstream {
            config.push_str(&format!("Upstream http {addr} \".{domain}\"\n"));
        }
        let config_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = std::process::Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tinyproxy starts");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Tinyproxy {
            port,
            log,
            child,
            _dir: dir,
        }
    }

    /// Its log so far (connections and request lines, at `LogLevel Connect`).
    pub fn log(&self) -> String {
        // Lossy: tinyproxy logs what clients send, bytes and all.
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

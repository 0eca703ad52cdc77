//! Starting the binary, reading its output, and fresh stores to point it at.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A fresh store for one test (temporary SQLite file or PostgreSQL schema).
pub use store::testing::TestStore;

/// The binary under test.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trafficbuster"));
    // Settings come from each test's flags, not from the developer's shell.
    for var in [
        "TB_STORE",
        "TB_LISTEN",
        "TB_CONFIG",
        "TB_LOG_FORMAT",
        "TB_JWT_SECRET",
        "TB_TRUSTED_PROXIES",
        "TB_LOGIN_LIMIT_PER_ADDRESS",
        "TB_LOGIN_LIMIT_PER_ACCOUNT",
    ] {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// A running child whose output lines can be awaited.
pub struct Running {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    pub stderr: Lines<BufReader<ChildStderr>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Self {
            child,
            stdout,
            stderr,
        }
    }

    pub async fn stdout_line(&mut self, within: Duration) -> String {
        match tokio::time::timeout(within, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("no stdout line within {within:?}: {other:?}"),
        }
    }

    /// Reads stderr until a line contains `needle`; returns that line.
    pub async fn stderr_line_containing(&mut self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stderr.next_line()).await {
                Ok(Ok(Some(line))) if line.contains(needle) => return line,
                Ok(Ok(Some(_))) => continue,
                other => panic!("no stderr line containing {needle:?}: {other:?}"),
            }
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running") as i32;
        // SAFETY-free: `kill` via the shell keeps us off libc.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exits within 10 s of SIGTERM")
            .unwrap()
    }
}

/// Runs the binary to completion: (exit success, stdout, stderr).
pub async fn run(args: &[&str]) -> (bool, String, String) {
    finished(bin().args(args).output()).await
}

/// Waits (a minute at most) for a run's output: (exit success, stdout, stderr).
async fn finished(
    output: impl std::future::Future<Output = std::io::Result<std::process::Output>>,
) -> (bool, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("finishes within a minute")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Runs the binary with `input` on standard input: (exit success, stdout, stderr).
pub async fn run_with_stdin(args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    finished(child.wait_with_output()).await
}

/// `trafficbuster serve` on a free loopback port, logging JSON, plus `extra` flags.
pub fn serve_command(store_url: &str, jwt_secret: Option<&str>, extra: &[&str]) -> Command {
    let mut cmd = bin();
    if let Some(secret) = jwt_secret {
        cmd.env("TB_JWT_SECRET", secret);
    }
    cmd.args([
        "--store",
        store_url,
        "--log-format",
        "json",
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.args(extra);
    cmd
}

/// The address in serve's JSON "gateway listening on http://ADDR" line.
pub fn listening_addr(log_line: &str) -> String {
    let log: serde_json::Value = serde_json::from_str(log_line).expect("a JSON log line");
    log["message"]
        .as_str()
        .and_then(|m| m.rsplit("http://").next())
        .unwrap_or_else(|| panic!("no address in {log_line}"))
        .to_owned()
}

/// Creates an account with `admin create-user`, panicking with its stderr on failure.
pub async fn create_user(store_url: &str, username: &str, role: &str, password: &str) {
    let args = [
        "--store",
        store_url,
        "admin",
        "create-user",
        "--username",
        username,
        "--role",
        role,
        "--password-stdin",
    ];
    let (ok, _, stderr) = run_with_stdin(&args, password).await;
    assert!(ok, "{stderr}");
}

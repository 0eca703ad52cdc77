//! Running the binary, starting the gateway, and fresh stores to point them at.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

pub use crate::app::{PASSWORD, ROOT_PASSWORD, SECRET, TestApp, code, spawn_app};
pub use crate::process::Process;
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
        "TB_DATA_KEY",
        "TB_UPLOAD_TTL",
        "TB_VERIFICATION_ALLOW_PRIVATE_ADDRESSES",
        "TB_VERIFICATION_DNS_SERVER",
        "TB_VERIFICATION_VALID_DAYS",
        "TB_VERIFICATION_HTTPS_PORT",
        "TB_VERIFICATION_HTTP_PORT",
        "TB_RUNNER_STATE_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true);
    cmd
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
    // The binary may refuse its arguments and exit before reading its input.
    if let Err(e) = stdin.write_all(input.as_bytes()).await {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing stdin: {e}"
        );
    }
    drop(stdin);
    finished(child.wait_with_output()).await
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

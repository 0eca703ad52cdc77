//! A child process whose stdout and stderr are read to the end in the
//! background, so it never blocks on a full pipe however much it logs, and
//! whose lines stay for the test to wait for and read.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes of output kept per stream; older lines go first past it.
const KEPT_BYTES: usize = 64 << 20;

/// One stream's lines so far, numbered from 0 in the order they came.
#[derive(Default)]
struct Lines {
    kept: VecDeque<String>,
    /// The number of the first kept line (the lines dropped before it).
    first: usize,
    bytes: usize,
    /// The stream has ended (the process closed it or exited).
    ended: bool,
}

impl Lines {
    fn push(&mut self, line: String) {
        self.bytes += line.len();
        self.kept.push_back(line);
        while self.bytes > KEPT_BYTES {
            let old = self.kept.pop_front().expect("bytes > 0 means a line");
            self.bytes -= old.len();
            self.first += 1;
        }
    }

    /// The first line numbered `from` or later that contains `needle`.
    fn find(&self, from: usize, needle: &str) -> Option<(usize, &str)> {
        let skip = from.saturating_sub(self.first);
        self.kept
            .iter()
            .enumerate()
            .skip(skip)
            .find(|(_, line)| line.contains(needle))
            .map(|(i, line)| (self.first + i, line.as_str()))
    }
}

/// One output stream, read by a background task for the process's whole life.
struct Stream {
    lines: watch::Receiver<Lines>,
    /// The task reading it; taken when awaited.
    reader: Option<JoinHandle<()>>,
}

impl Stream {
    fn read(from: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let (tx, lines) = watch::channel(Lines::default());
        let reader = tokio::spawn(async move {
            let mut from = BufReader::new(from);
            let mut buf = Vec::new();
            // Lossy: a stray non-UTF-8 byte must not stop the draining.
            while from.read_until(b'\n', &mut buf).await.is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                tx.send_modify(|lines| lines.push(line));
                buf.clear();
            }
            tx.send_modify(|lines| lines.ended = true);
        });
        Self {
            lines,
            reader: Some(reader),
        }
    }

    /// Waits for a line numbered `from` or later containing `needle`: (its number, it).
    async fn wait_for(&self, from: usize, needle: &str, within: Duration) -> (usize, String) {
        let mut lines = self.lines.clone();
        let mut found = None;
        // Each line is looked at once, however long the wait.
        let mut next = from;
        let in_time = tokio::time::timeout(
            within,
            lines.wait_for(|lines| {
                found = lines.find(next, needle).map(|(n, l)| (n, l.to_owned()));
                next = lines.first + lines.kept.len();
                found.is_some() || lines.ended
            }),
        )
        .await
        .is_ok();
        match (in_time, found) {
            (_, Some(found)) => found,
            (true, None) => panic!(
                "the output ended with no line containing {needle:?}:\n{}",
                self.text()
            ),
            (false, None) => panic!(
                "no line containing {needle:?} within {within:?}:\n{}",
                self.text()
            ),
        }
    }

    /// Every kept line, one per line.
    fn text(&self) -> String {
        let lines = self.lines.borrow();
        let mut text = String::with_capacity(lines.bytes + lines.kept.len());
        for line in &lines.kept {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// A running child; killed when dropped.
pub struct Process {
    child: Child,
    stdout: Stream,
    stderr: Stream,
    /// The number of the next stdout line [`Process::next_stdout_line`] returns.
    stdout_read: usize,
}

impl Process {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let stdout = Stream::read(child.stdout.take().unwrap());
        let stderr = Stream::read(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
            stdout_read: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// The next stdout line not yet returned.
    pub async fn next_stdout_line(&mut self, within: Duration) -> String {
        let (n, line) = self.stdout.wait_for(self.stdout_read, "", within).await;
        self.stdout_read = n + 1;
        line
    }

    /// Waits for a stderr (log) line containing `needle`, among the lines
    /// already written or those to come; returns that line.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        self.stderr.wait_for(0, needle, within).await.1
    }

    /// Everything the process wrote to stderr so far; panics if lines were
    /// dropped, so that a test reading the whole log never misses one.
    pub fn log(&self) -> String {
        let dropped = self.stderr.lines.borrow().first;
        assert_eq!(
            dropped, 0,
            "the log outgrew the {KEPT_BYTES} bytes kept; {dropped} lines are gone"
        );
        self.stderr.text()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// Sends SIGTERM and waits for the exit status and the end of the output.
    pub async fn terminate(&mut self) -> ExitStatus {
        // `kill` via the shell keeps us off libc.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait(Duration::from_secs(10)).await
    }

    /// Kills the process (SIGKILL: no graceful shutdown) and waits for it.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Waits for the process to exit by itself and its output to end.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let exited = async {
            let status = self.child.wait().await.unwrap();
            // Read to the end, so that `log` holds every line written.
            for stream in [&mut self.stdout, &mut self.stderr] {
                if let Some(reader) = stream.reader.take() {
                    reader.await.unwrap();
                }
            }
            status
        };
        tokio::time::timeout(within, exited)
            .await
            .unwrap_or_else(|_| panic!("the process did not exit within {within:?}"))
    }
}

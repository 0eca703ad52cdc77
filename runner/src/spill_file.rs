//! The outbox's spill file, in the runner's state directory: batches of
//! reports the gateway has not taken yet, past what the runner keeps in
//! memory, and whatever it had not delivered when it stopped. Append-only
//! JSON lines, one batch a line, oldest first, and beside it a read cursor:
//! the byte offset of the first batch not answered yet. Once the cursor
//! reaches the end, both are emptied. Bounded: an append that would make
//! the file longer than its limit is refused, and nothing is written.
//!
//! Durability: an append is fsynced before its batches leave memory, so a
//! batch is always in one place or the other. The cursor is written
//! without fsync: a cursor lost in a crash only sends answered batches
//! again, under their own ids, and the gateway counts a batch id once. A
//! line cut short by a crash mid-append is cut off when the file is opened
//! (its batches were still in memory, and went with the process).
//!
//! Plain blocking file I/O: the file is touched only while the gateway is
//! away or slow (a few appends of many reports each) and once per batch
//! delivered from it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use domain::flow::FlowReport;
use domain::job::JobId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The file's name in the state directory.
const FILE_NAME: &str = "outbox.jsonl";
/// The cursor's name in the state directory.
const CURSOR_NAME: &str = "outbox.cursor";

/// One batch of one job's reports, under the id it is sent with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub id: Uuid,
    pub job: JobId,
    pub reports: Vec<FlowReport>,
}

/// Why batches were not written.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error(
        "the outbox file {} is full: {more} more bytes would pass its limit of {limit} bytes",
        .path.display()
    )]
    Full {
        path: PathBuf,
        more: u64,
        limit: u64,
    },
    #[error("cannot use the outbox file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where one batch lies in the file.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: u64,
    end: u64,
    job: JobId,
    reports: usize,
}

/// The spill file, open.
#[derive(Debug)]
pub struct SpillFile {
    path: PathBuf,
    cursor_path: PathBuf,
    file: File,
    len: u64,
    limit: u64,
    /// The batches from the cursor on, oldest first.
    lines: VecDeque<Line>,
}

impl SpillFile {
    /// Opens (or creates) the spill file in `dir`, at most `limit` bytes
    /// long, positioned at its cursor.
    pub fn open(dir: &Path, limit: u64) -> Result<Self, SpillError> {
        let path = dir.join(FILE_NAME);
        let io = |source| SpillError::Io {
            path: path.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let cursor_path = dir.join(CURSOR_NAME);
        // No cursor, or one that makes no sense: everything is sent again,
        // and counts once.
        let cursor = std::fs::read_to_string(&cursor_path)
            .ok()
            .and_then(|c| c.trim().parse::<u64>().ok())
            .filter(|&c| c <= len)
            .unwrap_or(0);
        let mut spill = Self {
            path: path.clone(),
            cursor_path,
            file,
            len,
            limit,
            lines: VecDeque::new(),
        };
        spill.index_from(cursor).map_err(io)?;
        Ok(spill)
    }

    /// Finds the batches from `cursor` on; cuts off a last line a crash
    /// left unfinished, and passes over lines that do not read as a batch.
    fn index_from(&mut self, cursor: u64) -> std::io::Result<()> {
        let mut reader = BufReader::new(&self.file);
        reader.seek(SeekFrom::Start(cursor))?;
        let mut start = cursor;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line)? as u64;
            if read == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                tracing::warn!(path = %self.path.display(), bytes = read, "cutting off a batch a crash left half-written in the outbox file");
                self.file.set_len(start)?;
                self.len = start;
                break;
            }
            match serde_json::from_slice::<Batch>(&line) {
                Ok(batch) => self.lines.push_back(Line {
                    start,
                    end: start + read,
                    job: batch.job,
                    reports: batch.reports.len(),
                }),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), offset = start, error = %e, "a line of the outbox file is not a batch; passed over")
                }
            }
            start += read;
        }
        Ok(())
    }

    /// Appends `batches` after those it holds, durably; all or nothing.
    pub fn push(&mut self, batches: &[Batch]) -> Result<(), SpillError> {
        let mut bytes = Vec::new();
        let mut lines = Vec::with_capacity(batches.len());
        for batch in batches {
            let start = self.len + bytes.len() as u64;
            serde_json::to_writer(&mut bytes, batch).map_err(|e| SpillError::Io {
                path: self.path.clone(),
                source: e.into(),
            })?;
            bytes.push(b'\n');
            lines.push(Line {
                start,
                end: self.len + bytes.len() as u64,
                job: batch.job,
                reports: batch.reports.len(),
            });
        }
        let more = bytes.len() as u64;
        if self.len + more > self.limit {
            return Err(SpillError::Full {
                path: self.path.clone(),
                more,
                limit: self.limit,
            });
        }
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Leave no part of it behind, to be read as batches later.
            let _ = self.file.set_len(self.len);
            return Err(SpillError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += more;
        self.lines.extend(lines);
        Ok(())
    }

    /// The oldest batch not answered yet. A batch that cannot be read back
    /// is passed over, said in the log.
    pub fn head(&mut self) -> Option<Batch> {
        while let Some(line) = self.lines.front().copied() {
            match self.read(line) {
                Ok(batch) => return Some(batch),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), offset = line.start, error = %e, "a batch of the outbox file cannot be read back; passed over");
                    self.advance();
                }
            }
        }
        None
    }

    fn read(&self, line: Line) -> std::io::Result<Batch> {
        let mut bytes = vec![0; (line.end - line.start) as usize];
        let mut file = &self.file;
        file.seek(SeekFrom::Start(line.start))?;
        file.read_exact(&mut bytes)?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The oldest batch was answered: the cursor moves past it. The file
    /// is emptied once nothing is left in it.
    pub fn advance(&mut self) {
        let Some(line) = self.lines.pop_front() else {
            return;
        };
        let mut cursor = line.end;
        if self.lines.is_empty() {
            match self.file.set_len(0) {
                Ok(()) => {
                    self.len = 0;
                    cursor = 0;
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "the answered outbox file cannot be emptied")
                }
            }
        }
        if let Err(e) = self.write_cursor(cursor) {
            // Harmless but for the time it costs: answered batches are sent
            // again after a restart, and count once.
            tracing::warn!(path = %self.cursor_path.display(), error = %e, "the outbox cursor was not written");
        }
    }

    /// Replaces the cursor file at once (written aside, then renamed).
    fn write_cursor(&self, cursor: u64) -> std::io::Result<()> {
        let aside = self.cursor_path.with_extension("cursor.new");
        std::fs::write(&aside, cursor.to_string())?;
        std::fs::rename(&aside, &self.cursor_path)
    }

    /// Holds it reports on `job`?
    pub fn holds(&self, job: JobId) -> bool {
        self.lines.iter().any(|l| l.job == job)
    }

    /// Reports it holds, answered ones not counted.
    pub fn reports(&self) -> usize {
        self.lines.iter().map(|l| l.reports).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The file's path, for what the runner says about it.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use domain::flow::{FlowId, LogLevel};

    use super::*;

    fn batch(job: u128, flows: std::ops::Range<u64>) -> Batch {
        Batch {
            id: Uuid::now_v7(),
            job: JobId(Uuid::from_u128(job)),
            reports: flows
                .map(|f| FlowReport::Log {
                    flow: Some(FlowId(f)),
                    level: LogLevel::Info,
                    message: format!("flow {f} says hello"),
                })
                .collect(),
        }
    }

    /// Takes every batch the file holds, answering each.
    fn drain(spill: &mut SpillFile) -> Vec<Batch> {
        let mut out = Vec::new();
        while let Some(b) = spill.head() {
            out.push(b);
            spill.advance();
        }
        out
    }

    #[test]
    fn batches_come_back_in_order_under_their_own_ids_and_the_file_empties() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = SpillFile::open(dir.path(), 1 << 20).unwrap();
        let (a, b, c) = (batch(1, 0..3), batch(2, 0..1), batch(1, 3..5));
        spill.push(&[a.clone(), b.clone()]).unwrap();
        spill.push(std::slice::from_ref(&c)).unwrap();
        assert_eq!(spill.reports(), 6);
        assert!(spill.holds(JobId(Uuid::from_u128(2))));
        assert_eq!(
            spill.head(),
            Some(a.clone()),
            "unanswered, it stays the head"
        );
        assert_eq!(drain(&mut spill), vec![a, b, c]);
        assert!(spill.is_empty());
        assert!(!spill.holds(JobId(Uuid::from_u128(2))));
        let len = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert_eq!(len, 0, "an answered file takes no room");
    }

    #[test]
    fn a_full_file_refuses_a_batch_whole_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&batch(1, 0..4)).unwrap().len() as u64 + 1;
        let mut spill = SpillFile::open(dir.path(), one * 2 + one / 2).unwrap();
        let (a, b) = (batch(1, 0..4), batch(1, 4..8));
        spill.push(&[a.clone(), b.clone()]).unwrap();
        let refused = spill.push(&[batch(1, 8..12)]).unwrap_err();
        assert!(matches!(refused, SpillError::Full { .. }), "{refused}");
        assert!(refused.to_string().contains("is full"), "{refused}");
        assert_eq!(spill.reports(), 8);
        // Room comes back as batches are answered and the file empties.
        assert_eq!(drain(&mut spill), vec![a, b]);
        spill.push(&[batch(1, 8..12)]).unwrap();
    }

    #[test]
    fn a_reopened_file_resumes_after_the_last_answered_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (batch(1, 0..2), batch(2, 0..2), batch(1, 2..4));
        {
            let mut spill = SpillFile::open(dir.path(), 1 << 20).unwrap();
            spill.push(&[a.clone(), b.clone(), c.clone()]).unwrap();
            assert_eq!(spill.head(), Some(a));
            spill.advance();
        }
        // A crash in the middle of a later append leaves half a line.
        let path = dir.path().join(FILE_NAME);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"id":"0190f1a2-0000-7000-8000-0000000"#)
            .unwrap();
        drop(file);
        let mut spill = SpillFile::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spill.reports(), 4);
        assert_eq!(drain(&mut spill), vec![b, c.clone()]);
        // What is appended after the cut reads back whole.
        spill.push(std::slice::from_ref(&c)).unwrap();
        drop(spill);
        let mut spill = SpillFile::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(drain(&mut spill), vec![c]);
    }

    #[test]
    fn a_lost_cursor_sends_everything_again_under_the_same_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (batch(1, 0..2), batch(1, 2..4));
        let mut spill = SpillFile::open(dir.path(), 1 << 20).unwrap();
        spill.push(&[a.clone(), b.clone()]).unwrap();
        spill.head();
        spill.advance();
        drop(spill);
        std::fs::remove_file(dir.path().join(CURSOR_NAME)).unwrap();
        let mut spill = SpillFile::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(drain(&mut spill), vec![a, b]);
    }
}

//! The runner's state directory: who the runner is (its id, made on its
//! first start and kept, so a restarted runner reconnects as the same
//! runner and the fleet view does not fill with dead ones) and the spill
//! file of its outbox. One process at a time: two runners on one directory
//! would be one runner twice, each replacing the other's connection, so
//! the second is refused.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use domain::runner::RunnerId;
use uuid::Uuid;

use crate::spill_file::{SpillError, SpillFile};

/// The id's file in the directory.
const ID_NAME: &str = "runner-id";
/// The file held locked while a runner uses the directory.
const LOCK_NAME: &str = "lock";
/// Most bytes the outbox keeps on disk: some hundred thousand reports.
pub const OUTBOX_DISK_BYTES: u64 = 64 << 20;

/// Why a state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use the runner state directory {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} does not hold a runner id ({text:?}); delete it to start as a new runner", .path.display())]
    BadId { path: PathBuf, text: String },
    #[error(
        "another runner process uses the state directory {}; give each runner its own (--state-dir)",
        .path.display()
    )]
    InUse { path: PathBuf },
    #[error(transparent)]
    Outbox(#[from] SpillError),
}

/// A state directory in use by this process (until dropped).
#[derive(Debug)]
pub struct StateDir {
    id: RunnerId,
    outbox: SpillFile,
    /// Held locked for as long as this lives.
    _lock: File,
}

impl StateDir {
    /// Opens the directory at `path`, creating it and the runner's id on
    /// first use.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            dir.mode(0o700);
        }
        dir.create(path).map_err(io)?;
        let lock = File::create(path.join(LOCK_NAME)).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::InUse {
                    path: path.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let id = read_or_make_id(path)?;
        let outbox = SpillFile::open(path, OUTBOX_DISK_BYTES)?;
        Ok(Self {
            id,
            outbox,
            _lock: lock,
        })
    }

    /// The runner's id, the same on every start.
    pub fn id(&self) -> RunnerId {
        self.id
    }

    /// The outbox's spill file, and the lock the worker that runs as this
    /// runner holds while it runs.
    pub(crate) fn into_parts(self) -> (SpillFile, File) {
        (self.outbox, self._lock)
    }
}

/// The id kept in `dir`, or a new one, written whole before it is used.
fn read_or_make_id(dir: &Path) -> Result<RunnerId, StateError> {
    let path = dir.join(ID_NAME);
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return Uuid::parse_str(text.trim())
                .map(RunnerId)
                .map_err(|_| StateError::BadId {
                    path: path.clone(),
                    text: text.chars().take(60).collect(),
                });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let id = RunnerId(Uuid::now_v7());
    // Written aside and renamed, so a crash leaves no half an id.
    let aside = path.with_extension("new");
    let mut file = File::create(&aside).map_err(io)?;
    file.write_all(id.0.to_string().as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&aside, &path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    tracing::info!(runner = %id, dir = %dir.display(), "a new runner id, kept for the next start");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_keeps_its_runner_id_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let first = StateDir::open(&path).unwrap().id();
        let again = StateDir::open(&path).unwrap().id();
        assert_eq!(first, again);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(StateDir::open(other.path()).unwrap().id(), first);
    }

    #[test]
    fn a_state_directory_in_use_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateDir::open(dir.path()).unwrap();
        let refused = StateDir::open(dir.path()).unwrap_err();
        assert!(matches!(refused, StateError::InUse { .. }), "{refused}");
        assert!(refused.to_string().contains("--state-dir"), "{refused}");
        drop(held);
        StateDir::open(dir.path()).unwrap();
    }

    #[test]
    fn a_garbled_id_says_which_file_to_delete() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ID_NAME), "not an id").unwrap();
        let refused = StateDir::open(dir.path()).unwrap_err();
        assert!(matches!(refused, StateError::BadId { .. }), "{refused}");
        assert!(refused.to_string().contains("runner-id"), "{refused}");
    }
}

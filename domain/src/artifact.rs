//! What a failed flow keeps for debugging: a screenshot, the page's console
//! errors and its request log, each a blob in the store that the flow's
//! report names by hash (never the bytes: events have a size limit).
//!
//! A stored artifact is sealed with the job it belongs to, so a blob is
//! served as a job's artifact only if a runner holding that job's flows
//! uploaded it as one: a report naming some other blob's hash (a dataset's)
//! links nothing.
//!
//! Pure data and plain functions.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::blob::BlobHash;
use crate::job::JobId;

/// Largest artifact, in bytes.
pub const MAX_ARTIFACT_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of an artifact one protocol message carries (base64 in a frame).
pub const ARTIFACT_PART_BYTES: usize = 160 * 1024;
/// Most parts one artifact comes in.
pub const MAX_ARTIFACT_PARTS: u32 = MAX_ARTIFACT_BYTES.div_ceil(ARTIFACT_PART_BYTES) as u32;

/// What an artifact holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum ArtifactKind {
    /// A PNG of the page's viewport as the flow failed.
    Screenshot,
    /// The page's console errors and uncaught exceptions, a JSON array of strings.
    ConsoleErrors,
    /// The page's requests (URL, status, timing, size), a JSON array.
    RequestLog,
}

impl ArtifactKind {
    pub const ALL: [ArtifactKind; 3] = [
        ArtifactKind::Screenshot,
        ArtifactKind::ConsoleErrors,
        ArtifactKind::RequestLog,
    ];

    /// Its name as sealed and shown, e.g. `request_log`.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactKind::Screenshot => "screenshot",
            ArtifactKind::ConsoleErrors => "console_errors",
            ArtifactKind::RequestLog => "request_log",
        }
    }

    pub fn named(name: &str) -> Option<ArtifactKind> {
        ArtifactKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The media type it is served as.
    pub fn content_type(self) -> &'static str {
        match self {
            ArtifactKind::Screenshot => "image/png",
            ArtifactKind::ConsoleErrors | ArtifactKind::RequestLog => "application/json",
        }
    }

    /// The file name extension it is downloaded with.
    pub fn extension(self) -> &'static str {
        match self {
            ArtifactKind::Screenshot => "png",
            ArtifactKind::ConsoleErrors | ArtifactKind::RequestLog => "json",
        }
    }

    /// Does `bytes` look like this kind? A screenshot is a PNG, the rest JSON arrays.
    pub fn fits(self, bytes: &[u8]) -> bool {
        match self {
            ArtifactKind::Screenshot => bytes.starts_with(PNG_SIGNATURE),
            ArtifactKind::ConsoleErrors => serde_json::from_slice::<Vec<String>>(bytes).is_ok(),
            ArtifactKind::RequestLog => {
                serde_json::from_slice::<Vec<serde_json::Map<String, serde_json::Value>>>(bytes)
                    .is_ok()
            }
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// An artifact as a report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub kind: ArtifactKind,
    /// The sealed blob's hash.
    pub blob: BlobHash,
    /// The artifact's own size (without the seal).
    pub bytes: u64,
}

const SEAL: &str = "trafficbuster-artifact/1";

/// The blob an artifact of `job` is stored as: a one-line seal naming the
/// job and the kind, then the bytes.
pub fn seal(job: JobId, kind: ArtifactKind, bytes: &[u8]) -> Vec<u8> {
    let mut blob = format!("{SEAL} {job} {kind}\n").into_bytes();
    blob.extend_from_slice(bytes);
    blob
}

/// A sealed blob's job, kind and bytes; `None` if it is no artifact.
pub fn open(blob: &[u8]) -> Option<(JobId, ArtifactKind, &[u8])> {
    let end = blob.iter().take(128).position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&blob[..end]).ok()?;
    let mut words = header.split(' ');
    if words.next()? != SEAL {
        return None;
    }
    let job = JobId(Uuid::parse_str(words.next()?).ok()?);
    let kind = ArtifactKind::named(words.next()?)?;
    if words.next().is_some() {
        return None;
    }
    Some((job, kind, &blob[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_artifact_opens_to_its_job_kind_and_bytes() {
        let job = JobId(Uuid::from_u128(7));
        let png = b"\x89PNG\r\n\x1a\nrest";
        let blob = seal(job, ArtifactKind::Screenshot, png);
        assert_eq!(open(&blob), Some((job, ArtifactKind::Screenshot, &png[..])));
        assert_eq!(
            open(b"{\"rows\":[]}"),
            None,
            "a dataset blob is no artifact"
        );
        assert_eq!(open(b"trafficbuster-artifact/1 nope screenshot\nx"), None);
        assert!(MAX_ARTIFACT_PARTS as usize * ARTIFACT_PART_BYTES >= MAX_ARTIFACT_BYTES);
    }

    #[test]
    fn each_kind_knows_what_it_looks_like() {
        assert!(ArtifactKind::Screenshot.fits(b"\x89PNG\r\n\x1a\n..."));
        assert!(!ArtifactKind::Screenshot.fits(b"GIF89a"));
        assert!(ArtifactKind::ConsoleErrors.fits(br#"["boom 42"]"#));
        assert!(!ArtifactKind::ConsoleErrors.fits(br#"{"a":1}"#));
        assert!(ArtifactKind::RequestLog.fits(br#"[{"url":"https://a.example/"}]"#));
        assert!(!ArtifactKind::RequestLog.fits(b"not json"));
    }
}

//! The canonical bytes of a version, stored as its blob: JSON lines, a header
//! line naming the kind and the row count, then one row per line. The same
//! rows always give the same bytes (struct field order, sorted maps), so the
//! blob's hash identifies the content.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use domain::DatasetKind;

use crate::error::{DecodeError, EncodeError};
use crate::rows::Rows;

/// The blob layout's version; a reader refuses one it does not know.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Head {
    dataset: u32,
    kind: DatasetKind,
    rows: usize,
}

/// The blob for `rows`. Proxy passwords must be sealed first.
pub fn encode(rows: &Rows) -> Result<Vec<u8>, EncodeError> {
    if let Some(row) = rows.unsealed() {
        return Err(EncodeError::UnsealedCredential { row: row + 1 });
    }
    let mut out = Vec::with_capacity(64 + rows.len() * 128);
    line(
        &mut out,
        &Head {
            dataset: FORMAT,
            kind: rows.kind(),
            rows: rows.len(),
        },
    );
    match rows {
        Rows::Targets(r) => r.iter().for_each(|row| line(&mut out, row)),
        Rows::Proxies(r) => r.iter().for_each(|row| line(&mut out, row)),
        Rows::DeviceProfiles(r) => r.iter().for_each(|row| line(&mut out, row)),
        Rows::SettingsProfiles(r) => r.iter().for_each(|row| line(&mut out, row)),
    }
    Ok(out)
}

fn line(out: &mut Vec<u8>, value: &impl Serialize) {
    // Plain data (no map with non-string keys, no password in clear: checked
    // above) always serializes.
    serde_json::to_writer(&mut *out, value).expect("rows serialize");
    out.push(b'\n');
}

/// Reads a blob written by [`encode`] back.
pub fn decode(bytes: &[u8]) -> Result<Rows, DecodeError> {
    let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let head: Head = match lines.next() {
        Some(first) => read(first, 1)?,
        None => {
            return Err(DecodeError {
                line: 1,
                why: "the blob is empty".into(),
            });
        }
    };
    if head.dataset != FORMAT {
        let why = format!("blob format {} is not {FORMAT}", head.dataset);
        return Err(DecodeError { line: 1, why });
    }
    let rows = match head.kind {
        DatasetKind::Targets => Rows::Targets(all(lines, head.rows)?),
        DatasetKind::Proxies => Rows::Proxies(all(lines, head.rows)?),
        DatasetKind::DeviceProfiles => Rows::DeviceProfiles(all(lines, head.rows)?),
        DatasetKind::SettingsProfiles => Rows::SettingsProfiles(all(lines, head.rows)?),
    };
    Ok(rows)
}

fn all<'a, T: DeserializeOwned>(
    lines: impl Iterator<Item = &'a [u8]>,
    count: usize,
) -> Result<Vec<T>, DecodeError> {
    // The count is the blob's own word, so it only sizes what the lines fill.
    let mut rows = Vec::with_capacity(count.min(1 << 20));
    for (i, bytes) in lines.enumerate() {
        rows.push(read(bytes, i as u64 + 2)?);
    }
    if rows.len() != count {
        let why = format!(
            "the header says {count} rows, the blob holds {}",
            rows.len()
        );
        return Err(DecodeError { line: 1, why });
    }
    Ok(rows)
}

fn read<T: DeserializeOwned>(bytes: &[u8], line: u64) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError {
        line,
        why: e.to_string(),
    })
}

//! The zip archive inside an xlsx or docx, opened only once what it unpacks
//! to is known to be bounded: its entries are inflated once, counted and
//! dropped, so a small upload cannot expand into gigabytes (a zip bomb)
//! whatever sizes its directory claims.

use std::io::{self, Cursor, Read};

use domain::ImportFormat;
use zip::ZipArchive;

use crate::error::ImportError;

/// The most an xlsx or docx may unpack to, all entries together.
pub(crate) const MAX_UNPACKED: u64 = 256 << 20;

/// Compound files: the legacy .xls/.doc formats, and Office's password-protected files.
const OLE_MAGIC: &[u8] = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1";

pub(crate) fn open(
    format: ImportFormat,
    bytes: &[u8],
) -> Result<ZipArchive<Cursor<&[u8]>>, ImportError> {
    if bytes.starts_with(OLE_MAGIC) {
        let why = "an old binary Office file (.xls, .doc) or a password-protected one; save it as .xlsx or .docx without a password";
        return Err(ImportError::not(format, why));
    }
    let damaged = |e: &dyn std::fmt::Display| {
        ImportError::not(format, format!("a damaged zip archive ({e})"))
    };
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(|_| {
        ImportError::not(format, "not a zip archive, as every xlsx and docx file is")
    })?;
    let mut left = MAX_UNPACKED;
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(|e| damaged(&e))?;
        let unpacked =
            io::copy(&mut entry.take(left + 1), &mut io::sink()).map_err(|e| damaged(&e))?;
        if unpacked > left {
            let why = format!("it unpacks to more than {} MiB", MAX_UNPACKED >> 20);
            return Err(ImportError::not(format, why));
        }
        left -= unpacked;
    }
    Ok(archive)
}

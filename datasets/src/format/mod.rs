//! Bytes in each import format, turned into records that the row types read.

mod archive;
pub(crate) mod csv;
pub(crate) mod docx;
pub(crate) mod json;
pub(crate) mod txt;
pub(crate) mod xlsx;

use domain::ImportFormat;

use crate::error::ImportError;

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The bytes as UTF-8 text, or a clear word on what they are instead.
pub(crate) fn text(format: ImportFormat, bytes: &[u8]) -> Result<&str, ImportError> {
    if bytes.starts_with(ZIP_MAGIC) {
        return Err(ImportError::not(
            format,
            "this is a zip archive (an xlsx or docx file?), not text",
        ));
    }
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return Err(ImportError::not(
            format,
            "this is UTF-16 text; save it as UTF-8",
        ));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let why = format!(
            "not UTF-8 text (byte {} is not); save it as UTF-8",
            e.valid_up_to() + 1
        );
        ImportError::not(format, why)
    })
}

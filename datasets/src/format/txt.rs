//! txt: one row per line; blank lines and lines starting with `#` are skipped.

use domain::ImportFormat;

use crate::error::{ImportError, RowError};
use crate::record::{Collector, Fields, Row, own_labels};
use crate::rows::Rows;

/// Fills a row's cells from one line, or says why the line is no row.
pub(crate) type LineReader = fn(&str, &mut Fields<'_>) -> Result<(), String>;

pub(crate) fn read<R: Row>(bytes: &[u8], fill: LineReader) -> Result<Rows, ImportError> {
    let text = super::text(ImportFormat::Txt, bytes)?;
    let labels = own_labels(R::COLUMNS);
    let mut rows = Collector::<R>::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = Fields::new(i as u64 + 1, R::COLUMNS, &labels);
        match fill(line, &mut fields) {
            Ok(()) => rows.push(fields),
            Err(reason) => rows.errors([RowError {
                line: i as u64 + 1,
                column: None,
                reason,
            }]),
        }
    }
    rows.finish()
}

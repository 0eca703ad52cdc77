//! csv: a header row, then records in any column order, quoted fields
//! allowed. Lines are the file's own, multi-line quoted fields included.

use domain::ImportFormat;

use crate::error::{ImportError, RowError};
use crate::record::{Cell, Collector, Header, Row};
use crate::rows::Rows;

pub(crate) fn read<R: Row>(bytes: &[u8]) -> Result<Rows, ImportError> {
    let text = super::text(ImportFormat::Csv, bytes)?;
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter(text))
        .from_reader(text.as_bytes());
    let mut record = ::csv::StringRecord::new();
    let mut header: Option<Header> = None;
    let mut rows = Collector::<R>::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                rows.errors([RowError {
                    line,
                    column: None,
                    reason: e.to_string(),
                }]);
                break;
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        match &header {
            None => match Header::resolve(R::COLUMNS, &record.iter().collect::<Vec<_>>(), line) {
                Ok(h) => header = Some(h),
                Err(errors) => {
                    rows.errors(errors);
                    return rows.finish();
                }
            },
            Some(h) => rows.push(h.fields(line, record.iter().map(|s| Cell::Text(s.to_owned())))),
        }
    }
    rows.finish()
}

/// The separator the header line uses most: `,`, `;` (spreadsheets in many
/// locales) or a tab.
fn delimiter(text: &str) -> u8 {
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let count = |d: char| first.matches(d).count();
    [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| (count(*d as char), *d == b','))
        .unwrap_or(b',')
}

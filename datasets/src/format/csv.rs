//! csv: a header row, then records in any column order, quoted fields
//! allowed. Lines are the file's own, multi-line quoted fields included.

use domain::ImportFormat;

use crate::error::ImportError;
use crate::record::{Cell, Row, Table};
use crate::rows::Rows;

pub(crate) fn read<R: Row>(bytes: &[u8]) -> Result<Rows, ImportError> {
    let text = super::text(ImportFormat::Csv, bytes)?;
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter(text))
        .from_reader(text.as_bytes());
    let mut record = ::csv::StringRecord::new();
    let mut table = Table::<R>::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                table.row(
                    line,
                    record.iter().map(|s| Cell::Text(s.to_owned())).collect(),
                );
            }
            Err(e) => {
                table.error(e.position().map_or(0, |p| p.line()), e.to_string());
                break;
            }
        }
    }
    table.finish()
}

/// The separator the header line uses most: `,`, `;` (spreadsheets in many
/// locales) or a tab.
fn delimiter(text: &str) -> u8 {
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let count = |d: u8| first.bytes().filter(|b| *b == d).count();
    [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| (count(*d), *d == b','))
        .unwrap_or(b',')
}

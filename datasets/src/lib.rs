//! Dataset imports: the bytes of an upload (txt, csv, xlsx, docx, json) read
//! into validated rows of one kind — every bad row reported at once, with its
//! line, column and reason — and the canonical bytes a version is stored as.
//!
//! Pure: no I/O, no async. Nothing a client sends may panic here.

mod canonical;
pub mod catalogue;
mod device_profile;
mod error;
mod format;
mod proxy;
mod record;
mod rows;
pub mod secret;
mod settings_profile;
mod target;

use domain::{DatasetKind, ImportFormat};

pub use canonical::{decode, encode};
pub use device_profile::{Browser, DeviceProfile, Os, Viewport};
pub use error::{DecodeError, EncodeError, ImportError, MAX_REPORTED, RowError};
pub use proxy::{Proxy, ProxyScheme};
pub use rows::Rows;
pub use secret::{DataKey, Password, Sealed};
pub use settings_profile::{Dns, HumanSurfing, ProxySwitching, SettingsProfile, Span};
pub use target::{Target, TrafficType};

use format::txt::LineReader;
use record::{Cell, Row};

/// Choices an upload makes beside its format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The xlsx sheet to read (the first one when none is named).
    pub sheet: Option<String>,
}

/// Reads an upload's bytes as rows of `kind`, validating every row.
pub fn parse(
    kind: DatasetKind,
    format: ImportFormat,
    bytes: &[u8],
    opts: &ImportOptions,
) -> Result<Rows, ImportError> {
    match (kind, format) {
        (DatasetKind::Targets, ImportFormat::Docx) => format::docx::read(bytes),
        (DatasetKind::Targets, _) => read::<Target>(format, bytes, opts, Some(target_line)),
        (DatasetKind::Proxies, _) => read::<Proxy>(format, bytes, opts, Some(proxy_line)),
        (DatasetKind::DeviceProfiles, _) => read::<DeviceProfile>(format, bytes, opts, None),
        (DatasetKind::SettingsProfiles, _) => read::<SettingsProfile>(format, bytes, opts, None),
    }
}

fn read<R: Row>(
    format: ImportFormat,
    bytes: &[u8],
    opts: &ImportOptions,
    txt: Option<LineReader>,
) -> Result<Rows, ImportError> {
    match format {
        ImportFormat::Txt => match txt {
            Some(line) => format::txt::read::<R>(bytes, line),
            None => Err(ImportError::not(
                format,
                "txt holds only targets and proxies, one per line",
            )),
        },
        ImportFormat::Csv => format::csv::read::<R>(bytes),
        ImportFormat::Json => format::json::read::<R>(bytes),
        ImportFormat::Xlsx => format::xlsx::read::<R>(bytes, opts),
        ImportFormat::Docx => Err(ImportError::not(format, "docx holds only targets")),
    }
}

/// A txt line is a target's URL.
fn target_line(line: &str, fields: &mut record::Fields<'_>) -> Result<(), String> {
    fields.set(Target::URL, Cell::Text(line.to_owned()));
    Ok(())
}

/// A txt line is a proxy address, optionally followed by a region.
fn proxy_line(line: &str, fields: &mut record::Fields<'_>) -> Result<(), String> {
    let cells = proxy::txt_cells(line)?;
    for (column, cell) in Proxy::COLUMNS.iter().zip(cells) {
        fields.set(column, cell);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use record::{Column, Lookup};

    /// Every spelling of a column finds that column, and only it: an alias
    /// shared by two columns would silently fill the first.
    fn spellings_are_unambiguous(columns: &'static [&'static Column]) {
        let mut lookup = Lookup::new(columns);
        for (i, column) in columns.iter().enumerate() {
            for name in std::iter::once(&column.name).chain(column.aliases) {
                let answering: Vec<&str> = columns
                    .iter()
                    .filter(|c| Lookup::new(std::slice::from_ref(*c)).column(name).is_some())
                    .map(|c| c.name)
                    .collect();
                assert_eq!(answering, [column.name], "{name:?}");
                assert_eq!(lookup.column(name), Some(i));
            }
        }
    }

    #[test]
    fn no_two_columns_of_a_kind_answer_to_one_name() {
        spellings_are_unambiguous(Target::COLUMNS);
        spellings_are_unambiguous(Proxy::COLUMNS);
        spellings_are_unambiguous(DeviceProfile::COLUMNS);
        spellings_are_unambiguous(SettingsProfile::COLUMNS);
    }
}

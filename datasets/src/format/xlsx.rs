//! xlsx: the first sheet, or the one named; its first non-empty row is the
//! header. Cells are streamed, so a sheet with one far-off cell costs no
//! more than its used cells. Lines are the sheet's row numbers.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use calamine::{DataRef, Reader, Xlsx};
use domain::ImportFormat;

use crate::ImportOptions;
use crate::error::ImportError;
use crate::record::{Cell, Row, Table};
use crate::rows::Rows;

/// Excel's last column is XFD, the 16,384th.
const MAX_COLUMNS: u32 = 16_384;

pub(crate) fn read<R: Row>(bytes: &[u8], opts: &ImportOptions) -> Result<Rows, ImportError> {
    super::archive::open(ImportFormat::Xlsx, bytes)?;
    // A third-party parser meets client bytes here: should it ever panic,
    // the upload fails and the process stays up.
    catch_unwind(AssertUnwindSafe(|| read_sheet::<R>(bytes, opts)))
        .unwrap_or_else(|_| Err(not("the workbook could not be read")))
}

fn not(why: impl Into<String>) -> ImportError {
    ImportError::not(ImportFormat::Xlsx, why)
}

fn read_sheet<R: Row>(bytes: &[u8], opts: &ImportOptions) -> Result<Rows, ImportError> {
    let mut workbook =
        Xlsx::new(Cursor::new(bytes)).map_err(|e| not(format!("not a workbook ({e})")))?;
    let names = workbook.sheet_names();
    let sheet = match &opts.sheet {
        Some(wanted) => names.iter().find(|n| *n == wanted).ok_or_else(|| {
            not(format!(
                "the workbook has no sheet {wanted:?}; its sheets are {names:?}"
            ))
        })?,
        None => names
            .first()
            .ok_or_else(|| not("the workbook has no sheet"))?,
    };
    let mut reader = workbook
        .worksheet_cells_reader(sheet)
        .map_err(|e| not(format!("sheet {sheet:?} cannot be read ({e})")))?;
    let mut table = Table::<R>::new();
    let mut current: Option<u32> = None;
    let mut cells = Vec::new();
    while let Some(cell) = reader
        .next_cell()
        .map_err(|e| not(format!("sheet {sheet:?} is damaged ({e})")))?
    {
        let (at, column) = cell.get_position();
        if column >= MAX_COLUMNS {
            return Err(not(format!(
                "row {} has a cell beyond Excel's last column",
                at + 1
            )));
        }
        // Cells come row by row: a new row number closes the row before.
        if current != Some(at) {
            if let Some(done) = current {
                table.row(u64::from(done) + 1, std::mem::take(&mut cells));
            }
            current = Some(at);
        }
        let value = value(cell.get_value());
        if !value.is_empty() {
            let column = column as usize;
            if cells.len() <= column {
                cells.resize(column + 1, Cell::Empty);
            }
            cells[column] = value;
        }
    }
    if let Some(done) = current {
        table.row(u64::from(done) + 1, cells);
    }
    table.finish()
}

fn value(data: &DataRef<'_>) -> Cell {
    match data {
        DataRef::Empty => Cell::Empty,
        DataRef::Int(i) => Cell::Number(*i as f64),
        DataRef::Float(f) => Cell::Number(*f),
        DataRef::Bool(b) => Cell::Bool(*b),
        DataRef::String(s) | DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => {
            Cell::Text(s.clone())
        }
        DataRef::SharedString(s) => Cell::Text((*s).to_owned()),
        DataRef::DateTime(_) => Cell::Invalid("a date, where text or a number is expected"),
        DataRef::Error(_) => Cell::Invalid("the cell holds a spreadsheet error (#N/A, #REF!, …)"),
    }
}

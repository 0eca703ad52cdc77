//! json: an array of objects. Nested objects name the flat columns by their
//! path (`{"viewport": {"width": 390}}` fills `viewport_width`), except under
//! a map column, where an object is the value. A row's line is its index + 1.

use domain::ImportFormat;
use serde_json::{Map, Value};

use crate::error::{ImportError, RowError};
use crate::record::{Cell, Collector, Header, Lookup, Row};
use crate::rows::Rows;

pub(crate) fn read<R: Row>(bytes: &[u8]) -> Result<Rows, ImportError> {
    let text = super::text(ImportFormat::Json, bytes)?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ImportError::not(ImportFormat::Json, format!("not valid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(ImportError::not(
            ImportFormat::Json,
            "expected an array of objects: [{…}, {…}]",
        ));
    };
    let mut rows = Collector::<R>::new();
    let mut lookup = Lookup::new(R::COLUMNS);
    for (i, item) in items.into_iter().enumerate() {
        let line = i as u64 + 1;
        let Value::Object(object) = item else {
            let reason = "expected an object ({\"key\": value, …})".to_owned();
            rows.errors([RowError {
                line,
                column: None,
                reason,
            }]);
            continue;
        };
        let mut cells = Vec::new();
        flatten(&mut lookup, "", object, &mut cells);
        let (names, cells): (Vec<String>, Vec<Cell>) = cells.into_iter().unzip();
        match Header::resolve(&mut lookup, &names, line) {
            Ok(header) => rows.push(header.fields(line, cells)),
            Err(errors) => rows.errors(errors),
        }
    }
    rows.finish()
}

fn flatten(
    lookup: &mut Lookup,
    prefix: &str,
    object: Map<String, Value>,
    out: &mut Vec<(String, Cell)>,
) {
    for (key, value) in object {
        let path = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        let cell = match value {
            Value::Null => Cell::Empty,
            Value::Bool(b) => Cell::Bool(b),
            Value::Number(n) => n
                .as_f64()
                .map_or(Cell::Invalid("not a number JSON can hold"), Cell::Number),
            Value::String(s) => Cell::Text(s),
            Value::Array(_) => Cell::Invalid("a list is not allowed here"),
            Value::Object(inner) if lookup.is_map(&path) => Cell::Map(
                inner
                    .into_iter()
                    .map(|(k, v)| (k, scalar_text(v)))
                    .collect(),
            ),
            Value::Object(inner) => {
                flatten(lookup, &path, inner, out);
                continue;
            }
        };
        out.push((path, cell));
    }
}

fn scalar_text(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

//! The one path every tabular format takes: a header resolved against a row
//! type's columns, then each record's cells read into typed fields, every
//! field error named by its column and collected rather than returned early.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::error::{ImportError, MAX_REPORTED, RowError};
use crate::rows::Rows;

/// A column a row type reads, with the other spellings a header may use.
/// Names match case-insensitively, ignoring everything but letters and
/// digits, so `Traffic Type`, `traffic_type` and `trafficType` are one.
#[derive(Debug)]
pub(crate) struct Column {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub required: bool,
    /// Holds a key → value map (json may give an object here).
    pub map: bool,
}

impl Column {
    pub const fn new(name: &'static str, aliases: &'static [&'static str]) -> Self {
        Column {
            name,
            aliases,
            required: false,
            map: false,
        }
    }
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    pub const fn map(mut self) -> Self {
        self.map = true;
        self
    }
    fn answers_to(&self, header: &str) -> bool {
        same_name(self.name, header) || self.aliases.iter().any(|a| same_name(a, header))
    }
}

/// The comparison key of a name: lowercase letters and digits only.
fn key(name: &str) -> impl Iterator<Item = char> + '_ {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
}

fn same_name(a: &str, b: &str) -> bool {
    key(a).eq(key(b))
}

/// Which column a name answers to, remembered per name: json repeats its
/// keys in every object, and matching spellings is the costly part.
pub(crate) struct Lookup {
    columns: &'static [&'static Column],
    seen: HashMap<String, Option<usize>>,
}

impl Lookup {
    pub fn new(columns: &'static [&'static Column]) -> Self {
        Lookup {
            columns,
            seen: HashMap::new(),
        }
    }

    /// The index into the columns of the one `name` answers to.
    pub fn column(&mut self, name: &str) -> Option<usize> {
        if let Some(found) = self.seen.get(name) {
            return *found;
        }
        let found = self.columns.iter().position(|c| c.answers_to(name));
        self.seen.insert(name.to_owned(), found);
        found
    }

    /// Whether `name` is a map column's.
    pub fn is_map(&mut self, name: &str) -> bool {
        self.column(name).is_some_and(|i| self.columns[i].map)
    }
}

/// A row type that tabular sources fill.
pub(crate) trait Row: Sized {
    const COLUMNS: &'static [&'static Column];
    /// Reads a row; field errors go to `fields`, and then `None` comes back.
    fn read(fields: &mut Fields<'_>) -> Option<Self>;
    fn into_rows(rows: Vec<Self>) -> Rows;
}

/// One cell as a source gives it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Empty,
    Text(String),
    Number(f64),
    Bool(bool),
    /// Key → value pairs (a json object under a map column).
    Map(Vec<(String, String)>),
    /// A value no column can take, and why (an array, a spreadsheet error…).
    Invalid(&'static str),
}

impl Cell {
    /// The name a header cell gives its column (a number heads one too, if oddly).
    fn header_name(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Number(n) => number_text(*n),
            Cell::Bool(b) => b.to_string(),
            _ => String::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Cell::Empty => true,
            Cell::Text(s) => s.trim().is_empty(),
            _ => false,
        }
    }
}

/// Integral floats as integers (a port typed into a spreadsheet is 8080.0).
pub(crate) fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// A source's header row resolved against a row type's columns.
pub(crate) struct Header {
    columns: &'static [&'static Column],
    /// For each source position, the column it fills (None: a blank header).
    positions: Vec<Option<usize>>,
    /// For each column, the name the file gives it (or its own name).
    labels: Vec<String>,
}

impl Header {
    /// Every unknown, repeated or missing column is reported, each at `line`.
    pub fn resolve<S: AsRef<str>>(
        lookup: &mut Lookup,
        names: &[S],
        line: u64,
    ) -> Result<Header, Vec<RowError>> {
        let columns = lookup.columns;
        let mut errors = Vec::new();
        let mut labels: Vec<Option<String>> = vec![None; columns.len()];
        let mut positions = Vec::with_capacity(names.len());
        for name in names {
            let name = name.as_ref().trim();
            if name.is_empty() {
                positions.push(None);
                continue;
            }
            match lookup.column(name) {
                Some(i) if labels[i].is_some() => {
                    errors.push(RowError {
                        line,
                        column: Some(name.to_owned()),
                        reason: format!("the {} column appears twice", columns[i].name),
                    });
                    positions.push(None);
                }
                Some(i) => {
                    labels[i] = Some(name.to_owned());
                    positions.push(Some(i));
                }
                None => {
                    errors.push(unknown_column(columns, name, line));
                    positions.push(None);
                }
            }
        }
        for (column, label) in columns.iter().zip(&labels) {
            if column.required && label.is_none() {
                errors.push(RowError {
                    line,
                    column: Some(column.name.to_owned()),
                    reason: "required column is missing".to_owned(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let labels = labels
            .into_iter()
            .zip(columns)
            .map(|(label, column)| label.unwrap_or_else(|| column.name.to_owned()))
            .collect();
        Ok(Header {
            columns,
            positions,
            labels,
        })
    }

    /// The row at `line` whose cells are given in source order.
    pub fn fields(&self, line: u64, cells: impl IntoIterator<Item = Cell>) -> Fields<'_> {
        let mut fields = Fields::new(line, self.columns, &self.labels);
        for (i, cell) in cells.into_iter().enumerate() {
            match self.positions.get(i).copied().flatten() {
                Some(column) => fields.cells[column] = cell,
                None if cell.is_empty() => {}
                None => fields.errors.push(RowError {
                    line,
                    column: None,
                    reason: format!("a value in column {} has no header", i + 1),
                }),
            }
        }
        fields
    }
}

pub(crate) fn unknown_column(columns: &[&Column], name: &str, line: u64) -> RowError {
    let mut known = String::new();
    for (i, c) in columns.iter().enumerate() {
        let _ = write!(known, "{}{}", if i == 0 { "" } else { ", " }, c.name);
    }
    RowError {
        line,
        column: Some(name.to_owned()),
        reason: format!("unknown column; the columns are: {known}"),
    }
}

/// One record's cells by column, and the errors found reading them.
pub(crate) struct Fields<'a> {
    line: u64,
    columns: &'static [&'static Column],
    labels: &'a [String],
    cells: Vec<Cell>,
    errors: Vec<RowError>,
}

impl<'a> Fields<'a> {
    /// An empty record; `labels` names each of `columns` as the file does.
    pub fn new(line: u64, columns: &'static [&'static Column], labels: &'a [String]) -> Self {
        let cells = vec![Cell::Empty; columns.len()];
        Fields {
            line,
            columns,
            labels,
            cells,
            errors: Vec::new(),
        }
    }

    /// Sets a column's cell (for sources that know their columns without a header).
    pub fn set(&mut self, column: &Column, cell: Cell) {
        let i = self.index(column);
        self.cells[i] = cell;
    }

    pub fn is_blank(&self) -> bool {
        self.errors.is_empty() && self.cells.iter().all(Cell::is_empty)
    }

    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn index(&self, column: &Column) -> usize {
        // Row types only ask for their own columns; each row type's tests read them all.
        let found = self.columns.iter().position(|c| std::ptr::eq(*c, column));
        found.expect("a row type reads only its own columns")
    }

    /// Records an error against a column.
    pub fn error(&mut self, column: &Column, reason: impl Into<String>) {
        let label = self.labels[self.index(column)].clone();
        self.errors.push(RowError {
            line: self.line,
            column: Some(label),
            reason: reason.into(),
        });
    }

    /// Whether the file gave this column a value.
    pub fn has(&self, column: &Column) -> bool {
        !self.cells[self.index(column)].is_empty()
    }

    /// A cell read as text: None when empty (or invalid, which is recorded).
    pub fn text(&mut self, column: &Column) -> Option<String> {
        let i = self.index(column);
        match std::mem::replace(&mut self.cells[i], Cell::Empty) {
            Cell::Empty => None,
            Cell::Text(s) => {
                let t = s.trim();
                if t.is_empty() {
                    None
                } else if t.len() == s.len() {
                    Some(s)
                } else {
                    Some(t.to_owned())
                }
            }
            Cell::Number(n) => Some(number_text(n)),
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Map(_) => {
                self.error(column, "expected a single value, not an object");
                None
            }
            Cell::Invalid(why) => {
                self.error(column, why);
                None
            }
        }
    }

    /// A required cell read as text.
    pub fn required(&mut self, column: &Column) -> Option<String> {
        let before = self.errors.len();
        let value = self.text(column);
        if value.is_none() && self.errors.len() == before {
            self.error(column, "is required");
        }
        value
    }

    /// A required cell parsed by `parse`, whose error becomes the column's.
    pub fn required_as<T>(
        &mut self,
        column: &Column,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.required(column)?;
        self.parse_text(column, &text, parse)
    }

    fn parse_text<T>(
        &mut self,
        column: &Column,
        text: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match parse(text) {
            Ok(value) => Some(value),
            Err(why) => {
                self.error(column, why);
                None
            }
        }
    }

    /// A cell parsed by `parse`, whose error becomes the column's.
    pub fn parsed<T>(
        &mut self,
        column: &Column,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(column)?;
        self.parse_text(column, &text, parse)
    }

    /// A whole number within `min..=max`.
    pub fn uint(&mut self, column: &Column, min: u64, max: u64) -> Option<u64> {
        self.parsed(column, |s| parse_uint(s, min, max))
    }

    /// A yes/no value (true/false, yes/no, on/off, 1/0).
    pub fn bool(&mut self, column: &Column) -> Option<bool> {
        self.parsed(column, parse_bool)
    }

    /// A number within `min..=max`; `30%` reads as 0.3.
    pub fn float(&mut self, column: &Column, min: f64, max: f64) -> Option<f64> {
        self.parsed(column, |s| parse_float(s, min, max))
    }

    /// A map column: an object's pairs, or text `key=value; key=value`.
    pub fn map(&mut self, column: &Column) -> Option<Vec<(String, String)>> {
        let i = self.index(column);
        if let Cell::Map(pairs) = &mut self.cells[i] {
            return Some(std::mem::take(pairs));
        }
        self.parsed(column, |s| {
            s.split([';', '\n'])
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    pair.split_once(['=', ' '])
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .ok_or_else(|| format!("{pair:?} is not host=address"))
                })
                .collect()
        })
    }

    /// The row when no field failed; otherwise its errors are kept for the report.
    pub fn finish<T>(&mut self, row: impl FnOnce() -> Option<T>) -> Option<T> {
        if self.ok() { row() } else { None }
    }
}

pub(crate) fn parse_uint(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let n = match s.parse::<u64>() {
        Ok(n) => n,
        Err(_) => match s.parse::<f64>() {
            Ok(f) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => f as u64,
            _ => return Err(format!("{s:?} is not a whole number")),
        },
    };
    if n < min || n > max {
        return Err(format!("{n} is out of range ({min} to {max})"));
    }
    Ok(n)
}

pub(crate) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" | "1" => Ok(true),
        "false" | "no" | "n" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "{s:?} is not yes/no (true, false, yes, no, on, off, 1, 0)"
        )),
    }
}

pub(crate) fn parse_float(s: &str, min: f64, max: f64) -> Result<f64, String> {
    let (number, scale) = match s.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (s, 1.0),
    };
    let n = number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .map(|n| n / scale)
        .ok_or_else(|| format!("{s:?} is not a number"))?;
    if n < min || n > max {
        return Err(format!("{n} is out of range ({min} to {max})"));
    }
    Ok(n)
}

/// Gathers rows and every row error, in file order.
pub(crate) struct Collector<R> {
    rows: Vec<R>,
    errors: Vec<RowError>,
    total: usize,
}

impl<R: Row> Collector<R> {
    pub fn new() -> Self {
        Collector {
            rows: Vec::new(),
            errors: Vec::new(),
            total: 0,
        }
    }

    /// Reads one record; a blank one is skipped.
    pub fn push(&mut self, mut fields: Fields<'_>) {
        if fields.is_blank() {
            return;
        }
        match R::read(&mut fields) {
            Some(row) if fields.ok() => self.rows.push(row),
            _ => self.errors(fields.errors),
        }
    }

    pub fn errors(&mut self, errors: impl IntoIterator<Item = RowError>) {
        for error in errors {
            self.total += 1;
            if self.errors.len() < MAX_REPORTED {
                self.errors.push(error);
            }
        }
    }

    pub fn finish(self) -> Result<Rows, ImportError> {
        if self.total > 0 {
            Err(ImportError::Rows {
                errors: self.errors,
                total: self.total,
            })
        } else if self.rows.is_empty() {
            Err(ImportError::Empty)
        } else {
            Ok(R::into_rows(self.rows))
        }
    }
}

/// Labels for a source without a header: each column's own name.
pub(crate) fn own_labels(columns: &[&Column]) -> Vec<String> {
    columns.iter().map(|c| c.name.to_owned()).collect()
}

/// A table whose first non-blank row is its header (csv, xlsx). A bad header
/// is the whole report: the rows under it cannot be read.
pub(crate) struct Table<R> {
    header: Option<Option<Header>>,
    rows: Collector<R>,
}

impl<R: Row> Table<R> {
    pub fn new() -> Self {
        Table {
            header: None,
            rows: Collector::new(),
        }
    }

    /// The row at `line`, its cells in source order.
    pub fn row(&mut self, line: u64, cells: Vec<Cell>) {
        if cells.iter().all(Cell::is_empty) {
            return;
        }
        match &self.header {
            Some(Some(header)) => self.rows.push(header.fields(line, cells)),
            Some(None) => {}
            None => {
                let names: Vec<String> = cells.iter().map(Cell::header_name).collect();
                match Header::resolve(&mut Lookup::new(R::COLUMNS), &names, line) {
                    Ok(header) => self.header = Some(Some(header)),
                    Err(errors) => {
                        self.rows.errors(errors);
                        self.header = Some(None);
                    }
                }
            }
        }
    }

    /// A problem that ends the reading at `line`.
    pub fn error(&mut self, line: u64, reason: String) {
        self.rows.errors([RowError {
            line,
            column: None,
            reason,
        }]);
    }

    pub fn finish(self) -> Result<Rows, ImportError> {
        self.rows.finish()
    }
}

//! Rows read back from views: column names and values, with typed access
//! that reads the same on SQLite (where booleans are integers) and PostgreSQL.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::RowError;
use crate::sql::SqlValue;

/// One result row of [`crate::ViewStore::query`].
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<SqlValue>,
}

impl Row {
    pub(crate) fn new(columns: Arc<[String]>, values: Vec<SqlValue>) -> Self {
        Self { columns, values }
    }

    /// The column names, in select order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, in select order.
    pub fn values(&self) -> &[SqlValue] {
        &self.values
    }

    /// The raw value of a column, by name or index.
    pub fn value(&self, column: impl Column) -> Result<&SqlValue, RowError> {
        column
            .index_in(&self.columns)
            .and_then(|index| self.values.get(index))
            .ok_or_else(|| RowError::NoSuchColumn {
                column: column.describe(),
                columns: self.columns.join(", "),
            })
    }

    /// A column's value as `T`, by name or index.
    pub fn get<T: FromSqlValue>(&self, column: impl Column) -> Result<T, RowError> {
        let value = self.value(&column)?;
        T::from_sql_value(value).ok_or_else(|| RowError::WrongType {
            column: column.describe(),
            wanted: T::NAME,
            found: value.clone(),
        })
    }
}

/// Names a column: its name (`&str`) or its index (`usize`).
pub trait Column {
    fn index_in(&self, columns: &[String]) -> Option<usize>;
    fn describe(&self) -> String;
}

impl Column for &str {
    fn index_in(&self, columns: &[String]) -> Option<usize> {
        columns.iter().position(|c| c == self)
    }
    fn describe(&self) -> String {
        (*self).to_owned()
    }
}

impl Column for usize {
    fn index_in(&self, columns: &[String]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
    fn describe(&self) -> String {
        format!("#{self}")
    }
}

impl<C: Column + ?Sized> Column for &C {
    fn index_in(&self, columns: &[String]) -> Option<usize> {
        (**self).index_in(columns)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// A Rust type a column value converts to.
pub trait FromSqlValue: Sized {
    /// The type's name, for error messages.
    const NAME: &'static str;
    /// `None` when the value is of another kind (or NULL for a non-`Option`).
    fn from_sql_value(value: &SqlValue) -> Option<Self>;
}

impl FromSqlValue for i64 {
    const NAME: &'static str = "an integer";
    fn from_sql_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Int(v) => Some(*v),
            _ => None,
        }
    }
}

impl FromSqlValue for u64 {
    const NAME: &'static str = "a non-negative integer";
    fn from_sql_value(value: &SqlValue) -> Option<Self> {
        i64::from_sql_value(value).and_then(|v| u64::try_from(v).ok())
    }
}

impl FromSqlValue for i32 {
    const NAME: &'static str = "a 32-bit integer";
    fn from_sql_value(value: &SqlValue) -> Option<Self> {
        i64::from_sql_value(value).and_then(|v| i32::try_from(v).ok())
    }
}

impl FromSqlValue for f64 {
    const NAME: &'static str = "a number";
    fn from_sql_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Float(v) => Some(*v),
            // SQLite stores a whole DOUBLE PRECISION value as an integer.
            SqlValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
}

impl FromSqlValue for bool {
    const NAME: &'static str = "a boolean";
    fn from_sql_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Bool(v) => Some(*v),
            // SQLite stores BOOLEAN as 0 or 1.
            SqlValue::Int(0) => Some(false),
            SqlValue::Int(1) => Some(true),
            _ => None,
        }
    }
}

impl FromSqlValue for String {
    const NAME: &'static str = "text";
    fn from_sql_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Text(v) => Some(v.clone()),
            _ => None,
        }
    }
}

/// Read from microseconds since the Unix epoch, as views store timestamps.
impl FromSqlValue for OffsetDateTime {
    const NAME: &'static str = "a timestamp (microseconds since the Unix epoch)";
    fn from_sql_value(value: &SqlValue) -> Option<Self> {
        let micros = i64::from_sql_value(value)?;
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()
    }
}

impl<T: FromSqlValue> FromSqlValue for Option<T> {
    const NAME: &'static str = T::NAME;
    fn from_sql_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Null => Some(None),
            other => T::from_sql_value(other).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row::new(
            Arc::from(vec!["name".to_owned(), "n".to_owned(), "ok".to_owned()]),
            vec![
                SqlValue::Text("a".into()),
                SqlValue::Int(3),
                SqlValue::Int(1),
            ],
        )
    }

    #[test]
    fn columns_are_found_by_name_or_index() {
        let r = row();
        assert_eq!(r.get::<String>("name").unwrap(), "a");
        assert_eq!(r.get::<i64>(1).unwrap(), 3);
        assert!(r.get::<bool>("ok").unwrap());
        assert_eq!(r.get::<Option<i64>>("n").unwrap(), Some(3));
    }

    #[test]
    fn a_missing_column_or_a_wrong_type_says_which() {
        let r = row();
        let err = r.get::<i64>("nope").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("name, n, ok"), "{err}");
        let err = r.get::<i64>("name").unwrap_err().to_string();
        assert!(err.contains("name") && err.contains("an integer"), "{err}");
        assert!(r.get::<i64>(7).unwrap_err().to_string().contains("#7"));
    }
}

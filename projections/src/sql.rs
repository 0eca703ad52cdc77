//! Portable SQL: the values a view binds, the write statements a projection
//! emits, and the rewrite of `$N` placeholders into SQLite's `?N`.
//!
//! Pure: no I/O. Statements are written once in the subset both backends
//! speak (upserts with `ON CONFLICT (…) DO UPDATE SET x = excluded.x`,
//! UPDATE, DELETE; TEXT, BIGINT, INTEGER, BOOLEAN, DOUBLE PRECISION columns;
//! timestamps as BIGINT microseconds since the Unix epoch).

use std::borrow::Cow;
use std::fmt;

use time::OffsetDateTime;

/// One bound value or column value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

impl SqlValue {
    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Null => "NULL",
            Self::Int(_) => "an integer",
            Self::Float(_) => "a float",
            Self::Text(_) => "text",
            Self::Bool(_) => "a boolean",
        }
    }

    /// A timestamp as stored in views: microseconds since the Unix epoch.
    pub fn micros(at: OffsetDateTime) -> Self {
        // Every OffsetDateTime (years ±9999) fits: about 3e17 microseconds.
        Self::Int((at.unix_timestamp_nanos() / 1000) as i64)
    }
}

impl fmt::Display for SqlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("NULL"),
            Self::Int(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v}"),
            Self::Text(v) => write!(f, "{v:?}"),
            Self::Bool(v) => write!(f, "{v}"),
        }
    }
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<i32> for SqlValue {
    fn from(v: i32) -> Self {
        Self::Int(v.into())
    }
}

impl From<u32> for SqlValue {
    fn from(v: u32) -> Self {
        Self::Int(v.into())
    }
}

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

impl From<bool> for SqlValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

/// Microseconds since the Unix epoch, as views store timestamps.
impl From<OffsetDateTime> for SqlValue {
    fn from(at: OffsetDateTime) -> Self {
        Self::micros(at)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// An unsigned number too large for a BIGINT column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} does not fit in a BIGINT (at most {max})", max = i64::MAX)]
pub struct OutOfRange(pub u64);

impl TryFrom<u64> for SqlValue {
    type Error = OutOfRange;
    fn try_from(v: u64) -> Result<Self, OutOfRange> {
        i64::try_from(v).map(Self::Int).map_err(|_| OutOfRange(v))
    }
}

/// One write a projection asks for: portable SQL with `$1, $2, …` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: Cow<'static, str>,
    pub params: Vec<SqlValue>,
}

impl Statement {
    /// A statement without parameters yet.
    pub fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        Self {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    /// Binds the next parameter (`$1` first).
    pub fn bind(mut self, value: impl Into<SqlValue>) -> Self {
        self.params.push(value.into());
        self
    }
}

/// Rewrites `$N` placeholders to SQLite's `?N`, leaving string literals,
/// quoted identifiers and comments alone. Refuses what would not mean the
/// same on both backends: `?` placeholders, `$` outside a placeholder
/// (PostgreSQL dollar quoting), `$0`, and unterminated quotes or comments.
pub(crate) fn sqlite_placeholders(sql: &str) -> Result<String, String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    // Start of the stretch of `sql` not yet copied to `out`.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i = end_of_quoted(bytes, i, quote).ok_or_else(|| {
                    let what = if quote == b'\'' {
                        "string literal"
                    } else {
                        "quoted identifier"
                    };
                    format!("unterminated {what} starting at byte {i}")
                })?;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let close = sql[i + 2..]
                    .find("*/")
                    .ok_or_else(|| format!("unterminated comment starting at byte {i}"))?;
                i += 2 + close + 2;
            }
            b'?' => {
                return Err(format!(
                    "'?' at byte {i}: write placeholders as $1, $2, … (the SQLite side rewrites them)"
                ));
            }
            b'$' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits == 0 {
                    return Err(format!(
                        "'$' at byte {i} is not a placeholder ($1, $2, …); dollar quoting is not portable"
                    ));
                }
                let number = &sql[i + 1..i + 1 + digits];
                if number.bytes().all(|b| b == b'0') {
                    return Err(format!(
                        "placeholder ${number} at byte {i}: they start at $1"
                    ));
                }
                out.push_str(&sql[copied..i]);
                out.push('?');
                out.push_str(number);
                i += 1 + digits;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// The index just past the quote closing the one at `open`; a doubled quote
/// inside is an escaped one.
fn end_of_quoted(bytes: &[u8], open: usize, quote: u8) -> Option<usize> {
    let mut i = open + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_past_nine_keep_all_their_digits() {
        assert_eq!(
            sqlite_placeholders("VALUES ($1, $10, $2, $100, $1)").unwrap(),
            "VALUES (?1, ?10, ?2, ?100, ?1)"
        );
    }

    #[test]
    fn dollars_inside_literals_identifiers_and_comments_stay() {
        let sql = "SELECT 'costs $1 ''or $2''', \"col$3\" -- $4 ?\n FROM t /* $5 ? */ WHERE a = $6";
        assert_eq!(
            sqlite_placeholders(sql).unwrap(),
            "SELECT 'costs $1 ''or $2''', \"col$3\" -- $4 ?\n FROM t /* $5 ? */ WHERE a = ?6"
        );
    }

    #[test]
    fn text_around_placeholders_is_copied_unchanged_even_when_not_ascii() {
        assert_eq!(
            sqlite_placeholders("UPDATE t SET x = $2 WHERE y = 'é$' AND z=$1").unwrap(),
            "UPDATE t SET x = ?2 WHERE y = 'é$' AND z=?1"
        );
    }

    #[test]
    fn sql_that_would_differ_between_backends_is_refused_with_a_reason() {
        for (sql, says) in [
            ("SELECT $$x$$", "dollar quoting"),
            ("SELECT $a", "not a placeholder"),
            ("SELECT ?", "write placeholders as $1"),
            ("SELECT $0", "they start at $1"),
            ("SELECT 'open", "unterminated string literal"),
            ("SELECT \"open", "unterminated quoted identifier"),
            ("SELECT 1 /* open", "unterminated comment"),
        ] {
            let err = sqlite_placeholders(sql).unwrap_err();
            assert!(err.contains(says), "{sql}: {err}");
        }
    }

    #[test]
    fn values_convert_from_rust_types() {
        assert_eq!(SqlValue::from(Some(3_i32)), SqlValue::Int(3));
        assert_eq!(SqlValue::from(None::<&str>), SqlValue::Null);
        assert_eq!(
            SqlValue::from(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(2)),
            SqlValue::Int(2_000_000)
        );
        assert_eq!(SqlValue::try_from(u64::MAX), Err(OutOfRange(u64::MAX)));
        assert_eq!(SqlValue::try_from(7_u64), Ok(SqlValue::Int(7)));
    }
}

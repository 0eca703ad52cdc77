//! Why someone did something audited (allow-listing a domain, turning safe
//! mode off, granting a consent): required, one line, bounded, so every
//! audit line can say it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How long a reason may be, in characters.
pub const MAX_REASON: usize = 500;

/// A stated reason: trimmed, non-empty, one line of at most 500 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reason(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    #[error("a reason is required: say in a sentence why")]
    Empty,
    #[error("the reason is {len} characters long; keep it to {MAX_REASON}")]
    TooLong { len: usize },
    #[error("the reason must be one line, without control characters")]
    ControlCharacter,
}

impl Reason {
    pub fn parse(raw: &str) -> Result<Self, ReasonError> {
        let reason = raw.trim();
        if reason.is_empty() {
            return Err(ReasonError::Empty);
        }
        let len = reason.chars().count();
        if len > MAX_REASON {
            return Err(ReasonError::TooLong { len });
        }
        if reason.chars().any(char::is_control) {
            return Err(ReasonError::ControlCharacter);
        }
        Ok(Self(reason.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Text from outside (a remote server's answer, an error) made fit for an
/// audit line: control characters become spaces, and it is cut to `max`
/// characters, marked with `…`.
pub fn one_line(raw: &str, max: usize) -> String {
    let mut line: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if raw.trim().chars().nth(max).is_some() {
        line.push('…');
    }
    line
}

impl TryFrom<String> for Reason {
    type Error = ReasonError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_trimmed_and_kept() {
        assert_eq!(
            Reason::parse("  staging host of ACME  ").unwrap().as_str(),
            "staging host of ACME"
        );
        assert!(Reason::parse(&"é".repeat(MAX_REASON)).is_ok());
    }

    #[test]
    fn an_empty_long_or_multi_line_reason_is_refused() {
        assert_eq!(Reason::parse(" \t "), Err(ReasonError::Empty));
        assert_eq!(
            Reason::parse(&"x".repeat(MAX_REASON + 1)),
            Err(ReasonError::TooLong {
                len: MAX_REASON + 1
            })
        );
        assert_eq!(
            Reason::parse("one\nforged audit line"),
            Err(ReasonError::ControlCharacter)
        );
        assert!(serde_json::from_str::<Reason>("\"\"").is_err());
    }

    #[test]
    fn outside_text_is_made_one_bounded_line() {
        assert_eq!(one_line(" 404\r\nNot Found ", 20), "404  Not Found");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("abc", 3), "abc");
    }
}

//! The one rule for names spliced into SQL (schemas, views, tables), which
//! cannot be bound as parameters.

/// A name we are willing to splice into SQL: lowercase letters, digits and
/// underscores, not starting with a digit, at most 63 bytes (PostgreSQL's
/// limit).
pub fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_must_be_plain_lowercase_names() {
        assert!(valid_identifier("view_event_counts"));
        for bad in ["", "1x", "Views", "a-b", "a; DROP TABLE events"] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }
}

//! Store URLs: `sqlite://PATH` or `postgres://…[?schema=NAME]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::StoreError;
use crate::identifier::valid_identifier;

/// Where the events live.
#[derive(Clone)]
pub enum StoreUrl {
    /// `sqlite://PATH`: a file, created if missing.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`, in libpq's URL form. The extra
    /// query parameter `schema` (default `public`) names the schema to use.
    Postgres {
        /// Boxed: a libpq config is large next to a path.
        config: Box<tokio_postgres::Config>,
        schema: String,
        /// The URL as given, with any password masked: safe to print.
        redacted: String,
    },
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres { redacted, .. } => f.write_str(redacted),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// URL parameters that carry a secret (libpq's names): masked when printed.
const SECRET_PARAMETERS: &[&str] = &["password", "sslpassword"];

/// The URL with every secret masked as `***`: the password of
/// `scheme://user:password@host…` and of any secret-bearing parameter
/// (`?password=…`, `&sslpassword=…`).
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _))
                    if SECRET_PARAMETERS.contains(&key.to_ascii_lowercase().as_str()) =>
                {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| StoreError::BadUrl {
            url: redact(url),
            reason,
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad("no file path after sqlite://".into()));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            let mut schema = "public".to_owned();
            let mut rest = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("schema", value)) => schema = value.to_owned(),
                    _ => rest.push(pair),
                }
            }
            // Spliced into SQL, so it follows the identifier rule.
            if !valid_identifier(&schema) {
                return Err(bad(format!(
                    "schema {schema:?} must be lowercase letters, digits and underscores, not starting with a digit"
                )));
            }
            let libpq = if rest.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", rest.join("&"))
            };
            let config =
                tokio_postgres::Config::from_str(&libpq).map_err(|e| bad(e.to_string()))?;
            return Ok(Self::Postgres {
                config: Box::new(config),
                schema,
                redacted: redact(url),
            });
        }
        Err(bad(
            "expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_a_path() {
        match "sqlite://./data/tb.db".parse::<StoreUrl>().unwrap() {
            StoreUrl::Sqlite(p) => assert_eq!(p, PathBuf::from("./data/tb.db")),
            other => panic!("{other:?}"),
        }
        assert!("sqlite://".parse::<StoreUrl>().is_err());
    }

    #[test]
    fn postgres_urls_take_a_schema_and_hide_the_password() {
        let url = "postgres://tb:s3cret@db.local:5433/events?schema=tb_one&connect_timeout=3";
        match url.parse::<StoreUrl>().unwrap() {
            StoreUrl::Postgres {
                config,
                schema,
                redacted,
            } => {
                assert_eq!(schema, "tb_one");
                assert_eq!(config.get_dbname(), Some("events"));
                assert!(!redacted.contains("s3cret"), "{redacted}");
                assert!(redacted.contains("tb:***@db.local"), "{redacted}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_secret_bearing_parameter_is_masked() {
        let url = "postgres://tb@db.local/events?sslmode=disable&password=pw1&schema=tb";
        let shown = url.parse::<StoreUrl>().unwrap().to_string();
        assert_eq!(
            shown,
            "postgres://tb@db.local/events?sslmode=disable&password=***&schema=tb"
        );
        assert_eq!(
            redact("postgres://h/db?sslpassword=pw2&PassWord=pw3&x=1"),
            "postgres://h/db?sslpassword=***&PassWord=***&x=1"
        );
        assert_eq!(
            redact("postgres://u:pw@h/db?password=x"),
            "postgres://u:***@h/db?password=***"
        );
        // A bad URL's error shows the same redacted form.
        let err = "postgres://u@h:nope/db?password=pw4"
            .parse::<StoreUrl>()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw4"), "{err}");
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        for url in [
            "mysql://x",
            "postgres://u:pw@h/db?schema=Robert');DROP",
            "postgres://u:pw@h:notaport/db",
        ] {
            let err = url.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(!err.contains(":pw@"), "{err}");
            assert!(err.starts_with("bad store URL"), "{err}");
        }
    }
}

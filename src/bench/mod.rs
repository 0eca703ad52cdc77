//! `trafficbuster bench …`: figures, not assertions. Each bench works in
//! scratch space (a temporary SQLite file, or a fresh PostgreSQL schema
//! dropped afterwards), so it never touches real data, and every phase is
//! bounded so a bench stops by itself.

pub mod datasets;
pub mod gateway;
pub mod live;
pub mod orchestrator;
pub mod runner;
pub mod schedules;
pub mod setup;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
// `::store`: the crate, not the `store` bench below.
use ::store::{Backend, EventStore, PostgresStore, SqliteStore, StoreUrl};

use crate::configuration::Settings;

/// A store opened on scratch space, removed on [`Scratch::cleanup`].
pub struct Scratch {
    pub backend: Backend,
    pub describe: String,
    /// Where it is, to open it again (as another process would).
    url: StoreUrl,
    /// Holds the temporary SQLite file; dropping it deletes the file.
    _dir: Option<tempfile::TempDir>,
}

/// What a bench measures.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A temporary SQLite file.
    Temporary,
    /// A `--target` URL.
    Given(&'a str),
    /// The store named by `--store`, `TB_STORE` or the config file, measured
    /// in scratch space beside it, never in its own tables.
    Configured(&'a StoreUrl),
}

impl Scratch {
    /// Opens scratch space for `target`. A given `sqlite://` URL must name a
    /// new file; a configured SQLite store gets a temporary file in its
    /// directory (the same disk); a `postgres://` URL gets a new schema.
    pub async fn open(target: Target<'_>) -> anyhow::Result<Self> {
        let url = match target {
            Target::Temporary => return Self::temporary_sqlite(None).await,
            Target::Configured(StoreUrl::Sqlite(path)) => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                return Self::temporary_sqlite(Some(dir.unwrap_or(std::path::Path::new("."))))
                    .await;
            }
            Target::Configured(url) => url.clone(),
            Target::Given(text) => text.parse::<StoreUrl>()?,
        };
        match url {
            StoreUrl::Sqlite(path) => {
                anyhow::ensure!(
                    !path.exists(),
                    "{} exists; bench only writes to a new file (or omit --target for a temporary one)",
                    path.display()
                );
                let (store, _) = SqliteStore::open(&path).await?;
                Ok(Self {
                    backend: Backend::Sqlite(store),
                    describe: format!("sqlite, new file {}", path.display()),
                    url: StoreUrl::Sqlite(path),
                    _dir: None,
                })
            }
            StoreUrl::Postgres {
                ref config,
                ref redacted,
                ..
            } => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let schema = format!("tb_bench_{stamp}");
                let (store, _) = PostgresStore::open((**config).clone(), &schema)
                    .await
                    .with_context(|| format!("cannot open {redacted}"))?;
                Ok(Self {
                    backend: Backend::Postgres(store),
                    describe: format!("postgres, {redacted}, scratch schema {schema}"),
                    url: url.clone(),
                    _dir: None,
                })
            }
        }
    }

    /// A temporary SQLite file, in `dir` or the system's temporary directory.
    async fn temporary_sqlite(dir: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                tempfile::tempdir_in(dir)
            }
            None => tempfile::tempdir(),
        }
        .context("cannot create a temporary directory")?;
        let path = dir.path().join("bench.db");
        let (store, _) = SqliteStore::open(&path).await?;
        Ok(Self {
            backend: Backend::Sqlite(store),
            describe: format!("sqlite, temporary file {}", path.display()),
            url: StoreUrl::Sqlite(path),
            _dir: Some(dir),
        })
    }

    /// The same scratch space opened again, with connections of its own: a
    /// second gateway's view of one store.
    pub async fn reopen(&self) -> anyhow::Result<Backend> {
        Ok(match (&self.url, &self.backend) {
            (StoreUrl::Postgres { config, .. }, Backend::Postgres(pg)) => Backend::Postgres(
                PostgresStore::open((**config).clone(), pg.schema())
                    .await?
                    .0,
            ),
            (StoreUrl::Sqlite(path), _) => Backend::Sqlite(SqliteStore::open(path).await?.0),
            _ => anyhow::bail!("{}: cannot open it again", self.describe),
        })
    }

    /// The scratch store, type-erased.
    pub fn store(&self) -> Arc<dyn EventStore> {
        self.backend.event_store()
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Drops the PostgreSQL scratch schema; a temporary SQLite file goes with `self`.
    pub async fn cleanup(self) -> anyhow::Result<()> {
        if let Backend::Postgres(pg) = &self.backend {
            pg.drop_schema().await?;
        }
        Ok(())
    }
}

/// What to measure: the `--target` list; else the store the settings name
/// (a user who names a store gets that store measured, never a silent
/// substitute); else one temporary SQLite file.
pub fn targets<'a>(given: &'a [String], settings: &'a Settings) -> Vec<Target<'a>> {
    if !given.is_empty() {
        given.iter().map(|t| Target::Given(t)).collect()
    } else if settings.store_named {
        vec![Target::Configured(&settings.store)]
    } else {
        vec![Target::Temporary]
    }
}

/// Measures each target in scratch space of its own, under a title line,
/// removing the scratch space whether the measurement succeeds or not.
pub async fn on_each(
    targets: Vec<Target<'_>>,
    title: impl Fn(&Scratch) -> String,
    measure: impl AsyncFn(&Scratch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for target in targets {
        let scratch = Scratch::open(target).await?;
        println!("{}", title(&scratch));
        let result = measure(&scratch).await;
        scratch.cleanup().await?;
        result?;
        println!();
    }
    Ok(())
}

/// One figure line: label, rate, unit.
pub fn report(label: &str, rate: f64, unit: &str) {
    println!(
        "  {label:<42} {:>12} {unit}",
        thousands(rate.round() as u64)
    );
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn spinner(label: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    // The template is a constant; the fallback only guards against a typo.
    let style = ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub fn counter_bar(label: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("  {msg} {bar:30} {pos}/{len} [{elapsed}, eta {eta}]")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.50), 50.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&samples, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

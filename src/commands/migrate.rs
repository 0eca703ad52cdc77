//! `trafficbuster migrate`: apply pending migrations and say what was done.

use crate::commands::open_store;
use crate::configuration::Settings;

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let (_, report) = open_store(&settings.store).await?;
    if report.applied.is_empty() {
        println!(
            "{}: schema is up to date (version {})",
            settings.store, report.version
        );
    } else {
        println!(
            "{}: applied {} (schema version {})",
            settings.store,
            report.applied.join(", "),
            report.version
        );
    }
    Ok(())
}

//! `trafficbuster projections rebuild [VIEW]`: drop views and replay them
//! from the first event, showing progress, then stop.

use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use projections::{ProjectionEngine, ViewStore};

use crate::configuration::Settings;

pub async fn rebuild(settings: &Settings, view: Option<&str>) -> anyhow::Result<()> {
    let all = projections::all_views();
    let chosen: Vec<_> = match view {
        None => all,
        Some(name) => {
            let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
            let Some(p) = all.iter().find(|p| p.name() == name) else {
                bail!(
                    "no view called {name:?}; the views are: {}",
                    names.join(", ")
                );
            };
            vec![p.clone()]
        }
    };
    let names: Vec<&'static str> = chosen.iter().map(|p| p.name()).collect();
    let (backend, _) = store::open_backend(&settings.store)
        .await
        .with_context(|| format!("cannot open store {}", settings.store))?;
    let views = ViewStore::open(&backend)
        .await
        .context("cannot open the views")?;
    for p in &chosen {
        views
            .reset(p.as_ref())
            .await
            .with_context(|| format!("cannot reset view {}", p.name()))?;
    }
    let engine = ProjectionEngine::start(backend.event_store(), views, chosen)?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]").expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut status = engine.status();
    let progress = async {
        loop {
            let applied: u64 = status.borrow().projections.iter().map(|p| p.applied).sum();
            bar.set_message(format!(
                "rebuilding {}: {applied} events applied",
                names.join(", ")
            ));
            if status.changed().await.is_err() {
                return;
            }
        }
    };
    let result = tokio::select! {
        r = engine.wait_until_live() => r,
        () = progress => Ok(()),
    };
    bar.finish_and_clear();
    let applied: u64 = engine
        .status()
        .borrow()
        .projections
        .iter()
        .map(|p| p.applied)
        .sum();
    engine.shutdown().await;
    result.context("a view failed while rebuilding")?;
    let plural = if applied == 1 { "" } else { "s" };
    println!(
        "rebuilt {} ({applied} event{plural} applied)",
        names.join(", ")
    );
    Ok(())
}

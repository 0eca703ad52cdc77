//! `trafficbuster audit …`: auditors' tools that read the store directly.

use anyhow::Context;
use domain::StreamId;
use domain::log_point::LogPoint;
use futures_util::TryStreamExt;
use gateway::audit_export::{ExportRange, pages};
use gateway::time_travel::stream_at;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;

use crate::cli::{ExportArgs, ReplayArgs, ViewAtArgs};
use crate::commands::open_store;
use crate::configuration::Settings;

/// Prints a stream's state at a point as one JSON document: the state,
/// where it stands, and each event folded to get there.
pub async fn replay(settings: &Settings, args: &ReplayArgs) -> anyhow::Result<()> {
    let stream = StreamId::parse(args.stream.as_str()).context("--stream")?;
    let at = match &args.at {
        None => LogPoint::Now,
        Some(text) => text.parse().context("--at")?,
    };
    let (store, _) = open_store(&settings.store).await?;
    let registry = domain::event_registry();
    let mut events = Vec::new();
    let found = stream_at(store.as_ref(), &registry, &stream, at, |e| {
        events.push(json!({
            "position": e.position.to_string(),
            "version": e.stream_version,
            "type": e.event_type,
            "recorded_at": rfc3339(e.recorded_at),
            "actor": e.metadata.actor,
            "summary": projections::audit_view::summarize(e),
        }));
    })
    .await?;
    let document = json!({
        "stream": stream.to_string(),
        "kind": found.fold.kind(),
        "at": {
            "position": found.last.position.to_string(),
            "version": found.last.stream_version,
            "recorded_at": rfc3339(found.last.recorded_at),
        },
        "state": found.fold.state()?,
        "events": events,
    });
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}

/// Writes the export to standard output; a count on standard error when
/// it is a terminal.
pub async fn export(settings: &Settings, args: &ExportArgs) -> anyhow::Result<()> {
    let pairs = args
        .from
        .iter()
        .map(|v| ("from", v.as_str()))
        .chain(args.to.iter().map(|v| ("to", v.as_str())))
        .chain(args.streams.iter().map(|v| ("stream", v.as_str())))
        .chain(args.types.iter().map(|v| ("type", v.as_str())));
    let range = ExportRange::parse(pairs).map_err(|why| anyhow::anyhow!("--{why}"))?;
    let (store, _) = open_store(&settings.store).await?;
    let progress = ProgressBar::new_spinner().with_style(ProgressStyle::with_template(
        "{spinner} {pos} events exported ({per_sec})",
    )?);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut pages = std::pin::pin!(pages(store, range));
    while let Some(page) = pages.try_next().await? {
        out.write_all(page.text.as_bytes())?;
        progress.inc(page.events);
    }
    out.flush()?;
    progress.finish();
    Ok(())
}

/// Rebuilds a view up to a point in a scratch SQLite file and prints its
/// tables as one JSON document.
pub async fn view(settings: &Settings, args: &ViewAtArgs) -> anyhow::Result<()> {
    let all = projections::all_views();
    let Some(projection) = all.iter().find(|p| p.name() == args.view) else {
        let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
        anyhow::bail!(
            "no view called {:?}; the views are: {}",
            args.view,
            names.join(", ")
        );
    };
    let at = match &args.at {
        None => LogPoint::Now,
        Some(text) => text.parse().context("--at")?,
    };
    let (store, _) = open_store(&settings.store).await?;
    let scratch_dir = tempfile::tempdir().context("cannot make a scratch directory")?;
    let scratch_url: store::StoreUrl =
        format!("sqlite://{}", scratch_dir.path().join("view.db").display())
            .parse()
            .context("scratch store")?;
    let (scratch, _) = store::open_backend(&scratch_url)
        .await
        .context("cannot open the scratch store")?;
    let scratch = projections::ViewStore::open(&scratch)
        .await
        .context("cannot open the scratch views")?;
    let progress = ProgressBar::new_spinner().with_style(ProgressStyle::with_template(
        "{spinner} rebuilding {msg}: {pos} events applied",
    )?);
    progress.set_message(projection.name());
    let applied =
        projections::as_of::rebuild_to(store.as_ref(), &scratch, projection.as_ref(), at, |n| {
            progress.set_position(n)
        })
        .await?;
    progress.finish_and_clear();
    let tables = projections::as_of::tables(&scratch, projection.as_ref(), args.limit).await?;
    let document = json!({
        "view": projection.name(),
        "at": args.at.as_deref().unwrap_or("now"),
        "events_applied": applied,
        "tables": tables,
    });
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

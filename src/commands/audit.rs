//! `trafficbuster audit …`: auditors' tools that read the store directly.

use anyhow::Context;
use domain::StreamId;
use futures_util::TryStreamExt;
use gateway::audit_export::{ExportRange, pages};
use gateway::time_travel::{At, stream_at};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;

use crate::cli::{ExportArgs, ReplayArgs};
use crate::commands::open_store;
use crate::configuration::Settings;

/// Prints a stream's state at a point as one JSON document: the state,
/// where it stands, and each event folded to get there.
pub async fn replay(settings: &Settings, args: &ReplayArgs) -> anyhow::Result<()> {
    let stream = StreamId::parse(args.stream.as_str()).context("--stream")?;
    let at = match &args.at {
        None => At::Now,
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

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

//! `trafficbuster audit …`: auditors' tools that read the store directly.

use anyhow::Context;
use domain::StreamId;
use gateway::time_travel::{At, stream_at};
use serde_json::json;

use crate::cli::ReplayArgs;
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

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

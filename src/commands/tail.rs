//! `trafficbuster events tail`: events as JSON lines, then live.

use std::io::Write;

use anyhow::{Context, bail};
use domain::Position;
use store::{Filter, SubscribeFrom};

use crate::cli::TailArgs;
use crate::commands::{open_store, shutdown_signal};
use crate::configuration::Settings;

fn parse_from(text: &str) -> anyhow::Result<SubscribeFrom> {
    Ok(match text {
        "start" => SubscribeFrom::Start,
        "end" => SubscribeFrom::End,
        pos => SubscribeFrom::After(
            pos.parse::<Position>()
                .with_context(|| "--from takes start, end, or a position")?,
        ),
    })
}

pub async fn run(settings: &Settings, args: &TailArgs) -> anyhow::Result<()> {
    let from = parse_from(&args.from)?;
    if args.limit == Some(0) {
        return Ok(());
    }
    let (store, _) = open_store(&settings.store).await?;
    let filter = Filter {
        stream_prefixes: args.streams.clone(),
        event_types: args.types.clone(),
    };
    // Pin "end" to a position now, so what counts as new is fixed when the
    // command starts, and say where we follow from.
    let from = match from {
        SubscribeFrom::End => {
            SubscribeFrom::Head(store.head().await.context("cannot read the store's head")?)
        }
        other => other,
    };
    match &from {
        SubscribeFrom::After(p) => {
            tracing::info!(store = %settings.store, "following events after position {p}")
        }
        SubscribeFrom::Head(head) => {
            tracing::info!(store = %settings.store, "following events after position {head}")
        }
        _ => tracing::info!(store = %settings.store, "following events from the start"),
    }
    let mut sub = store.subscribe_all(from, filter);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let next = tokio::select! {
            next = sub.next() => next,
            _ = &mut stop => return Ok(()),
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(e)) => return Err(e).context("subscription failed"),
            None => bail!("subscription ended"),
        };
        let line = serde_json::to_string(&event)?;
        // A closed pipe (`| head`) is a normal way to stop.
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
        printed += 1;
        if args.limit.is_some_and(|limit| printed >= limit) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_takes_start_end_and_positions() {
        assert_eq!(parse_from("start").unwrap(), SubscribeFrom::Start);
        assert_eq!(parse_from("end").unwrap(), SubscribeFrom::End);
        assert_eq!(
            parse_from("12:3").unwrap(),
            SubscribeFrom::After(Position::new(12, 3))
        );
        let err = format!("{:#}", parse_from("yesterday").unwrap_err());
        assert!(
            err.contains("--from takes start, end, or a position"),
            "{err}"
        );
    }
}

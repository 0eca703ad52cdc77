//! `trafficbuster bench store`: append, replay and subscription figures.
//!
//! Each target is measured in scratch space (a temporary SQLite file, or a
//! fresh PostgreSQL schema dropped afterwards), so a bench never touches
//! real data. Phases run for a fixed time and stop by themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use domain::{NewEvent, Payload, Position, StreamId};
use store::{EventStore, ExpectedVersion, Filter, SubscribeFrom};

use crate::bench::{counter_bar, on_each, percentile, report, spinner, targets};
use crate::cli::BenchStoreArgs;
use crate::configuration::Settings;

const LAG_WRITERS: usize = 8;
const REPLAY_PAGE: usize = 5000;
const FILL_BATCH: u64 = 1000;

pub async fn run(settings: &Settings, args: &BenchStoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 600.0,
        "--seconds must be between 0 and 600"
    );
    let phase = Duration::from_secs_f64(args.seconds);
    on_each(
        targets(&args.targets, settings),
        |scratch| {
            format!(
                "store bench: {} ({phase:?} per timed phase)",
                scratch.describe
            )
        },
        async |scratch| measure(&scratch.store(), phase, args.replay_events).await,
    )
    .await
}

async fn measure(
    store: &Arc<dyn EventStore>,
    phase: Duration,
    replay_events: u64,
) -> anyhow::Result<()> {
    for writers in [1, 8] {
        let label = format!(
            "single-event appends, {writers} writer{}",
            if writers > 1 { "s" } else { "" }
        );
        let (appends, secs) = timed_appends(store, &label, writers, 1, phase).await?;
        report(&label, appends as f64 / secs, "appends/s");
    }
    let label = "100-event batch appends, 1 writer";
    let (appends, secs) = timed_appends(store, label, 1, 100, phase).await?;
    report(label, (appends * 100) as f64 / secs, "events/s");

    let (events, secs) = replay(store, replay_events).await?;
    report(
        &format!("read_all replay ({events} events)"),
        events as f64 / secs,
        "events/s",
    );

    let lags = subscription_lag(store, phase).await?;
    println!(
        "  {:<42} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events, {LAG_WRITERS} writers; append start to delivery)",
        "subscription lag under load",
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        percentile(&lags, 1.0),
        lags.len()
    );
    Ok(())
}

fn payload(n: u64) -> Payload {
    Payload::to_json(
        &serde_json::json!({ "n": n, "url": "https://example.test/page", "dwell_ms": 1234 }),
    )
    .expect("JSON")
}

fn bench_stream(tag: &str, writer: usize, i: u64) -> StreamId {
    StreamId::parse(format!("bench{tag}-w{writer}-{}", i % 64)).expect("valid stream id")
}

/// `writers` tasks append `batch`-event appends for `phase`; returns (appends, seconds).
async fn timed_appends(
    store: &Arc<dyn EventStore>,
    label: &str,
    writers: usize,
    batch: u64,
    phase: Duration,
) -> anyhow::Result<(u64, f64)> {
    let bar = spinner(label);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + phase;
    let tag = format!("{writers}x{batch}");
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let done = done.clone();
            let tag = tag.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let events = (0..batch)
                        .map(|n| NewEvent::new("BenchAppended", 1, payload(n)))
                        .collect();
                    store
                        .append(&bench_stream(&tag, w, i), ExpectedVersion::Any, events)
                        .await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok((done.load(Ordering::Relaxed), secs))
}

/// Tops the store up to `target` events, then reads them all; returns (events, seconds).
async fn replay(store: &Arc<dyn EventStore>, target: u64) -> anyhow::Result<(u64, f64)> {
    let have = count_all(store).await?;
    if have < target {
        let bar = counter_bar("filling the store for replay", target);
        bar.set_position(have);
        let writers = 4;
        let per_writer = (target - have).div_ceil(FILL_BATCH).div_ceil(writers);
        let tasks: Vec<_> = (0..writers as usize)
            .map(|w| {
                let store = store.clone();
                let bar = bar.clone();
                tokio::spawn(async move {
                    for i in 0..per_writer {
                        let events = (0..FILL_BATCH)
                            .map(|n| NewEvent::new("BenchFilled", 1, payload(n)))
                            .collect();
                        store
                            .append(&bench_stream("fill", w, i), ExpectedVersion::Any, events)
                            .await?;
                        bar.inc(FILL_BATCH);
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        bar.finish_and_clear();
    }
    let bar = spinner("replaying with read_all");
    let started = Instant::now();
    let events = count_all(store).await?;
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok((events, secs))
}

/// Reads the whole log with `read_all`, counting events.
async fn count_all(store: &Arc<dyn EventStore>) -> anyhow::Result<u64> {
    let mut events = 0u64;
    let mut after = Position::START;
    loop {
        let page = store.read_all(after, &Filter::all(), REPLAY_PAGE).await?;
        events += page.events.len() as u64;
        after = page.next;
        if page.events.len() < REPLAY_PAGE && !page.pending {
            return Ok(events);
        }
        if page.events.is_empty() {
            // Only an open transaction's events remain: let it finish.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Milliseconds from the start of each append to its delivery by a live
/// subscription, while [`LAG_WRITERS`] writers append single events.
async fn subscription_lag(
    store: &Arc<dyn EventStore>,
    phase: Duration,
) -> anyhow::Result<Vec<f64>> {
    let bar = spinner("subscription lag under load");
    let epoch = Instant::now();
    let mut sub = store.subscribe_all(SubscribeFrom::End, Filter::event_type("BenchLag"));
    // Let the subscription find its starting point before load begins.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..LAG_WRITERS)
        .map(|w| {
            let store = store.clone();
            let stop = stop.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = epoch.elapsed().as_nanos() as u64;
                    let event = NewEvent::new(
                        "BenchLag",
                        1,
                        Payload::to_json(&serde_json::json!({ "t": t })).expect("JSON"),
                    );
                    store
                        .append(
                            &bench_stream("lag", w, i),
                            ExpectedVersion::Any,
                            vec![event],
                        )
                        .await?;
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut lags = Vec::new();
    let drain_deadline = epoch + phase + Duration::from_secs(30);
    loop {
        let writers_done = stop.load(Ordering::Relaxed) && writers.iter().all(|w| w.is_finished());
        if writers_done && lags.len() as u64 >= sent.load(Ordering::Relaxed) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < drain_deadline,
            "subscription delivered {} of {} events within 30 s after the load stopped",
            lags.len(),
            sent.load(Ordering::Relaxed)
        );
        let next = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
        let event = match next {
            Err(_) => continue,
            Ok(None) => anyhow::bail!("subscription ended"),
            Ok(Some(event)) => event?,
        };
        let now = epoch.elapsed().as_nanos() as u64;
        let t = serde_json::from_str::<serde_json::Value>(&event.data)?["t"]
            .as_u64()
            .context("lag event without t")?;
        lags.push(now.saturating_sub(t) as f64 / 1e6);
    }
    stopper.await?;
    for w in writers {
        w.await??;
    }
    bar.finish_and_clear();
    lags.sort_by(f64::total_cmp);
    Ok(lags)
}

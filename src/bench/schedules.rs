//! `trafficbuster bench schedules`: N schedules due at the same instant, on
//! gateways sharing one store, each running its own scheduler on the real
//! clock. Prints how long after their time the fires and their jobs' starts
//! came (p50, p99, last; the goal is every fire within 5 s for 10,000 on
//! PostgreSQL with two gateways), and checks each fired exactly once, from
//! the events themselves. Figures, not assertions, except exactly-once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use domain::account::Username;
use domain::licence::{Allowances, Licence, LicenceCommand, LicenceTerms};
use domain::occurrence::{Occurrence, Zone};
use domain::schedule::{
    JobTemplate, Missed, ScheduleAggregate, ScheduleCommand, ScheduleId, ScheduleSpec,
};
use domain::thresholds::Thresholds;
use domain::{DatasetKind, DomainName, Position, StreamId};
use futures_util::{StreamExt, stream};
use projections::schedules_view;
use store::{EventStore, Filter};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::bench::live::{LiveGateway, bench_meta};
use crate::bench::{Scratch, counter_bar, on_each, percentile, spinner, targets, thousands};
use crate::cli::BenchSchedulesArgs;
use crate::configuration::Settings;

const OWNER: &str = "bench-scheduler";
const DOMAIN: &str = "bench.example.com";
/// Schedules created at once during set-up.
const CREATING: usize = 32;
/// Longest the fires may take after their time before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(300);

pub async fn run(settings: &Settings, args: &BenchSchedulesArgs) -> anyhow::Result<()> {
    on_each(
        targets(&args.targets, settings),
        |scratch| {
            format!(
                "schedules bench: {} schedules due at once, {} gateways, {}",
                thousands(args.schedules.into()),
                args.gateways,
                scratch.describe
            )
        },
        async |scratch| measure(scratch, args).await,
    )
    .await
}

fn allows() -> Allowances {
    Allowances {
        scheduler: true,
        max_instances: 64,
        max_targets: 1_000_000,
        max_flows_per_day: u32::MAX,
        ..Allowances::default()
    }
}

async fn measure(scratch: &Scratch, args: &BenchSchedulesArgs) -> anyhow::Result<()> {
    if !scratch.is_postgres() {
        println!("  (the goal is PostgreSQL's: pass --target postgres://…)");
    }
    let mut gateways = Vec::new();
    for _ in 0..args.gateways {
        gateways.push(LiveGateway::on(&scratch.reopen().await?).await?);
    }
    let first = &gateways[0];
    let owner = crate::bench::setup::owner(OWNER, allows());

    let setting_up = spinner("licence, datasets, domain, safe mode");
    first
        .handler
        .handle::<Licence>(
            &StreamId::for_aggregate("licence", OWNER)?,
            LicenceCommand::Issue {
                username: OWNER.into(),
                terms: LicenceTerms {
                    allows: allows(),
                    expires_at: OffsetDateTime::now_utc() + time::Duration::days(1),
                },
            },
            &crate::bench::setup::admin(),
            &bench_meta(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("the bench's licence: {e}"))?;
    let publish = |kind, csv: &'static str| {
        crate::bench::setup::publish(&first.app, OWNER, &owner, kind, csv)
    };
    let template = JobTemplate {
        targets: publish(
            DatasetKind::Targets,
            "url,flow_target,click_target\nhttps://bench.example.com/,1,0\n",
        )
        .await?,
        device_profiles: publish(
            DatasetKind::DeviceProfiles,
            "name,os,browser,user_agent,viewport_width,viewport_height\n\
             desk,linux,chromium,Mozilla/5.0 (X11; Linux x86_64) Chrome/126,1920,1080\n",
        )
        .await?,
        settings_profile: publish(DatasetKind::SettingsProfiles, "name,instances\nbench,1\n")
            .await?,
        proxies: None,
        thresholds: Thresholds::default(),
    };
    crate::bench::setup::allow_list(
        &first.handler,
        &DomainName::parse(DOMAIN)?,
        "the schedules bench",
    )
    .await?;
    crate::bench::setup::safe_mode_off(&first.handler, "the schedules bench").await?;
    setting_up.finish_and_clear();

    // All due at one whole second, far enough ahead for the set-up.
    let count = args.schedules as usize;
    let lead = time::Duration::seconds(args.lead.into());
    let due =
        OffsetDateTime::from_unix_timestamp((OffsetDateTime::now_utc() + lead).unix_timestamp())?;
    let creating = counter_bar("creating schedules", count as u64);
    let made = Instant::now();
    let ids: Vec<ScheduleId> = stream::iter(0..count)
        .map(|i| {
            let (handler, owner, template) = (&first.handler, &owner, template.clone());
            let creating = &creating;
            async move {
                let id = ScheduleId(Uuid::now_v7());
                let spec = ScheduleSpec {
                    owner: Username::parse(OWNER)?,
                    name: format!("bench {i}"),
                    template,
                    occurrence: Occurrence::Once { at: due },
                    zone: Zone::parse("UTC")?,
                    starts_at: None,
                    ends_at: None,
                    max_runs: None,
                    missed: Missed::FireOnce,
                };
                handler
                    .handle::<ScheduleAggregate>(
                        &id.stream()?,
                        ScheduleCommand::Create { id, spec },
                        owner,
                        &bench_meta(),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("creating schedule {i}: {e}"))?;
                creating.inc(1);
                anyhow::Ok(id)
            }
        })
        .buffer_unordered(CREATING)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    creating.finish_and_clear();
    println!(
        "  set-up: {} schedules created in {:.1} s",
        thousands(count as u64),
        made.elapsed().as_secs_f64()
    );

    // Each gateway must see them all before their time, or the bench
    // measures its own set-up.
    let viewing = spinner("waiting for each gateway's schedule table");
    let waiting = format!(
        "SELECT COUNT(*) AS n FROM {} WHERE state = 'scheduled'",
        schedules_view::TABLE
    );
    for (g, gateway) in gateways.iter().enumerate() {
        loop {
            let rows = gateway.app.views.query(&waiting, vec![]).await?;
            let seen: i64 = rows.first().map_or(Ok(0), |r| r.get("n"))?;
            if seen as usize >= count {
                break;
            }
            if OffsetDateTime::now_utc() >= due {
                bail!(
                    "gateway {g} saw {seen} of {count} schedules by their time: set-up was too slow; pass a longer --lead than {} s",
                    args.lead
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    viewing.finish_and_clear();
    let spare = due - OffsetDateTime::now_utc();
    println!(
        "  due at {due}, {:.1} s after the schedule tables were full",
        spare.as_seconds_f64()
    );

    // The fires and their jobs' starts, read from the log itself.
    let store = first.app.store.clone();
    let schedules: HashSet<StreamId> =
        ids.iter().map(|id| id.stream()).collect::<Result<_, _>>()?;
    let (mut fires, after) =
        recorded(&store, "ScheduleFired", count, |s| schedules.contains(s)).await?;
    // Late duplicates would come soon after: give them a moment to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let page = store
        .read_all(after, &Filter::event_type("ScheduleFired"), 100_000)
        .await?;
    for event in page
        .events
        .into_iter()
        .filter(|e| schedules.contains(&e.stream_id))
    {
        fires
            .entry(event.stream_id)
            .or_default()
            .push(event.recorded_at);
    }
    let twice = fires.values().filter(|f| f.len() > 1).count();
    // Each of the bench's jobs starts once: the scratch store has no others.
    let (started, _) = recorded(&store, "JobStarted", count, |_| true).await?;

    let late = |at: &OffsetDateTime| (*at - due).as_seconds_f64();
    let mut fired: Vec<f64> = fires
        .values()
        .filter_map(|f| f.iter().min())
        .map(late)
        .collect();
    fired.sort_by(f64::total_cmp);
    let mut jobs: Vec<f64> = started.values().flatten().map(late).collect();
    jobs.sort_by(f64::total_cmp);
    let line = |label: &str, after: &[f64]| {
        println!(
            "  {label:<30} {:>7} after their time: p50 {:.2} s, p99 {:.2} s, last {:.2} s",
            thousands(after.len() as u64),
            percentile(after, 0.50),
            percentile(after, 0.99),
            after.last().copied().unwrap_or(f64::NAN),
        );
    };
    line("fired", &fired);
    line("their jobs started", &jobs);
    println!(
        "  each exactly once: {} (schedules fired more than once: {twice})",
        if twice == 0 { "yes" } else { "NO" }
    );
    println!(
        "  goal: every fire within 5 s of its time: {}",
        if fired.last().is_some_and(|l| *l <= 5.0) {
            "met"
        } else {
            "missed"
        }
    );
    for gateway in gateways {
        gateway.stop().await?;
    }
    if fires.len() < count {
        bail!(
            "only {} of {count} fired within {PATIENCE:?} of their time",
            fires.len()
        );
    }
    if twice > 0 {
        bail!("{twice} schedules fired more than once");
    }
    if started.len() < count {
        bail!(
            "only {} of {count} jobs started within {PATIENCE:?}",
            started.len()
        );
    }
    Ok(())
}

/// When `event_type` was recorded on each stream `wanted` admits, read from
/// the log as it comes (with a progress bar) until `count` streams have it
/// or [`PATIENCE`] passes; and the position to read on from.
async fn recorded(
    store: &Arc<dyn EventStore>,
    event_type: &str,
    count: usize,
    wanted: impl Fn(&StreamId) -> bool,
) -> anyhow::Result<(HashMap<StreamId, Vec<OffsetDateTime>>, Position)> {
    let bar = counter_bar(event_type, count as u64);
    let filter = Filter::event_type(event_type);
    let mut seen: HashMap<StreamId, Vec<OffsetDateTime>> = HashMap::new();
    let mut after = Position::default();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < count && Instant::now() < deadline {
        let page = store.read_all(after, &filter, 10_000).await?;
        after = page.next;
        if page.events.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for event in page.events.into_iter().filter(|e| wanted(&e.stream_id)) {
            seen.entry(event.stream_id)
                .or_default()
                .push(event.recorded_at);
        }
        bar.set_position(seen.len() as u64);
    }
    bar.finish_and_clear();
    Ok((seen, after))
}

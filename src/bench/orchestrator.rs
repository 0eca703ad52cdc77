//! `trafficbuster bench orchestrator`: a fleet of runners whose flows do no
//! work (the runner's work loop on a zero-work executor) completes one job
//! against an in-process gateway on 127.0.0.1, over a scratch store. Prints flows/s, the job stream's events/s, the
//! lease round trip's p50/p99, and the process's peak memory (gateway and
//! runners share this process; the memory before the fleet started is
//! printed beside it). Figures, not assertions.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use domain::account::Username;
use domain::job::{
    DatasetVersionRef, JobAggregate, JobCommand, JobId, JobSettings, JobSpec, JobStatus, RunChecks,
};
use domain::job_plan::TargetPlan;
use domain::licence::Allowances;
use domain::runner::{Browser, Capabilities, Os, Platform, RunnerId};
use domain::runner_key::{self, RunnerKey, RunnerKeyCommand, RunnerKeyId, RunnerKeys};
use domain::runner_protocol::VersionRange;
use domain::thresholds::Thresholds;
use domain::{Context, DatasetKind, DomainName};
use gateway::CommandHandler;
use gateway::state::AppState;
use runner::ClientConfig;
use runner::state_dir::StateDir;
use runner::worker::{self, WorkerOptions};
use runner::zero_work_executor::ZeroWorkExecutor;
use uuid::Uuid;

use crate::bench::live::{LiveGateway, bench_meta};
use crate::bench::{Scratch, percentile, report, setup, spinner, targets, thousands};
use crate::cli::BenchOrchestratorArgs;
use crate::configuration::Settings;

/// The job's one domain.
const DOMAIN: &str = "bench.example.com";
/// Flows per target row.
const FLOWS_PER_TARGET: u32 = 100;
/// The job's owner.
const OWNER: &str = "bench-owner";
/// Longest the job may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(120);

pub async fn run(settings: &Settings, args: &BenchOrchestratorArgs) -> anyhow::Result<()> {
    for target in targets(&args.targets, settings) {
        let scratch = Scratch::open(target).await?;
        println!("orchestrator bench: {}", scratch.describe);
        let result = measure(&scratch, args).await;
        scratch.cleanup().await?;
        result?;
        println!();
    }
    Ok(())
}

/// The owner, licensed for the bench's fleet.
fn owner() -> Context {
    setup::owner(
        OWNER,
        Allowances {
            max_instances: 100_000,
            max_targets: 1_000_000,
            max_flows_per_day: u32::MAX,
            ..Allowances::default()
        },
    )
}

async fn publish(
    app: &AppState,
    kind: DatasetKind,
    csv: &str,
) -> anyhow::Result<DatasetVersionRef> {
    setup::publish(app, OWNER, &owner(), kind, csv).await
}

/// A RUNNING job of `targets` × [`FLOWS_PER_TARGET`] flows for `instances`.
async fn running_job(
    handler: &CommandHandler,
    app: &AppState,
    targets: u32,
    instances: u32,
) -> anyhow::Result<JobId> {
    let mut csv = String::from("url,flow_target,click_target\n");
    for t in 0..targets {
        csv.push_str(&format!("https://{DOMAIN}/p/{t},{FLOWS_PER_TARGET},0\n"));
    }
    let targets_ref = publish(app, DatasetKind::Targets, &csv).await?;
    let profiles = publish(
        app,
        DatasetKind::DeviceProfiles,
        "name,os,browser,user_agent,viewport_width,viewport_height\n\
         desk,linux,chromium,Mozilla/5.0 (X11; Linux x86_64) Chrome/126,1920,1080\n",
    )
    .await?;
    let settings = publish(
        app,
        DatasetKind::SettingsProfiles,
        &format!("name,instances\nbench,{instances}\n"),
    )
    .await?;
    let domain = DomainName::parse(DOMAIN)?;
    let listed = setup::allow_list(handler, &domain, "the orchestrator bench").await?;
    let job = JobId(Uuid::now_v7());
    let spec = JobSpec {
        owner: Username::parse(OWNER)?,
        name: "orchestrator bench".into(),
        targets: targets_ref,
        proxies: None,
        device_profiles: profiles,
        platforms: vec![platform()],
        settings_profile: settings,
        settings: JobSettings {
            instances,
            human_surfing: false,
            external_clicks: false,
            marker_header: true,
        },
        thresholds: Thresholds::default(),
    };
    let plan = (0..targets)
        .map(|_| TargetPlan {
            domain: domain.clone(),
            flows: FLOWS_PER_TARGET,
            clicks: 0,
        })
        .collect();
    let stream = job.stream()?;
    let run = |command| async {
        handler
            .handle::<JobAggregate>(&stream, command, &owner(), &bench_meta())
            .await
            .map_err(|e| anyhow::anyhow!("the bench job: {e}"))
    };
    run(JobCommand::Create {
        id: job,
        spec,
        targets: plan,
    })
    .await?;
    // Safe mode off for real, as a super-admin turns it off: the gateway
    // halts any run it finds on while safe mode is on.
    let system = setup::safe_mode_off(handler, "the orchestrator bench").await?;
    run(JobCommand::Run(RunChecks {
        system,
        domains: [(domain, listed)].into(),
        flows_today: 0,
    }))
    .await?;
    Ok(job)
}

fn platform() -> Platform {
    Platform {
        os: Os::Linux,
        browser: Browser::Chromium,
    }
}

/// A runner key made as an admin.
async fn runner_key(handler: &CommandHandler) -> anyhow::Result<RunnerKey> {
    let key = RunnerKey::parse(&format!("tbr_bench_{}", Uuid::new_v4().simple()))?;
    handler
        .handle::<RunnerKeys>(
            &runner_key::stream()?,
            RunnerKeyCommand::Create {
                key: RunnerKeyId(Uuid::now_v7()),
                name: "bench fleet".into(),
                hash: key.hash(),
            },
            &setup::admin(),
            &bench_meta(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("the bench's runner key: {e}"))?;
    Ok(key)
}

/// The process's resident memory now and at its peak, in KiB, from
/// /proc/self/status (Linux); zeros elsewhere.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn measure(scratch: &Scratch, args: &BenchOrchestratorArgs) -> anyhow::Result<()> {
    let live = LiveGateway::start(scratch).await?;
    let handler = &live.handler;
    let targets = args.flows.div_ceil(u64::from(FLOWS_PER_TARGET));
    let flows = targets * u64::from(FLOWS_PER_TARGET);
    let instances = args.runners * args.slots;
    let setting_up = spinner("publishing the datasets and running the job");
    let key = runner_key(handler).await?;
    let job = running_job(handler, &live.app, u32::try_from(targets)?, instances).await?;
    let stream = job.stream()?;
    let (version_before, _) = handler
        .load::<JobAggregate>(&stream)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    setting_up.finish_and_clear();
    let (rss_before, _) = memory_kib();
    let bar = crate::bench::counter_bar("flows", flows);
    // Each runner's state directory, gone with the bench.
    let state_dirs = tempfile::tempdir().context("cannot make the runners' state directories")?;
    let states = (0..args.runners)
        .map(|i| StateDir::open(&state_dirs.path().join(i.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let runners: Vec<RunnerId> = states.iter().map(StateDir::id).collect();
    let started = Instant::now();
    let fleet: Vec<_> = states
        .into_iter()
        .enumerate()
        .map(|(i, state)| {
            let config = ClientConfig {
                url: format!("ws://{}/runner", live.addr),
                runner: state.id(),
                key: key.clone(),
                name: format!("bench-runner-{i}"),
                software: format!("trafficbuster {}", env!("CARGO_PKG_VERSION")),
                capabilities: Capabilities {
                    platform: platform(),
                    browser_version: "bench".into(),
                    max_instances: args.slots,
                    labels: Default::default(),
                },
                protocol: VersionRange::THIS_BUILD,
            };
            let options = WorkerOptions {
                // As many flows in hand as a lease may grant its slots.
                queued_per_slot: domain::job::FLOWS_PER_SLOT - 1,
                idle_exit: Some(Duration::from_secs(2)),
                ..WorkerOptions::default()
            };
            let executor = ZeroWorkExecutor {
                capacity: args.slots,
                work: Duration::ZERO,
            };
            tokio::spawn(worker::run(
                state,
                config,
                options,
                std::sync::Arc::new(executor),
                std::future::pending(),
                Duration::ZERO,
            ))
        })
        .collect();
    let (done_at, version_after) = loop {
        let (version, state) = handler
            .load::<JobAggregate>(&stream)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let job = state.job.context("the bench job vanished")?;
        bar.set_position(job.tally.finished);
        if job.status == JobStatus::Done {
            break (started.elapsed(), version);
        }
        if job.status.is_ended() {
            bail!("the bench job ended {}", job.status);
        }
        if started.elapsed() > PATIENCE {
            bail!(
                "the job did not finish within {PATIENCE:?}: {} of {flows} flows, {} in the pool, {} held by {} runners",
                job.tally.finished,
                job.pool.len(),
                job.leases.values().map(|l| l.held.len()).sum::<u64>(),
                job.leases.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    bar.finish_and_clear();
    let mut round_trips = Vec::new();
    let (mut recorded, mut dropped) = (0, 0);
    for runner in fleet {
        let totals = runner.await?;
        recorded += totals.recorded;
        dropped += totals.dropped;
        round_trips.extend(totals.lease_round_trips.iter().map(Duration::as_secs_f64));
    }
    round_trips.sort_by(f64::total_cmp);
    // The gateway records each runner's going offline after its socket
    // closes; let it, so stopping the gateway and dropping the scratch
    // store do not cut those appends off.
    for runner in runners {
        let stream = runner.stream()?;
        let patience = Instant::now();
        while handler
            .load::<domain::runner::Runner>(&stream)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .1
            .online
            && patience.elapsed() < PATIENCE
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (_, peak) = memory_kib();
    let seconds = done_at.as_secs_f64();
    let events = version_after.unwrap_or(0) - version_before.unwrap_or(0);
    println!(
        "  {} zero-work runners × {} slots, {} flows over {} targets, done in {seconds:.2} s",
        args.runners,
        args.slots,
        thousands(flows),
        thousands(targets)
    );
    report("flows/s", flows as f64 / seconds, "flows/s");
    report("job stream events/s", events as f64 / seconds, "events/s");
    report("leases granted", round_trips.len() as f64, "leases");
    println!(
        "  {:<42} {:>12.2} ms (p50 {:.2} ms)",
        "lease round trip p99",
        percentile(&round_trips, 0.99) * 1000.0,
        percentile(&round_trips, 0.50) * 1000.0
    );
    println!(
        "  {:<42} {:>12} MiB (RSS {} MiB before the fleet)",
        "peak memory, gateway and runners",
        peak / 1024,
        rss_before / 1024
    );
    if recorded != flows || dropped > 0 {
        println!("  note: runners saw {recorded} flows recorded of {flows}, {dropped} dropped");
    }
    if scratch.is_postgres() && flows as f64 / seconds < 5000.0 {
        println!("  below the goal of 5,000 flows/s on PostgreSQL");
    }
    live.stop().await
}

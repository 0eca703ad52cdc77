//! What a 100,000-flow job costs the job decider: 50 runners lease, report
//! in batches and finish every flow, while this measures decide and evolve,
//! the events' count and size, the state's snapshot, a clone (the gateway's
//! cache hands out clones) and a replay of the whole log.
//!
//! `cargo run --release -p trafficbuster-domain --example job_at_scale`

use std::collections::BTreeMap;
use std::time::{Duration as Elapsed, Instant};

use domain::decider::{Actor, Context, Decider, Role};
use domain::flow::{FlowFinished, FlowId, FlowOutcome, FlowReport, PageLoad};
use domain::job::{
    DatasetVersionRef, JobAggregate, JobCommand, JobEvent, JobId, JobSettings, JobSpec, JobState,
    RunChecks,
};
use domain::job_plan::TargetPlan;
use domain::licence::{Allowances, LicenceTerms};
use domain::reason::Reason;
use domain::runner::{Browser, Os, Platform, RunnerId};
use domain::system_settings::{SafeModeTurnedOff, SystemSettings, SystemSettingsEvent};
use domain::target_domain::{DomainAllowListed, TargetDomain, TargetDomainEvent};
use domain::thresholds::Thresholds;
use domain::{DomainName, EventRegistry, EventSet, Metadata, StreamId};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const RUNNERS: u128 = 50;
const SLOTS_PER_RUNNER: u32 = 4;
const REPORT_BATCH: usize = 100;
const PAGES_PER_FLOW: usize = 3;

fn main() {
    measure(
        "10 targets x 10,000 flows",
        (0..10)
            .map(|i| target(&format!("site{i}.example.com"), 10_000))
            .collect(),
    );
    // The plan's worst case: no two neighbouring rows alike, so every row
    // is a run of its own (100,000 runs, 1,000 domains).
    measure(
        "100,000 targets x 1 flow, every row its own run",
        (0..100_000)
            .map(|i| target(&format!("d{}.example.com", i % 1000), 1))
            .collect(),
    );
}

fn target(domain: &str, flows: u32) -> TargetPlan {
    TargetPlan {
        domain: DomainName::parse(domain).unwrap(),
        flows,
        clicks: flows / 10,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
}

fn owner() -> Context {
    Context::new(
        now(),
        Actor::Account {
            account_id: Uuid::nil(),
            username: "ada".into(),
            roles: [Role::User].into(),
        },
    )
    .with_licence(LicenceTerms {
        allows: Allowances {
            max_instances: 1000,
            max_flows_per_day: 10_000_000,
            ..Allowances::default()
        },
        expires_at: now() + Duration::days(30),
    })
}

fn platform() -> Platform {
    Platform {
        os: Os::Linux,
        browser: Browser::Chromium,
    }
}

fn spec() -> JobSpec {
    let version = |n| DatasetVersionRef {
        dataset: Uuid::from_u128(n),
        version: 1,
    };
    JobSpec {
        owner: domain::account::Username::parse("ada").unwrap(),
        name: "at scale".into(),
        targets: version(1),
        proxies: None,
        device_profiles: version(2),
        platforms: vec![platform()],
        settings_profile: version(3),
        settings: JobSettings {
            instances: RUNNERS as u32 * SLOTS_PER_RUNNER,
            human_surfing: false,
            external_clicks: false,
            marker_header: true,
        },
        thresholds: Thresholds::default(),
    }
}

fn checks() -> RunChecks {
    let system =
        SystemSettings::fold(&[SystemSettingsEvent::SafeModeTurnedOff(SafeModeTurnedOff {
            by: "root".into(),
            reason: Reason::parse("bench").unwrap(),
            at: now(),
        })]);
    let listed = TargetDomain::fold(&[TargetDomainEvent::DomainAllowListed(DomainAllowListed {
        by: "root".into(),
        reason: Reason::parse("bench").unwrap(),
    })]);
    RunChecks {
        system,
        domains: BTreeMap::from([(DomainName::parse("example.com").unwrap(), listed)]),
        flows_today: 0,
    }
}

fn finished(flow: FlowId) -> FlowReport {
    FlowReport::Finished(FlowFinished {
        flow,
        outcome: FlowOutcome::Succeeded,
        duration_ms: 20_000,
        proxy: None,
        pages: vec![
            PageLoad {
                ms: 850,
                status: Some(200),
                vitals: Default::default(),
            };
            PAGES_PER_FLOW
        ],
        clicks: vec![],
        artifacts: vec![],
    })
}

/// Times one decision and the evolution of its events.
struct Clock {
    decide: Elapsed,
    evolve: Elapsed,
    decisions: u64,
}

impl Clock {
    fn step(
        &mut self,
        state: JobState,
        command: JobCommand,
        ctx: &Context,
    ) -> (JobState, Vec<JobEvent>) {
        let t = Instant::now();
        let events =
            JobAggregate::decide(&state, command, ctx).expect("the bench's commands are valid");
        self.decide += t.elapsed();
        let t = Instant::now();
        let state = events.iter().fold(state, JobAggregate::evolve);
        self.evolve += t.elapsed();
        self.decisions += 1;
        (state, events)
    }
}

fn measure(title: &str, targets: Vec<TargetPlan>) {
    println!("== {title}");
    let mut clock = Clock {
        decide: Elapsed::ZERO,
        evolve: Elapsed::ZERO,
        decisions: 0,
    };
    let mut log: Vec<JobEvent> = Vec::new();
    let create = JobCommand::Create {
        id: JobId(Uuid::from_u128(42)),
        spec: spec(),
        targets,
    };
    let t = Instant::now();
    let (state, events) = clock.step(JobState::default(), create, &owner());
    println!(
        "create: {} events, {:.1} ms",
        events.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    log.extend(events);
    let (mut state, events) = clock.step(state, JobCommand::Run(checks()), &owner());
    log.extend(events);
    let total = state.job.as_ref().unwrap().plan.flows();

    let runners: Vec<RunnerId> = (1..=RUNNERS)
        .map(|n| RunnerId(Uuid::from_u128(n)))
        .collect();
    let gateway = Context::new(now(), Actor::System);
    let mut largest_snapshot = 0;
    let mut mid_clone = None;
    let run = Instant::now();
    'run: loop {
        for &runner in &runners {
            let job = state.job.as_ref().unwrap();
            if job.tally.finished == total {
                break 'run;
            }
            if job.tally.finished >= total / 2 && mid_clone.is_none() {
                let t = Instant::now();
                let copy = state.clone();
                mid_clone = Some(t.elapsed());
                largest_snapshot = largest_snapshot.max(serde_json::to_vec(&copy).unwrap().len());
            }
            let held: Vec<FlowId> = job
                .leases
                .get(&runner)
                .map(|l| {
                    l.held
                        .ranges()
                        .iter()
                        .flat_map(|r| r.flows())
                        .take(REPORT_BATCH)
                        .collect()
                })
                .unwrap_or_default();
            let command = if held.is_empty() {
                JobCommand::LeaseFlows {
                    runner,
                    platform: platform(),
                    slots: SLOTS_PER_RUNNER,
                    flows: 256,
                    ttl: Duration::seconds(30),
                }
            } else {
                JobCommand::ReportFlows {
                    runner,
                    reports: held.into_iter().map(finished).collect(),
                    click_consent: Default::default(),
                }
            };
            let (next, events) = clock.step(state, command, &gateway);
            state = next;
            log.extend(events);
        }
    }
    let run = run.elapsed();
    let job = state.job.as_ref().unwrap();
    assert_eq!(job.tally.finished, total);
    println!(
        "run: {total} flows, {} decisions, {} events in {:.0} ms (decide {:.0} ms, evolve {:.0} ms): {:.1} µs a decision, {:.0} flows/s",
        clock.decisions,
        log.len(),
        run.as_secs_f64() * 1e3,
        clock.decide.as_secs_f64() * 1e3,
        clock.evolve.as_secs_f64() * 1e3,
        (clock.decide + clock.evolve).as_secs_f64() * 1e6 / clock.decisions as f64,
        total as f64 / (clock.decide + clock.evolve).as_secs_f64(),
    );

    let payloads: Vec<(String, String)> = log
        .iter()
        .map(|e| {
            (
                e.event_type().to_owned(),
                e.to_payload().unwrap().as_str().to_owned(),
            )
        })
        .collect();
    let bytes: usize = payloads.iter().map(|(_, p)| p.len()).sum();
    let biggest = payloads.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    println!(
        "log: {:.1} MB of payloads, largest event {:.1} kB",
        bytes as f64 / 1e6,
        biggest as f64 / 1e3
    );

    let snapshot = serde_json::to_vec(&state).unwrap();
    let t = Instant::now();
    let back: JobState = serde_json::from_slice(&snapshot).unwrap();
    let load = t.elapsed();
    assert_eq!(back, state);
    println!(
        "state: final snapshot {:.1} kB (loads in {:.2} ms), mid-run snapshot {:.1} kB, mid-run clone {:.3} ms",
        snapshot.len() as f64 / 1e3,
        load.as_secs_f64() * 1e3,
        largest_snapshot as f64 / 1e3,
        mid_clone.unwrap_or_default().as_secs_f64() * 1e3,
    );

    // A replay as a restarted gateway without a snapshot would do it:
    // decode every stored payload through the registry, then fold.
    let registry: EventRegistry = domain::event_registry();
    let stream = StreamId::parse("job-42").unwrap();
    let t = Instant::now();
    let decoded: Vec<JobEvent> = payloads
        .iter()
        .enumerate()
        .map(|(i, (ty, data))| {
            let event = domain::RecordedEvent {
                id: domain::EventId::new(),
                stream_id: stream.clone(),
                stream_version: i as u64,
                position: domain::Position::new(i as u64, 0),
                event_type: ty.clone(),
                schema_version: log[i].schema_version(),
                recorded_at: now(),
                metadata: Metadata::default(),
                data: data.clone(),
            };
            registry.decode(&event).unwrap()
        })
        .collect();
    let decode = t.elapsed();
    let t = Instant::now();
    let replayed = JobAggregate::fold(&decoded);
    let fold = t.elapsed();
    assert_eq!(replayed, state);
    println!(
        "replay: decode {:.0} ms + fold {:.0} ms for {} events",
        decode.as_secs_f64() * 1e3,
        fold.as_secs_f64() * 1e3,
        decoded.len()
    );
}

//! A gateway on loopback for the runner-facing tests: started in-process
//! on a test store with short runner terms, a command handler and the
//! views beside it, and the helpers both runner and job tests use.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use datasets::ImportOptions;
use domain::account::Username;
use domain::dataset::{DatasetId, DatasetName, NewDataset, VersionSource};
use domain::flow::{FlowFinished, FlowId, FlowOutcome, FlowRange, FlowReport, PageLoad};
use domain::job::{
    DatasetVersionRef, Job, JobAggregate, JobCommand, JobEvent, JobId, JobSettings, JobSpec,
    RunChecks,
};
use domain::job_plan::TargetPlan;
use domain::licence::{Allowances, LicenceTerms};
use domain::runner::{Browser, Capabilities, Os, Platform, RunnerId};
use domain::runner_key::{self, RunnerKey, RunnerKeyCommand, RunnerKeyId, RunnerKeys};
use domain::runner_protocol::{ErrorCode, VersionRange};
use domain::system_settings::{self, SystemSettings, SystemSettingsCommand, SystemSettingsState};
use domain::target_domain::{self, TargetDomain, TargetDomainCommand};
use domain::thresholds::Thresholds;
use domain::upload::UploadId;
use domain::{Actor, BlobHash, Context, RecordedEvent, Role};
use domain::{DatasetKind, ImportFormat};
use domain::{DomainName, Reason};
use futures_util::{SinkExt, StreamExt};
use gateway::auth::rate_limit::LoginLimits;
use gateway::auth::sessions::SessionPolicy;
use gateway::client_addr::TrustedProxies;
use gateway::runner_link::RunnerTerms;
use gateway::state::AppState;
use gateway::webhooks::Retries;
use gateway::{CommandHandler, CommandMeta, Gateway, GatewayConfig, publishing};
use projections::{SqlValue, ViewStore};
use runner::{ClientConfig, ClientError, Connection};
use serde_json::{Value, json};
use store::testing::TestStore;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

pub const TERMS: RunnerTerms = RunnerTerms {
    heartbeat_every: Duration::from_millis(200),
    lease_ttl: Duration::from_secs(2),
};

/// A gateway serving on loopback, and a command handler on its store.
pub struct Live {
    pub addr: SocketAddr,
    pub url: String,
    pub handler: CommandHandler,
    pub views: ViewStore,
    pub store: Arc<dyn store::EventStore>,
    app: AppState,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
}

/// The tests' gateway settings.
fn gateway_config() -> GatewayConfig {
    GatewayConfig {
        jwt_secret: b"a runner-link test secret of 32+ bytes".to_vec().into(),
        session_policy: SessionPolicy::default(),
        login_limits: LoginLimits::default(),
        trusted_proxies: TrustedProxies::default(),
        // Proxy passwords are sealed with it, and opened for briefs.
        data_key: Some(Arc::new(datasets::DataKey::generate().unwrap())),
        upload_ttl: gateway::startup::DEFAULT_UPLOAD_TTL,
        verification: gateway::verification::VerificationSettings::default(),
    }
}

/// A gateway in a runtime of its own, so that it can die as a killed
/// process does: every task dropped where it stands, its sockets closed,
/// nothing said and nothing recorded on the way out.
pub struct Doomed {
    pub url: String,
    runtime: tokio::runtime::Runtime,
}

impl Doomed {
    pub async fn start(store: &TestStore) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shared = store.shared();
        let (bound, addr) = oneshot::channel();
        runtime.spawn(async move {
            let backend = shared.open_backend().await;
            let gateway = Gateway::start(
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                &backend,
                gateway_config(),
            )
            .await
            .unwrap()
            .with_runner_terms(TERMS);
            let _ = bound.send(gateway.local_addr().unwrap());
            gateway.serve(std::future::pending()).await
        });
        let addr = addr.await.unwrap();
        Self {
            url: format!("ws://{addr}/runner"),
            runtime,
        }
    }

    /// Dies at once.
    pub fn kill(self) {
        self.runtime.shutdown_background();
    }
}

impl Live {
    pub async fn start(store: &TestStore) -> Self {
        Self::start_with(store, gateway_config(), Retries::default()).await
    }

    /// A gateway that sends webhooks to loopback (where the tests'
    /// receivers listen), retrying on `retries`.
    pub async fn start_for_webhooks(store: &TestStore, retries: Retries) -> Self {
        let mut config = gateway_config();
        config.verification.allow_private_addresses = true;
        Self::start_with(store, config, retries).await
    }

    async fn start_with(store: &TestStore, config: GatewayConfig, retries: Retries) -> Self {
        let backend = store.open_backend().await;
        let gateway = Gateway::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &backend, config)
            .await
            .unwrap()
            .with_runner_terms(TERMS)
            .with_webhook_retries(retries);
        let addr = gateway.local_addr().unwrap();
        let app = gateway.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        let events = store.open().await;
        Self {
            addr,
            url: format!("ws://{addr}/runner"),
            handler: CommandHandler::new(events.clone(), Arc::new(domain::event_registry())),
            views: ViewStore::open(&backend).await.unwrap(),
            store: events,
            app,
            stop,
            serving,
        }
    }

    /// The gateway's own state.
    pub fn app(&self) -> &AppState {
        &self.app
    }

    /// A plain HTTP GET on the gateway: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.serving).await;
    }

    /// A new runner key, made as an admin.
    pub async fn key(&self) -> (RunnerKeyId, RunnerKey) {
        let key = RunnerKey::parse(&format!("tbr_{}", Uuid::new_v4().simple())).unwrap();
        let id = RunnerKeyId(Uuid::now_v7());
        self.keys(RunnerKeyCommand::Create {
            key: id,
            name: "test fleet".into(),
            hash: key.hash(),
        })
        .await;
        (id, key)
    }

    pub async fn keys(&self, command: RunnerKeyCommand) {
        self.handler
            .handle::<RunnerKeys>(
                &runner_key::stream().unwrap(),
                command,
                &admin(),
                &CommandMeta::default(),
            )
            .await
            .unwrap();
    }

    pub fn config(&self, runner: RunnerId, key: &RunnerKey) -> ClientConfig {
        ClientConfig {
            url: self.url.clone(),
            runner,
            key: key.clone(),
            name: "rack-1".into(),
            software: "trafficbuster test".into(),
            capabilities: capabilities(),
            protocol: VersionRange::THIS_BUILD,
        }
    }

    /// Every event in the store, in order.
    pub async fn store_events(&self) -> Vec<RecordedEvent> {
        store::testing::read_everything(&*self.store, &store::Filter::all()).await
    }

    /// The types of the events on the runner's stream, in order.
    pub async fn runner_events(&self, runner: RunnerId) -> Vec<String> {
        let stream = runner.stream().unwrap();
        let events: Vec<RecordedEvent> =
            store::testing::read_everything(&*self.store, &store::Filter::all()).await;
        events
            .into_iter()
            .filter(|e| e.stream_id == stream)
            .map(|e| e.event_type)
            .collect()
    }

    /// (online, draining, offline_reason) of the runner in the view.
    pub async fn standing(&self, runner: RunnerId) -> Option<(bool, bool, Option<String>)> {
        let rows = self
            .views
            .query(
                "SELECT online, draining, offline_reason FROM view_runners WHERE runner = $1",
                vec![SqlValue::from(runner.to_string())],
            )
            .await
            .unwrap_or_default();
        rows.first().map(|r| {
            (
                r.get("online").unwrap(),
                r.get("draining").unwrap(),
                r.get("offline_reason").unwrap(),
            )
        })
    }
}

pub fn admin() -> Context {
    Context::new(
        OffsetDateTime::now_utc(),
        Actor::Account {
            account_id: Uuid::now_v7(),
            username: "root".into(),
            roles: [Role::Admin].into(),
        },
    )
}

pub fn capabilities() -> Capabilities {
    Capabilities {
        platform: Platform {
            os: Os::Linux,
            browser: Browser::Chromium,
        },
        browser_version: "126.0.6478.126".into(),
        max_instances: 4,
        labels: [("region".to_owned(), "eu-west".to_owned())].into(),
    }
}

pub fn new_runner() -> RunnerId {
    RunnerId(Uuid::now_v7())
}

/// The refusal a failed connection got.
pub fn refusal(outcome: Result<Connection, ClientError>) -> (ErrorCode, String) {
    match outcome {
        Err(ClientError::Refused(e)) => {
            assert!(e.fatal, "{e:?}");
            (e.code, e.message)
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

pub type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw socket, for frames no well-behaved client sends.
pub async fn raw(live: &Live) -> Raw {
    tokio_tungstenite::connect_async(live.url.as_str())
        .await
        .unwrap()
        .0
}

pub async fn send(ws: &mut Raw, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON message, skipping heartbeat acks; `None` once closed.
pub async fn next(ws: &mut Raw) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s");
        match frame {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "heartbeat_ack" {
                    return Some(v);
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Says hello and registers by hand; the socket is then registered.
pub async fn raw_registered(live: &Live, runner: RunnerId, key: &RunnerKey) -> Raw {
    let mut ws = raw(live).await;
    send(
        &mut ws,
        json!({"type": "hello", "protocol": {"oldest": 1, "newest": 1}, "runner": runner,
               "key": key.expose(), "name": "raw", "software": "test"}),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "welcome");
    send(
        &mut ws,
        json!({"type": "register", "capabilities": serde_json::to_value(capabilities()).unwrap()}),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "registered");
    ws
}

/// The owner of the tests' jobs.
pub const OWNER: &str = "ada";

/// ada, acting with a licence that allows what the tests' jobs ask.
pub fn owner() -> Context {
    Context::new(
        OffsetDateTime::now_utc(),
        Actor::Account {
            account_id: Uuid::now_v7(),
            username: OWNER.into(),
            roles: [Role::User].into(),
        },
    )
    .with_licence(LicenceTerms {
        allows: Allowances {
            max_instances: 64,
            human_surfing: true,
            external_clicks: true,
            import_proxy: true,
            max_flows_per_day: 10_000_000,
            max_targets: 1_000_000,
            ..Allowances::default()
        },
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(30),
    })
}

/// A super-admin.
pub fn root() -> Context {
    Context::new(
        OffsetDateTime::now_utc(),
        Actor::Account {
            account_id: Uuid::now_v7(),
            username: "root".into(),
            roles: [Role::SuperAdmin].into(),
        },
    )
}

pub fn system() -> Context {
    Context::new(OffsetDateTime::now_utc(), Actor::System)
}

impl Live {
    /// A job's command, run by `as_who` on its stream.
    pub async fn job(
        &self,
        job: JobId,
        command: JobCommand,
        as_who: &Context,
    ) -> Result<Vec<JobEvent>, gateway::CommandError<domain::job::JobError>> {
        self.handler
            .handle::<JobAggregate>(
                &job.stream().unwrap(),
                command,
                as_who,
                &CommandMeta::default(),
            )
            .await
            .map(|h| h.events)
    }

    /// Publishes `csv` as the first version of a new dataset of ada's.
    pub async fn publish(&self, kind: DatasetKind, csv: &str) -> DatasetVersionRef {
        let rows = datasets::parse(
            kind,
            ImportFormat::Csv,
            csv.as_bytes(),
            &ImportOptions::default(),
        )
        .unwrap_or_else(|e| panic!("test rows of {kind}: {e}"));
        let target = publishing::Target {
            dataset: DatasetId::new(),
            create: Some(NewDataset {
                owner: Username::parse(OWNER).unwrap(),
                name: DatasetName::parse(&format!("test {kind}")).unwrap(),
            }),
        };
        let source = VersionSource::Upload {
            upload: UploadId::new(),
            format: ImportFormat::Csv,
            sha256: BlobHash::of(csv.as_bytes()),
        };
        let published = publishing::publish_rows(
            &self.app,
            rows,
            target,
            source,
            &owner(),
            &CommandMeta::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("publishing test rows of {kind}: {e}"));
        DatasetVersionRef {
            dataset: published.dataset.0,
            version: published.version,
        }
    }

    /// A RUNNING job of ada's over `targets` targets of shop.example.com of
    /// `flows` flows each (the first `clicks` clicking), with `instances`
    /// instances and Linux Chromium profiles, its domain allow-listed and
    /// safe mode off.
    pub async fn running_job(
        &self,
        targets: u32,
        flows: u32,
        clicks: u32,
        instances: u32,
    ) -> JobId {
        let job = self
            .ready_job("shop.example.com", targets, flows, clicks, instances)
            .await;
        self.run(job).await;
        job
    }

    /// A READY job of ada's, as [`Live::running_job`] makes it, on `domain`.
    pub async fn ready_job(
        &self,
        domain: &str,
        targets: u32,
        flows: u32,
        clicks: u32,
        instances: u32,
    ) -> JobId {
        let mut csv = String::from("url,flow_target,click_target\n");
        for t in 0..targets {
            csv.push_str(&format!("https://{domain}/p/{t},{flows},{clicks}\n"));
        }
        let targets_ref = self.publish(DatasetKind::Targets, &csv).await;
        let profiles = self
            .publish(
                DatasetKind::DeviceProfiles,
                "name,os,browser,user_agent,viewport_width,viewport_height\n\
                 desk,linux,chromium,Mozilla/5.0 (X11; Linux x86_64) Chrome/126,1920,1080\n",
            )
            .await;
        let settings = self
            .publish(
                DatasetKind::SettingsProfiles,
                &format!("name,instances,marker_header\nfast,{instances},yes\n"),
            )
            .await;
        let plan = (0..targets)
            .map(|_| TargetPlan {
                domain: DomainName::parse(domain).unwrap(),
                flows,
                clicks,
            })
            .collect();
        let job = JobId(Uuid::now_v7());
        let spec = JobSpec {
            owner: Username::parse(OWNER).unwrap(),
            name: "orchestrator test".into(),
            targets: targets_ref,
            proxies: None,
            device_profiles: profiles,
            platforms: vec![capabilities().platform],
            settings_profile: settings,
            settings: JobSettings {
                instances,
                human_surfing: false,
                external_clicks: false,
                marker_header: true,
            },
            thresholds: Thresholds::default(),
        };
        self.job(
            job,
            JobCommand::Create {
                id: job,
                spec,
                targets: plan,
            },
            &owner(),
        )
        .await
        .unwrap();
        job
    }

    /// A RUNNING job of ada's over the first versions of datasets made of
    /// these csv texts (its targets on shop.example.com), with the given
    /// settings; `platforms` are the device profiles' rows' platforms.
    pub async fn running_job_of(
        &self,
        targets: &str,
        profiles: (&str, Vec<Platform>),
        settings_profile: &str,
        proxies: Option<&str>,
        settings: JobSettings,
    ) -> JobId {
        let Ok(datasets::Rows::Targets(rows)) = datasets::parse(
            DatasetKind::Targets,
            ImportFormat::Csv,
            targets.as_bytes(),
            &ImportOptions::default(),
        ) else {
            panic!("test targets do not parse")
        };
        let plan = rows
            .iter()
            .map(|t| TargetPlan {
                domain: DomainName::parse(t.url.host_str().unwrap()).unwrap(),
                flows: t.flow_target,
                clicks: t.click_target,
            })
            .collect();
        let proxies = match proxies {
            Some(csv) => Some(domain::job::ProxiesRef {
                version: self.publish(DatasetKind::Proxies, csv).await,
                proxies: csv.lines().count() as u32 - 1,
            }),
            None => None,
        };
        let spec = JobSpec {
            owner: Username::parse(OWNER).unwrap(),
            name: "brief test".into(),
            targets: self.publish(DatasetKind::Targets, targets).await,
            proxies,
            device_profiles: self.publish(DatasetKind::DeviceProfiles, profiles.0).await,
            platforms: profiles.1,
            settings_profile: self
                .publish(DatasetKind::SettingsProfiles, settings_profile)
                .await,
            settings,
            thresholds: Thresholds::default(),
        };
        let job = JobId(Uuid::now_v7());
        self.job(
            job,
            JobCommand::Create {
                id: job,
                spec,
                targets: plan,
            },
            &owner(),
        )
        .await
        .unwrap();
        self.run(job).await;
        job
    }

    /// Runs (or resumes) `job` with its domain allow-listed and safe mode off.
    pub async fn run(&self, job: JobId) {
        let domain = DomainName::parse("shop.example.com").unwrap();
        let domain_stream = target_domain::stream(&domain).unwrap();
        let (_, listed) = self
            .handler
            .load::<TargetDomain>(&domain_stream)
            .await
            .unwrap();
        if listed.allow_listing.is_none() {
            self.domain(
                "shop.example.com",
                TargetDomainCommand::AllowList {
                    reason: Reason::parse("the tests' staging host").unwrap(),
                },
                &root(),
            )
            .await;
        }
        self.run_on(job, "shop.example.com").await.unwrap();
    }

    /// Runs (or resumes) `job`, whose targets are on `domain`, with safe
    /// mode off and the domain as its stream has it.
    pub async fn run_on(
        &self,
        job: JobId,
        domain: &str,
    ) -> Result<Vec<JobEvent>, gateway::CommandError<domain::job::JobError>> {
        let domain = DomainName::parse(domain).unwrap();
        let (_, state) = self
            .handler
            .load::<TargetDomain>(&target_domain::stream(&domain).unwrap())
            .await
            .unwrap();
        let checks = RunChecks {
            system: self.safe_mode(false).await,
            domains: [(domain, state)].into(),
            flows_today: 0,
        };
        self.job(job, JobCommand::Run(checks), &owner()).await
    }

    /// A command on `domain`'s consent, by `as_who`.
    pub async fn domain(&self, domain: &str, command: TargetDomainCommand, as_who: &Context) {
        let stream = target_domain::stream(&DomainName::parse(domain).unwrap()).unwrap();
        self.handler
            .handle::<TargetDomain>(&stream, command, as_who, &CommandMeta::default())
            .await
            .unwrap();
    }

    /// Turns safe mode on or off as a super-admin (if it is not already);
    /// the settings then.
    pub async fn safe_mode(&self, on: bool) -> SystemSettingsState {
        let stream = system_settings::stream().unwrap();
        let (_, now) = self.handler.load::<SystemSettings>(&stream).await.unwrap();
        if now.safe_mode != on {
            let reason = Reason::parse("the orchestrator tests").unwrap();
            let command = if on {
                SystemSettingsCommand::TurnSafeModeOn { reason }
            } else {
                SystemSettingsCommand::TurnSafeModeOff { reason }
            };
            self.handler
                .handle::<SystemSettings>(&stream, command, &root(), &CommandMeta::default())
                .await
                .unwrap();
        }
        self.handler
            .load::<SystemSettings>(&stream)
            .await
            .unwrap()
            .1
    }

    /// Leases flows of `job` to `runner` as a gateway would; the ranges.
    pub async fn lease(
        &self,
        job: JobId,
        runner: RunnerId,
        slots: u32,
        flows: u64,
    ) -> Vec<FlowRange> {
        let events = self
            .job(
                job,
                JobCommand::LeaseFlows {
                    runner,
                    platform: capabilities().platform,
                    slots,
                    flows,
                    ttl: time::Duration::try_from(TERMS.lease_ttl).unwrap(),
                },
                &system(),
            )
            .await
            .unwrap();
        events
            .into_iter()
            .flat_map(|e| match e {
                JobEvent::FlowsLeased(l) => l.flows,
                _ => vec![],
            })
            .collect()
    }

    /// The job as its stream has it now.
    pub async fn job_state(&self, job: JobId) -> Job {
        self.handler
            .load::<JobAggregate>(&job.stream().unwrap())
            .await
            .unwrap()
            .1
            .job
            .unwrap()
    }
}

/// A flow that succeeded at once.
pub fn succeeded(flow: u64) -> FlowReport {
    FlowReport::Finished(FlowFinished {
        flow: FlowId(flow),
        outcome: FlowOutcome::Succeeded,
        duration_ms: 1,
        proxy: None,
        pages: vec![PageLoad {
            ms: 120,
            status: Some(200),
            vitals: Default::default(),
        }],
        clicks: vec![],
        artifacts: vec![],
    })
}

//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use domain::Role;

/// TrafficBuster: authorized synthetic browser traffic for sites you own.
#[derive(Debug, Parser)]
#[command(name = "trafficbuster", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command takes. Precedence: flag, then `TB_*` environment
/// variable, then the TOML config file, then the default.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Event store: sqlite://PATH or postgres://USER@HOST:PORT/DB[?schema=NAME]
    /// [default: sqlite://./data/trafficbuster.db]
    #[arg(long, env = "TB_STORE", global = true)]
    pub store: Option<String>,

    /// TOML file with the same settings (keys: store, listen, log_format,
    /// jwt_secret, access_token_ttl, refresh_grace, trusted_proxies,
    /// login_limit_per_address, login_limit_per_account, data_key,
    /// upload_ttl, verification_allow_private_addresses,
    /// verification_dns_server, verification_valid_days,
    /// verification_https_port, verification_http_port).
    #[arg(long, env = "TB_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log format on stderr [default: pretty]
    #[arg(long, env = "TB_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: open the store, apply migrations, serve HTTP, and
    /// (unless --no-runner) a browser runner in the same process.
    Serve(ServeArgs),
    /// A first run to watch: a gateway on scratch data with its runner, a
    /// demo site on 127.0.0.1 whose domain is verified for real, and a small
    /// job shown live until it is done; then serves until Ctrl-C.
    Demo(DemoArgs),
    /// Run a browser runner: connect out to a gateway, lease flows and
    /// perform them in headless Chromium.
    Runner(RunnerArgs),
    /// Apply pending schema migrations to the store and exit.
    Migrate,
    /// Inspect the event log.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Administer accounts directly against the store (no gateway needed).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Auditors' tools, run against the store (no gateway needed).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage the read models (views).
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Measure performance and print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "TB_LISTEN")]
    pub listen: Option<String>,
    /// Seconds an access token lives [default: 900]
    #[arg(long, env = "TB_ACCESS_TOKEN_TTL", value_name = "SECONDS")]
    pub access_token_ttl: Option<u32>,
    /// Seconds after an access token expires during which a refresh still
    /// keeps the session [default: 43200]
    #[arg(long, env = "TB_REFRESH_GRACE", value_name = "SECONDS")]
    pub refresh_grace: Option<u32>,
    /// A proxy or load balancer (CIDR or address; repeatable, or
    /// comma-separated in TB_TRUSTED_PROXIES) whose X-Forwarded-For or
    /// Forwarded header names the client [default: none]
    #[arg(
        long = "trusted-proxy",
        env = "TB_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Login attempts a minute allowed from one client address [default: 20]
    #[arg(long, env = "TB_LOGIN_LIMIT_PER_ADDRESS", value_name = "N")]
    pub login_limit_per_address: Option<u32>,
    /// Login attempts (and password changes) a minute allowed per account [default: 5]
    #[arg(long, env = "TB_LOGIN_LIMIT_PER_ACCOUNT", value_name = "N")]
    pub login_limit_per_account: Option<u32>,
    /// Seconds an upload stays open for its chunks and its finish; an
    /// abandoned one then expires and its chunks are deleted [default: 86400]
    #[arg(long, env = "TB_UPLOAD_TTL", value_name = "SECONDS")]
    pub upload_ttl: Option<u32>,
    /// Milliseconds between a runner's heartbeats; three missed and it is
    /// offline [default: 5000]
    #[arg(long, env = "TB_RUNNER_HEARTBEAT_MS", value_name = "MS")]
    pub runner_heartbeat_ms: Option<u32>,
    /// Milliseconds a runner's lease lasts without a heartbeat; then its
    /// flows are leased again [default: 30000]
    #[arg(long, env = "TB_LEASE_TTL_MS", value_name = "MS")]
    pub lease_ttl_ms: Option<u32>,
    #[command(flatten)]
    pub verification: VerificationArgs,
    /// Start no browser runner in this process [default: one is started]
    #[arg(long, env = "TB_NO_RUNNER")]
    pub no_runner: bool,
    /// Where the in-process runner keeps its id and undelivered reports
    /// [default: `runner` beside the SQLite database; with PostgreSQL, as
    /// `trafficbuster runner` does]
    #[arg(long, env = "TB_RUNNER_STATE_DIR", value_name = "DIR")]
    pub runner_state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub browser: BrowserArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address the demo's gateway listens on (port 0: a free one)
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Stop once the job is done instead of serving until Ctrl-C (tests, CI)
    #[arg(long)]
    pub exit_when_done: bool,
    #[command(flatten)]
    pub browser: BrowserArgs,
}

/// The browser a runner drives.
#[derive(Debug, Clone, Args)]
pub struct BrowserArgs {
    /// Chromium or Chrome to run [default: $CHROME, else the usual install
    /// paths]
    #[arg(long, value_name = "PATH")]
    pub chrome: Option<PathBuf>,
    /// Most flows a runner runs at once; free memory may allow fewer
    /// [default: 4]
    #[arg(long, env = "TB_RUNNER_INSTANCES", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_instances: Option<u32>,
}

#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// The gateway's runner socket, e.g. ws://10.0.0.5:8080/runner
    #[arg(long, env = "TB_GATEWAY", value_name = "URL")]
    pub gateway: String,
    /// A file holding the runner key (from createRunnerKey); or set
    /// TB_RUNNER_KEY. Never a flag, so the key stays out of `ps`.
    #[arg(long, env = "TB_RUNNER_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// A name for people [default: the host name]
    #[arg(long, env = "TB_RUNNER_NAME")]
    pub name: Option<String>,
    /// A placement label, e.g. region=eu-west (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Where the runner keeps its id (so a restart is the same runner) and
    /// the reports it could not deliver yet; one runner per directory
    /// [default: $XDG_STATE_HOME/trafficbuster/runner, else
    /// ~/.local/state/trafficbuster/runner]
    #[arg(long, env = "TB_RUNNER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub browser: BrowserArgs,
}

/// How domains are verified.
#[derive(Debug, Default, Args)]
pub struct VerificationArgs {
    /// Let the verification check connect to loopback, private, link-local
    /// and other non-public addresses: for tests and private networks only
    /// [default: false]
    #[arg(
        long,
        env = "TB_VERIFICATION_ALLOW_PRIVATE_ADDRESSES",
        value_name = "BOOL"
    )]
    pub verification_allow_private_addresses: Option<bool>,
    /// The DNS server (IP:PORT) the check asks for TXT records and
    /// addresses [default: the system's resolver configuration]
    #[arg(long, env = "TB_VERIFICATION_DNS_SERVER", value_name = "IP:PORT")]
    pub verification_dns_server: Option<String>,
    /// Days a successful verification counts [default: 30]
    #[arg(long, env = "TB_VERIFICATION_VALID_DAYS", value_name = "DAYS")]
    pub verification_valid_days: Option<u32>,
    /// Port of the well-known file over HTTPS, for tests and non-standard
    /// set-ups [default: 443]
    #[arg(long, env = "TB_VERIFICATION_HTTPS_PORT", value_name = "PORT")]
    pub verification_https_port: Option<u16>,
    /// Port of the well-known file over plain HTTP, for tests and
    /// non-standard set-ups [default: 80]
    #[arg(long, env = "TB_VERIFICATION_HTTP_PORT", value_name = "PORT")]
    pub verification_http_port: Option<u16>,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as JSON lines, then follow new ones live (Ctrl-C stops).
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Where to begin: `start`, `end`, or a position (COMMIT or COMMIT:PREPARE) to read after.
    #[arg(long, default_value = "end")]
    pub from: String,
    /// Only streams starting with this prefix (repeatable).
    #[arg(long = "stream", value_name = "PREFIX")]
    pub streams: Vec<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Stop after printing this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print a stream's state as it stood at a point, folded by its own
    /// decider, with the events that led there (secrets redacted).
    Replay(ReplayArgs),
    /// Write the log (envelopes and payloads, secrets redacted) as JSON
    /// lines to standard output, in global order; resumable with --from.
    Export(ExportArgs),
    /// Print a view as it stood at a point: rebuilt from the events up to
    /// then in a scratch SQLite file, never touching the live view.
    View(ViewAtArgs),
}

#[derive(Debug, Args)]
pub struct ViewAtArgs {
    /// The view (an unknown name lists them all).
    pub view: String,
    /// The point: a position (COMMIT or COMMIT:PREPARE) or an RFC 3339
    /// time such as 2026-11-23T14:03:00Z [default: now]
    #[arg(long)]
    pub at: Option<String>,
    /// Rows printed per table at most.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Export events after this position (the last line of an earlier
    /// export) [default: the start]
    #[arg(long)]
    pub from: Option<String>,
    /// The last point to export: a position or an RFC 3339 time
    /// [default: the log's head when the export begins]
    #[arg(long)]
    pub to: Option<String>,
    /// Only streams starting with this prefix (repeatable).
    #[arg(long = "stream", value_name = "PREFIX")]
    pub streams: Vec<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The stream, e.g. `job-0193…` or `system-settings`.
    #[arg(long)]
    pub stream: String,
    /// Where to stop: a position (COMMIT or COMMIT:PREPARE) or an RFC 3339
    /// time such as 2026-11-23T14:03:00Z [default: now]
    #[arg(long)]
    pub at: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Drop a view (or every view) and rebuild it from the first event.
    /// Safe while gateways run: they pick up the rebuilt view.
    Rebuild {
        /// The view to rebuild (an unknown name lists them all). Default: all.
        view: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an account, e.g. the first super-admin. Reads the password
    /// from standard input so it stays out of shell history and `ps`.
    CreateUser(CreateUserArgs),
}

#[derive(Debug, Args)]
pub struct CreateUserArgs {
    /// Login name: 3 to 64 of a-z, 0-9, '.', '_', '-'.
    #[arg(long)]
    pub username: String,
    /// Role to grant (repeatable).
    #[arg(long = "role", required = true, value_parser = role_parser())]
    pub roles: Vec<Role>,
    /// Read the password from standard input (its first line).
    #[arg(long, required = true)]
    pub password_stdin: bool,
}

/// The domain's roles, by their names, listed in `--help`.
fn role_parser() -> impl clap::builder::TypedValueParser<Value = Role> {
    clap::builder::PossibleValuesParser::new(Role::ALL.map(Role::as_str))
        .try_map(|name: String| name.parse::<Role>())
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append, replay and subscription figures for one or more stores.
    Store(BenchStoreArgs),
    /// Login, subscription fan-out and command-handler figures for an
    /// in-process gateway on 127.0.0.1.
    Gateway(BenchGatewayArgs),
    /// Dataset upload figures for an in-process gateway on 127.0.0.1: a
    /// csv of targets from start to published version, and raw chunk
    /// throughput through uploadChunk.
    Datasets(BenchDatasetsArgs),
    /// Flows/s, events/s, lease round trip and memory for a fleet of
    /// zero-work runners completing one job against an in-process gateway.
    Orchestrator(BenchOrchestratorArgs),
    /// Schedules due at one instant on gateways sharing one store: how
    /// long after their time they fire and their jobs start, and that each
    /// fires exactly once.
    Schedules(BenchSchedulesArgs),
    /// Our Chromium driver against plain Playwright on one standard flow,
    /// side by side on a site on 127.0.0.1: flows/min and peak PSS at each
    /// concurrency, and their ratios.
    Runner(BenchRunnerArgs),
    /// One side of `bench runner`, in a process of its own (run by it).
    #[command(hide = true)]
    RunnerFlows(BenchRunnerFlowsArgs),
}

#[derive(Debug, Args)]
pub struct BenchRunnerArgs {
    /// Seconds each side runs at each concurrency.
    #[arg(long, default_value_t = 60.0, value_parser = seconds_parser)]
    pub seconds: f64,
    /// Flows at once (comma-separated or repeated).
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [1, 2, 4],
        value_parser = clap::value_parser!(u32).range(1..=32)
    )]
    pub concurrency: Vec<u32>,
    /// The Chromium both sides drive [default: CHROME, else the usual install paths]
    #[arg(long, value_name = "PATH")]
    pub chrome: Option<PathBuf>,
    /// Node.js for the Playwright side [default: `node` on PATH]
    #[arg(long, value_name = "PATH")]
    pub node: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchRunnerFlowsArgs {
    /// The run, as JSON.
    pub spec: String,
}

/// Seconds above zero and at most an hour.
fn seconds_parser(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds > 0.0 && seconds <= 3600.0 {
        Ok(seconds)
    } else {
        Err(format!("{text} s: give more than 0 and at most 3600"))
    }
}

#[derive(Debug, Args)]
pub struct BenchOrchestratorArgs {
    /// Store(s) to measure (repeatable), each in scratch space as for
    /// `bench store`. The goal (5,000 flows/s) is PostgreSQL's. Default: as
    /// for `bench store`.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// Zero-work protocol-client runners.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runners: u32,
    /// Browser slots each runner offers.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub slots: u32,
    /// Flows of the job (rounded up to whole targets of 100).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub flows: u64,
}

#[derive(Debug, Args)]
pub struct BenchSchedulesArgs {
    /// Store(s) to measure (repeatable), each in scratch space as for
    /// `bench store`. The goal (10,000 within 5 s, two gateways) is
    /// PostgreSQL's. Default: as for `bench store`.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// Schedules, all due at the same instant.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub schedules: u32,
    /// Gateways on the store, each with its scheduler.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub gateways: u32,
    /// Seconds from the start of set-up to the schedules' time.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(5..=3600))]
    pub lead: u32,
}

#[derive(Debug, Args)]
pub struct BenchDatasetsArgs {
    /// Store(s) to measure (repeatable), each in scratch space as for
    /// `bench store`. Default: as for `bench store`.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// Rows of the csv of targets uploaded and published.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rows: u32,
    /// Megabytes (10^6 bytes) sent raw through uploadChunk.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub megabytes: u32,
    /// Connections sending chunks at once for the raw figure.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub connections: u32,
}

#[derive(Debug, Args)]
pub struct BenchStoreArgs {
    /// Store(s) to measure (repeatable). Each run works in scratch space: a
    /// temporary SQLite file, or a new PostgreSQL schema dropped afterwards.
    /// Default: the store named by --store, TB_STORE or the config file
    /// (scratch space beside it), else a temporary SQLite file.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// Seconds each timed phase runs.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Events to replay with read_all.
    #[arg(long, default_value_t = 1_000_000)]
    pub replay_events: u64,
}

#[derive(Debug, Args)]
pub struct BenchGatewayArgs {
    /// Store(s) to measure (repeatable), each in scratch space as for
    /// `bench store`. The command-handler goals are PostgreSQL's; pass a
    /// postgres:// target to measure them there. Default: as for `bench store`.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// Concurrent WebSocket subscribers for the fan-out figure.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub subscribers: u32,
    /// Appended events timed by the fan-out figure, one at a time.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Logins (one account each) for the login → first query figure.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub logins: u32,
}

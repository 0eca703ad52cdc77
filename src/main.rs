//! `trafficbuster`: the one CLI (serve, demo, runner, migrate, events, bench).

mod bench;
mod cli;
mod commands;
mod configuration;
mod graphql_client;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{
    AdminCommand, AuditCommand, BenchCommand, Cli, Command, EventsCommand, ProjectionsCommand,
};
use crate::configuration::Settings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole chain of causes, no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::resolve(&cli.global)?;
    // A bench's figures and the demo's progress go to the terminal; the
    // per-request lines of their in-process gateway would bury them
    // (RUST_LOG still brings them back).
    let default_level = match cli.command {
        Command::Bench(_) | Command::Demo(_) => "warn",
        _ => "info",
    };
    telemetry::init(settings.log_format, default_level);
    match cli.command {
        Command::Serve(args) => commands::serve::run(&settings, &args).await,
        Command::Demo(args) => commands::demo::run(&settings, &args).await,
        Command::Runner(args) => commands::runner::run(&args).await,
        Command::Migrate => commands::migrate::run(&settings).await,
        Command::Events(EventsCommand::Tail(args)) => commands::tail::run(&settings, &args).await,
        Command::Projections(ProjectionsCommand::Rebuild { view }) => {
            commands::projections::rebuild(&settings, view.as_deref()).await
        }
        Command::Audit(AuditCommand::Replay(args)) => {
            commands::audit::replay(&settings, &args).await
        }
        Command::Audit(AuditCommand::Export(args)) => {
            commands::audit::export(&settings, &args).await
        }
        Command::Audit(AuditCommand::View(args)) => commands::audit::view(&settings, &args).await,
        Command::Admin(AdminCommand::CreateUser(args)) => {
            commands::admin::create_user(&settings, &args).await
        }
        Command::Bench(BenchCommand::Store(args)) => bench::store::run(&settings, &args).await,
        Command::Bench(BenchCommand::Gateway(args)) => bench::gateway::run(&settings, &args).await,
        Command::Bench(BenchCommand::Orchestrator(args)) => {
            bench::orchestrator::run(&settings, &args).await
        }
        Command::Bench(BenchCommand::Datasets(args)) => {
            bench::datasets::run(&settings, &args).await
        }
        Command::Bench(BenchCommand::Schedules(args)) => {
            bench::schedules::run(&settings, &args).await
        }
        Command::Bench(BenchCommand::Runner(args)) => bench::runner::run(&args).await,
        Command::Bench(BenchCommand::RunnerFlows(args)) => bench::runner::run_flows(&args).await,
    }
}

//! `trafficbuster demo`: a first run a new user can watch. On scratch data
//! it starts the gateway with its browser runner and a demo site on
//! 127.0.0.1, takes an operator's steps through the gateway's GraphQL
//! (accounts, licence, the site's domain proven through its well-known
//! file, safe mode off with a reason, datasets, a job), shows the job's
//! progress live, then says what the site saw and where to look next, and
//! serves until Ctrl-C. Every step is a real command of the gateway's,
//! recorded as events; consent is proven as any user proves it.

mod progress;
mod setup;
mod stage;

use anyhow::bail;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;

use crate::cli::DemoArgs;
use crate::commands::shutdown_signal;
use crate::configuration::Settings;
use setup::Prepared;
use stage::{DOMAIN, Stage};

/// What a query string's value must not hold as is (WHATWG URL's query
/// set, with `&`, `+`, `=` and `#` that would end or change the value).
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'\'')
    .add(b'`')
    .add(b'{')
    .add(b'}');

pub async fn run(settings: &Settings, args: &DemoArgs) -> anyhow::Result<()> {
    if settings.store_named {
        println!(
            "The demo runs on scratch data of its own; the store you named ({}) is not touched.",
            settings.store
        );
    }
    let stage = Stage::start(args).await?;
    println!(
        "TrafficBuster demo: gateway at http://{}, demo site {DOMAIN} at {}, scratch data in {}",
        stage.addr,
        stage.site.addr(),
        stage.dir.path().display()
    );
    let shown = tokio::select! {
        shown = show(&stage) => shown,
        () = shutdown_signal() => Err(anyhow::anyhow!("interrupted before the job was done")),
    };
    if shown.is_ok() && !args.exit_when_done {
        println!("\nThe demo serves until Ctrl-C.");
        shutdown_signal().await;
    }
    let stopped = stage.stop().await;
    shown?;
    stopped
}

/// The whole run, up to the pointers of where to look next.
async fn show(stage: &Stage) -> anyhow::Result<()> {
    let prepared = setup::prepare(stage).await?;
    let paths: Vec<String> = prepared
        .targets
        .iter()
        .map(|url| setup::path_of(url).unwrap_or(url).to_owned())
        .collect();
    let last = progress::watch(stage.addr, &prepared.token, &prepared.job, &paths).await?;
    report(stage, &prepared, &last)?;
    next_steps(stage, &prepared);
    Ok(())
}

/// The job's end as the gateway has it, and what the site itself saw.
fn report(stage: &Stage, prepared: &Prepared, last: &Value) -> anyhow::Result<()> {
    let n = |field: &str| last[field].as_u64().unwrap_or_default();
    let status = last["status"].as_str().unwrap_or("?");
    println!(
        "  job {} {status}: {} of {} flows finished ({} succeeded, {} failed), {} clicked",
        prepared.job,
        n("finished"),
        n("flows"),
        n("succeeded"),
        n("failed"),
        n("clicked"),
    );
    let seen = stage.site.seen();
    let marked = |visit: &site::Visit| visit.request.marker() == Some(prepared.job.as_str());
    let sessions = seen
        .sessions()
        .iter()
        .filter(|s| s[0].host == DOMAIN && marked(s[0]))
        .count();
    let pages: Vec<&site::Visit> = seen
        .visits_to(DOMAIN)
        .into_iter()
        .filter(|v| marked(v))
        .collect();
    let scrolled = pages.iter().filter(|v| !v.scrolls.is_empty()).count();
    let pages = pages.len();
    println!(
        "  the demo site saw {sessions} browser sessions marked with the job's id: \
         {pages} page views, {scrolled} of them scrolled"
    );
    if status != "DONE" {
        bail!(
            "the job ended {status}: {}",
            last["failure"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(())
}

/// Where to look next: GraphiQL with the job's query ready, the accounts,
/// the audit log, the log export and the event log.
fn next_steps(stage: &Stage, prepared: &Prepared) {
    let addr = stage.addr;
    let job = &prepared.job;
    let document = format!(
        "mutation LogIn {{ login(username: \"{user}\", password: \"{password}\") {{ accessToken }} }}\n\n\
         query Job {{\n  job(id: \"{job}\") {{\n    name status flows finished succeeded failed clicked\n    \
         targetProgress {{ target flowDone flowFailed flowTarget clickDone clickTarget }}\n    \
         log(first: 20) {{ at level message }}\n  }}\n}}\n",
        user = setup::USER,
        password = prepared.user_password,
    );
    let ready = utf8_percent_encode(&document, QUERY_VALUE);
    println!();
    println!("Where to look next:");
    println!("  GraphiQL     http://{addr}/graphiql?query={ready}");
    println!(
        "               (ready: run LogIn, put {{\"Authorization\": \"Bearer <accessToken>\"}} in the Headers tab, run Job)"
    );
    println!(
        "  accounts     {} / {} (owns the job), {} / {} (super-admin)",
        setup::USER,
        prepared.user_password,
        setup::ROOT,
        prepared.root_password
    );
    println!(
        "  audit log    as {}: {{ auditLog(first: 20) {{ entries {{ recordedAt actor eventType summary }} }} }}",
        setup::ROOT
    );
    println!(
        "  job log      curl -H 'Authorization: Bearer <accessToken>' http://{addr}/jobs/{job}/log.csv   (or log.jsonl)"
    );
    println!(
        "  event log    trafficbuster --store {} events tail --from start",
        stage.store
    );
    println!(
        "  scratch data {} (removed when the demo stops)",
        stage.dir.path().display()
    );
}

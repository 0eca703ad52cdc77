//! `trafficbuster bench gateway`: login → first query latency, subscription
//! fan-out, and commands/s through the command handler.
//!
//! The gateway runs inside this process on 127.0.0.1 with a fixed secret,
//! over a scratch store (see [`Scratch`]); clients speak plain HTTP/1.1 and
//! WebSocket to it as a browser would. Figures, not assertions: nothing
//! here fails because a goal is missed. The gateway gets no bench-only
//! switch: the login rate limits stay on (see [`client_address`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain::licence::{
    Allowances, Licence, LicenceCommand, LicenceEvent, LicenceIssued, LicenceTerms,
};
use domain::{Actor, EventSet, Metadata, Role, StreamId};
use futures_util::{SinkExt, StreamExt};
use gateway::CommandHandler;
use gateway::auth::password;
use gateway::auth::rate_limit::PER_IP_PER_MINUTE;
use serde_json::{Value, json};
use store::{EventStore, ExpectedVersion};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::bench::live::{LiveGateway, PASSWORD, bench_meta, create_account, new_handler, system};
use crate::bench::{
    Scratch, counter_bar, on_each, percentile, report, spinner, targets, thousands,
};
use crate::cli::BenchGatewayArgs;
use crate::configuration::Settings;
use crate::graphql_client::{self, HttpConn, LOGIN, PATIENCE, Ws};

/// The fan-out's subscribers are spread over auditor sessions: a session
/// holds at most this many WebSockets, as a user's browser tabs would.
const SUBSCRIBERS_PER_AUDITOR: usize = gateway::ws_limits::MAX_CONNECTIONS_PER_SESSION;

fn auditor(i: usize) -> String {
    format!("bench-auditor-{i}")
}

fn auditors_for(subscribers: usize) -> usize {
    subscribers.div_ceil(SUBSCRIBERS_PER_AUDITOR)
}

/// Logins sent from one client address: half the per-address quota, so
/// the limiter never refuses one (a refusal would end the bench).
const LOGINS_PER_ADDRESS: u32 = PER_IP_PER_MINUTE.div_ceil(2);
const _: () = assert!(LOGINS_PER_ADDRESS >= 1 && LOGINS_PER_ADDRESS <= PER_IP_PER_MINUTE);
/// Subscribers connecting at once while the fan-out is set up.
const CONNECT_CONCURRENCY: usize = 32;
/// Warm-up events appended, at most, until every subscription is attached.
const WARM_UP_ATTEMPTS: u32 = 10;
/// Pause between fan-out rounds, so one round's tail never overlaps the next.
const ROUND_GAP: Duration = Duration::from_millis(100);
/// Both ends of every subscriber's socket live in this process; on top,
/// the store's connections (SQLite opens a reader per concurrent read, up
/// to tokio's 512 blocking threads, at about three files each).
const SPARE_FILES: u64 = 2048;

/// Command-handler figure (a): aggregates × commands, by concurrent clients.
const AGGREGATES: usize = 1000;
const COMMANDS_PER_AGGREGATE: usize = 10;
const CLIENTS: usize = 8;
/// Command-handler figure (b): sequential commands on a stream this long.
const LONG_STREAM_EVENTS: u64 = 100_000;
const SEQUENTIAL_COMMANDS: usize = 5000;
const FILL_BATCH: u64 = 1000;
/// Commands per slice when (b) checks that the rate stays flat.
const SLICE: usize = 1000;

const ME: &str = "{ me { username } }";
const AUDIT_EVENTS: &str = "subscription { auditEvents { streamId } }";

pub async fn run(settings: &Settings, args: &BenchGatewayArgs) -> anyhow::Result<()> {
    check_open_files(args.subscribers)?;
    on_each(
        targets(&args.targets, settings),
        |scratch| format!("gateway bench: {}", scratch.describe),
        async |scratch| measure(scratch, args).await,
    )
    .await
}

async fn measure(scratch: &Scratch, args: &BenchGatewayArgs) -> anyhow::Result<()> {
    let live = LiveGateway::start(scratch).await?;
    let result = gateway_figures(&live, args).await;
    live.stop().await?;
    result?;
    // The gateway is stopped first so its projections do not compete with
    // the command handler for the store: these figures are the handler's.
    command_figures(&scratch.store(), scratch.is_postgres()).await
}

/// Refuses early, with the fix, when the subscribers would run out of files.
fn check_open_files(subscribers: u32) -> anyhow::Result<()> {
    let needed = 2 * u64::from(subscribers) + SPARE_FILES;
    let Some(limit) = open_file_limit() else {
        return Ok(());
    };
    ensure!(
        limit >= needed,
        "--subscribers {subscribers} needs about {needed} open files (both ends of every \
         WebSocket live in this process) but the limit is {limit}: raise it, e.g. \
         `ulimit -n {needed}`, or pass fewer --subscribers"
    );
    Ok(())
}

/// The soft limit on open files, where Linux tells it (`None`: unknown or unlimited).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn gateway_figures(live: &LiveGateway, args: &BenchGatewayArgs) -> anyhow::Result<()> {
    create_accounts(
        &live.handler,
        args.logins,
        auditors_for(args.subscribers as usize),
    )
    .await?;

    let (total, login) = login_latency(live.addr, args.logins).await?;
    report_latency(
        &format!(
            "login → first query ({} logins)",
            thousands(args.logins.into())
        ),
        &total,
        &format!(
            "login alone p50 {:.2} ms, p99 {:.2} ms",
            percentile(&login, 0.50),
            percentile(&login, 0.99)
        ),
    );

    let (lags, appends) = fan_out(live, args.subscribers as usize, args.rounds).await?;
    report_latency(
        &format!(
            "subscription fan-out, {} subscribers",
            thousands(args.subscribers.into())
        ),
        &lags,
        &format!(
            "{} rounds, append alone p50 {:.2} ms; goal p99 ≤ 50 ms at 1,000",
            args.rounds,
            percentile(&appends, 0.50)
        ),
    );
    Ok(())
}

/// One latency line: p50, p99 and max of sorted milliseconds, then a note.
fn report_latency(label: &str, sorted: &[f64], note: &str) {
    println!(
        "  {label:<42} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({note})",
        percentile(sorted, 0.50),
        percentile(sorted, 0.99),
        percentile(sorted, 1.0),
    );
}

fn username(i: u32) -> String {
    format!("bench-user-{i}")
}

/// `logins` users and `auditors` auditors, all with [`PASSWORD`].
async fn create_accounts(
    handler: &CommandHandler,
    logins: u32,
    auditors: usize,
) -> anyhow::Result<()> {
    let bar = counter_bar("creating accounts", u64::from(logins) + auditors as u64);
    // One argon2 hash for every account: hashing each would only slow the
    // set-up, and verifying at login costs the same either way.
    let hash = password::hash(PASSWORD.into()).await?;
    for i in 0..auditors {
        create_account(handler, &auditor(i), Role::Auditor, &hash).await?;
        bar.inc(1);
    }
    for i in 0..logins {
        create_account(handler, &username(i), Role::User, &hash).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// The loopback address login `i` is sent from. The gateway allows 20
/// logins a minute per client address, so one address could not send 200
/// in a bench's time; Linux routes all of 127.0.0.0/8 to loopback, so the
/// logins come from distinct addresses (127.0.1.0, 127.0.1.1, …), as the
/// logins of many users would, each staying under its quota. Each account
/// logs in once, well under its own quota of 5 a minute.
fn client_address(i: u32) -> IpAddr {
    let base = u32::from(Ipv4Addr::new(127, 0, 1, 0));
    IpAddr::V4(Ipv4Addr::from(base + i / LOGINS_PER_ADDRESS))
}

/// Sequential logins, each on a fresh keep-alive connection (opened before
/// the clock starts, as a browser holds one from loading the page): the
/// `login` mutation, then `{ me }` with the returned token on the same
/// connection. Returns sorted milliseconds: (login to `me` answer, login alone).
async fn login_latency(addr: SocketAddr, logins: u32) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let bar = counter_bar("logging in, then asking `me`", logins.into());
    let mut total = Vec::with_capacity(logins as usize);
    let mut login = Vec::with_capacity(logins as usize);
    for i in 0..logins {
        let name = username(i);
        let mut conn = HttpConn::connect(client_address(i), addr).await?;
        let started = Instant::now();
        let reply = conn
            .graphql(LOGIN, json!({ "u": name, "p": PASSWORD }), None)
            .await
            .with_context(|| format!("login of {name}"))?;
        let logged_in = started.elapsed();
        let token = reply["data"]["login"]["accessToken"]
            .as_str()
            .with_context(|| format!("login of {name} returned no access token: {reply}"))?;
        let me = conn.graphql(ME, json!({}), Some(token)).await?;
        let answered = started.elapsed();
        ensure!(
            me["data"]["me"]["username"] == name.as_str(),
            "`me` after the login of {name} answered {me}"
        );
        total.push(answered.as_secs_f64() * 1e3);
        login.push(logged_in.as_secs_f64() * 1e3);
        bar.inc(1);
    }
    bar.finish_and_clear();
    total.sort_by(f64::total_cmp);
    login.sort_by(f64::total_cmp);
    Ok((total, login))
}

/// What a subscriber's task reports.
enum Heard {
    /// An audit entry for stream `licence-<tag>` reached subscriber `who` at `at`.
    Entry {
        who: usize,
        tag: String,
        at: Instant,
    },
    /// The subscription stopped: the socket closed or the server said why.
    Ended { who: usize, why: String },
}

/// `subscribers` WebSocket clients each hold one `auditEvents`
/// subscription (graphql-transport-ws), under as many auditor sessions as
/// the per-session cap needs, so
/// each appended event reaches every one of them. After a warm-up event
/// has reached them all, `rounds` times: note the time, append one event
/// through a command handler, and take each subscriber's receipt time
/// minus that. Returns sorted milliseconds: (every delivery, every append).
async fn fan_out(
    live: &LiveGateway,
    subscribers: usize,
    rounds: u32,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    // Logged in from their own addresses, as for the login figure.
    let mut tokens = Vec::new();
    for i in 0..auditors_for(subscribers) {
        let name = auditor(i);
        let from = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            2,
            (i as u32 / LOGINS_PER_ADDRESS) as u8,
        ));
        let mut conn = HttpConn::connect(from, live.addr).await?;
        let reply = conn
            .graphql(LOGIN, json!({ "u": name, "p": PASSWORD }), None)
            .await
            .with_context(|| format!("login of {name}"))?;
        let token = reply["data"]["login"]["accessToken"]
            .as_str()
            .with_context(|| format!("login of {name} returned no access token: {reply}"))?;
        tokens.push(token.to_owned());
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Held to the end: dropping it closes every subscriber's socket.
    let _listeners = open_subscriptions(live.addr, &tokens, subscribers, &tx).await?;
    warm_up(&live.handler, &mut rx, subscribers).await?;
    timed_rounds(&live.handler, &mut rx, subscribers, rounds).await
}

/// Aborts the subscribers' tasks (closing their sockets) when dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Opens the subscriptions, a few at a time, each read by its own task.
async fn open_subscriptions(
    addr: SocketAddr,
    tokens: &[String],
    subscribers: usize,
    tx: &mpsc::UnboundedSender<Heard>,
) -> anyhow::Result<AbortOnDrop> {
    let bar = counter_bar("opening subscriptions", subscribers as u64);
    let mut connecting = futures_util::stream::iter(0..subscribers)
        .map(|who| async move {
            let token = &tokens[who / SUBSCRIBERS_PER_AUDITOR];
            let ws = graphql_client::subscribe(addr, token, AUDIT_EVENTS, json!({})).await;
            (who, ws)
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    let mut listeners = AbortOnDrop(Vec::with_capacity(subscribers));
    while let Some((who, ws)) = connecting.next().await {
        let ws = ws.with_context(|| format!("subscriber {who}"))?;
        listeners.0.push(tokio::spawn(listen(who, ws, tx.clone())));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(listeners)
}

/// Reports every audit entry subscriber `who` receives, stamped on arrival.
async fn listen(who: usize, mut ws: Ws, tx: mpsc::UnboundedSender<Heard>) {
    let why = loop {
        let message = match ws.next().await {
            None => break "the socket closed".to_owned(),
            Some(Err(e)) => break e.to_string(),
            Some(Ok(m)) => m,
        };
        let at = Instant::now();
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => break format!("the server closed the socket: {frame:?}"),
            _ => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            break format!("not JSON: {text}");
        };
        match v["type"].as_str() {
            Some("next") => {
                let stream = v["payload"]["data"]["auditEvents"]["streamId"]
                    .as_str()
                    .unwrap_or_default();
                if let Some(tag) = stream.strip_prefix("licence-") {
                    let tag = tag.to_owned();
                    let _ = tx.send(Heard::Entry { who, tag, at });
                }
            }
            Some("ping") => {
                let pong = json!({ "type": "pong" }).to_string();
                if let Err(e) = ws.send(Message::text(pong)).await {
                    break e.to_string();
                }
            }
            Some("pong") => {}
            _ => break format!("the subscription stopped: {text}"),
        }
    };
    let _ = tx.send(Heard::Ended { who, why });
}

/// Appends a licence for `tag` (stream `licence-<tag>`): one event.
async fn append_marker(handler: &CommandHandler, tag: &str) -> anyhow::Result<()> {
    let stream = StreamId::for_aggregate("licence", tag)?;
    issue_licence(handler, &stream, 1).await
}

/// Appends warm-up events until each subscriber has received one: a
/// subscription attaches some time after `subscribe` is sent, and only
/// from then on does it see new events.
async fn warm_up(
    handler: &CommandHandler,
    rx: &mut mpsc::UnboundedReceiver<Heard>,
    subscribers: usize,
) -> anyhow::Result<()> {
    let bar = spinner("waiting for every subscription to attach");
    let mut attached = vec![false; subscribers];
    let mut count = 0;
    for attempt in 0..WARM_UP_ATTEMPTS {
        append_marker(handler, &format!("warm-up-{attempt}")).await?;
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while count < subscribers {
            let Ok(heard) = tokio::time::timeout_at(until, rx.recv()).await else {
                break;
            };
            match heard.context("every subscriber has gone")? {
                Heard::Entry { who, .. } => {
                    if !attached[who] {
                        attached[who] = true;
                        count += 1;
                    }
                }
                Heard::Ended { who, why } => bail!("subscriber {who} stopped: {why}"),
            }
        }
        if count == subscribers {
            bar.finish_and_clear();
            return Ok(());
        }
    }
    bail!(
        "only {count} of {subscribers} subscriptions received any of {WARM_UP_ATTEMPTS} warm-up events"
    )
}

/// The fan-out rounds proper.
async fn timed_rounds(
    handler: &CommandHandler,
    rx: &mut mpsc::UnboundedReceiver<Heard>,
    subscribers: usize,
    rounds: u32,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let bar = counter_bar("fan-out rounds", rounds.into());
    let mut lags = Vec::with_capacity(subscribers * rounds as usize);
    let mut appends = Vec::with_capacity(rounds as usize);
    for round in 0..rounds {
        tokio::time::sleep(ROUND_GAP).await;
        let tag = format!("fan-out-{round}");
        let started = Instant::now();
        append_marker(handler, &tag).await?;
        appends.push(started.elapsed().as_secs_f64() * 1e3);
        lags.extend(deliveries(rx, &tag, started, subscribers).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    lags.sort_by(f64::total_cmp);
    appends.sort_by(f64::total_cmp);
    Ok((lags, appends))
}

/// Milliseconds from `started` to each subscriber's receipt of `tag`.
async fn deliveries(
    rx: &mut mpsc::UnboundedReceiver<Heard>,
    tag: &str,
    started: Instant,
    subscribers: usize,
) -> anyhow::Result<Vec<f64>> {
    let until = tokio::time::Instant::now() + PATIENCE;
    let mut seen = vec![false; subscribers];
    let mut lags = Vec::with_capacity(subscribers);
    while lags.len() < subscribers {
        let heard = tokio::time::timeout_at(until, rx.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {subscribers} subscribers received {tag} within {PATIENCE:?}",
                    lags.len()
                )
            })?
            .context("every subscriber has gone")?;
        match heard {
            Heard::Entry { who, tag: t, at } if t == tag && !seen[who] => {
                seen[who] = true;
                lags.push(at.saturating_duration_since(started).as_secs_f64() * 1e3);
            }
            // A late warm-up event, or a duplicate (which would be a bug, not a figure).
            Heard::Entry { .. } => {}
            Heard::Ended { who, why } => bail!("subscriber {who} stopped: {why}"),
        }
    }
    Ok(lags)
}

fn licence_terms(k: usize) -> LicenceTerms {
    LicenceTerms {
        allows: Allowances {
            max_instances: 4,
            human_surfing: true,
            import_proxy: false,
            scheduler: true,
            external_clicks: false,
            max_targets: k as u32,
            max_flows_per_day: 1000,
        },
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(365),
    }
}

/// One command through `handler`: (re)issue the licence of `stream`.
async fn issue_licence(
    handler: &CommandHandler,
    stream: &StreamId,
    k: usize,
) -> anyhow::Result<()> {
    let command = LicenceCommand::Issue {
        username: stream.to_string(),
        terms: licence_terms(k),
    };
    handler
        .handle::<Licence>(stream, command, &system(), &bench_meta())
        .await
        .with_context(|| format!("command on {stream}"))?;
    Ok(())
}

async fn command_figures(store: &Arc<dyn EventStore>, postgres: bool) -> anyhow::Result<()> {
    // The goals are PostgreSQL's; elsewhere the figure is for reference.
    let unit = |note: String, goal: &str| {
        if postgres {
            format!("commands/s ({note}; goal {goal})")
        } else {
            format!("commands/s ({note}; goal on PostgreSQL {goal})")
        }
    };
    let rate = many_aggregates(store).await?;
    report(
        &format!(
            "(a) {} aggregates × {COMMANDS_PER_AGGREGATE} commands",
            thousands(AGGREGATES as u64)
        ),
        rate,
        &unit(format!("{CLIENTS} clients"), "≥ 4,000/s"),
    );
    let long = long_stream(store).await?;
    report(
        &format!(
            "(b) {} sequential commands, 1 stream",
            thousands(SEQUENTIAL_COMMANDS as u64)
        ),
        long.overall,
        &unit(
            format!("stream of {} events", thousands(LONG_STREAM_EVENTS)),
            "≥ 2,000/s and flat",
        ),
    );
    println!(
        "  {:<42} {:>12.2} ms",
        format!(
            "    fold of {} events, no snapshot",
            thousands(LONG_STREAM_EVENTS)
        ),
        long.fold_ms
    );
    println!(
        "  {:<42} {:>12.2} ms",
        "    first command, from the snapshot", long.cold_ms
    );
    report("    commands 2–1,001", long.early, "commands/s");
    report(
        &format!(
            "    commands {}–{}",
            thousands((SEQUENTIAL_COMMANDS - SLICE + 1) as u64),
            thousands(SEQUENTIAL_COMMANDS as u64)
        ),
        long.late,
        "commands/s",
    );
    Ok(())
}

/// (a): [`CLIENTS`] tasks share one handler, as one gateway's requests
/// would; client `c` owns aggregates `c`, `c + CLIENTS`, … and sends each
/// its commands in turn. Returns commands/s.
async fn many_aggregates(store: &Arc<dyn EventStore>) -> anyhow::Result<f64> {
    let total = AGGREGATES * COMMANDS_PER_AGGREGATE;
    let bar = counter_bar("(a) commands on many aggregates", total as u64);
    let handler = Arc::new(new_handler(store.clone()));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let handler = handler.clone();
            let bar = bar.clone();
            tokio::spawn(async move {
                for aggregate in (client..AGGREGATES).step_by(CLIENTS) {
                    let stream = StreamId::for_aggregate("licence", format!("many-{aggregate}"))?;
                    for k in 0..COMMANDS_PER_AGGREGATE {
                        issue_licence(&handler, &stream, k).await?;
                        bar.inc(1);
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for client in clients {
        client.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(total as f64 / secs)
}

/// What (b) measured.
struct LongStream {
    /// Commands/s over all of them.
    overall: f64,
    /// Loading the stream with no snapshot: folding every event.
    fold_ms: f64,
    /// The first command: a fresh handler starts from the snapshot.
    cold_ms: f64,
    /// Commands/s for the [`SLICE`] commands after the first, and the last [`SLICE`].
    early: f64,
    late: f64,
}

/// (b): fills one licence stream with [`LONG_STREAM_EVENTS`], then sends
/// it [`SEQUENTIAL_COMMANDS`] one after another through a fresh handler,
/// as a restarted gateway would: starting from the stream's snapshot.
async fn long_stream(store: &Arc<dyn EventStore>) -> anyhow::Result<LongStream> {
    let stream = StreamId::for_aggregate("licence", "long")?;
    fill_stream(store, &stream).await?;
    // The fill bypassed the handler, which would have saved snapshots
    // along the way; one load folds the stream and saves one now.
    let started = Instant::now();
    let (version, _) = new_handler(store.clone())
        .load::<Licence>(&stream)
        .await
        .context("folding the long stream")?;
    let fold_ms = started.elapsed().as_secs_f64() * 1e3;
    let saved = store.get_snapshot(&stream).await?.map(|s| s.version);
    ensure!(
        saved.is_some() && saved == version,
        "folding the long stream left snapshot {saved:?}, not one at {version:?}"
    );
    let bar = counter_bar(
        "(b) sequential commands on one stream",
        SEQUENTIAL_COMMANDS as u64,
    );
    let handler = new_handler(store.clone());
    let started = Instant::now();
    // done[i]: seconds from the start until command i+1 completed.
    let mut done = Vec::with_capacity(SEQUENTIAL_COMMANDS);
    for k in 0..SEQUENTIAL_COMMANDS {
        issue_licence(&handler, &stream, k).await?;
        done.push(started.elapsed().as_secs_f64());
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = SEQUENTIAL_COMMANDS;
    Ok(LongStream {
        overall: n as f64 / done[n - 1],
        fold_ms,
        cold_ms: done[0] * 1e3,
        early: SLICE as f64 / (done[SLICE] - done[0]),
        late: SLICE as f64 / (done[n - 1] - done[n - 1 - SLICE]),
    })
}

/// Appends [`LONG_STREAM_EVENTS`] licence events to `stream` straight
/// through the store, in batches: only the commands after it are timed.
async fn fill_stream(store: &Arc<dyn EventStore>, stream: &StreamId) -> anyhow::Result<()> {
    let bar = counter_bar("(b) filling one stream", LONG_STREAM_EVENTS);
    let metadata = Metadata {
        actor: Some(Actor::System.name()),
        source: Some("bench".into()),
        ..Metadata::default()
    };
    for batch in 0..LONG_STREAM_EVENTS / FILL_BATCH {
        let events = (0..FILL_BATCH)
            .map(|n| {
                LicenceEvent::LicenceIssued(LicenceIssued {
                    username: stream.to_string(),
                    terms: licence_terms((batch * FILL_BATCH + n) as usize),
                    by: Actor::System.name(),
                })
                .to_new_event(metadata.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        store.append(stream, ExpectedVersion::Any, events).await?;
        bar.inc(FILL_BATCH);
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_spread_over_addresses_under_the_per_address_quota() {
        assert_eq!(client_address(0), IpAddr::from([127, 0, 1, 0]));
        assert_eq!(
            client_address(LOGINS_PER_ADDRESS - 1),
            IpAddr::from([127, 0, 1, 0])
        );
        assert_eq!(
            client_address(LOGINS_PER_ADDRESS),
            IpAddr::from([127, 0, 1, 1])
        );
        assert_eq!(
            client_address(LOGINS_PER_ADDRESS * 256),
            IpAddr::from([127, 0, 2, 0])
        );
    }
}

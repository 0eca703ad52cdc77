//! `trafficbuster bench datasets`: how long a csv of targets takes from
//! `startUpload` to a published version, and how fast raw chunks go
//! through `uploadChunk` over loopback HTTP.
//!
//! The gateway runs inside this process on 127.0.0.1 over a scratch store
//! (see [`Scratch`]); the client speaks plain HTTP/1.1 to it, base64
//! chunks in GraphQL mutations, as a browser would. Figures, not
//! assertions: nothing here fails because a goal is missed.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::licence::{Allowances, Licence, LicenceCommand, LicenceTerms};
use domain::{BlobHash, Role, StreamId};
use gateway::auth::password;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::bench::live::{LiveGateway, PASSWORD, bench_meta, create_account, system};
use crate::bench::{Scratch, on_each, spinner, targets, thousands};
use crate::cli::BenchDatasetsArgs;
use crate::configuration::Settings;
use crate::graphql_client::{HttpConn, LOGIN};

const UPLOADER: &str = "bench-uploader";
const START: &str = "mutation($k: DatasetKind!, $n: String!, $f: ImportFormat!, $s: Int!, $h: String!) \
     { startUpload(kind: $k, name: $n, format: $f, size: $s, sha256: $h) { id chunkSize chunkCount } }";
const CHUNK: &str = "mutation($u: UUID!, $i: Int!, $d: String!) { uploadChunk(uploadId: $u, index: $i, data: $d) { id } }";
const FINISH: &str = "mutation($u: UUID!) { finishUpload(uploadId: $u) { status version } }";
const BYTES_PER_MB: usize = 1_000_000;

pub async fn run(settings: &Settings, args: &BenchDatasetsArgs) -> anyhow::Result<()> {
    on_each(
        targets(&args.targets, settings),
        |scratch| format!("datasets bench: {}", scratch.describe),
        async |scratch| measure(scratch, args).await,
    )
    .await
}

async fn measure(scratch: &Scratch, args: &BenchDatasetsArgs) -> anyhow::Result<()> {
    let live = LiveGateway::start(scratch).await?;
    let result = figures(&live, args).await;
    live.stop().await?;
    result
}

async fn figures(live: &LiveGateway, args: &BenchDatasetsArgs) -> anyhow::Result<()> {
    let token = uploader(live, args.rows).await?;

    let csv = targets_csv(args.rows);
    let bar = spinner(&format!(
        "uploading {} targets",
        thousands(args.rows.into())
    ));
    let started = Instant::now();
    let upload = start(live, &token, "TARGETS", "CSV", csv.as_bytes()).await?;
    send(live, &token, &upload, csv.as_bytes(), 1).await?;
    let mut conn = connect(live).await?;
    let done = conn
        .graphql(FINISH, json!({ "u": upload.id }), Some(&token))
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    ensure!(
        done["data"]["finishUpload"]["status"] == "FINISHED",
        "the upload did not publish: {done}"
    );
    println!(
        "  {:<42} {elapsed:>9.2} s   ({:.1} MB in {} chunks; goal < 10 s at 100,000)",
        format!("{}-row csv, start → published", thousands(args.rows.into())),
        csv.len() as f64 / BYTES_PER_MB as f64,
        upload.chunks,
    );

    let file = pseudo_random(args.megabytes as usize * BYTES_PER_MB);
    let bar = spinner(&format!("sending {} MB of chunks", args.megabytes));
    // Not a dataset: the upload is only sent, never finished, and its
    // chunks go with the scratch store.
    let upload = start(live, &token, "TARGETS", "CSV", &file).await?;
    let started = Instant::now();
    send(live, &token, &upload, &file, args.connections).await?;
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    println!(
        "  {:<42} {:>9.1} MB/s ({} MB in {} chunks, {} connection{}; goal ≥ 20 MB/s)",
        "raw upload through uploadChunk",
        file.len() as f64 / BYTES_PER_MB as f64 / elapsed,
        args.megabytes,
        upload.chunks,
        args.connections,
        if args.connections == 1 { "" } else { "s" },
    );
    Ok(())
}

/// The bench's account, licensed for `rows` targets, logged in: its token.
async fn uploader(live: &LiveGateway, rows: u32) -> anyhow::Result<String> {
    let hash = password::hash(PASSWORD.into()).await?;
    create_account(&live.handler, UPLOADER, Role::User, &hash).await?;
    let terms = LicenceTerms {
        allows: Allowances {
            max_targets: rows,
            ..Allowances::default()
        },
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(1),
    };
    let command = LicenceCommand::Issue {
        username: UPLOADER.into(),
        terms,
    };
    live.handler
        .handle::<Licence>(
            &StreamId::for_aggregate("licence", UPLOADER)?,
            command,
            &system(),
            &bench_meta(),
        )
        .await
        .context("cannot issue the uploader's licence")?;
    let mut conn = connect(live).await?;
    let reply = conn
        .graphql(LOGIN, json!({ "u": UPLOADER, "p": PASSWORD }), None)
        .await?;
    reply["data"]["login"]["accessToken"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the login returned no access token: {reply}"))
}

async fn connect(live: &LiveGateway) -> anyhow::Result<HttpConn> {
    HttpConn::connect(IpAddr::V4(Ipv4Addr::LOCALHOST), live.addr).await
}

/// An upload started: its id and how the file is cut.
struct Started {
    id: String,
    chunk_size: usize,
    chunks: usize,
}

async fn start(
    live: &LiveGateway,
    token: &str,
    kind: &str,
    format: &str,
    file: &[u8],
) -> anyhow::Result<Started> {
    let mut conn = connect(live).await?;
    let vars = json!({ "k": kind, "n": "bench", "f": format, "s": file.len(),
        "h": BlobHash::of(file).to_string() });
    let reply: Value = conn.graphql(START, vars, Some(token)).await?;
    let up = &reply["data"]["startUpload"];
    let number = |field: &str| {
        up[field]
            .as_u64()
            .map(|n| n as usize)
            .with_context(|| format!("startUpload returned no {field}: {reply}"))
    };
    Ok(Started {
        id: up["id"].as_str().context("no upload id")?.to_owned(),
        chunk_size: number("chunkSize")?,
        chunks: number("chunkCount")?,
    })
}

/// Sends every chunk of `file`, over `connections` keep-alive connections
/// taking the next chunk as each finishes one.
async fn send(
    live: &LiveGateway,
    token: &str,
    upload: &Started,
    file: &[u8],
    connections: u32,
) -> anyhow::Result<()> {
    let file: Arc<[u8]> = file.into();
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..connections.max(1) {
        let (file, next) = (file.clone(), next.clone());
        let (id, token, size) = (upload.id.clone(), token.to_owned(), upload.chunk_size);
        let mut conn = connect(live).await?;
        senders.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let from = index * size;
                if from >= file.len() {
                    return anyhow::Ok(());
                }
                let chunk = &file[from..(from + size).min(file.len())];
                let vars = json!({ "u": id, "i": index, "d": BASE64.encode(chunk) });
                conn.graphql(CHUNK, vars, Some(&token))
                    .await
                    .with_context(|| format!("chunk {index}"))?;
            }
        }));
    }
    for sender in senders {
        sender.await??;
    }
    Ok(())
}

/// `rows` targets as csv, every column a target has.
fn targets_csv(rows: u32) -> String {
    let mut csv = String::from("url,traffic_type,source,keyword,flow_target,click_target\n");
    for i in 0..rows {
        let line = match i % 3 {
            0 => format!("https://shop.example/p/{i},direct,,,{},0\n", 1 + i % 7),
            1 => format!(
                "https://shop.example/blog/{i},referral,news.example,,{},1\n",
                2 + i % 5
            ),
            _ => format!(
                "https://shop.example/c/{i},organic,google,red shoes {i},{},2\n",
                3 + i % 4
            ),
        };
        csv.push_str(&line);
    }
    csv
}

/// `len` bytes that neither compress nor repeat (xorshift).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

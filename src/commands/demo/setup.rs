//! The demo's steps as an operator takes them, through the gateway's
//! GraphQL (each one real events in the log): the first super-admin, a
//! user with a licence, the demo site's domain claimed and proven through
//! its well-known file, safe mode turned off with a reason, datasets
//! uploaded and published, and a job created and run.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::account::Username;
use domain::{BlobHash, Role};
use serde_json::{Value, json};
use site::Reply;

use crate::commands::admin::create_account;
use crate::commands::demo::stage::{DOMAIN, Stage};
use crate::graphql_client::{HttpConn, LOGIN};

/// The super-admin, made as `admin create-user` makes one.
pub const ROOT: &str = "root";
/// The user who owns the demo's job.
pub const USER: &str = "demo";
/// Flows at once: within the licence, and gentle on a small machine.
const INSTANCES: u32 = 2;
/// Longest wait for the in-process runner to say hello.
const RUNNER_PATIENCE: Duration = Duration::from_secs(60);

const CREATE_ACCOUNT: &str = "mutation($u: String!, $p: String!) \
     { createAccount(username: $u, password: $p, roles: [USER]) }";
const ISSUE: &str = "mutation($u: String!, $l: LicenceInput!) \
     { issueLicence(username: $u, licence: $l) { licensed } }";
const SAFE_MODE_OFF: &str =
    "mutation($r: String!) { turnSafeModeOff(reason: $r) { safeMode { on } } }";
const CLAIM: &str = "mutation($d: String!) { claimDomain(domain: $d) { token wellKnownUrl } }";
const VERIFY: &str = "mutation($d: String!) { verifyDomain(domain: $d, method: WELL_KNOWN) \
     { status lastFailure { reason detail } } }";
const RUNNERS: &str = "{ runners { online } }";
const START: &str = "mutation($k: DatasetKind!, $n: String!, $f: ImportFormat!, $s: Int!, $h: String!) \
     { startUpload(kind: $k, name: $n, format: $f, size: $s, sha256: $h) { id chunkSize } }";
const CHUNK: &str = "mutation($u: UUID!, $i: Int!, $d: String!) { uploadChunk(uploadId: $u, index: $i, data: $d) { id } }";
const FINISH: &str =
    "mutation($u: UUID!) { finishUpload(uploadId: $u) { status datasetId version failure } }";
const CREATE_JOB: &str = "mutation($n: String!, $t: DatasetVersionInput!, $d: DatasetVersionInput!, \
     $s: DatasetVersionInput!) { createJob(name: $n, targets: $t, deviceProfiles: $d, settingsProfile: $s) \
     { id flows } }";
const RUN_JOB: &str = "mutation($id: ID!) { runJob(id: $id) { status } }";

/// What the set-up made that the rest of the demo shows.
pub struct Prepared {
    pub job: String,
    /// The targets' URLs, in the job's order.
    pub targets: Vec<String>,
    /// The job owner's access token (it watches the job).
    pub token: String,
    pub user_password: String,
    pub root_password: String,
}

/// Takes every step, printing one line for each.
pub async fn prepare(stage: &Stage) -> anyhow::Result<Prepared> {
    let mut gql = Gql::connect(stage).await?;
    let root_password = new_password();
    create_account(
        &stage.gateway.handler,
        &Username::parse(ROOT)?,
        [Role::SuperAdmin].into(),
        root_password.clone(),
        "demo",
    )
    .await?;
    let root = gql.login(ROOT, &root_password).await?;
    step(&format!("super-admin {ROOT} created, logged in"));

    let user_password = new_password();
    gql.call(
        CREATE_ACCOUNT,
        json!({ "u": USER, "p": user_password }),
        &root,
    )
    .await?;
    let licence = json!({ "maxInstances": INSTANCES, "humanSurfing": true, "importProxy": false,
        "scheduler": false, "externalClicks": false, "maxTargets": 10, "maxFlowsPerDay": 1000,
        "expiresAt": "2099-01-01T00:00:00Z" });
    gql.call(ISSUE, json!({ "u": USER, "l": licence }), &root)
        .await?;
    let user = gql.login(USER, &user_password).await?;
    step(&format!("user {USER} created with a licence, logged in"));

    prove_domain(&mut gql, stage, &user).await?;

    gql.call(
        SAFE_MODE_OFF,
        json!({ "r": "demo: a first run on scratch data, to its own site on 127.0.0.1" }),
        &root,
    )
    .await?;
    step("safe mode turned off, with the reason recorded");

    let urls = target_urls(stage.site.port());
    let targets = publish(&mut gql, &user, "TARGETS", &targets_csv(&urls)).await?;
    let profiles = publish(&mut gql, &user, "DEVICE_PROFILES", DEVICE_PROFILES_CSV).await?;
    let settings = publish(&mut gql, &user, "SETTINGS_PROFILES", &settings_csv()).await?;
    step("datasets published: 2 targets, 2 device profiles, 1 settings profile");

    runner_online(&mut gql, &root).await?;
    let version = |id: String| json!({ "dataset": id, "version": 1 });
    let created = gql
        .call(
            CREATE_JOB,
            json!({ "n": "demo run", "t": version(targets), "d": version(profiles),
                "s": version(settings) }),
            &user,
        )
        .await?;
    let job = created["createJob"]["id"]
        .as_str()
        .with_context(|| format!("createJob returned no id: {created}"))?
        .to_owned();
    let flows = created["createJob"]["flows"].as_u64().unwrap_or_default();
    gql.call(RUN_JOB, json!({ "id": job }), &user).await?;
    step(&format!("job {job} created and running: {flows} flows"));
    Ok(Prepared {
        job,
        targets: urls.into(),
        token: user,
        user_password,
        root_password,
    })
}

/// Claims the site's domain, publishes the token where the claim says,
/// and has the gateway check it: a real fetch of the well-known file.
async fn prove_domain(gql: &mut Gql, stage: &Stage, token: &str) -> anyhow::Result<()> {
    let claim = gql.call(CLAIM, json!({ "d": DOMAIN }), token).await?;
    let claim = &claim["claimDomain"];
    let (Some(secret), Some(url)) = (claim["token"].as_str(), claim["wellKnownUrl"].as_str())
    else {
        bail!("claimDomain answered no token or URL: {claim}");
    };
    let path = path_of(url).with_context(|| format!("the well-known URL {url} has no path"))?;
    stage.site.set_route(path, Reply::text(secret));
    let verified = gql.call(VERIFY, json!({ "d": DOMAIN }), token).await?;
    let row = &verified["verifyDomain"];
    ensure!(
        row["status"] == "VERIFIED",
        "the gateway could not verify {DOMAIN}: {}",
        row["lastFailure"]
    );
    step(&format!(
        "{DOMAIN} claimed and verified: the gateway fetched {path} from the demo site"
    ));
    Ok(())
}

/// The path of an absolute URL (`http://host:port/path` → `/path`).
pub fn path_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    rest.find('/').map(|at| &rest[at..])
}

/// Uploads `csv` as a new dataset of `kind` in one chunk and publishes it:
/// the dataset's id.
async fn publish(gql: &mut Gql, token: &str, kind: &str, csv: &str) -> anyhow::Result<String> {
    let bytes = csv.as_bytes();
    let vars = json!({ "k": kind, "n": format!("demo {}", kind.to_lowercase()), "f": "CSV",
        "s": bytes.len(), "h": BlobHash::of(bytes).to_string() });
    let started = gql.call(START, vars, token).await?;
    let upload = started["startUpload"]["id"]
        .as_str()
        .with_context(|| format!("startUpload returned no id: {started}"))?
        .to_owned();
    let size = started["startUpload"]["chunkSize"]
        .as_u64()
        .filter(|&n| n > 0)
        .with_context(|| format!("startUpload returned no chunk size: {started}"))?;
    for (index, chunk) in bytes.chunks(size as usize).enumerate() {
        let vars = json!({ "u": upload, "i": index, "d": BASE64.encode(chunk) });
        gql.call(CHUNK, vars, token).await?;
    }
    let finished = gql.call(FINISH, json!({ "u": upload }), token).await?;
    let done = &finished["finishUpload"];
    ensure!(
        done["status"] == "FINISHED",
        "the {kind} dataset was not published: {done}"
    );
    done["datasetId"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("finishUpload returned no dataset id: {done}"))
}

/// Waits for the in-process runner's hello, so the job's ETA counts from
/// a runner at work.
async fn runner_online(gql: &mut Gql, root: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + RUNNER_PATIENCE;
    loop {
        let runners = gql.call(RUNNERS, json!({}), root).await?;
        let online = runners["runners"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["online"] == true));
        if online {
            step("the in-process runner is online");
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the in-process runner did not come online within {RUNNER_PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two pages of the demo site.
fn target_urls(port: u16) -> [String; 2] {
    [
        format!("http://{DOMAIN}:{port}/"),
        format!("http://{DOMAIN}:{port}/page/1"),
    ]
}

/// 6 visits to each target; 2 of each 6 click a link to a second page.
/// One arrives direct, one from a search.
fn targets_csv([home, page]: &[String; 2]) -> String {
    format!(
        "url,flow_target,click_target,traffic_type,source,keyword\n\
         {home},6,2,direct,,\n\
         {page},6,2,organic,google,trafficbuster demo\n"
    )
}

/// A desktop and a phone, both served by a desktop Chromium runner.
const DEVICE_PROFILES_CSV: &str = "name,os,browser,user_agent,viewport_width,viewport_height,\
device_scale_factor,touch,locale,timezone\n\
desktop,linux,chromium,\"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
Chrome/156.0.0.0 Safari/537.36\",1280,800,1,no,en-GB,Europe/London\n\
phone,android,chromium,\"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like \
Gecko) Chrome/156.0.0.0 Mobile Safari/537.36\",412,915,2.625,yes,en-US,America/New_York\n";

/// Short visits (2 to 4 s) with scrolling and internal clicks; the
/// browser resolves the demo's name to 127.0.0.1 by the profile's hosts.
fn settings_csv() -> String {
    format!(
        "name,instances,marker_header,session_duration_min,session_duration_max,\
         pages_per_session_min,pages_per_session_max,delay_between_flows,random_scrolling,\
         clicks,external_click_share,click_delay_ms_min,click_delay_ms_max,dns_mode,dns_hosts\n\
         demo,{INSTANCES},yes,2,4,1,2,0,yes,yes,0,300,900,custom,{DOMAIN}=127.0.0.1\n"
    )
}

/// A password for one run's account: 96 random bits as hex.
fn new_password() -> String {
    gateway::auth::tokens::random_secret()[..24].to_owned()
}

/// One finished step, on standard output.
fn step(what: &str) {
    println!("  ✓ {what}");
}

/// GraphQL over one keep-alive connection to the demo's gateway.
struct Gql(HttpConn);

impl Gql {
    async fn connect(stage: &Stage) -> anyhow::Result<Self> {
        Ok(Self(
            HttpConn::connect(IpAddr::V4(Ipv4Addr::LOCALHOST), stage.addr).await?,
        ))
    }

    /// The `data` of `query` sent with `token`.
    async fn call(&mut self, query: &str, vars: Value, token: &str) -> anyhow::Result<Value> {
        // The operation's first field names it in an error.
        let field = query
            .split_once('{')
            .map_or(query, |(_, rest)| rest)
            .trim_start()
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or(query);
        let reply = self
            .0
            .graphql(query, vars, Some(token))
            .await
            .with_context(|| field.to_owned())?;
        Ok(reply["data"].clone())
    }

    /// An access token for `username`.
    async fn login(&mut self, username: &str, password: &str) -> anyhow::Result<String> {
        let reply = self
            .0
            .graphql(LOGIN, json!({ "u": username, "p": password }), None)
            .await
            .with_context(|| format!("the login of {username}"))?;
        reply["data"]["login"]["accessToken"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the login of {username} returned no token: {reply}"))
    }
}

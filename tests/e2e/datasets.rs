//! Datasets end to end: files made here are uploaded in chunks over
//! GraphQL (out of order, repeated, resumed after a dropped connection),
//! finished into versions or refused with every bad row, checked against
//! the licence, expired when abandoned, read back in pages, renamed and
//! deleted under audit.

use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::BlobHash;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::graphql::{ws_connect, ws_next};
use crate::helpers::{PASSWORD, TestApp, TestStore, code, spawn_app};
use crate::safe_mode::audited;

const START: &str = "mutation($k: DatasetKind!, $n: String!, $f: ImportFormat!, $s: Int!, $h: String!, \
     $c: Int, $d: UUID, $sheet: String) { startUpload(kind: $k, name: $n, format: $f, size: $s, sha256: $h, \
     chunkSize: $c, dataset: $d, sheet: $sheet) { id chunkSize chunkCount missingChunks status datasetId } }";
const CHUNK: &str = "mutation($u: UUID!, $i: Int!, $d: String!) { uploadChunk(uploadId: $u, index: $i, data: $d) { id status } }";
const FINISH: &str =
    "mutation($u: UUID!) { finishUpload(uploadId: $u) { status datasetId version } }";
const UPLOAD: &str = "query($u: UUID!) { upload(id: $u) { status missingChunks chunkCount version failure rowErrors { line column reason } } }";
const DATASET: &str = "query($id: UUID!, $v: Int, $first: Int!, $offset: Int!) { dataset(id: $id) { id kind name latestVersion \
     rowCount catalogueVersion updateAvailable versions { version rowCount blob format sourceSha256 uploadId catalogueVersion } \
     rows(version: $v, first: $first, offset: $offset) { version total offset rows { __typename \
     ... on TargetRow { url trafficType source keyword flowTarget clickTarget } \
     ... on ProxyRow { scheme host port username hasPassword region } \
     ... on DeviceProfileRow { name os browser viewportWidth } } } } }";
const ISSUE: &str = "mutation($u: String!, $l: LicenceInput!) { issueLicence(username: $u, licence: $l) { licensed } }";

/// A file to upload: its kind, format and bytes.
pub(crate) struct File {
    kind: &'static str,
    format: &'static str,
    bytes: Vec<u8>,
}

impl File {
    pub(crate) fn new(kind: &'static str, format: &'static str, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            kind,
            format,
            bytes: bytes.into(),
        }
    }

    fn sha256(&self) -> String {
        BlobHash::of(&self.bytes).to_string()
    }
}

/// An upload started: its id, its dataset and the file in chunks.
struct Started {
    id: String,
    dataset: String,
    chunks: Vec<Vec<u8>>,
}

/// `count` targets as csv: `https://shop.example/p/<i>` wanting `1 + i % 5` visits.
fn targets_csv(count: usize) -> String {
    let mut csv = String::from("url,flow_target\n");
    for i in 0..count {
        csv.push_str(&format!("https://shop.example/p/{i},{}\n", 1 + i % 5));
    }
    csv
}

fn licence(max_targets: u32, import_proxy: bool) -> Value {
    json!({ "maxInstances": 4, "humanSurfing": true, "importProxy": import_proxy, "scheduler": false,
        "externalClicks": false, "maxTargets": max_targets, "maxFlowsPerDay": 1000,
        "expiresAt": "2099-01-01T00:00:00Z" })
}

async fn issue(app: &TestApp, root: &str, user: &str, licence: Value) {
    let r = app
        .gql(ISSUE, json!({ "u": user, "l": licence }), Some(root))
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
}

/// Accounts (root, ada, audrey), ada licensed for 100,000 targets and
/// proxies: (root's token, ada's token).
async fn licensed_ada(app: &TestApp) -> (String, String) {
    let root = app.with_accounts().await;
    issue(app, &root, "ada", licence(100_000, true)).await;
    let ada = app.token("ada", PASSWORD).await;
    (root, ada)
}

/// The `startUpload` answer for `file` with these extra variables.
async fn try_start(app: &TestApp, token: &str, file: &File, extra: Value) -> Value {
    let mut vars = json!({ "k": file.kind, "n": "Spring launch", "f": file.format,
        "s": file.bytes.len(), "h": file.sha256() });
    for (k, v) in extra.as_object().unwrap() {
        vars[k] = v.clone();
    }
    app.gql(START, vars, Some(token)).await
}

async fn start(app: &TestApp, token: &str, file: &File, extra: Value) -> Started {
    let r = try_start(app, token, file, extra).await;
    let up = &r["data"]["startUpload"];
    assert_eq!(up["status"], "OPEN", "{r}");
    let size = up["chunkSize"].as_u64().unwrap() as usize;
    let chunks: Vec<Vec<u8>> = file.bytes.chunks(size).map(<[u8]>::to_vec).collect();
    assert_eq!(up["chunkCount"], chunks.len(), "{r}");
    Started {
        id: up["id"].as_str().unwrap().to_owned(),
        dataset: up["datasetId"].as_str().unwrap().to_owned(),
        chunks,
    }
}

async fn send(app: &TestApp, token: &str, id: &str, index: usize, bytes: &[u8]) -> Value {
    app.gql(
        CHUNK,
        json!({ "u": id, "i": index, "d": BASE64.encode(bytes) }),
        Some(token),
    )
    .await
}

async fn send_all(app: &TestApp, token: &str, up: &Started) {
    for (i, chunk) in up.chunks.iter().enumerate() {
        let r = send(app, token, &up.id, i, chunk).await;
        assert_eq!(r["data"]["uploadChunk"]["status"], "OPEN", "{r}");
    }
}

async fn finish(app: &TestApp, token: &str, id: &str) -> Value {
    app.gql(FINISH, json!({ "u": id }), Some(token)).await
}

async fn upload_state(app: &TestApp, token: &str, id: &str) -> Value {
    let r = app.gql(UPLOAD, json!({ "u": id }), Some(token)).await;
    r["data"]["upload"].clone()
}

/// Uploads `file` whole (as a new version of `dataset`, if given) and
/// returns the finish's answer.
async fn upload(app: &TestApp, token: &str, file: &File, dataset: Option<&str>) -> Value {
    let up = start(app, token, file, json!({ "d": dataset })).await;
    send_all(app, token, &up).await;
    finish(app, token, &up.id).await
}

/// Uploads `file` into a new dataset and waits until the view shows its
/// version: the dataset's id.
pub(crate) async fn published(app: &TestApp, token: &str, file: &File) -> String {
    let r = upload(app, token, file, None).await;
    let done = &r["data"]["finishUpload"];
    assert_eq!(done["status"], "FINISHED", "{r}");
    let id = done["datasetId"].as_str().unwrap().to_owned();
    dataset_at(app, token, &id, done["version"].as_u64().unwrap()).await;
    id
}

/// Rows `offset..offset + first` of `version` (default: the latest), once
/// the view shows the dataset at `latest`.
async fn dataset_at(app: &TestApp, token: &str, id: &str, latest: u64) -> Value {
    rows_at(app, token, id, latest, None, 100, 0).await
}

async fn rows_at(
    app: &TestApp,
    token: &str,
    id: &str,
    latest: u64,
    version: Option<u64>,
    first: u64,
    offset: u64,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app
            .gql(
                DATASET,
                json!({ "id": id, "v": version, "first": first, "offset": offset }),
                Some(token),
            )
            .await;
        if r["data"]["dataset"]["latestVersion"] == latest {
            return r["data"]["dataset"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dataset {id} never reached version {latest}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many events of `event_type` the store holds.
async fn count_events(store: &TestStore, event_type: &str) -> usize {
    store
        .events()
        .await
        .iter()
        .filter(|e| e.event_type == event_type)
        .count()
}

async fn staged_chunks(store: &TestStore, upload: &str) -> Vec<u32> {
    store
        .open()
        .await
        .chunk_indexes(Uuid::parse_str(upload).unwrap())
        .await
        .unwrap()
}

fn error_extensions(r: &Value) -> &Value {
    &r["errors"][0]["extensions"]
}

/// Chunks sent backwards, one of them first with wrong bytes and then
/// again right, publish a version whose rows read back in pages; a second
/// upload adds version 2 and version 1 stays readable.
async fn a_chunked_upload_out_of_order_and_repeated_publishes_a_version(app: &TestApp) {
    let (_, ada) = licensed_ada(app).await;
    let file = File::new("TARGETS", "CSV", targets_csv(2000));
    let up = start(app, &ada, &file, json!({ "c": 4096 })).await;
    assert!(up.chunks.len() > 5, "{} chunks", up.chunks.len());
    let garbage = vec![b'#'; up.chunks[1].len()];
    send(app, &ada, &up.id, 1, &garbage).await;
    for (i, chunk) in up.chunks.iter().enumerate().rev() {
        let r = send(app, &ada, &up.id, i, chunk).await;
        assert_eq!(r["data"]["uploadChunk"]["status"], "OPEN", "{r}");
    }
    send(app, &ada, &up.id, 0, &up.chunks[0]).await;
    let state = upload_state(app, &ada, &up.id).await;
    assert_eq!(state["missingChunks"], json!([]), "{state}");

    let r = finish(app, &ada, &up.id).await;
    assert_eq!(
        r["data"]["finishUpload"],
        json!({ "status": "FINISHED", "datasetId": up.dataset, "version": 1 }),
        "{r}"
    );
    let d = rows_at(app, &ada, &up.dataset, 1, None, 3, 1998).await;
    assert_eq!(
        (&d["kind"], &d["name"], &d["rowCount"]),
        (&json!("TARGETS"), &json!("Spring launch"), &json!(2000)),
        "{d}"
    );
    assert_eq!(
        d["rows"]["rows"],
        json!([
            { "__typename": "TargetRow", "url": "https://shop.example/p/1998", "trafficType": "DIRECT",
              "source": null, "keyword": null, "flowTarget": 4, "clickTarget": 0 },
            { "__typename": "TargetRow", "url": "https://shop.example/p/1999", "trafficType": "DIRECT",
              "source": null, "keyword": null, "flowTarget": 5, "clickTarget": 0 },
        ]),
        "{d}"
    );
    assert_eq!(d["rows"]["total"], 2000);
    let v1 = &d["versions"][0];
    assert_eq!(
        (&v1["format"], &v1["sourceSha256"], &v1["uploadId"]),
        (&json!("CSV"), &json!(file.sha256()), &json!(up.id)),
        "{d}"
    );
    let list = app
        .gql(
            "{ datasets(kind: TARGETS) { entries { id latestVersion } } }",
            json!({}),
            Some(&ada),
        )
        .await;
    assert_eq!(
        list["data"]["datasets"]["entries"],
        json!([{ "id": up.dataset, "latestVersion": 1 }]),
        "{list}"
    );

    let more = File::new(
        "TARGETS",
        "TXT",
        "# our new landing pages\nhttps://shop.example/new\n\nhttps://shop.example/sale\n",
    );
    let r = upload(app, &ada, &more, Some(&up.dataset)).await;
    assert_eq!(r["data"]["finishUpload"]["version"], 2, "{r}");
    let d = dataset_at(app, &ada, &up.dataset, 2).await;
    assert_eq!(d["rows"]["total"], 2, "{d}");
    let old = rows_at(app, &ada, &up.dataset, 2, Some(1), 1, 0).await;
    assert_eq!(
        (&old["rows"]["version"], &old["rows"]["total"]),
        (&json!(1), &json!(2000)),
        "{old}"
    );
    assert!(staged_chunks(&app.store, &up.id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_out_of_order_and_repeated_publishes_a_version_on_sqlite() {
    a_chunked_upload_out_of_order_and_repeated_publishes_a_version(&spawn_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_out_of_order_and_repeated_publishes_a_version_on_postgres() {
    let name = "a_chunked_upload_out_of_order_and_repeated_publishes_a_version_on_postgres";
    let Some(store) = TestStore::postgres(name).await else {
        return;
    };
    let app = spawn_app()
        .store(store)
        .env("TB_DATA_KEY", &"7".repeat(64))
        .await;
    a_chunked_upload_out_of_order_and_repeated_publishes_a_version(&app).await;
}

/// Default 1 MiB chunks travel as 1.4 MB bodies, which only `uploadChunk`
/// from a logged-in client may send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mebibyte_chunks_go_through_http_and_only_upload_chunk_sends_large_bodies() {
    let app = spawn_app().await;
    let (_, ada) = licensed_ada(&app).await;
    let file = File::new("TARGETS", "CSV", targets_csv(45_000));
    assert!(file.bytes.len() > 1 << 20);
    let up = start(&app, &ada, &file, json!({})).await;
    assert_eq!(up.chunks.len(), 2);
    assert_eq!(up.chunks[0].len(), 1 << 20);
    let anonymous = json!({ "query": CHUNK, "variables": { "u": up.id, "i": 0, "d": BASE64.encode(&up.chunks[0]) } });
    let (status, body) = app.post(&anonymous.to_string(), None).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("only uploadChunk, sent by a logged-in client"),
        "{body}"
    );
    send_all(&app, &ada, &up).await;
    let r = finish(&app, &ada, &up.id).await;
    assert_eq!(r["data"]["finishUpload"]["status"], "FINISHED", "{r}");
    let d = dataset_at(&app, &ada, &up.dataset, 1).await;
    assert_eq!(d["rowCount"], 45_000, "{d}");
}

/// A connection dropped in the middle of a chunk leaves that chunk
/// missing; after logging in again the client asks which chunks are
/// missing, sends them, and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_after_a_disconnect() {
    let app = spawn_app().await;
    let (_, ada) = licensed_ada(&app).await;
    let file = File::new("TARGETS", "CSV", targets_csv(200));
    let up = start(&app, &ada, &file, json!({ "c": 1024 })).await;
    let count = up.chunks.len();
    assert!(count >= 4, "{count} chunks");
    send(&app, &ada, &up.id, 0, &up.chunks[0]).await;
    send(&app, &ada, &up.id, 1, &up.chunks[1]).await;

    // Half of chunk 2's request, then the connection is gone.
    let body = json!({ "query": CHUNK, "variables": { "u": up.id, "i": 2, "d": BASE64.encode(&up.chunks[2]) } })
        .to_string();
    let mut socket = tokio::net::TcpStream::connect(&app.addr).await.unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAuthorization: Bearer {ada}\r\nContent-Length: {}\r\n\r\n",
        app.addr,
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    drop(socket);

    let ada = app.token("ada", PASSWORD).await;
    let state = upload_state(&app, &ada, &up.id).await;
    let missing: Vec<usize> = (2..count).collect();
    assert_eq!(state["missingChunks"], json!(missing), "{state}");
    assert_eq!(state["status"], "OPEN");
    let early = finish(&app, &ada, &up.id).await;
    assert_eq!(code(&early), "VALIDATION", "{early}");
    assert_eq!(error_extensions(&early)["missingChunks"], json!(missing));
    for i in missing {
        send(&app, &ada, &up.id, i, &up.chunks[i]).await;
    }
    let r = finish(&app, &ada, &up.id).await;
    assert_eq!(r["data"]["finishUpload"]["status"], "FINISHED", "{r}");
    assert_eq!(
        dataset_at(&app, &ada, &up.dataset, 1).await["rowCount"],
        200
    );
}

/// A file whose bytes do not hash to the declared SHA-256, and a csv with
/// bad rows, publish nothing; every bad row is reported with its line and
/// column; the dataset's first version stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_uploads_publish_nothing_and_report_every_bad_row() {
    let app = spawn_app().await;
    let (_, ada) = licensed_ada(&app).await;
    let dataset = published(&app, &ada, &File::new("TARGETS", "CSV", targets_csv(3))).await;

    let file = File::new("TARGETS", "CSV", targets_csv(4));
    let other = BlobHash::of(b"another file").to_string();
    let up = start(&app, &ada, &file, json!({ "d": dataset, "h": other })).await;
    send_all(&app, &ada, &up).await;
    let r = finish(&app, &ada, &up.id).await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    assert_eq!(error_extensions(&r)["problem"], "checksum", "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&file.sha256()) && message.contains(&other),
        "{message}"
    );
    assert_eq!(upload_state(&app, &ada, &up.id).await["status"], "FAILED");
    assert!(staged_chunks(&app.store, &up.id).await.is_empty());

    let csv = "url,traffic_type,flow_target,click_target\n\
               https://shop.example/a,direct,2,1\n\
               shop.example/no-scheme,direct,2,1\n\
               https://shop.example/b,direct,2,0\n\
               https://shop.example/c,direct,many,0\n\
               https://shop.example/d,direct,1,3\n";
    let up = start(
        &app,
        &ada,
        &File::new("TARGETS", "CSV", csv),
        json!({ "d": dataset }),
    )
    .await;
    send_all(&app, &ada, &up).await;
    let r = finish(&app, &ada, &up.id).await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    let x = error_extensions(&r);
    assert_eq!(
        (&x["problem"], &x["errorCount"]),
        (&json!("rows"), &json!(3)),
        "{r}"
    );
    let places: Vec<(u64, &str)> = x["rowErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["column"].as_str().unwrap()))
        .collect();
    assert_eq!(
        places,
        [(3, "url"), (5, "flow_target"), (6, "click_target")],
        "{r}"
    );
    // Finishing again says the same, from the upload's record.
    let again = finish(&app, &ada, &up.id).await;
    assert_eq!(
        error_extensions(&again)["rowErrors"],
        x["rowErrors"],
        "{again}"
    );
    let state = upload_state(&app, &ada, &up.id).await;
    assert_eq!(state["status"], "FAILED");
    assert_eq!(state["rowErrors"].as_array().unwrap().len(), 3, "{state}");

    assert_eq!(count_events(&app.store, "DatasetVersionPublished").await, 1);
    assert_eq!(count_events(&app.store, "UploadFailed").await, 2);
    let d = dataset_at(&app, &ada, &dataset, 1).await;
    assert_eq!(d["rows"]["total"], 3, "{d}");
}

/// Over `maxTargets` the finish is refused naming the limit, what is
/// allowed and what was asked; the upload stays open, so once the licence
/// allows it the same upload finishes. Proxies need `importProxy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licence_limits_refuse_naming_the_limit_or_feature() {
    let app = spawn_app().await;
    let root = app.with_accounts().await;
    issue(&app, &root, "ada", licence(3, false)).await;
    let ada = app.token("ada", PASSWORD).await;

    let up = start(
        &app,
        &ada,
        &File::new("TARGETS", "CSV", targets_csv(5)),
        json!({}),
    )
    .await;
    send_all(&app, &ada, &up).await;
    let r = finish(&app, &ada, &up.id).await;
    assert_eq!(code(&r), "FEATURE_NOT_LICENSED", "{r}");
    assert_eq!(
        *error_extensions(&r),
        json!({ "code": "FEATURE_NOT_LICENSED", "limit": "maxTargets", "allowed": 3, "requested": 5 })
    );
    assert_eq!(upload_state(&app, &ada, &up.id).await["status"], "OPEN");
    assert_eq!(count_events(&app.store, "DatasetVersionPublished").await, 0);
    issue(&app, &root, "ada", licence(5, false)).await;
    let r = finish(&app, &ada, &up.id).await;
    assert_eq!(r["data"]["finishUpload"]["version"], 1, "{r}");

    let proxies = File::new("PROXIES", "TXT", "http://proxy.example.com:8080\n");
    let r = upload(&app, &ada, &proxies, None).await;
    assert_eq!(code(&r), "FEATURE_NOT_LICENSED", "{r}");
    assert_eq!(error_extensions(&r)["feature"], "importProxy", "{r}");
}

/// Finishing twice returns the same version and records nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_twice_returns_the_same_version_once() {
    let app = spawn_app().await;
    let (_, ada) = licensed_ada(&app).await;
    let up = start(
        &app,
        &ada,
        &File::new("TARGETS", "CSV", targets_csv(10)),
        json!({}),
    )
    .await;
    send_all(&app, &ada, &up).await;
    let first = finish(&app, &ada, &up.id).await;
    let second = finish(&app, &ada, &up.id).await;
    assert_eq!(first["data"]["finishUpload"]["version"], 1, "{first}");
    assert_eq!(first["data"], second["data"]);
    assert_eq!(count_events(&app.store, "UploadFinished").await, 1);
    assert_eq!(count_events(&app.store, "DatasetVersionPublished").await, 1);
    let late = send(&app, &ada, &up.id, 0, &up.chunks[0]).await;
    assert_eq!(code(&late), "CONFLICT", "{late}");
}

/// An upload left open past its lifetime expires, as an event, and its
/// chunks are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_expires_and_its_chunks_are_reclaimed() {
    let app = spawn_app().flags(&["--upload-ttl", "1"]).await;
    let (_, ada) = licensed_ada(&app).await;
    let up = start(
        &app,
        &ada,
        &File::new("TARGETS", "CSV", targets_csv(100)),
        json!({ "c": 1024 }),
    )
    .await;
    send(&app, &ada, &up.id, 0, &up.chunks[0]).await;
    send(&app, &ada, &up.id, 1, &up.chunks[1]).await;
    assert_eq!(staged_chunks(&app.store, &up.id).await, [0, 1]);
    store::testing::eventually("the upload's expiry", || async {
        count_events(&app.store, "UploadExpired").await == 1
    })
    .await;
    store::testing::eventually("its chunks deleted", || async {
        staged_chunks(&app.store, &up.id).await.is_empty()
    })
    .await;
    assert_eq!(upload_state(&app, &ada, &up.id).await["status"], "EXPIRED");
    let late = send(&app, &ada, &up.id, 2, &up.chunks[2]).await;
    assert_eq!(code(&late), "CONFLICT", "{late}");
    let late = finish(&app, &ada, &up.id).await;
    assert_eq!(code(&late), "CONFLICT", "{late}");

    // A chunk accepted just before its upload ended lands after the
    // chunks were deleted: the sweep reclaims it too. One of an upload
    // the views do not know yet is left alone.
    let store = app.store.open().await;
    let ended = Uuid::parse_str(&up.id).unwrap();
    let unknown = Uuid::now_v7();
    store
        .put_chunk(ended, 2, up.chunks[2].clone())
        .await
        .unwrap();
    store.put_chunk(unknown, 0, vec![1, 2, 3]).await.unwrap();
    store::testing::eventually("the late chunk reclaimed", || async {
        staged_chunks(&app.store, &up.id).await.is_empty()
    })
    .await;
    assert_eq!(store.chunk_indexes(unknown).await.unwrap(), [0]);
}

/// Renaming and deleting are events an auditor sees; only the owner may
/// touch a dataset, and a deleted one is gone from the views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_delete_are_the_owners_and_audited() {
    let app = spawn_app().await;
    let (root, ada) = licensed_ada(&app).await;
    let dataset = published(&app, &ada, &File::new("TARGETS", "CSV", targets_csv(2))).await;
    let bob = crate::safe_mode::create_account(&app, &root, "bob", "USER").await;
    let rename = "mutation($id: UUID!, $n: String!) { renameDataset(id: $id, name: $n) }";
    let delete = "mutation($id: UUID!) { deleteDataset(id: $id) }";

    let r = app
        .gql(
            rename,
            json!({ "id": dataset, "n": "Bob's now" }),
            Some(&bob),
        )
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = app
        .gql(
            DATASET,
            json!({ "id": dataset, "first": 1, "offset": 0 }),
            Some(&bob),
        )
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");

    let r = app
        .gql(
            rename,
            json!({ "id": dataset, "n": "  Summer sale  " }),
            Some(&ada),
        )
        .await;
    assert_eq!(r["data"]["renameDataset"], true, "{r}");
    let r = app.gql(delete, json!({ "id": dataset }), Some(&ada)).await;
    assert_eq!(r["data"]["deleteDataset"], true, "{r}");
    let r = app
        .gql(rename, json!({ "id": dataset, "n": "again" }), Some(&ada))
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");

    let auditor = app.token("audrey", PASSWORD).await;
    assert_eq!(
        audited(&app, &auditor, "DatasetRenamed", 1).await,
        [format!(
            "dataset {dataset} renamed to \"Summer sale\" by ada"
        )]
    );
    assert_eq!(
        audited(&app, &auditor, "DatasetDeleted", 1).await,
        [format!("dataset {dataset} deleted by ada")]
    );
    store::testing::eventually("the deleted dataset gone from the view", || async {
        let r = app
            .gql(
                DATASET,
                json!({ "id": dataset, "first": 1, "offset": 0 }),
                Some(&ada),
            )
            .await;
        code(&r) == "NOT_FOUND"
    })
    .await;
}

/// Proxy passwords are sealed in the blob and never shown; without a data
/// key (PostgreSQL, no TB_DATA_KEY) proxies with credentials are refused
/// naming the setting, and proxies without them are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_passwords_are_sealed_and_need_a_data_key() {
    let csv = "scheme,host,port,username,password,region\n\
               http,proxy.example.com,8080,alice,s3cret-proxy-pass,DE\n\
               socks5,198.51.100.7,1080,,,\n";
    let app = spawn_app().await;
    let (_, ada) = licensed_ada(&app).await;
    let dataset = published(&app, &ada, &File::new("PROXIES", "CSV", csv)).await;
    let d = dataset_at(&app, &ada, &dataset, 1).await;
    assert_eq!(
        d["rows"]["rows"],
        json!([
            { "__typename": "ProxyRow", "scheme": "HTTP", "host": "proxy.example.com", "port": 8080,
              "username": "alice", "hasPassword": true, "region": "DE" },
            { "__typename": "ProxyRow", "scheme": "SOCKS5", "host": "198.51.100.7", "port": 1080,
              "username": null, "hasPassword": false, "region": null },
        ]),
        "{d}"
    );
    let blob: BlobHash = d["versions"][0]["blob"].as_str().unwrap().parse().unwrap();
    let stored = app
        .store
        .open()
        .await
        .get_blob(&blob)
        .await
        .unwrap()
        .unwrap();
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        stored.contains("alice") && !stored.contains("s3cret"),
        "{stored}"
    );
    let events = app.store.events().await;
    assert!(events.iter().all(|e| !e.data.contains("s3cret")));

    let Some(store) = TestStore::postgres("proxy_passwords_are_sealed_and_need_a_data_key").await
    else {
        return;
    };
    let pg = spawn_app().store(store).await;
    let (_, ada) = licensed_ada(&pg).await;
    let r = upload(&pg, &ada, &File::new("PROXIES", "CSV", csv), None).await;
    let message = r["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("TB_DATA_KEY"), "{r}");
    let plain = File::new("PROXIES", "TXT", "socks5://198.51.100.7:1080\n");
    let r = upload(&pg, &ada, &plain, None).await;
    assert_eq!(r["data"]["finishUpload"]["status"], "FINISHED", "{r}");
}

/// The built-in catalogue is published in one step; a dataset from an
/// older catalogue says an update is available until it takes the new one;
/// `datasetChanged` tells the owner as it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_catalogue_publishes_in_one_step_and_says_when_it_is_outdated() {
    let app = spawn_app().await;
    let (_, ada) = licensed_ada(&app).await;
    let mut ws = ws_connect(&app.addr, "graphql-transport-ws", &ada).await;
    let watch = "subscription { datasetChanged { datasetId kind change version name } }";
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": watch } });
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let publish =
        "mutation($d: UUID) { publishDeviceCatalogue(dataset: $d) { datasetId version } }";
    let r = app.gql(publish, json!({}), Some(&ada)).await;
    let id = r["data"]["publishDeviceCatalogue"]["datasetId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    for expected in [
        json!({ "datasetId": id, "kind": "DEVICE_PROFILES", "change": "CREATED", "version": null, "name": "Device catalogue" }),
        json!({ "datasetId": id, "kind": "DEVICE_PROFILES", "change": "PUBLISHED", "version": 1, "name": null }),
    ] {
        let next = ws_next(&mut ws).await;
        assert_eq!(
            next["payload"]["data"]["datasetChanged"], expected,
            "{next}"
        );
    }
    let d = dataset_at(&app, &ada, &id, 1).await;
    assert_eq!(
        (&d["kind"], &d["catalogueVersion"], &d["updateAvailable"]),
        (
            &json!("DEVICE_PROFILES"),
            &json!(datasets::catalogue::VERSION),
            &json!(false)
        ),
        "{d}"
    );
    assert!(d["rows"]["total"].as_u64().unwrap() >= 5, "{d}");
    assert_eq!(d["rows"]["rows"][0]["__typename"], "DeviceProfileRow");

    // A version from an older catalogue, as an older gateway published it.
    older_catalogue_version(&app, &id).await;
    let d = dataset_at(&app, &ada, &id, 2).await;
    assert_eq!(d["updateAvailable"], true, "{d}");
    let r = app.gql(publish, json!({ "d": id }), Some(&ada)).await;
    assert_eq!(r["data"]["publishDeviceCatalogue"]["version"], 3, "{r}");
    let d = dataset_at(&app, &ada, &id, 3).await;
    assert_eq!(d["updateAvailable"], false, "{d}");

    // Resumed from a cursor, the changes since come first, in order.
    let mut ws = ws_connect(&app.addr, "graphql-transport-ws", &ada).await;
    let resume = "subscription { datasetChanged(after: \"0\") { position change version } }";
    let subscribe = json!({ "id": "2", "type": "subscribe", "payload": { "query": resume } });
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    let mut positions = Vec::new();
    for (change, version) in [
        ("CREATED", json!(null)),
        ("PUBLISHED", json!(1)),
        ("PUBLISHED", json!(2)),
        ("PUBLISHED", json!(3)),
    ] {
        let next = ws_next(&mut ws).await;
        let item = &next["payload"]["data"]["datasetChanged"];
        assert_eq!(
            (&item["change"], &item["version"]),
            (&json!(change), &version),
            "{next}"
        );
        positions.push(item["position"].as_str().unwrap().to_owned());
    }
    let mut ordered = positions.clone();
    ordered.sort_by_key(|p| p.parse::<domain::Position>().unwrap());
    ordered.dedup();
    assert_eq!(ordered, positions);
}

/// Publishes version 1's rows again as if catalogue version 0 made them.
async fn older_catalogue_version(app: &TestApp, dataset: &str) {
    use domain::dataset::{Dataset, DatasetCommand, DatasetId, NewVersion, VersionSource};
    let store = app.store.open().await;
    let handler =
        gateway::CommandHandler::new(store, std::sync::Arc::new(domain::event_registry()));
    let id = DatasetId(Uuid::parse_str(dataset).unwrap());
    let rows = datasets::Rows::DeviceProfiles(datasets::catalogue::device_profiles());
    let command = DatasetCommand::Publish {
        create: None,
        version: NewVersion {
            kind: domain::DatasetKind::DeviceProfiles,
            summary: rows.summary(),
            blob: BlobHash::of(&datasets::encode(&rows).unwrap()),
            source: VersionSource::Catalogue { version: 0 },
        },
    };
    let ada = domain::Actor::Account {
        account_id: Uuid::nil(),
        username: "ada".into(),
        roles: [domain::Role::User].into(),
    };
    let ctx = domain::Context::new(time::OffsetDateTime::now_utc(), ada);
    handler
        .handle::<Dataset>(
            &id.stream(),
            command,
            &ctx,
            &gateway::CommandMeta::default(),
        )
        .await
        .unwrap();
}

/// A workbook of targets, its header in its first row.
fn workbook(rows: &[&[&str]]) -> Vec<u8> {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    sheet.set_name("Targets").unwrap();
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            match cell.parse::<f64>() {
                Ok(n) => sheet.write_number(r as u32, c as u16, n).map(|_| ()),
                Err(_) => sheet.write_string(r as u32, c as u16, *cell).map(|_| ()),
            }
            .unwrap();
        }
    }
    book.save_to_buffer().unwrap()
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A Word document: a paragraph with a hyperlink, and one that is a URL.
fn word_document() -> Vec<u8> {
    let w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";
    let r = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
    let document = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="{w}" xmlns:r="{r}"><w:body>
<w:p><w:r><w:t>Our pages: </w:t></w:r><w:hyperlink r:id="rId7"><w:r><w:t>the shop</w:t></w:r></w:hyperlink></w:p>
<w:p><w:r><w:t>https://shop.example/blog</w:t></w:r></w:p>
</w:body></w:document>"#
    );
    let rels = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId7" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/hyperlink" Target="https://shop.example/" TargetMode="External"/></Relationships>"#;
    let types = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#;
    let root_rels = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#;
    zip_of(&[
        ("[Content_Types].xml", types.as_bytes()),
        ("_rels/.rels", root_rels.as_bytes()),
        ("word/document.xml", document.as_bytes()),
        ("word/_rels/document.xml.rels", rels.as_bytes()),
    ])
}

/// txt, csv, xlsx, docx and json files made here each import; an xlsx
/// with a wrong column, a docx that is a zip of junk and a csv that claims
/// to be a workbook are refused saying where and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_imports_from_a_real_file_and_corrupt_ones_are_refused() {
    let app = spawn_app().await;
    let (_, ada) = licensed_ada(&app).await;
    let good = [
        File::new(
            "TARGETS",
            "TXT",
            "https://shop.example/\n# a comment\nhttps://shop.example/blog\n",
        ),
        File::new(
            "TARGETS",
            "CSV",
            "URL,Traffic Type,Source,Keyword,Flow Target\n\
             https://shop.example/,organic,google,\"red shoes\",10\n\
             https://shop.example/blog,referral,news.example,,2\n",
        ),
        File::new(
            "TARGETS",
            "XLSX",
            workbook(&[
                &["URL", "Traffic Type", "Source", "Keyword", "Flow Target"],
                &[
                    "https://shop.example/",
                    "organic",
                    "google",
                    "red shoes",
                    "10",
                ],
                &[
                    "https://shop.example/blog",
                    "referral",
                    "news.example",
                    "",
                    "2",
                ],
            ]),
        ),
        File::new("TARGETS", "DOCX", word_document()),
        File::new(
            "TARGETS",
            "JSON",
            r#"[{"url": "https://shop.example/", "traffic_type": "organic", "source": "google", "keyword": "red shoes", "flow_target": 10},
                {"url": "https://shop.example/blog", "traffic_type": "referral", "source": "news.example", "flow_target": 2}]"#,
        ),
    ];
    for file in &good {
        let id = published(&app, &ada, file).await;
        let d = dataset_at(&app, &ada, &id, 1).await;
        let urls: Vec<&str> = d["rows"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            ["https://shop.example/", "https://shop.example/blog"],
            "{} {d}",
            file.format
        );
        if !matches!(file.format, "TXT" | "DOCX") {
            assert_eq!(
                (
                    &d["rows"]["rows"][0]["trafficType"],
                    &d["rows"]["rows"][0]["keyword"]
                ),
                (&json!("ORGANIC"), &json!("red shoes")),
                "{} {d}",
                file.format
            );
        }
    }

    let wrong_column = File::new(
        "TARGETS",
        "XLSX",
        workbook(&[
            &["Address", "Flow Target", "Colour"],
            &["https://shop.example/", "2", "red"],
        ]),
    );
    let r = upload(&app, &ada, &wrong_column, None).await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    let columns: Vec<&str> = error_extensions(&r)["rowErrors"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .filter_map(|e| e["column"].as_str())
        .collect();
    assert!(
        columns.iter().any(|c| c.eq_ignore_ascii_case("colour")),
        "{r}"
    );

    let junk = File::new(
        "TARGETS",
        "DOCX",
        zip_of(&[
            ("junk.bin", &[0xde, 0xad, 0xbe, 0xef]),
            ("word.txt", b"not xml"),
        ]),
    );
    let r = upload(&app, &ada, &junk, None).await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    assert_eq!(error_extensions(&r)["problem"], "format", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not a Word document"),
        "{r}"
    );

    let pretender = File::new("TARGETS", "XLSX", targets_csv(3));
    let r = upload(&app, &ada, &pretender, None).await;
    assert_eq!(error_extensions(&r)["problem"], "format", "{r}");
    assert_eq!(
        count_events(&app.store, "DatasetVersionPublished").await,
        good.len()
    );
}

//! Failed flows' artifacts through a real gateway, on both stores: a
//! runner uploads them in parts over its socket (only for flows it holds,
//! only what the kind says), its report names them, the failed flow's log
//! line links them, and only those who may read the job download them.

mod support;

use std::time::Duration;

use domain::account::{Account, AccountCommand, Username};
use domain::artifact::{self, ArtifactKind, ArtifactRef};
use domain::flow::{FlowFailure, FlowId, FlowOutcome, FlowReport};
use domain::job::JobId;
use domain::runner_protocol::ErrorCode;
use domain::{Actor, Context, Role};
use gateway::CommandMeta;
use gateway::auth::password;
use projections::SqlValue;
use runner::{Answer, Connection, Leased};
use store::testing::{TestStore, eventually};
use time::OffsetDateTime;
use uuid::Uuid;

use support::*;

const PASSWORD: &str = "a perfectly fine password";

/// An access token of a new account `name` with `role`.
async fn token(live: &Live, name: &str, role: Role) -> String {
    let username = Username::parse(name).unwrap();
    live.handler
        .handle::<Account>(
            &username.stream().unwrap(),
            AccountCommand::Create {
                account_id: Uuid::now_v7(),
                username: username.clone(),
                roles: [role].into(),
                password_hash: password::hash(PASSWORD.into()).await.unwrap(),
            },
            &Context::new(OffsetDateTime::now_utc(), Actor::System),
            &CommandMeta::default(),
        )
        .await
        .unwrap();
    live.app()
        .sessions
        .login(
            name,
            PASSWORD.into(),
            None,
            None,
            &CommandMeta::default(),
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap()
        .access_token
}

/// A GET on the gateway as `token`: (status, content type, body).
async fn get_as(live: &Live, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(live.addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    let mut body = raw[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, content_type, body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line + 2..line + 2 + size]);
        raw = &raw[line + 2 + size + 2..];
    }
}

/// A lease through the connection (so its heartbeats renew it).
async fn leased(connection: &mut Connection, flows: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connection.lease(1, flows).await.unwrap() {
            Leased::Granted(_) => return,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("no lease: {other:?}"),
        }
    }
}

/// The artifacts the view's log names for `flow`'s lines.
async fn logged_artifacts(live: &Live, job: JobId, flow: u64) -> Option<Vec<ArtifactRef>> {
    let rows = live
        .views
        .query(
            "SELECT artifacts FROM view_job_log WHERE job = $1 AND flow = $2 AND artifacts IS NOT NULL",
            vec![SqlValue::from(job.to_string()), SqlValue::from(flow as i64)],
        )
        .await
        .unwrap_or_default();
    let json: String = rows.first()?.get("artifacts").ok()?;
    serde_json::from_str(&json).ok()
}

mod cases {
    use super::*;

    pub async fn artifacts_go_up_in_parts_and_only_the_jobs_readers_get_them(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let runner = new_runner();
        let mut connection = Connection::open(&live.config(runner, &key)).await.unwrap();
        let job = live.running_job(1, 4, 0, 1).await;
        leased(&mut connection, 4).await;

        // A screenshot in three parts, and the console errors in one.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend((0..400_000u32).map(|i| (i % 251) as u8));
        let screenshot = connection
            .upload_artifact(job, FlowId(1), ArtifactKind::Screenshot, &png)
            .await
            .unwrap()
            .expect("the screenshot is stored");
        assert_eq!(screenshot.bytes, png.len() as u64);
        let errors = br#"["boom 42"]"#;
        let console = connection
            .upload_artifact(job, FlowId(1), ArtifactKind::ConsoleErrors, errors)
            .await
            .unwrap()
            .expect("the console errors are stored");

        // Not its flow, or not what the kind says: refused, saying why.
        let e = connection
            .upload_artifact(job, FlowId(7), ArtifactKind::Screenshot, &png)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (e.code, e.flows.clone()),
            (ErrorCode::FlowsNotHeld, vec![FlowId(7)]),
            "{e:?}"
        );
        let e = connection
            .upload_artifact(job, FlowId(1), ArtifactKind::Screenshot, b"GIF89a")
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadMessage);
        assert!(e.message.contains("not a PNG"), "{}", e.message);

        let FlowReport::Finished(mut failed) = succeeded(1) else {
            unreachable!()
        };
        failed.outcome = FlowOutcome::Failed {
            reason: FlowFailure::HttpStatus { status: 500 },
        };
        failed.artifacts = vec![screenshot, console];
        let answer = connection
            .report(Uuid::now_v7(), job, vec![FlowReport::Finished(failed)])
            .await
            .unwrap();
        assert!(
            matches!(answer, Answer::Accepted { recorded: 1, .. }),
            "{answer:?}"
        );
        eventually(
            "the failed flow's log line naming its artifacts",
            || async { logged_artifacts(&live, job, 1).await == Some(vec![screenshot, console]) },
        )
        .await;

        let ada = token(&live, OWNER, Role::User).await;
        let bob = token(&live, "bob", Role::User).await;
        let path = |blob: &domain::BlobHash| format!("/jobs/{job}/artifacts/{blob}");
        let (status, content_type, body) = get_as(&live, &path(&screenshot.blob), Some(&ada)).await;
        assert_eq!((status, content_type.as_str()), (200, "image/png"));
        assert_eq!(body, png, "the screenshot as uploaded");
        let (status, content_type, body) = get_as(&live, &path(&console.blob), Some(&ada)).await;
        assert_eq!(
            (status, content_type.as_str(), body.as_slice()),
            (200, "application/json", &errors[..])
        );
        // Another account's: as if there were no such job; nobody: log in first.
        let (status, _, body) = get_as(&live, &path(&screenshot.blob), Some(&bob)).await;
        assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
        assert_eq!(get_as(&live, &path(&screenshot.blob), None).await.0, 401);
        // A blob that is not an artifact of this job opens nothing, even to its owner.
        let plain = live.store.put_blob(b"{\"rows\":[]}").await.unwrap();
        let other = live
            .store
            .put_blob(&artifact::seal(
                JobId(Uuid::now_v7()),
                ArtifactKind::ConsoleErrors,
                b"[]",
            ))
            .await
            .unwrap();
        for blob in [plain, other] {
            assert_eq!(get_as(&live, &path(&blob), Some(&ada)).await.0, 404);
        }
        assert_eq!(
            get_as(&live, &format!("/jobs/{job}/artifacts/nope"), Some(&ada))
                .await
                .0,
            404
        );
        drop(connection);
        live.stop().await;
    }
}

store::each_backend!(artifacts_go_up_in_parts_and_only_the_jobs_readers_get_them);

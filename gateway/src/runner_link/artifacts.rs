//! Failed flows' artifacts as runners upload them over their socket
//! (protocol 3): one upload at a time per connection, its parts checked as
//! they come (in order, within the size limit, of a flow the runner holds),
//! the whole checked against its kind and stored as a blob sealed with its
//! job. The blob's hash goes back to the runner for the flow's report.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use domain::artifact::{self, ArtifactKind, ArtifactRef, MAX_ARTIFACT_BYTES};
use domain::flow::FlowId;
use domain::job::{JobAggregate, JobId};
use domain::runner_protocol::{ARTIFACTS_SINCE, ErrorCode, ErrorMessage, GatewayMessage};

use crate::runner_link::connection::{Link, refusal};
use crate::runner_link::work::Session;

/// An artifact whose parts are coming.
pub(crate) struct Upload {
    request: u64,
    job: JobId,
    flow: FlowId,
    kind: ArtifactKind,
    parts: u32,
    next: u32,
    bytes: Vec<u8>,
}

/// One `artifact` message: the part is taken (the last one stored), or
/// the upload refused and forgotten.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn part(
    link: &Link,
    session: &mut Session,
    request: u64,
    job: JobId,
    flow: FlowId,
    kind: ArtifactKind,
    part: u32,
    parts: u32,
    data: String,
) -> GatewayMessage {
    match take(link, session, request, job, flow, kind, part, parts, &data).await {
        Ok(artifact) => GatewayMessage::ArtifactStored {
            request,
            part,
            artifact,
        },
        Err(mut m) => {
            session.upload = None;
            m.request = Some(request);
            tracing::info!(runner = %session.runner(), %job, %flow, code = %m.code, message = %m.message, "artifact refused");
            GatewayMessage::Error(m)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn take(
    link: &Link,
    session: &mut Session,
    request: u64,
    job: JobId,
    flow: FlowId,
    kind: ArtifactKind,
    part: u32,
    parts: u32,
    data: &str,
) -> Result<Option<ArtifactRef>, ErrorMessage> {
    let protocol = session.peer().protocol;
    if protocol < ARTIFACTS_SINCE {
        return Err(refusal(
            ErrorCode::BadMessage,
            format!(
                "artifacts come with runner protocol {ARTIFACTS_SINCE}; this connection agreed on {protocol}"
            ),
        ));
    }
    let bytes = STANDARD.decode(data).map_err(|e| {
        refusal(
            ErrorCode::BadMessage,
            format!("artifact part {part}: `data` is not base64: {e}"),
        )
    })?;
    if part == 0 {
        holds(link, session, job, flow).await?;
        session.upload = Some(Upload {
            request,
            job,
            flow,
            kind,
            parts,
            next: 0,
            bytes: Vec::new(),
        });
    }
    let upload = match session.upload.as_mut() {
        Some(u)
            if (u.request, u.job, u.flow, u.kind, u.parts, u.next)
                == (request, job, flow, kind, parts, part) =>
        {
            u
        }
        _ => {
            return Err(refusal(
                ErrorCode::BadMessage,
                format!(
                    "artifact part {part} of {parts} is not the one awaited: send its parts in order from 0, one upload at a time"
                ),
            ));
        }
    };
    if upload.bytes.len() + bytes.len() > MAX_ARTIFACT_BYTES {
        return Err(refusal(
            ErrorCode::LimitExceeded,
            format!(
                "an artifact of more than {MAX_ARTIFACT_BYTES} bytes: send a smaller one or none"
            ),
        ));
    }
    upload.bytes.extend_from_slice(&bytes);
    upload.next += 1;
    if upload.next < parts {
        return Ok(None);
    }
    let Some(upload) = session.upload.take() else {
        return Ok(None);
    };
    if !kind.fits(&upload.bytes) {
        let what = match kind {
            ArtifactKind::Screenshot => "a PNG",
            ArtifactKind::ConsoleErrors => "a JSON array of strings",
            ArtifactKind::RequestLog => "a JSON array of requests",
        };
        return Err(refusal(
            ErrorCode::BadMessage,
            format!("the {kind} artifact is not {what}"),
        ));
    }
    let blob = link
        .app
        .store
        .put_blob(&artifact::seal(job, kind, &upload.bytes))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, %job, "cannot store an artifact");
            refusal(
                ErrorCode::Retry,
                "the gateway could not store the artifact now; upload it again from part 0",
            )
        })?;
    Ok(Some(ArtifactRef {
        kind,
        blob,
        bytes: upload.bytes.len() as u64,
    }))
}

/// Does the runner hold `flow` of `job` now?
async fn holds(
    link: &Link,
    session: &Session,
    job: JobId,
    flow: FlowId,
) -> Result<(), ErrorMessage> {
    let stream = job
        .stream()
        .map_err(|e| refusal(ErrorCode::BadMessage, e.to_string()))?;
    let (_, state) = link
        .app
        .handler
        .load::<JobAggregate>(&stream)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, %job, "cannot read a job for an artifact");
            refusal(
                ErrorCode::Retry,
                "the gateway cannot read the job now; upload the artifact again from part 0",
            )
        })?;
    let held = state.job.as_ref().is_some_and(|j| {
        j.leases
            .get(&session.runner())
            .is_some_and(|l| l.held.contains(flow))
    });
    if held {
        Ok(())
    } else {
        let mut m = refusal(
            ErrorCode::FlowsNotHeld,
            format!(
                "runner {} does not hold {flow} of job {job}: upload artifacts of flows it holds",
                session.runner()
            ),
        );
        m.flows = vec![flow];
        Err(m)
    }
}

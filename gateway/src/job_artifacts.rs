//! A failed flow's artifacts as downloads: `GET /jobs/{id}/artifacts/{blob}`
//! (the `url` of a log line's artifact), authorised like the job's log.
//! A blob is served only if it was sealed as an artifact of that very job
//! (see [`domain::artifact`]), so a hash alone opens nothing else in the
//! store. Runners upload artifacts over their socket (`runner_link`).

use axum::extract::{Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::BlobHash;
use domain::artifact;

use crate::http_auth::refused;
use crate::job_log::readable;
use crate::state::AppState;

/// `GET /jobs/{id}/artifacts/{blob}`.
pub async fn download(
    State(app): State<AppState>,
    Path((id, blob)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let job = match readable(&app, &headers, &id).await {
        Ok(job) => job,
        Err(refusal) => return refusal,
    };
    let missing = || {
        refused(
            StatusCode::NOT_FOUND,
            format!(
                "job {job} has no artifact {blob}: give the `blob` of one of its log lines' artifacts"
            ),
        )
    };
    let Ok(hash) = blob.parse::<BlobHash>() else {
        return missing();
    };
    let bytes = match app.store.get_blob(&hash).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return missing(),
        Err(e) => {
            tracing::error!(error = %e, %job, "cannot read an artifact");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "the artifact cannot be read now; try again shortly",
            );
        }
    };
    let Some((of, kind, payload)) = artifact::open(&bytes) else {
        return missing();
    };
    if of != job {
        return missing();
    }
    let name = format!(
        "job-{job}-{kind}-{}.{}",
        &hash.to_string()[..12],
        kind.extension()
    );
    (
        [
            (CONTENT_TYPE, kind.content_type().to_owned()),
            (X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (CACHE_CONTROL, "private, max-age=3600".to_owned()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        payload.to_vec(),
    )
        .into_response()
}

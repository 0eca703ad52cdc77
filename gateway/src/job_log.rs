//! A job's log as a download: `GET /jobs/{id}/log.jsonl` and
//! `GET /jobs/{id}/log.csv`, streamed page by page from the jobs view, so a
//! job of any size is exported in bounded memory. Authorised like the job:
//! `Authorization: Bearer <accessToken>` of its owner, an admin or an
//! auditor.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use time::format_description::well_known::Rfc3339;

use crate::graphql::job::{JobLogLine, LogCursor, line_from, log_rows, parse_job_id, readable_job};
use crate::http_auth::{bearer_principal, refused};
use crate::state::AppState;
use domain::job::JobId;

/// Lines read from the view per page of the download.
const PAGE: i64 = 1000;

/// The download's formats.
#[derive(Debug, Clone, Copy)]
enum Format {
    Jsonl,
    Csv,
}

/// `GET /jobs/{id}/{file}` with `file` one of `log.jsonl`, `log.csv`.
pub async fn download(
    State(app): State<AppState>,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let format = match file.as_str() {
        "log.jsonl" => Format::Jsonl,
        "log.csv" => Format::Csv,
        _ => {
            return refused(StatusCode::NOT_FOUND, "a job offers log.jsonl and log.csv");
        }
    };
    let job = match readable(&app, &headers, &id).await {
        Ok(job) => job,
        Err(refusal) => return refusal,
    };
    let (content_type, extension) = match format {
        Format::Jsonl => ("application/x-ndjson", "jsonl"),
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
    };
    let header = match format {
        Format::Jsonl => None,
        Format::Csv => Some("at,level,flow,runner,message\n".to_owned()),
    };
    let job_id = job.to_string();
    // State: the cursor to read after; `None` once the log is exhausted.
    let pages = stream::unfold(
        (app, Some(LogCursor::START), header),
        move |(app, cursor, header)| {
            let job_id = job_id.clone();
            async move {
                if let Some(header) = header {
                    return Some((Ok(header), (app, cursor, None)));
                }
                let after = cursor?;
                let rows = match log_rows(&app, &job_id, after, PAGE).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::error!(error = %e, job = %job_id, "log download cut short");
                        return Some((
                            Err(std::io::Error::other(e.to_string())),
                            (app, None, None),
                        ));
                    }
                };
                let mut body = String::new();
                let mut last = None;
                for row in &rows {
                    let Ok((at, line)) = line_from(row) else {
                        continue;
                    };
                    last = Some(at);
                    body.push_str(&render(format, &line));
                }
                let next = if rows.len() as i64 == PAGE {
                    last
                } else {
                    None
                };
                if body.is_empty() && next.is_none() {
                    return None;
                }
                Some((Ok::<_, std::io::Error>(body), (app, next, None)))
            }
        },
    );
    (
        [
            (CONTENT_TYPE, content_type.to_owned()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"job-{id}-log.{extension}\""),
            ),
        ],
        Body::from_stream(pages),
    )
        .into_response()
}

/// The job `id` if the request's bearer may read it; otherwise the
/// refusal to answer with (401 without a valid token, 404 for a job that
/// is not there or not theirs, so ids of others' jobs reveal nothing).
pub(crate) async fn readable(
    app: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<JobId, Response> {
    let principal = bearer_principal(app, headers).await?;
    let Ok(job) = parse_job_id("id", id) else {
        return Err(refused(
            StatusCode::NOT_FOUND,
            format!("there is no job {id}"),
        ));
    };
    readable_job(app, &principal, job)
        .await
        .map_err(|e| refused(StatusCode::NOT_FOUND, e.message))?;
    Ok(job)
}

fn render(format: Format, line: &JobLogLine) -> String {
    let at = line.at.format(&Rfc3339).unwrap_or_default();
    match format {
        Format::Jsonl => {
            let mut out = serde_json::json!({
                "at": at,
                "level": line.level,
                "flow": line.flow,
                "runner": line.runner.as_ref().map(|r| r.as_str()),
                "message": line.message,
            });
            if !line.artifacts.is_empty() {
                out["artifacts"] = line
                    .artifacts
                    .iter()
                    .map(|a| serde_json::json!({ "kind": a.kind, "blob": a.blob, "bytes": a.bytes, "url": a.url }))
                    .collect();
            }
            let mut out = out.to_string();
            out.push('\n');
            out
        }
        Format::Csv => format!(
            "{},{},{},{},{}\n",
            at,
            line.level,
            line.flow.map(|f| f.to_string()).unwrap_or_default(),
            line.runner.as_ref().map(|r| r.as_str()).unwrap_or_default(),
            csv_field(&line.message)
        ),
    }
}

/// A CSV field, quoted (quotes doubled) when it holds a comma, a quote or
/// a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(
            csv_field("flow 3 failed: HTTP 503"),
            "flow 3 failed: HTTP 503"
        );
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}

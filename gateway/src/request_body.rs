//! How large a GraphQL request over HTTP may be. Every request gets
//! [`MAX_BODY_BYTES`]; only a logged-in client's `uploadChunk` (a chunk's
//! bytes in base64) may go up to [`MAX_UPLOAD_BODY_BYTES`], and only
//! [`MAX_LARGE_BODIES`] such bodies are buffered at once, so large bodies
//! cost at most about 90 MiB of memory however many clients send them.
//! WebSocket messages keep the general limit (`ws_limits`).

use std::sync::Arc;

use async_graphql::parser::types::{OperationType, Selection};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::upload::MAX_CHUNK_BYTES;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::graphql::error::Code;

/// Largest request body accepted, but for chunk uploads.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Largest body of an `uploadChunk` request: the largest chunk in base64,
/// and room for the query and the JSON around it.
pub const MAX_UPLOAD_BODY_BYTES: usize = (MAX_CHUNK_BYTES as usize).div_ceil(3) * 4 + 64 * 1024;

/// Bodies over [`MAX_BODY_BYTES`] buffered at once, gateway-wide.
pub const MAX_LARGE_BODIES: usize = 16;

/// The gateway's bound on large bodies in flight.
pub fn large_bodies() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_LARGE_BODIES))
}

/// A body read whole, and the permit it holds while it is handled when it
/// is a large one.
pub struct Read {
    pub bytes: Bytes,
    pub large: Option<OwnedSemaphorePermit>,
}

/// Reads `body`, allowing a large one only when `logged_in` and a permit
/// is free. The answer to send instead, when it is too large or unreadable.
pub async fn read(body: Body, logged_in: bool, large: &Arc<Semaphore>) -> Result<Read, Response> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut limit = MAX_BODY_BYTES;
    let mut permit = None;
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                Code::Validation,
                format!("the request body could not be read: {e}"),
            )
        })?;
        if buf.len() + frame.len() > limit {
            if permit.is_some() || !logged_in {
                return Err(too_large());
            }
            permit = Some(large.clone().try_acquire_owned().map_err(|_| busy())?);
            limit = MAX_UPLOAD_BODY_BYTES;
            if buf.len() + frame.len() > limit {
                return Err(too_large());
            }
        }
        buf.extend_from_slice(&frame);
    }
    Ok(Read {
        bytes: buf.into(),
        large: permit,
    })
}

/// May this request have a body this large? A large body must hold
/// nothing but `uploadChunk` mutations; [`too_large`] says so otherwise.
pub fn fits(read: &Read, request: &async_graphql::Request) -> bool {
    read.bytes.len() <= MAX_BODY_BYTES || only_upload_chunks(&request.query)
}

/// Does `query` select only `uploadChunk` in mutations, without fragments?
fn only_upload_chunks(query: &str) -> bool {
    let Ok(doc) = async_graphql::parser::parse_query(query) else {
        return false;
    };
    doc.fragments.is_empty()
        && doc.operations.iter().all(|(_, op)| {
            op.node.ty == OperationType::Mutation
                && op.node.selection_set.node.items.iter().all(|item| {
                    matches!(&item.node, Selection::Field(f) if f.node.name.node == "uploadChunk")
                })
        })
}

/// 413, saying which limits hold.
pub fn too_large() -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::Validation,
        format!(
            "the request body is over {MAX_BODY_BYTES} bytes; only uploadChunk, sent by a logged-in client, may send up to {MAX_UPLOAD_BODY_BYTES}"
        ),
    )
}

fn busy() -> Response {
    let mut response = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        Code::RateLimited,
        format!(
            "the gateway is receiving its limit of {MAX_LARGE_BODIES} chunks at once; retry after 1 s"
        ),
    );
    response
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, 1.into());
    response
}

fn refuse(status: StatusCode, code: Code, message: String) -> Response {
    let body =
        json!({ "errors": [{ "message": message, "extensions": { "code": code.as_str() } }] });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_may_hold_only_upload_chunk_mutations() {
        assert!(only_upload_chunks(
            "mutation { a: uploadChunk(uploadId: \"x\", index: 0, data: \"\") { id } b: uploadChunk(uploadId: \"x\", index: 1, data: \"\") { id } }"
        ));
        for other in [
            "{ me { username } }",
            "mutation { uploadChunk(uploadId: \"x\", index: 0, data: \"\") { id } login(username: \"a\", password: \"b\") { accessToken } }",
            "mutation { ...F } fragment F on Mutation { uploadChunk(uploadId: \"x\", index: 0, data: \"\") { id } }",
            "mutation { uploadChunk(",
        ] {
            assert!(!only_upload_chunks(other), "{other}");
        }
    }

    async fn read_of(len: usize, logged_in: bool, large: &Arc<Semaphore>) -> Result<Read, u16> {
        read(Body::from(vec![b'x'; len]), logged_in, large)
            .await
            .map_err(|r| r.status().as_u16())
    }

    #[tokio::test]
    async fn only_a_logged_in_client_sends_a_large_body_and_only_so_many_at_once() {
        let large = Arc::new(Semaphore::new(1));
        assert!(
            read_of(MAX_BODY_BYTES, false, &large)
                .await
                .unwrap()
                .large
                .is_none()
        );
        assert_eq!(
            read_of(MAX_BODY_BYTES + 1, false, &large).await.err(),
            Some(413)
        );
        let held = read_of(MAX_BODY_BYTES + 1, true, &large).await.unwrap();
        assert!(held.large.is_some());
        assert_eq!(
            read_of(MAX_BODY_BYTES + 1, true, &large).await.err(),
            Some(503)
        );
        drop(held);
        assert!(read_of(MAX_UPLOAD_BODY_BYTES, true, &large).await.is_ok());
        assert_eq!(
            read_of(MAX_UPLOAD_BODY_BYTES + 1, true, &large).await.err(),
            Some(413)
        );
    }
}

//! Who is asking, for the plain HTTP downloads beside GraphQL: the
//! `Authorization: Bearer <accessToken>` of a live session, or a refusal
//! that says what to do.

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::sessions::Principal;
use crate::state::AppState;

/// A plain-text refusal.
pub fn refused(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

/// The session's principal, or the 401 to answer with.
pub async fn bearer_principal(app: &AppState, headers: &HeaderMap) -> Result<Principal, Response> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "log in first: send `Authorization: Bearer <accessToken>`",
        ));
    };
    app.sessions
        .authenticate(token, time::OffsetDateTime::now_utc())
        .await
        .map_err(|e| refused(StatusCode::UNAUTHORIZED, e.to_string()))
}

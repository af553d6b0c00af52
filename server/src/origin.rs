//! Cross-site request refusal: a browser's state-changing request from a
//! foreign origin gets 403 `forbidden_origin`. `/ws` has its own, stricter
//! check (a missing Origin is refused there).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::AppState;

/// Whether the request's `Origin` header is present and exactly allowed.
pub fn has_allowed_origin(state: &AppState, headers: &HeaderMap) -> bool {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| state.settings.is_allowed_origin(&origin.to_ascii_lowercase()))
}

pub async fn refuse_foreign_writes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let changes_state = matches!(*request.method(), Method::POST | Method::PUT | Method::DELETE | Method::PATCH);
    let has_origin = request.headers().contains_key(header::ORIGIN);
    if changes_state && has_origin && !has_allowed_origin(&state, request.headers()) {
        return ApiError::ForbiddenOrigin.into_response();
    }
    next.run(request).await
}

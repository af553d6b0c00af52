//! Admin endpoints: the live sockets, role changes, forced logout.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use tether_protocol::{LiveSocketsResponse, SetRoleRequest, UnbindReason, UserResponse};

use crate::auth::{roles, store, AdminSession};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/sockets", get(live_sockets))
        .route("/admin/users/{id}/sessions", delete(revoke_sessions))
        .route("/admin/users/{id}/role", put(set_role))
}

async fn live_sockets(State(state): State<AppState>, _admin: AdminSession) -> Json<LiveSocketsResponse> {
    Json(LiveSocketsResponse { sockets: state.bus.sockets().await })
}

/// A forced logout everywhere: every session revoked, every live socket unbound.
async fn revoke_sessions(
    State(state): State<AppState>,
    AdminSession(admin): AdminSession,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    store::user_by_id(&state.db, &user_id).await?.ok_or(ApiError::NotFound)?;
    let sessions = store::revoke_user_sessions(&state.db, &user_id).await?;
    for (session_id, expires_at) in &sessions {
        crate::auth::revoke_everywhere(&state, session_id, *expires_at, UnbindReason::Revoked).await;
    }
    tracing::info!(admin_id = %admin.user.id, %user_id, sessions = sessions.len(), "sessions revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Stores a role; the user's live sockets get `bound` with it at once.
async fn set_role(
    State(state): State<AppState>,
    AdminSession(admin): AdminSession,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<SetRoleRequest>,
) -> ApiResult<Json<UserResponse>> {
    let user = roles::set_role(&state, &user_id, body.role).await?.ok_or(ApiError::NotFound)?;
    tracing::info!(admin_id = %admin.user.id, %user_id, role = user.role.as_str(), "role changed by admin");
    Ok(Json(UserResponse { user }))
}

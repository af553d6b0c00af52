//! The one path by which a user's stored role changes while the server runs.

use tether_protocol::{Role, User};

use super::store;
use crate::bus::Delivery;
use crate::error::ApiResult;
use crate::AppState;

/// Stores a user's role and makes every live socket of theirs follow at once:
/// each is rebound to the stored user and receives `bound`, so the role counts
/// on every socket (../shared/PROTOCOL.md "Users and sessions"). Every caller
/// that changes a role (the admin's `PUT /api/admin/users/{id}/role`, the
/// `TETHER_ADMIN_EMAILS` promotion at login) goes through here.
///
/// `Ok(None)`: no such user.
pub async fn set_role(state: &AppState, user_id: &str, role: Role) -> ApiResult<Option<User>> {
    let Some(user) = store::set_role(&state.db, user_id, role).await? else {
        return Ok(None);
    };
    // The bus drops cached sessions of the old user on every node (this one first).
    if let Err(e) = state.bus.publish(Delivery::UpdateUser { user: user.clone() }).await {
        tracing::warn!(error = %e, "role change not sent to the other nodes");
    }
    tracing::info!(user_id = %user.id, role = user.role.as_str(), "role stored");
    Ok(Some(user))
}

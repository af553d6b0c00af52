//! Accounts and sessions: `/api/auth/*`, the session cookie and its extractors.

pub mod password;
pub mod roles;
pub mod sessions;
pub mod store;
pub mod throttle;
pub mod validate;
pub mod token;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use rand::Rng;
use tether_protocol::{
    AuthResponse, LoginRequest, RegisterRequest, Role, TicketResponse, UnbindReason, User, UserResponse,
    MIN_PASSWORD_CHARS,
};

use crate::db::now_unix;
use crate::error::{ApiError, ApiResult};
use crate::events::{publish, ModelEvent};
use crate::extract::{ApiJson, ClientIp};
use crate::bus::Delivery;
use crate::AppState;
use store::Session;
use validate::{valid_email, valid_name, MAX_NAME_CHARS};
use token::{Claims, ISSUER};

pub const COOKIE_NAME: &str = "tether_session";
/// Socket tickets live this long, in seconds.
const TICKET_TTL_SECS: i64 = 60;
/// Bounds the hashing work one request can ask for.
const MAX_PASSWORD_CHARS: usize = 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
        .route("/auth/ticket", post(ticket))
}

/// The live session named by the request's cookie, if any: a token that is
/// badly signed, expired, or whose session is revoked counts as absent.
pub async fn session_from_headers(state: &AppState, headers: &HeaderMap) -> ApiResult<Option<Session>> {
    let jar = CookieJar::from_headers(headers);
    let Some(claims) = jar.get(COOKIE_NAME).and_then(|c| state.keys.verify(c.value())) else {
        return Ok(None);
    };
    let session = state.sessions.live(&state.db, &claims.sid).await?;
    Ok(session.filter(|s| s.user.id == claims.sub))
}

/// The caller's session; 401 `not_authenticated` without one.
pub struct AuthSession(pub Session);

impl FromRequestParts<AppState> for AuthSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        session_from_headers(state, &parts.headers).await?.map(AuthSession).ok_or(ApiError::NotAuthenticated)
    }
}

/// An admin's session; 401 without a session, 403 `forbidden` for a non-admin.
pub struct AdminSession(pub Session);

impl FromRequestParts<AppState> for AdminSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let AuthSession(session) = AuthSession::from_request_parts(parts, state).await?;
        match session.user.role {
            Role::Admin => Ok(AdminSession(session)),
            Role::User => Err(ApiError::Forbidden),
        }
    }
}

fn session_cookie(state: &AppState, token: String, max_age_secs: i64) -> Cookie<'static> {
    Cookie::build((COOKIE_NAME, token))
        .http_only(true)
        .path("/")
        .same_site(SameSite::Lax)
        .secure(state.settings.cookie_secure)
        .max_age(time::Duration::seconds(max_age_secs))
        .build()
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn issue_ticket(state: &AppState, session_id: &str) -> ApiResult<String> {
    let ticket = random_token();
    store::insert_ticket(&state.db, &ticket, session_id, now_unix() + TICKET_TTL_SECS).await?;
    Ok(ticket)
}

/// Creates a session for a user: the cookie carrying its JWT, and a socket ticket.
async fn start_session(state: &AppState, jar: CookieJar, user: User) -> ApiResult<(CookieJar, AuthResponse)> {
    let iat = now_unix();
    let ttl = state.settings.token_ttl.as_secs() as i64;
    let exp = iat + ttl;
    let session_id = store::insert_session(&state.db, &user.id, exp).await?;
    let token = state.keys.sign(&Claims {
        sub: user.id.clone(),
        sid: session_id.clone(),
        name: user.name.clone(),
        role: user.role,
        iat,
        exp,
        iss: ISSUER.into(),
    });
    let ticket = issue_ticket(state, &session_id).await?;
    Ok((jar.add(session_cookie(state, token, ttl)), AuthResponse { user, ticket }))
}

/// Whether `email` (trimmed) is a plausible address of at most 254 bytes.
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    jar: CookieJar,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> ApiResult<impl IntoResponse> {
    state.rate_limits.register(ip).await?;
    let email = body.email.trim();
    let name = body.name.trim();
    if !valid_email(email) {
        return Err(ApiError::invalid("invalid_email", "enter an email address like name@example.com"));
    }
    if !valid_name(name) {
        return Err(ApiError::invalid("invalid_name", format!("a name has 1 to {MAX_NAME_CHARS} characters")));
    }
    let password_chars = body.password.chars().count();
    if password_chars < MIN_PASSWORD_CHARS {
        return Err(ApiError::invalid("weak_password", format!("a password has at least {MIN_PASSWORD_CHARS} characters")));
    }
    if password_chars > MAX_PASSWORD_CHARS {
        return Err(ApiError::invalid("weak_password", format!("a password has at most {MAX_PASSWORD_CHARS} characters")));
    }
    let role = if state.settings.is_admin_email(email) { Role::Admin } else { Role::User };
    let hash = password::hash(body.password).await?;
    let user = match store::insert_user(&state.db, email, name, &hash, role).await? {
        store::Inserted::Created(user) => user,
        store::Inserted::EmailTaken => return Err(ApiError::EmailTaken),
    };
    tracing::info!(user_id = %user.id, "user registered");
    publish(&state.bus, ModelEvent::UserRegistered(user.clone())).await;
    let (jar, body) = start_session(&state, jar, user).await?;
    Ok((StatusCode::CREATED, jar, Json(body)))
}

async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    jar: CookieJar,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<impl IntoResponse> {
    let email = body.email.trim();
    state.throttle.attempt(ip, email).await?.map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;
    if throttle::throttle_key(email).is_none() {
        // No account can have this email (registration checks the same
        // syntax), and saying so early reveals nothing: skip the hashing.
        return Err(ApiError::BadCredentials);
    }
    let credentials = store::credentials_by_email(&state.db, email).await?;
    // An unknown email still costs one verification, so timing tells nothing.
    let stored = credentials.as_ref().map_or_else(|| state.decoy_hash.to_string(), |c| c.password_hash.clone());
    let verified = password::verify(body.password, stored).await?;
    let Some(credentials) = credentials.filter(|_| verified) else {
        state.throttle.failed(ip, email).await?;
        return Err(ApiError::BadCredentials);
    };
    state.throttle.succeeded(email).await?;
    let mut user = credentials.user;
    // Configuration wins over a stored demotion.
    if user.role != Role::Admin && state.settings.is_admin_email(&user.email) {
        user = roles::set_role(&state, &user.id, Role::Admin).await?.ok_or(ApiError::BadCredentials)?;
    }
    let (jar, body) = start_session(&state, jar, user).await?;
    Ok((jar, Json(body)))
}

async fn logout(State(state): State<AppState>, caller: CallerSockets, jar: CookieJar) -> ApiResult<impl IntoResponse> {
    if let Some(session) = caller.session() {
        store::revoke_session(&state.db, &session.id).await?;
        caller.unbind(UnbindReason::Logout).await;
        tracing::info!(user_id = %session.user.id, "session logged out");
    }
    let expired = session_cookie(&state, String::new(), 0).into_owned();
    Ok((StatusCode::NO_CONTENT, jar.add(expired)))
}

async fn me(AuthSession(session): AuthSession) -> Json<UserResponse> {
    Json(UserResponse { user: session.user })
}

async fn ticket(State(state): State<AppState>, AuthSession(session): AuthSession) -> ApiResult<Json<TicketResponse>> {
    Ok(Json(TicketResponse { ticket: issue_ticket(&state, &session.id).await? }))
}

/// The caller's own live sockets, for HTTP handlers: the sockets bound
/// through the session of the request's cookie (none for a guest).
pub struct CallerSockets {
    state: AppState,
    session: Option<Session>,
}

impl CallerSockets {
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Ends the caller's session on its sockets, on every node: each gets
    /// `unbound` with `reason`.
    pub async fn unbind(&self, reason: UnbindReason) {
        if let Some(session) = &self.session {
            revoke_everywhere(&self.state, &session.id, session.expires_at, reason).await;
        }
    }
}

impl FromRequestParts<AppState> for CallerSockets {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let session = session_from_headers(state, &parts.headers).await?;
        Ok(CallerSockets { state: state.clone(), session })
    }
}


/// A session was revoked in the database: every node stops trusting it and
/// unbinds its sockets. The revocation is stored already, so a bus that
/// cannot reach the other nodes is logged (they reread sessions within
/// `session-recheck-secs`), not an error.
/// Compares every session bound to a socket on this node with the database
/// and applies what this node missed (its bus stopped listening for a while):
/// a session no longer live is unbound (`expired` past its `exp`, else
/// `logout`: the table does not say who revoked it), a changed user is
/// rebound (`bound`). Errors (the database is down again) are logged; the
/// next reconnect rechecks.
pub async fn recheck_bound_sessions(db: &crate::db::Db, registry: &crate::registry::Registry) {
    for (session_id, user, expires_at) in registry.bound_sessions() {
        match store::live_session(db, &session_id).await {
            Ok(Some(live)) if live.user != user => {
                registry.update_user(&live.user);
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let reason = if expires_at <= now_unix() { UnbindReason::Expired } else { UnbindReason::Logout };
                registry.revoke_session(&session_id, expires_at, reason);
            }
            Err(e) => return tracing::warn!(error = %e, "could not recheck the bound sessions"),
        }
    }
}

pub async fn revoke_everywhere(state: &AppState, session_id: &str, expires_at: i64, reason: UnbindReason) {
    let delivery = Delivery::RevokeSession { session_id: session_id.into(), expires_at, reason };
    if let Err(e) = state.bus.publish(delivery).await {
        tracing::warn!(error = %e, "session revocation not sent to the other nodes");
    }
}

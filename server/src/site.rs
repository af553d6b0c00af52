//! The Leptos pages, rendered with the caller's user so the first paint is
//! already logged in (no flash of "guest" before hydration).

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use leptos_axum::{generate_route_list, LeptosRoutes};

use crate::auth::session_from_headers;
use crate::AppState;

pub fn router(state: &AppState) -> Router<AppState> {
    let routes = generate_route_list(app::App);
    let options = state.leptos.clone();
    Router::new()
        .leptos_routes(state, routes, move || app::shell(options.clone()))
        .route_layer(middleware::from_fn_with_state(state.clone(), attach_user))
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(app::shell))
}

/// Puts the cookie's user on the request, where the app's shell reads it.
async fn attach_user(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let user = match session_from_headers(&state, request.headers()).await {
        Ok(session) => session.map(|s| s.user),
        Err(error) => {
            tracing::error!(%error, "cannot read the session for a page");
            None
        }
    };
    request.extensions_mut().insert(app::InitialUser(user));
    next.run(request).await
}

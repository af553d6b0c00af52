//! The header (brand, navigation, connection badge, user menu) and the event log.

use leptos::prelude::*;
use leptos_router::components::A;
use tether_protocol::Role;

use crate::identity::use_auth;
use crate::session;
use crate::socket::{use_socket, Status};

#[component]
pub fn Header() -> impl IntoView {
    let auth = use_auth();
    let is_admin = move || auth.user.with(|u| u.as_ref().is_some_and(|u| u.role == Role::Admin));
    view! {
        <header class="site-header">
            <A href="/" attr:class="brand">"Tether"</A>
            <nav>
                <A href="/rooms">"Rooms"</A>
                <Show when=is_admin>
                    <A href="/admin" attr:data-testid="admin-link">"Admin"</A>
                </Show>
            </nav>
            <ConnectionBadge/>
            <UserMenu/>
        </header>
    }
}

#[component]
fn ConnectionBadge() -> impl IntoView {
    let socket = use_socket();
    let label = move || match socket.status.get() {
        Status::Connecting => "connecting…".to_string(),
        Status::Online => match (socket.user.get(), socket.guest_name.get()) {
            (Some(user), _) => format!("online as {}", user.name),
            (None, Some(guest)) => format!("online as guest {guest}"),
            (None, None) => "online".to_string(),
        },
        Status::Offline { retry_in_secs } => format!("offline (retrying in {retry_in_secs} s)"),
        Status::Stopped { code, reason } => format!("disconnected ({code}): {reason}"),
    };
    let state = move || match socket.status.get() {
        Status::Connecting => "connecting",
        Status::Online => "online",
        Status::Offline { .. } => "offline",
        Status::Stopped { .. } => "stopped",
    };
    view! {
        <div class="badge" data-state=state>
            <span data-testid="connection-badge">{label}</span>
            <code class="socket-id" data-testid="socket-id">{move || socket.socket_id.get().unwrap_or_default()}</code>
        </div>
    }
}

#[component]
fn UserMenu() -> impl IntoView {
    let auth = use_auth();
    let socket = use_socket();
    let busy = RwSignal::new(false);
    let log_out = move |_| {
        busy.set(true);
        leptos::task::spawn_local(async move {
            session::logout(socket).await;
            busy.set(false);
        });
    };
    view! {
        <div class="user-menu">
            {move || match auth.user.get() {
                Some(user) => view! {
                    <span class="user-name" data-testid="user-name">{user.name}</span>
                    <button class="secondary" on:click=log_out disabled=busy>"Log out"</button>
                }.into_any(),
                None => view! {
                    <span class="user-name guest" data-testid="user-name">"Guest"</span>
                    <A href="/login">"Log in"</A>
                    <A href="/register">"Register"</A>
                }.into_any(),
            }}
        </div>
    }
}

/// Everything the socket went through, as the Socket.IO client's listeners report it.
#[component]
pub fn EventLog() -> impl IntoView {
    let socket = use_socket();
    let open = RwSignal::new(true);
    view! {
        <aside class="event-log" class:closed=move || !open.get()>
            <h2>
                "Connection log "
                <button class="link" data-testid="toggle-log" on:click=move |_| open.update(|o| *o = !*o)>
                    {move || if open.get() { "hide" } else { "show" }}
                </button>
            </h2>
            <Show when=move || open.get()>
                <ol data-testid="event-log">
                    {move || socket.log.get().into_iter().rev().map(|entry| view! {
                        <li data-kind=entry.kind>
                            <time>{entry.at}</time>" "<strong>{entry.kind}</strong>" "{entry.detail}
                        </li>
                    }).collect_view()}
                </ol>
            </Show>
        </aside>
    }
}

//! Live sockets, role control and forced logout, for admins.

use leptos::prelude::*;
use tether_protocol::{LiveSocket, LiveSocketsResponse, Role, SetRoleRequest, UserResponse};

use crate::api;
use crate::identity::use_auth;
use crate::socket::use_socket;

#[component]
pub fn AdminPage() -> impl IntoView {
    let auth = use_auth();
    let socket = use_socket();
    let sockets = RwSignal::new(Vec::<LiveSocket>::new());
    let error = RwSignal::new(None::<String>);
    let is_admin = move || auth.user.with(|u| u.as_ref().is_some_and(|u| u.role == Role::Admin));

    let reload = move || {
        leptos::task::spawn_local(async move {
            match api::get::<LiveSocketsResponse>("/api/admin/sockets").await {
                Ok(list) => {
                    sockets.set(list.sockets);
                    error.set(None);
                }
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    // Reload whenever the server reports sockets coming and going.
    Effect::new(move |_| {
        socket.sockets_changed.track();
        if is_admin() {
            reload();
        }
    });

    let set_role = move |user_id: String, role: Role| {
        leptos::task::spawn_local(async move {
            let url = format!("/api/admin/users/{user_id}/role");
            match api::send::<_, UserResponse>("PUT", &url, Some(&SetRoleRequest { role })).await {
                Ok(_) => reload(),
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    let revoke = move |user_id: String| {
        leptos::task::spawn_local(async move {
            match api::call::<()>("DELETE", &format!("/api/admin/users/{user_id}/sessions")).await {
                Ok(()) => reload(),
                Err(e) => error.set(Some(e.message)),
            }
        });
    };

    view! {
        <section class="card">
            <h1>"Admin"</h1>
            <Show when=is_admin fallback=|| view! { <p class="notice">"Admins only."</p> }>
                <Show when=move || error.get().is_some()>
                    <p class="form-error" role="alert">{move || error.get().unwrap_or_default()}</p>
                </Show>
                <h2>"Live sockets"</h2>
                <table data-testid="sockets-table">
                    <thead><tr><th>"Socket"</th><th>"User"</th><th>"Role"</th><th>"Rooms"</th><th>"Connected"</th><th></th></tr></thead>
                    <tbody>
                        {move || sockets.get().into_iter().map(|live| {
                            let user = live.user.clone();
                            let who = match (&live.user, &live.guest_name) {
                                (Some(u), _) => format!("{} <{}>", u.name, u.email),
                                (None, Some(g)) => format!("guest {g}"),
                                (None, None) => String::new(),
                            };
                            view! {
                                <tr data-testid="socket-row">
                                    <td><code>{live.socket_id.clone()}</code></td>
                                    <td>{who}</td>
                                    <td>{user.clone().map(|u| {
                                        let id = u.id.clone();
                                        view! {
                                            <select aria-label=format!("Role of {}", u.email) on:change=move |ev| {
                                                let role = Role::parse(&event_target_value(&ev)).unwrap_or(Role::User);
                                                set_role(id.clone(), role);
                                            }>
                                                <option value="user" selected=u.role == Role::User>"user"</option>
                                                <option value="admin" selected=u.role == Role::Admin>"admin"</option>
                                            </select>
                                        }
                                    })}</td>
                                    <td>{live.rooms.join(", ")}</td>
                                    <td>{live.connected_at.get(11..19).unwrap_or_default().to_string()}</td>
                                    <td>{user.map(|u| {
                                        let id = u.id.clone();
                                        view! {
                                            <button class="secondary" aria-label=format!("Revoke sessions of {}", u.email)
                                                on:click=move |_| revoke(id.clone())>"Revoke sessions"</button>
                                        }
                                    })}</td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
                <h2>"Registrations"</h2>
                <ul data-testid="registrations">
                    {move || socket.registrations.get().into_iter().rev().map(|u| view! {
                        <li>{u.name} " <" {u.email} ">"</li>
                    }).collect_view()}
                </ul>
            </Show>
        </section>
    }
}

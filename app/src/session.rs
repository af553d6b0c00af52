//! The logged-in user of this tab, and how login and logout reach the socket
//! and the other tabs.

use leptos::prelude::*;
use tether_protocol::{AuthResponse, TicketResponse};

use crate::api;
use crate::socket::Socket;

/// Tabs of one browser tell each other about a login over this channel.
#[cfg(feature = "hydrate")]
const CHANNEL: &str = "tether-auth";

#[cfg(feature = "hydrate")]
thread_local! {
    /// One channel object per tab, for posting and listening alike: a post
    /// reaches every other object on the channel, never the one that sent it.
    static TAB_CHANNEL: Option<web_sys::BroadcastChannel> = web_sys::BroadcastChannel::new(CHANNEL).ok();
}

/// After `POST /api/auth/login` or `register`: binds the open socket with the
/// ticket (no reconnect) and tells the other tabs.
pub async fn complete_login(socket: Socket, response: AuthResponse) {
    socket.auth.user.set(Some(response.user));
    // A socket closed for want of a user (guests off) reconnects: the cookie binds it now.
    if matches!(socket.status.get_untracked(), crate::socket::Status::Stopped { .. }) {
        socket.start();
    } else if let Err(error) = socket.login(response.ticket).await {
        socket.note("error", format!("login frame: {}", error.message));
    }
    announce_login();
}

/// Unbinds this socket, then ends the session (the server unbinds the
/// session's sockets in other tabs with `unbound` reason `logout`).
pub async fn logout(socket: Socket) {
    if let Err(error) = socket.logout().await {
        socket.note("error", format!("logout frame: {}", error.message));
    }
    let _ = api::call::<()>("POST", "/api/auth/logout").await;
    socket.auth.user.set(None);
}

fn announce_login() {
    #[cfg(feature = "hydrate")]
    TAB_CHANNEL.with(|channel| {
        if let Some(channel) = channel {
            let _ = channel.post_message(&"login".into());
        }
    });
}

/// When another tab logs in, this tab fetches a ticket for the shared
/// cookie's session and binds its own socket with it.
pub fn follow_other_tabs(socket: Socket) {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::closure::Closure;
        use wasm_bindgen::JsCast;
        let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |_: web_sys::MessageEvent| {
            leptos::task::spawn_local(async move {
                match api::call::<TicketResponse>("POST", "/api/auth/ticket").await {
                    Ok(TicketResponse { ticket }) => {
                        if let Ok(user) = socket.login(ticket).await {
                            socket.auth.user.set(Some(user));
                        }
                    }
                    Err(error) => socket.note("error", format!("ticket: {}", error.message)),
                }
            });
        });
        TAB_CHANNEL.with(|channel| {
            if let Some(channel) = channel {
                channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            }
        });
        // The handler lives as long as the page.
        on_message.forget();
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (socket, std::marker::PhantomData::<TicketResponse>);
}

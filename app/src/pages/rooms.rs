//! The rooms list and the chat pane with history, live messages and presence.

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_navigate, use_params_map};
use serde_json::Value;
use tether_protocol::{
    ClientFrame, CreateRoomRequest, ErrorBody, HistoryAck, JoinAck, Room, RoomResponse, RoomsResponse, MAX_MESSAGE_CHARS,
};

use crate::api;
use crate::identity::use_auth;
use crate::socket::{merge_messages, use_socket, Socket};

/// Joins a room over the socket. A tab that already holds some of the room's
/// messages (a rejoin after a reconnect) asks only for those after the last
/// one it has (`since`), so nothing sent while it was away is lost.
pub async fn join(socket: Socket, code: String) -> Result<Room, ErrorBody> {
    let since = socket.messages.with_untracked(|all| all.get(&code).and_then(|m| m.last()).map(|m| m.seq));
    let fields = socket.request(ClientFrame::Join { room: code.clone(), since }).await?;
    let ack: JoinAck =
        serde_json::from_value(Value::Object(fields)).map_err(|e| ErrorBody::new("bad_frame", e.to_string()))?;
    socket.messages.update(|all| {
        let held = all.entry(code.clone()).or_default();
        if since.is_none() || ack.truncated {
            // A fresh start, or too much was missed to fill the gap: begin again from the newest.
            held.clear();
        }
        merge_messages(held, ack.history);
    });
    socket.presence.update(|all| {
        all.insert(code.clone(), ack.members);
    });
    Ok(ack.room)
}

/// Leaves a room; only the browser has a socket to leave with.
fn leave(socket: Socket, code: String) {
    let request = async move {
        let _ = socket.request(ClientFrame::Leave { room: code }).await;
    };
    #[cfg(feature = "hydrate")]
    leptos::task::spawn_local(request);
    #[cfg(not(feature = "hydrate"))]
    drop(request);
}

#[component]
pub fn RoomsPage() -> impl IntoView {
    let socket = use_socket();
    let auth = use_auth();
    let navigate = use_navigate();
    let error = RwSignal::new(None::<String>);
    let new_name = RwSignal::new(String::new());
    let code_to_join = RwSignal::new(String::new());

    Effect::new(move |_| {
        leptos::task::spawn_local(async move {
            match api::get::<RoomsResponse>("/api/rooms").await {
                Ok(list) => socket.rooms.set(list.rooms),
                Err(e) => error.set(Some(e.message)),
            }
        });
    });

    let create = {
        let navigate = navigate.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            let body = CreateRoomRequest { name: new_name.get_untracked() };
            let navigate = navigate.clone();
            leptos::task::spawn_local(async move {
                match api::post::<_, RoomResponse>("/api/rooms", &body).await {
                    Ok(RoomResponse { room }) => {
                        new_name.set(String::new());
                        navigate(&format!("/rooms/{}", room.code), Default::default());
                    }
                    Err(e) => error.set(Some(e.message)),
                }
            });
        }
    };
    let join_by_code = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let code = code_to_join.get_untracked().trim().to_lowercase();
        if !code.is_empty() {
            navigate(&format!("/rooms/{code}"), Default::default());
        }
    };

    view! {
        <section class="card">
            <h1>"Rooms"</h1>
            <Show when=move || error.get().is_some()>
                <p class="form-error" role="alert">{move || error.get().unwrap_or_default()}</p>
            </Show>
            <ul class="room-list" data-testid="room-list">
                <For each=move || socket.rooms.get() key=|room| room.code.clone() let(room)>
                    <li>
                        <A href=format!("/rooms/{}", room.code)>{room.name.clone()}</A>
                        " " <code>{room.code.clone()}</code>
                    </li>
                </For>
            </ul>
            <form class="inline" on:submit=join_by_code>
                <input type="text" placeholder="room code" aria-label="Room code"
                    prop:value=code_to_join on:input=move |ev| code_to_join.set(event_target_value(&ev))/>
                <button type="submit">"Join"</button>
            </form>
            <Show
                when=move || auth.user.get().is_some()
                fallback=|| view! { <p>"Log in to create a room."</p> }
            >
                <form class="inline" on:submit=create.clone()>
                    <input type="text" placeholder="new room name" aria-label="New room name" maxlength="80" required
                        prop:value=new_name on:input=move |ev| new_name.set(event_target_value(&ev))/>
                    <button type="submit">"Create room"</button>
                </form>
            </Show>
        </section>
    }
}

#[component]
pub fn RoomPage() -> impl IntoView {
    let socket = use_socket();
    let params = use_params_map();
    let code = Memo::new(move |_| params.with(|p| p.get("code").unwrap_or_default()));
    let room = RwSignal::new(None::<Room>);
    let error = RwSignal::new(None::<String>);
    let draft = RwSignal::new(String::new());

    // (Re)join whenever the room or the connection changes: a new socket id
    // means a new connection, which starts in no room.
    Effect::new(move |previous: Option<String>| {
        let current = code.get();
        let connected = socket.socket_id.get().is_some();
        if let Some(previous) = previous.filter(|p| *p != current) {
            leave(socket, previous);
        }
        if !connected {
            return current;
        }
        let joining = current.clone();
        leptos::task::spawn_local(async move {
            match join(socket, joining).await {
                Ok(joined) => {
                    room.set(Some(joined));
                    error.set(None);
                }
                Err(e) => error.set(Some(e.message)),
            }
        });
        current
    });
    on_cleanup(move || leave(socket, code.get_untracked()));

    let send = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let text = draft.get_untracked();
        let frame = ClientFrame::Send { room: code.get_untracked(), text };
        leptos::task::spawn_local(async move {
            match socket.request(frame).await {
                Ok(_) => {
                    draft.set(String::new());
                    error.set(None);
                }
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    let messages = move || socket.messages.with(|all| all.get(&code.get()).cloned().unwrap_or_default());
    // The oldest message this tab holds; older ones exist when its seq is past 1.
    let oldest_seq = move || socket.messages.with(|all| all.get(&code.get()).and_then(|m| m.first()).map(|m| m.seq));
    let loading_older = RwSignal::new(false);
    let load_older = move |_| {
        let Some(before) = oldest_seq() else { return };
        let room_code = code.get_untracked();
        loading_older.set(true);
        leptos::task::spawn_local(async move {
            let frame = ClientFrame::History { room: room_code.clone(), before, limit: None };
            match socket.request(frame).await {
                Ok(fields) => match serde_json::from_value::<HistoryAck>(Value::Object(fields)) {
                    Ok(page) => socket.messages.update(|all| merge_messages(all.entry(room_code).or_default(), page.history)),
                    Err(e) => error.set(Some(e.to_string())),
                },
                Err(e) => error.set(Some(e.message)),
            }
            loading_older.set(false);
        });
    };
    let members = move || socket.presence.with(|all| all.get(&code.get()).cloned().unwrap_or_default());

    view! {
        <section class="card chat">
            <h1>{move || room.get().map(|r| r.name).unwrap_or_else(|| code.get())}
                " " <code data-testid="room-code">{move || code.get()}</code></h1>
            <Show when=move || error.get().is_some()>
                <p class="form-error" role="alert" data-testid="chat-error">{move || error.get().unwrap_or_default()}</p>
            </Show>
            <div class="chat-body">
                <div class="chat-log">
                <Show when=move || oldest_seq().is_some_and(|seq| seq > 1)>
                    <button type="button" class="load-older" data-testid="load-older"
                        disabled=move || loading_older.get() on:click=load_older>
                        "Load older messages"
                    </button>
                </Show>
                <ol class="messages" data-testid="messages">
                    <For each=messages key=|m| m.id.clone() let(message)>
                        <li data-testid="message">
                            <strong class="from">{message.from.name.clone()}</strong>
                            " " <span class="text">{message.text.clone()}</span>
                            " " <time>{message.at.get(11..19).unwrap_or_default().to_string()}</time>
                        </li>
                    </For>
                </ol>
                </div>
                <aside class="presence">
                    <h2>"Here now"</h2>
                    <ul data-testid="presence">
                        {move || members().into_iter().map(|m| view! {
                            <li class:guest=m.id.is_none()>{m.name}</li>
                        }).collect_view()}
                    </ul>
                </aside>
            </div>
            <Show
                when=move || socket.user.get().is_some()
                fallback=move || view! {
                    <p class="notice" data-testid="login-prompt">
                        "Guests can read along. " <A href=format!("/login?next=/rooms/{}", code.get())>"Log in"</A>
                        " to send messages."
                    </p>
                }
            >
                <form class="inline" on:submit=send>
                    <input type="text" placeholder="Say something" aria-label="Message" data-testid="message-input"
                        maxlength=MAX_MESSAGE_CHARS.to_string() required
                        prop:value=draft on:input=move |ev| draft.set(event_target_value(&ev))/>
                    <button type="submit">"Send"</button>
                </form>
            </Show>
        </section>
    }
}

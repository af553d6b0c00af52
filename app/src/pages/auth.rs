//! Login and registration forms. Both end by binding the open socket.

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_navigate, use_query_map};
use tether_protocol::{AuthResponse, ErrorBody, LoginRequest, RegisterRequest};

use crate::api;
use crate::session::complete_login;
use crate::socket::{use_socket, Socket};

/// The state of one auth form; captured at render time, since event handlers
/// run outside the component's context.
#[derive(Clone, Copy)]
struct FormState {
    socket: Socket,
    error: RwSignal<Option<String>>,
    busy: RwSignal<bool>,
}

impl FormState {
    fn new() -> FormState {
        FormState { socket: use_socket(), error: RwSignal::new(None), busy: RwSignal::new(false) }
    }
}

/// Where to go after logging in: the `next` query parameter when it is a
/// path on this site, else home.
fn next_path() -> Memo<String> {
    let query = use_query_map();
    Memo::new(move |_| {
        query
            .with(|q| q.get("next"))
            .filter(|next| next.starts_with('/') && !next.starts_with("//"))
            .unwrap_or_else(|| "/".into())
    })
}

/// Runs an auth request; on success binds the socket and goes to `next`, on failure shows the error.
fn submit(
    form: FormState,
    next: String,
    navigate: impl Fn(&str, leptos_router::NavigateOptions) + 'static,
    request: impl std::future::Future<Output = Result<AuthResponse, ErrorBody>> + 'static,
) {
    let FormState { socket, error, busy } = form;
    busy.set(true);
    error.set(None);
    leptos::task::spawn_local(async move {
        match request.await {
            Ok(response) => {
                complete_login(socket, response).await;
                navigate(&next, Default::default());
            }
            Err(e) => error.set(Some(e.message)),
        }
        busy.set(false);
    });
}

#[component]
fn FormError(error: RwSignal<Option<String>>) -> impl IntoView {
    view! {
        <Show when=move || error.get().is_some()>
            <p class="form-error" role="alert" data-testid="form-error">{move || error.get().unwrap_or_default()}</p>
        </Show>
    }
}

#[component]
pub fn LoginPage() -> impl IntoView {
    let email = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let form = FormState::new();
    let (error, busy) = (form.error, form.busy);
    let navigate = use_navigate();
    let next = next_path();
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = LoginRequest { email: email.get_untracked(), password: password.get_untracked() };
        submit(form, next.get_untracked(), navigate.clone(), async move { api::post("/api/auth/login", &body).await });
    };
    view! {
        <section class="card narrow">
            <h1>"Log in"</h1>
            <form on:submit=on_submit>
                <label>"Email" <input type="email" name="email" autocomplete="username" required
                    prop:value=email on:input=move |ev| email.set(event_target_value(&ev))/></label>
                <label>"Password" <input type="password" name="password" autocomplete="current-password" required
                    prop:value=password on:input=move |ev| password.set(event_target_value(&ev))/></label>
                <FormError error/>
                <button type="submit" disabled=busy>"Log in"</button>
            </form>
            <p>"No account? " <A href="/register">"Register"</A></p>
        </section>
    }
}

#[component]
pub fn RegisterPage() -> impl IntoView {
    let email = RwSignal::new(String::new());
    let name = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let form = FormState::new();
    let (error, busy) = (form.error, form.busy);
    let navigate = use_navigate();
    let next = next_path();
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = RegisterRequest {
            email: email.get_untracked(),
            name: name.get_untracked(),
            password: password.get_untracked(),
        };
        submit(form, next.get_untracked(), navigate.clone(), async move { api::post("/api/auth/register", &body).await });
    };
    view! {
        <section class="card narrow">
            <h1>"Register"</h1>
            <form on:submit=on_submit>
                <label>"Email" <input type="email" name="email" autocomplete="username" required
                    prop:value=email on:input=move |ev| email.set(event_target_value(&ev))/></label>
                <label>"Name" <input type="text" name="name" autocomplete="nickname" required maxlength="50"
                    prop:value=name on:input=move |ev| name.set(event_target_value(&ev))/></label>
                <label>"Password (at least 8 characters)" <input type="password" name="password"
                    autocomplete="new-password" required
                    prop:value=password on:input=move |ev| password.set(event_target_value(&ev))/></label>
                <FormError error/>
                <button type="submit" disabled=busy>"Create account"</button>
            </form>
            <p>"Have an account? " <A href="/login">"Log in"</A></p>
        </section>
    }
}

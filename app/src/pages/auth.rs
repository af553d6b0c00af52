//! Login and registration forms. Both end by binding the open socket.

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_navigate, use_query_map};
use serde::Serialize;
use tether_protocol::{AuthResponse, LoginRequest, RegisterRequest};

use crate::api;
use crate::session::complete_login;
use crate::socket::{use_socket, Socket};

/// What an auth form needs after it was rendered; captured at render time,
/// since event handlers run outside the component's context.
#[derive(Clone, Copy)]
struct AuthForm {
    socket: Socket,
    error: RwSignal<Option<String>>,
    busy: RwSignal<bool>,
    /// Where to go after logging in: `next` when it is a path on this site, else home.
    next: Memo<String>,
    go: Callback<String>,
}

impl AuthForm {
    fn new() -> AuthForm {
        let query = use_query_map();
        let navigate = use_navigate();
        AuthForm {
            socket: use_socket(),
            error: RwSignal::new(None),
            busy: RwSignal::new(false),
            next: Memo::new(move |_| {
                query
                    .with(|q| q.get("next"))
                    .filter(|next| next.starts_with('/') && !next.starts_with("//"))
                    .unwrap_or_else(|| "/".into())
            }),
            go: Callback::new(move |path: String| navigate(&path, Default::default())),
        }
    }

    /// Posts the form; on success binds the socket and goes to `next`, on failure shows the error.
    fn submit<B: Serialize + 'static>(self, url: &'static str, body: B) {
        self.busy.set(true);
        self.error.set(None);
        leptos::task::spawn_local(async move {
            match api::post::<B, AuthResponse>(url, &body).await {
                Ok(response) => {
                    complete_login(self.socket, response).await;
                    self.go.run(self.next.get_untracked());
                }
                Err(e) => self.error.set(Some(e.message)),
            }
            self.busy.set(false);
        });
    }
}

#[component]
fn Field(
    label: &'static str,
    kind: &'static str,
    name: &'static str,
    autocomplete: &'static str,
    value: RwSignal<String>,
) -> impl IntoView {
    view! {
        <label>{label} <input type=kind name=name autocomplete=autocomplete required
            prop:value=value on:input=move |ev| value.set(event_target_value(&ev))/></label>
    }
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
    let form = AuthForm::new();
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        form.submit("/api/auth/login", LoginRequest { email: email.get_untracked(), password: password.get_untracked() });
    };
    view! {
        <section class="card narrow">
            <h1>"Log in"</h1>
            <form on:submit=on_submit>
                <Field label="Email" kind="email" name="email" autocomplete="username" value=email/>
                <Field label="Password" kind="password" name="password" autocomplete="current-password" value=password/>
                <FormError error=form.error/>
                <button type="submit" disabled=form.busy>"Log in"</button>
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
    let form = AuthForm::new();
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = RegisterRequest {
            email: email.get_untracked(),
            name: name.get_untracked(),
            password: password.get_untracked(),
        };
        form.submit("/api/auth/register", body);
    };
    view! {
        <section class="card narrow">
            <h1>"Register"</h1>
            <form on:submit=on_submit>
                <Field label="Email" kind="email" name="email" autocomplete="username" value=email/>
                <Field label="Name" kind="text" name="name" autocomplete="nickname" value=name/>
                <Field label="Password (at least 8 characters)" kind="password" name="password"
                    autocomplete="new-password" value=password/>
                <FormError error=form.error/>
                <button type="submit" disabled=form.busy>"Create account"</button>
            </form>
            <p>"Have an account? " <A href="/login">"Log in"</A></p>
        </section>
    }
}

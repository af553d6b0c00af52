use leptos::prelude::*;
use leptos_router::components::A;

use crate::identity::use_auth;

#[component]
pub fn HomePage() -> impl IntoView {
    let auth = use_auth();
    view! {
        <section class="card">
            <h1>"Tether"</h1>
            <p>"A WebSocket that always knows which user it belongs to."</p>
            {move || match auth.user.get() {
                Some(user) => view! {
                    <p data-testid="greeting">"Logged in as " <strong>{user.name}</strong> ". "
                        <A href="/rooms">"Go to the rooms"</A></p>
                }.into_any(),
                None => view! {
                    <p data-testid="greeting">"You are a guest. "
                        <A href="/login">"Log in"</A> " or " <A href="/register">"register"</A>
                        " — this tab's socket is rebound in place, without reconnecting."</p>
                }.into_any(),
            }}
        </section>
    }
}

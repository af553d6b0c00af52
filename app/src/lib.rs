#![recursion_limit = "256"]
//! Tether's Leptos app: pages and components, rendered on the server (`ssr`)
//! and hydrated in the browser (`hydrate`).

pub mod api;
pub mod identity;
mod components;
pub mod pages;
pub mod session;
pub mod socket;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::{ParamSegment, StaticSegment};
use serde::{Deserialize, Serialize};
use tether_protocol::User;

use components::{EventLog, Header};
use identity::Auth;
use socket::Socket;

/// The user of the request's cookie, put on the request by the server so the
/// first render is already logged in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitialUser(pub Option<User>);

/// Id of the script element that hands the initial user to the browser.
const INITIAL_USER_ID: &str = "tether-initial-user";

fn initial_user() -> Option<User> {
    #[cfg(feature = "ssr")]
    {
        use_context::<http::request::Parts>().and_then(|parts| parts.extensions.get::<InitialUser>().cloned()?.0)
    }
    #[cfg(all(feature = "hydrate", not(feature = "ssr")))]
    {
        let text = document().get_element_by_id(INITIAL_USER_ID)?.text_content()?;
        serde_json::from_str::<InitialUser>(&text).ok()?.0
    }
    #[cfg(not(any(feature = "ssr", feature = "hydrate")))]
    None
}

pub fn shell(options: LeptosOptions) -> impl IntoView {
    // `<` is escaped so that no name can close the script element.
    let initial = serde_json::to_string(&InitialUser(initial_user())).unwrap_or_default().replace('<', "\\u003c");
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <script id=INITIAL_USER_ID type="application/json" inner_html=initial></script>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    let auth = Auth { user: RwSignal::new(initial_user()) };
    provide_context(auth);
    let socket = Socket::new(auth);
    provide_context(socket);
    socket.start();
    session::follow_other_tabs(socket);

    view! {
        <Stylesheet id="leptos" href="/pkg/tether.css"/>
        <Title text="Tether"/>
        <Router>
            <Header/>
            <div class="layout">
                <main>
                    <Routes fallback=|| view! { <p class="notice">"Page not found."</p> }>
                        <Route path=StaticSegment("") view=pages::home::HomePage/>
                        <Route path=StaticSegment("login") view=pages::auth::LoginPage/>
                        <Route path=StaticSegment("register") view=pages::auth::RegisterPage/>
                        <Route path=StaticSegment("rooms") view=pages::rooms::RoomsPage/>
                        <Route path=(StaticSegment("rooms"), ParamSegment("code")) view=pages::rooms::RoomPage/>
                        <Route path=StaticSegment("admin") view=pages::admin::AdminPage/>
                    </Routes>
                </main>
                <EventLog/>
            </div>
        </Router>
    }
}

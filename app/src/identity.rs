//! Who this tab is logged in as: one signal shared through context, set by
//! the login and logout flows ([`crate::session`]) and by the socket's frames.

use leptos::prelude::*;
use tether_protocol::User;

#[derive(Clone, Copy)]
pub struct Auth {
    pub user: RwSignal<Option<User>>,
}

pub fn use_auth() -> Auth {
    expect_context::<Auth>()
}

//! A model-based property test of the registry: random sequences of connect,
//! bind, unbind, join, leave, emit, revoke and disconnect run against the real
//! registry and against a plain model. After every step the registry's
//! indexes (the admin snapshot, each room's members) agree with the model, and
//! every emitted frame reached exactly the sockets its audience named at that
//! moment: never a socket no longer bound to the user it was addressed to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use server::registry::queue::Queue;
use server::registry::{Audience, Binding, Connection, Outbound, Registry};
use tether_protocol::{Role, ServerFrame, UnbindReason, User};

const USERS: usize = 3;
const SESSIONS_PER_USER: usize = 2;
const ROOMS: [&str; 2] = ["r0", "r1"];
const FAR_FUTURE: i64 = 4_000_000_000;

fn user(index: usize) -> User {
    User {
        id: format!("u{index}"),
        name: format!("User {index}"),
        email: format!("u{index}@x.io"),
        role: if index == 0 { Role::Admin } else { Role::User },
    }
}

fn session_id(user: usize, session: usize) -> String {
    format!("s{user}-{session}")
}

fn binding(user_index: usize, session: usize) -> Binding {
    Binding::User { user: user(user_index), session_id: session_id(user_index, session).into(), expires_at: FAR_FUTURE }
}

#[derive(Debug, Clone)]
enum Target {
    User(usize),
    Session(usize, usize),
    Role(Role),
    Room(usize),
    All,
}

#[derive(Debug, Clone)]
enum Step {
    Connect(Option<(usize, usize)>),
    Bind(usize, usize, usize),
    Unbind(usize),
    Join(usize, usize),
    Leave(usize, usize),
    Emit(Target),
    Revoke(usize, usize),
    Disconnect(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let pick = 0..8usize;
    let who = (0..USERS, 0..SESSIONS_PER_USER);
    let target = prop_oneof![
        (0..USERS).prop_map(Target::User),
        (0..USERS, 0..SESSIONS_PER_USER).prop_map(|(u, s)| Target::Session(u, s)),
        prop_oneof![Just(Role::Admin), Just(Role::User)].prop_map(Target::Role),
        (0..ROOMS.len()).prop_map(Target::Room),
        Just(Target::All),
    ];
    let step = prop_oneof![
        3 => proptest::option::of(who.clone()).prop_map(Step::Connect),
        2 => (pick.clone(), who.clone()).prop_map(|(k, (u, s))| Step::Bind(k, u, s)),
        1 => pick.clone().prop_map(Step::Unbind),
        2 => (pick.clone(), 0..ROOMS.len()).prop_map(|(k, r)| Step::Join(k, r)),
        1 => (pick.clone(), 0..ROOMS.len()).prop_map(|(k, r)| Step::Leave(k, r)),
        3 => target.prop_map(Step::Emit),
        1 => who.prop_map(|(u, s)| Step::Revoke(u, s)),
        1 => pick.prop_map(Step::Disconnect),
    ];
    proptest::collection::vec(step, 1..60)
}

/// What the model knows of one live socket.
struct ModelSocket {
    public_id: String,
    queue: Arc<Queue<Outbound>>,
    /// `(user, session)`; `None` for a guest.
    bound: Option<(usize, usize)>,
    rooms: BTreeSet<usize>,
}

#[derive(Default)]
struct Model {
    /// Live sockets by registry id, oldest first.
    sockets: BTreeMap<u64, ModelSocket>,
    revoked: BTreeSet<(usize, usize)>,
}

impl Model {
    /// The `k`-th live socket (modulo), if any.
    fn nth(&self, k: usize) -> Option<u64> {
        (!self.sockets.is_empty()).then(|| *self.sockets.keys().nth(k % self.sockets.len()).unwrap())
    }

    fn audience(&self, target: &Target) -> BTreeSet<String> {
        self.sockets
            .values()
            .filter(|s| match (target, s.bound) {
                (Target::User(u), Some((bu, _))) => *u == bu,
                (Target::Session(u, k), Some(bound)) => (*u, *k) == bound,
                (Target::Role(role), Some((bu, _))) => user(bu).role == *role,
                (Target::Room(r), _) => s.rooms.contains(r),
                (Target::All, _) => true,
                _ => false,
            })
            .map(|s| s.public_id.clone())
            .collect()
    }
}

/// Takes every frame queued for a socket; returns the test's marked emits (their `n`).
fn drain(queue: &Queue<Outbound>) -> Vec<i64> {
    let mut marks = Vec::new();
    while let Some(item) = queue.try_pop() {
        if let Outbound::Text(text) = item {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
            if frame["type"] == "event" && frame["topic"] == "model.test" {
                marks.push(frame["data"]["n"].as_i64().unwrap());
            }
        }
    }
    marks
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let registry = Registry::new(true, 256);
    let mut model = Model::default();
    for (n, step) in steps.into_iter().enumerate() {
        let mark = n as i64;
        let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        match &step {
            Step::Connect(who) => {
                let Connection { id, public_id, outbound } =
                    registry.connect(who.map_or_else(Binding::guest, |(u, s)| binding(u, s)));
                let bound = who.filter(|who| !model.revoked.contains(who));
                model.sockets.insert(
                    id,
                    ModelSocket { public_id: public_id.to_string(), queue: outbound, bound, rooms: BTreeSet::new() },
                );
            }
            Step::Bind(k, u, s) => {
                if let Some(id) = model.nth(*k) {
                    let bound = registry.bind(id, binding(*u, *s), |_| None);
                    let allowed = !model.revoked.contains(&(*u, *s));
                    prop_assert_eq!(bound.is_some(), allowed, "bind to a revoked session fails, others succeed");
                    if allowed {
                        model.sockets.get_mut(&id).unwrap().bound = Some((*u, *s));
                    }
                }
            }
            Step::Unbind(k) => {
                if let Some(id) = model.nth(*k) {
                    registry.unbind_socket(id, None);
                    model.sockets.get_mut(&id).unwrap().bound = None;
                }
            }
            Step::Join(k, r) => {
                if let Some(id) = model.nth(*k) {
                    registry.join(id, ROOMS[*r], 0, |_| None);
                    model.sockets.get_mut(&id).unwrap().rooms.insert(*r);
                }
            }
            Step::Leave(k, r) => {
                if let Some(id) = model.nth(*k) {
                    registry.leave(id, ROOMS[*r], None);
                    model.sockets.get_mut(&id).unwrap().rooms.remove(r);
                }
            }
            Step::Emit(target) => {
                let frame = ServerFrame::Event { topic: "model.test".into(), data: json!({"n": mark}) };
                let (user_id, session, room);
                let audience = match target {
                    Target::User(u) => {
                        user_id = user(*u).id;
                        Audience::User(&user_id)
                    }
                    Target::Session(u, s) => {
                        session = session_id(*u, *s);
                        Audience::Session(&session)
                    }
                    Target::Role(role) => Audience::Role(*role),
                    Target::Room(r) => {
                        room = ROOMS[*r];
                        Audience::Room(room)
                    }
                    Target::All => Audience::All,
                };
                let recipients = model.audience(target);
                let reached = registry.emit(audience, &frame);
                prop_assert_eq!(reached, recipients.len(), "emit counts its audience");
                for public_id in recipients {
                    expected.entry(public_id).or_default().push(mark);
                }
            }
            Step::Revoke(u, s) => {
                registry.revoke_session(&session_id(*u, *s), FAR_FUTURE, UnbindReason::Logout);
                model.revoked.insert((*u, *s));
                for socket in model.sockets.values_mut() {
                    if socket.bound == Some((*u, *s)) {
                        socket.bound = None;
                    }
                }
            }
            Step::Disconnect(k) => {
                if let Some(id) = model.nth(*k) {
                    registry.disconnect(id);
                    model.sockets.remove(&id);
                }
            }
        }

        // Every marked frame went exactly where the model says.
        for socket in model.sockets.values() {
            let got = drain(&socket.queue);
            let want = expected.remove(&socket.public_id).unwrap_or_default();
            prop_assert_eq!(got, want, "step {}: {:?}: frames of socket {}", n, step, socket.public_id);
        }
        // The indexes agree with the model.
        let snapshot = registry.snapshot();
        prop_assert_eq!(snapshot.len(), model.sockets.len());
        for (live, socket) in snapshot.iter().zip(model.sockets.values()) {
            prop_assert_eq!(&live.socket_id, &socket.public_id);
            prop_assert_eq!(live.user.as_ref().map(|u| u.id.clone()), socket.bound.map(|(u, _)| user(u).id));
            prop_assert_eq!(live.guest_name.is_some(), socket.bound.is_none());
            let rooms: Vec<String> = socket.rooms.iter().map(|r| ROOMS[*r].to_string()).collect();
            prop_assert_eq!(&live.rooms, &rooms);
        }
        for (r, room) in ROOMS.iter().enumerate() {
            let keys: BTreeSet<String> = registry.members(room).into_iter().map(|m| m.key).collect();
            let want: BTreeSet<String> = model
                .sockets
                .values()
                .filter(|s| s.rooms.contains(&r))
                .map(|s| match s.bound {
                    Some((u, _)) => format!("u:{}", user(u).id),
                    None => format!("g:{}", s.public_id),
                })
                .collect();
            prop_assert_eq!(keys, want, "step {}: members of {}", n, room);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_registry_agrees_with_its_model(steps in steps()) {
        run(steps)?;
    }
}

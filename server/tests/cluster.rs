//! Several nodes on one Postgres behave as one server (issue 12): real server
//! processes sharing one database, clients on different nodes.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::postgres::{fresh_database, Cluster};
use common::process::{create_room, get, post, send, ServerProcess};
use common::raw::http;
use common::{socket_to, Socket, PASSWORD};
use serde_json::{json, Value};

/// A dead node leaves the admin view within this (PROTOCOL.md: 30 s).
const DEAD_NODE_PATIENCE: Duration = Duration::from_secs(30);

struct Nodes {
    _cluster: Option<Cluster>,
    nodes: Vec<ServerProcess>,
}

/// `n` nodes on one fresh database; `vars` for every node.
async fn nodes(n: usize, vars: &[(&str, &str)]) -> Nodes {
    let (cluster, url) = fresh_database();
    let mut all = Vec::new();
    for _ in 0..n {
        let mut with = vec![("DATABASE_URL", url.as_str())];
        with.extend_from_slice(vars);
        all.push(ServerProcess::start(&with).await);
    }
    Nodes { _cluster: cluster, nodes: all }
}

impl std::ops::Index<usize> for Nodes {
    type Output = ServerProcess;
    fn index(&self, i: usize) -> &ServerProcess {
        &self.nodes[i]
    }
}

async fn login(node: &ServerProcess, email: &str) -> String {
    let (status, head, body) = post(node, "/api/auth/login", json!({"email": email, "password": PASSWORD}), None).await;
    assert_eq!(status, 200, "{body}");
    common::process::cookie_of(&head)
}

async fn joined(node: &ServerProcess, cookie: &str, room: &str) -> Socket {
    let (mut socket, _) = socket_to(node.addr, Some(cookie)).await;
    socket.join(room).await;
    socket
}

/// A socket in `room` on `node` (`cookie`: `None` for a guest), and its presence key.
async fn member_in(node: &ServerProcess, cookie: Option<&str>, room: &str) -> (Socket, String) {
    let (mut socket, welcome) = socket_to(node.addr, cookie).await;
    socket.join(room).await;
    let key = match welcome["user"]["id"].as_str() {
        Some(id) => format!("u:{id}"),
        None => format!("g:{}", welcome["socket_id"].as_str().unwrap()),
    };
    (socket, key)
}

/// The keys a `presence_diff` or `presence` frame lists under `field`.
fn keys(frame: &Value, field: &str) -> Vec<String> {
    let mut keys: Vec<String> =
        frame[field].as_array().unwrap().iter().map(|m| m["key"].as_str().unwrap().to_string()).collect();
    keys.sort();
    keys
}

/// The next `presence_diff`: the keys that joined and the keys that left.
async fn next_diff(socket: &mut Socket, patience: Duration) -> (Vec<String>, Vec<String>) {
    let diff = socket.next_of_within("presence_diff", patience).await;
    (keys(&diff, "joins"), keys(&diff, "leaves"))
}

/// Follows a joined socket's `presence` and `presence_diff` frames until the
/// room's member keys are `want` (other nodes' changes arrive when they arrive).
async fn members_until(socket: &mut Socket, want: &[&str]) {
    let want: HashSet<String> = want.iter().map(|k| k.to_string()).collect();
    let mut have: HashSet<String> = keys(&socket.next_of("presence").await, "members").into_iter().collect();
    while have != want {
        let (joins, leaves) = next_diff(socket, common::PATIENCE).await;
        have.retain(|k| !leaves.contains(k));
        have.extend(joins);
    }
}

#[tokio::test]
async fn room_messages_reach_every_node_once_in_one_order_the_order_of_history() {
    let cluster = nodes(3, &[]).await;
    let ann = cluster[0].register("ann@x.io").await;
    let bob = cluster[1].register("bob@x.io").await;
    let cat = cluster[2].register("cat@x.io").await;
    let room = create_room(&cluster[0], &ann, "general").await;
    let mut sockets = vec![joined(&cluster[0], &ann, &room).await, joined(&cluster[1], &bob, &room).await];
    let mut watcher = joined(&cluster[2], &cat, &room).await;

    // Two nodes send at once: every socket sees one interleaving.
    const EACH: usize = 30;
    let (mut a, mut b) = (sockets.remove(0), sockets.remove(0));
    async fn sends(mut socket: Socket, room: &str, who: &str) -> Socket {
        for i in 0..EACH {
            let ack = send(&mut socket, room, &format!("{who} {i}")).await;
            assert_eq!(ack["ok"], true, "{ack}");
        }
        socket
    }
    let (sa, sb) = tokio::join!(sends(a, &room, "ann"), sends(b, &room, "bob"));
    (a, b) = (sa, sb);
    let seen: Vec<Vec<Value>> =
        vec![a.messages(2 * EACH).await, b.messages(2 * EACH).await, watcher.messages(2 * EACH).await];
    let seqs: Vec<i64> = seen[0].iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=(2 * EACH) as i64).collect::<Vec<_>>(), "1, 2, 3... with no gap");
    let ids = |list: &Vec<Value>| list.iter().map(|m| m["id"].as_str().unwrap().parse::<i64>().unwrap()).collect::<Vec<_>>();
    assert!(ids(&seen[0]).windows(2).all(|w| w[0] < w[1]), "ids grow along seq");
    assert_eq!(seen[0], seen[1], "node A and node B saw one order");
    assert_eq!(seen[0], seen[2], "node C saw it too");
    // Nothing twice: the next message anyone sees is the next one sent.
    send(&mut a, &room, "last").await;
    let mut live = seen[0].clone();
    for socket in [&mut a, &mut b, &mut watcher] {
        let next = socket.messages(1).await.remove(0);
        assert_eq!((next["seq"].clone(), next["text"].clone()), (json!(2 * EACH + 1), json!("last")));
        live.push(next);
    }
    live.truncate(2 * EACH + 1);

    // History, from any node, is the same order.
    let (mut fresh, _) = socket_to(cluster[1].addr, Some(&cat)).await;
    let ack = fresh.join(&room).await;
    let history = ack["history"].as_array().unwrap();
    assert_eq!(history[..], live[live.len() - history.len()..], "history is the live order");
}

#[tokio::test]
async fn a_message_too_long_for_one_notify_crosses_nodes_whole() {
    let cluster = nodes(2, &[]).await;
    let ann = cluster[0].register("ann@x.io").await;
    let bob = cluster[1].register("bob@x.io").await;
    let room = create_room(&cluster[0], &ann, "big").await;
    let mut on_a = joined(&cluster[0], &ann, &room).await;
    let mut on_b = joined(&cluster[1], &bob, &room).await;
    // 2,000 characters of 4 bytes each: 8,000 bytes of text alone.
    let text: String = "𝄞".repeat(2000);
    let ack = send(&mut on_a, &room, &text).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let got = on_b.next_of("message").await;
    assert_eq!(got["text"].as_str().unwrap(), text);
    assert_eq!(on_a.next_of("message").await, got, "the sender's node delivers the same frame");
    // And the next small one still follows it, in order.
    send(&mut on_a, &room, "after").await;
    assert_eq!(on_b.next_of("message").await["seq"], got["seq"].as_i64().unwrap() + 1);
}

#[tokio::test]
async fn a_logout_on_one_node_unbinds_the_session_on_the_others_and_the_cookie_dies_everywhere() {
    let cluster = nodes(3, &[]).await;
    let ann = cluster[0].register("ann@x.io").await;
    let mut on_b = socket_to(cluster[1].addr, Some(&ann)).await.0;
    let mut on_c = socket_to(cluster[2].addr, Some(&ann)).await.0;
    // B and C have the session cached now.
    assert_eq!(get(&cluster[1], "/api/auth/me", Some(&ann)).await.0, 200);
    assert_eq!(get(&cluster[2], "/api/auth/me", Some(&ann)).await.0, 200);

    let asked = Instant::now();
    let (status, _, _) = post(&cluster[0], "/api/auth/logout", json!({}), Some(&ann)).await;
    assert_eq!(status, 204);
    let answered = asked.elapsed();
    // At once: before B and C have even heard of it, the cookie fails there.
    for node in &cluster.nodes {
        assert_eq!(get(node, "/api/auth/me", Some(&ann)).await.0, 401, "the revoked cookie fails on every node at once");
    }
    for socket in [&mut on_b, &mut on_c] {
        let unbound = socket.next_of("unbound").await;
        assert_eq!(unbound["reason"], "logout", "{unbound}");
    }
    eprintln!("logout: HTTP answer {answered:?}, unbound on B and C {:?} after the request", asked.elapsed());
    let (_, welcome) = socket_to(cluster[1].addr, Some(&ann)).await;
    assert_eq!(welcome["user"], Value::Null, "a new socket with the dead cookie is a guest: {welcome}");
}

#[tokio::test]
async fn revocation_role_changes_and_promotion_reach_sockets_on_other_nodes() {
    let cluster = nodes(2, &[("TETHER_ADMIN_EMAILS", "boss@x.io,late@x.io")]).await;
    let boss = cluster[0].register("boss@x.io").await;
    let ann = cluster[0].register("ann@x.io").await;
    let (_, me) = get(&cluster[0], "/api/auth/me", Some(&ann)).await;
    let ann_id = me["user"]["id"].as_str().unwrap().to_string();
    let mut on_b = socket_to(cluster[1].addr, Some(&ann)).await.0;

    let role = |role: &str| json!({"role": role});
    let (status, _, body) = http(cluster[0].addr, "PUT", &format!("/api/admin/users/{ann_id}/role"), Some(&role("admin")), Some(&boss))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let bound = on_b.next_of("bound").await;
    assert_eq!(bound["user"]["role"], "admin", "{bound}");
    assert_eq!(get(&cluster[1], "/api/auth/me", Some(&ann)).await.1["user"]["role"], "admin", "B's cache followed");

    let (status, _, _) = http(cluster[0].addr, "DELETE", &format!("/api/admin/users/{ann_id}/sessions"), None, Some(&boss))
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(on_b.next_of("unbound").await["reason"], "revoked");
    assert_eq!(get(&cluster[1], "/api/auth/me", Some(&ann)).await.0, 401);

    // TETHER_ADMIN_EMAILS promotion at login on A reaches the user's socket on B.
    let late = cluster[1].register("late@x.io").await;
    let (_, me) = get(&cluster[1], "/api/auth/me", Some(&late)).await;
    let late_id = me["user"]["id"].as_str().unwrap().to_string();
    let (status, _, _) =
        http(cluster[0].addr, "PUT", &format!("/api/admin/users/{late_id}/role"), Some(&role("user")), Some(&boss)).await.unwrap();
    assert_eq!(status, 200);
    let mut late_on_b = socket_to(cluster[1].addr, Some(&late)).await.0;
    login(&cluster[0], "late@x.io").await;
    assert_eq!(late_on_b.next_of("bound").await["user"]["role"], "admin");
}

#[tokio::test]
async fn events_and_tickets_cross_nodes() {
    let cluster = nodes(2, &[("TETHER_ADMIN_EMAILS", "boss@x.io")]).await;
    let boss = cluster[1].register("boss@x.io").await;
    let mut admin_on_b = socket_to(cluster[1].addr, Some(&boss)).await.0;
    let (mut guest_on_b, _) = socket_to(cluster[1].addr, None).await;

    let ann = cluster[0].register("ann@x.io").await;
    let registered = admin_on_b.next_event("user.registered").await;
    assert_eq!(registered["data"]["email"], "ann@x.io");
    let room = create_room(&cluster[0], &ann, "news").await;
    let created = guest_on_b.next_event("room.created").await;
    assert_eq!(created["data"]["code"], room.as_str());

    // A ticket from A binds a socket on B.
    let (status, _, body) = post(&cluster[0], "/api/auth/ticket", json!({}), Some(&ann)).await;
    assert_eq!(status, 200, "{body}");
    let ack = guest_on_b.request(json!({"type": "login", "ticket": body["ticket"]})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["user"]["email"], "ann@x.io");
}

#[tokio::test]
async fn presence_is_cluster_wide_a_user_is_one_member_on_every_node() {
    let cluster = nodes(3, &[]).await;
    let ann = cluster[0].register("ann@x.io").await;
    let cat = cluster[2].register("cat@x.io").await;
    let room = create_room(&cluster[0], &ann, "lobby").await;
    let (mut watcher, cat_key) = member_in(&cluster[2], Some(&cat), &room).await;

    // Ann on A: the watcher on C hears her join.
    let (mut ann_a, ann_key) = member_in(&cluster[0], Some(&ann), &room).await;
    assert_eq!(next_diff(&mut watcher, common::PATIENCE).await, (vec![ann_key.clone()], vec![]));
    members_until(&mut ann_a, &[&ann_key, &cat_key]).await;

    // Her second socket, on B: B's view is the whole room, and she is still one member.
    let (mut ann_b, _) = member_in(&cluster[1], Some(&ann), &room).await;
    members_until(&mut ann_b, &[&ann_key, &cat_key]).await;
    // A node's changes reach the others in order: had B announced her again,
    // the watcher would hear it before this guest's join.
    let (_guest_b, guest_b) = member_in(&cluster[1], None, &room).await;
    assert_eq!(next_diff(&mut watcher, common::PATIENCE).await, (vec![guest_b.clone()], vec![]), "no second join for ann");

    // She leaves on A: she is still in the room on B, so nobody hears her leave.
    assert_eq!(ann_a.request(json!({"type": "leave", "room": room})).await["ok"], true);
    let (_guest_a, guest_a) = member_in(&cluster[0], None, &room).await;
    assert_eq!(next_diff(&mut watcher, common::PATIENCE).await, (vec![guest_a], vec![]), "ann did not leave");
    // She leaves on B too: now she is gone, for every node.
    ann_b.hang_up().await;
    assert_eq!(next_diff(&mut watcher, common::PATIENCE).await, (vec![], vec![ann_key]));
}

#[tokio::test]
async fn login_throttling_counts_across_nodes() {
    let cluster = nodes(3, &[]).await;
    cluster[0].register("ann@x.io").await;
    // Ten failures for one email, spread over three nodes...
    for i in 0..10 {
        let wrong = json!({"email": "Ann@x.io", "password": "wrong password"});
        let (status, _, body) = post(&cluster[i % 3], "/api/auth/login", wrong, None).await;
        assert_eq!(status, 401, "{body}");
    }
    // ...lock it on every node, even with the right password.
    for node in &cluster.nodes {
        let (status, head, body) = post(node, "/api/auth/login", json!({"email": "ann@x.io", "password": PASSWORD}), None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
        assert!(head.to_ascii_lowercase().contains("retry-after: "), "{head}");
    }
}

#[tokio::test]
async fn registration_and_room_limits_count_across_nodes() {
    let cluster = nodes(3, &[("TETHER_REGISTRATIONS_PER_MINUTE", "3"), ("TETHER_ROOMS_PER_MINUTE_PER_USER", "2")]).await;
    // One registration a node uses up the address's three...
    let mut cookies = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        cookies.push(node.register(&format!("user{i}@x.io")).await);
    }
    // ...so a fourth is refused on every node.
    for node in &cluster.nodes {
        let body = json!({"email": "late@x.io", "name": "Late", "password": PASSWORD});
        let (status, head, body) = post(node, "/api/auth/register", body, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
        assert!(head.to_ascii_lowercase().contains("retry-after: "), "{head}");
    }
    // Two rooms a minute per user: one on A and one on B, then C refuses the third.
    create_room(&cluster[0], &cookies[0], "one").await;
    create_room(&cluster[1], &cookies[0], "two").await;
    let (status, _, body) = post(&cluster[2], "/api/rooms", json!({"name": "three"}), Some(&cookies[0])).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
}

/// The admin view's sockets, by node.
async fn sockets_by_node(node: &ServerProcess, admin: &str) -> Vec<(String, String)> {
    let (status, body) = get(node, "/api/admin/sockets", Some(admin)).await;
    assert_eq!(status, 200, "{body}");
    body["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["node"].as_str().unwrap().to_string(), s["socket_id"].as_str().unwrap().to_string()))
        .collect()
}

/// Polls the admin view until `done` holds, up to `patience`.
async fn admin_view_until(node: &ServerProcess, admin: &str, patience: Duration, done: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
    let deadline = Instant::now() + patience;
    loop {
        let view = sockets_by_node(node, admin).await;
        if done(&view) || Instant::now() > deadline {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_admin_view_lists_every_nodes_sockets_and_drops_a_stopped_or_killed_node() {
    let mut cluster = nodes(3, &[("TETHER_ADMIN_EMAILS", "boss@x.io")]).await;
    let boss = cluster[0].register("boss@x.io").await;
    let room = create_room(&cluster[0], &boss, "ops").await;
    let (mut a_socket, on_a) = socket_to(cluster[0].addr, Some(&boss)).await;
    a_socket.next_event("sockets.changed").await; // its own arrival
    // Another node's socket list changes: admins here hear of it.
    let (mut b_socket, on_b) = socket_to(cluster[1].addr, None).await;
    a_socket.next_event("sockets.changed").await;
    let (mut c_socket, on_c) = socket_to(cluster[2].addr, None).await;
    let ids: HashSet<String> = [&on_a, &on_b, &on_c].iter().map(|w| w["socket_id"].as_str().unwrap().to_string()).collect();
    let key = |welcome: &Value| format!("g:{}", welcome["socket_id"].as_str().unwrap());
    let boss_key = format!("u:{}", on_a["user"]["id"].as_str().unwrap());
    a_socket.join(&room).await;
    b_socket.join(&room).await;
    c_socket.join(&room).await;
    members_until(&mut a_socket, &[&boss_key, &key(&on_b), &key(&on_c)]).await;

    let view = sockets_by_node(&cluster[0], &boss).await;
    let listed: HashSet<String> = view.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(listed, ids, "every node's sockets, from node A");
    let nodes: HashSet<&String> = view.iter().map(|(node, _)| node).collect();
    assert_eq!(nodes.len(), 3, "each with its own node: {view:?}");
    let node_of = |id: &Value| view.iter().find(|(_, s)| s == id.as_str().unwrap()).unwrap().0.clone();
    let (node_b, node_c) = (node_of(&on_b["socket_id"]), node_of(&on_c["socket_id"]));

    // SIGTERM: B closes its sockets with 1001 and leaves the view at once.
    assert!(cluster.nodes[1].terminate(), "B exits 0");
    assert_eq!(b_socket.closed().await, Some(1001));
    let view = sockets_by_node(&cluster[0], &boss).await;
    assert!(view.iter().all(|(node, _)| *node != node_b), "B's sockets are gone at once: {view:?}");
    // Well before a silent node would count as gone (15 s), B's member left presence.
    assert_eq!(next_diff(&mut a_socket, common::PATIENCE).await, (vec![], vec![key(&on_b)]));

    // kill -9: C cannot say goodbye; it leaves the view within 30 s.
    cluster.nodes[2].child.kill().unwrap();
    cluster.nodes[2].child.wait().unwrap();
    let killed = Instant::now();
    let view = admin_view_until(&cluster[0], &boss, DEAD_NODE_PATIENCE, |v| v.iter().all(|(node, _)| *node != node_c)).await;
    assert!(view.iter().all(|(node, _)| *node != node_c), "C's sockets left the view within 30 s: {view:?}");
    eprintln!("killed node left the admin view after {:?}", killed.elapsed());
    assert_eq!(view.len(), 1, "A's own socket stays: {view:?}");
    // And its member left presence, within the same 30 s.
    let left = next_diff(&mut a_socket, DEAD_NODE_PATIENCE.saturating_sub(killed.elapsed())).await;
    assert_eq!(left, (vec![], vec![key(&on_c)]));
    eprintln!("killed node's member left presence after {:?}", killed.elapsed());
}

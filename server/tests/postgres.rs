//! Postgres as a backend (issue 11), with real server processes and real
//! Postgres clusters: the generated secret shared through the database,
//! start-up against a Postgres that is not there (yet, or ever), a Postgres
//! stopped and restarted under a running server, and `copy-db` from SQLite.
//! Every other suite runs on Postgres too when `scripts/test` sets
//! `TETHER_TEST_POSTGRES` (see common/postgres.rs).

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::{database_url, fresh_database, Cluster};
use common::process::{assert_one_line_failure, cookie_of, create_room, free_addr, get, post, send, server_command, ServerProcess};
use common::{socket_to, PASSWORD};
use serde_json::json;

/// How long a test waits for the server to come back after Postgres did.
const RECOVERY_PATIENCE: Duration = Duration::from_secs(30);

/// Whether a data directory holds a generated secret file.
fn has_secret_file(server: &ServerProcess) -> bool {
    server.data.path().join("jwt_secret").exists()
}

#[tokio::test]
async fn nodes_on_one_database_share_the_generated_secret_and_the_setting_still_wins() {
    let (_cluster, url) = fresh_database();
    let a = ServerProcess::start(&[("DATABASE_URL", &url)]).await;
    let b = ServerProcess::start(&[("DATABASE_URL", &url)]).await;
    let cookie = a.register("ann@x.io").await;

    let (status, me) = get(&b, "/api/auth/me", Some(&cookie)).await;
    assert_eq!((status, me["user"]["email"].clone()), (200, json!("ann@x.io")), "B accepts A's cookie");
    let (_socket, welcome) = socket_to(b.addr, Some(&cookie)).await;
    assert_eq!(welcome["user"]["email"], "ann@x.io", "B binds a socket from A's cookie: {welcome}");
    let (status, _, login) = post(&b, "/api/auth/login", json!({"email": "ann@x.io", "password": PASSWORD}), None).await;
    assert_eq!(status, 200, "{login}");
    assert!(!has_secret_file(&a) && !has_secret_file(&b), "the secret lives in the database, not in a file");

    let configured = ServerProcess::start(&[("DATABASE_URL", &url), ("TETHER_JWT_SECRET", &"s".repeat(40))]).await;
    let (status, _) = get(&configured, "/api/auth/me", Some(&cookie)).await;
    assert_eq!(status, 401, "TETHER_JWT_SECRET wins over the shared secret");
}

/// The server's log lines (stdout), read on a thread, as they come.
fn log_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

#[tokio::test]
async fn start_up_retries_until_postgres_is_up_logging_each_attempt() {
    let cluster = Cluster::start();
    let url = cluster.database();
    cluster.stop();
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = server_command(&addr.to_string(), data.path())
        .env("DATABASE_URL", &url)
        .env("TETHER_DATABASE_CONNECT_TIMEOUT_SECS", "300")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = log_lines(&mut child);
    let mut server = ServerProcess { child, addr, data };
    // Two retries logged: it is waiting, not failing.
    let mut retries = 0;
    while retries < 2 {
        let line = lines.recv_timeout(Duration::from_secs(60)).expect("a log line about the retry");
        if line.contains("Postgres unreachable; retrying") {
            assert!(line.contains("DATABASE_URL") && line.contains("attempt="), "{line}");
            retries += 1;
        }
    }
    assert!(server.is_running());
    cluster.restart();
    server.wait_until_up().await;
    let cookie = server.register("ann@x.io").await;
    assert_eq!(get(&server, "/api/auth/me", Some(&cookie)).await.0, 200);
}

#[test]
fn an_unreachable_postgres_is_given_up_after_the_timeout_in_one_line() {
    let nothing_here = tempfile::tempdir().unwrap();
    let url = format!("postgres:///postgres?host={}&user=postgres", nothing_here.path().display());
    let data = tempfile::tempdir().unwrap();
    let output = server_command("127.0.0.1:0", data.path())
        .env("DATABASE_URL", &url)
        .env("TETHER_DATABASE_CONNECT_TIMEOUT_SECS", "2")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_one_line_failure(&output, "DATABASE_URL");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unreachable for 2 s"), "{stderr}");
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.matches("retrying").count() >= 2, "each attempt is logged: {log}");
}

#[test]
fn a_missing_database_or_refused_login_fails_at_once_in_one_line() {
    let cluster = Cluster::start();
    let data = tempfile::tempdir().unwrap();
    let missing = database_url(&cluster.url, "no_such_database");
    let unknown_role = cluster.url.replace("user=postgres", "user=nobody");
    for (url, expected) in [(missing, "database \"no_such_database\" does not exist"), (unknown_role, "role \"nobody\" does not exist")] {
        let output = server_command("127.0.0.1:0", data.path())
            .env("DATABASE_URL", &url)
            // Were it retried, the test would wait this long and then fail on the message.
            .env("TETHER_DATABASE_CONNECT_TIMEOUT_SECS", "600")
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert_one_line_failure(&output, "DATABASE_URL");
        assert_one_line_failure(&output, expected);
        let log = String::from_utf8_lossy(&output.stdout);
        assert!(!log.contains("retrying"), "not retried: {log}");
    }
}

#[tokio::test]
async fn postgres_stopped_under_a_running_server_gives_503s_then_it_recovers() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let mut server = ServerProcess::start(&[("DATABASE_URL", &url), ("TETHER_DATABASE_ACQUIRE_TIMEOUT_SECS", "2")]).await;
    let cookie = server.register("ann@x.io").await;
    let room = create_room(&server, &cookie, "Lobby").await;
    let (mut socket, _) = socket_to(server.addr, Some(&cookie)).await;
    let join = socket.request(json!({"type": "join", "room": room})).await;
    assert_eq!(join["ok"], true, "{join}");
    assert_eq!(send(&mut socket, &room, "before").await["ok"], true);
    let before = socket.next_of("message").await;

    cluster.stop();
    let (status, body) = get(&server, "/api/rooms", None).await;
    assert_eq!((status, body["error"]["code"].clone()), (503, json!("unavailable")), "{body}");
    assert!(body["error"]["message"].is_string());
    let (status, _, body) = post(&server, "/api/auth/register", json!({"email": "bob@x.io", "name": "Bob", "password": PASSWORD}), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (503, json!("unavailable")), "{body}");
    let refused = send(&mut socket, &room, "during").await;
    assert_eq!((refused["ok"].clone(), refused["error"]["code"].clone()), (json!(false), json!("unavailable")), "{refused}");
    assert!(server.is_running(), "no panic");

    cluster.restart();
    let deadline = Instant::now() + RECOVERY_PATIENCE;
    while get(&server, "/api/rooms", None).await.0 != 200 {
        assert!(Instant::now() < deadline, "the server recovers within {RECOVERY_PATIENCE:?} of Postgres");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same socket, never closed, carries on; the refused message was never stored.
    let ack = send(&mut socket, &room, "after").await;
    assert_eq!(ack["ok"], true, "{ack}");
    let after = socket.next_of("message").await;
    assert_eq!((after["text"].clone(), after["seq"].clone()), (json!("after"), json!(before["seq"].as_i64().unwrap() + 1)));
    let (status, _, bob) = post(&server, "/api/auth/register", json!({"email": "bob@x.io", "name": "Bob", "password": PASSWORD}), None).await;
    assert_eq!(status, 201, "{bob}");
    assert!(server.is_running());
}

fn copy_db(from: &str, to: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_server")).args(["copy-db", "--from", from, "--to", to]).output().unwrap()
}

#[tokio::test]
async fn copy_db_moves_accounts_sessions_rooms_and_history_to_postgres() {
    // An embedded deployment with two users, a room and some history.
    let mut old = ServerProcess::start(&[("DATABASE_URL", "")]).await;
    let ann = old.register("ann@x.io").await;
    let bob = old.register("bob@x.io").await;
    let room = create_room(&old, &ann, "Lobby").await;
    let (mut socket, _) = socket_to(old.addr, Some(&ann)).await;
    assert_eq!(socket.request(json!({"type": "join", "room": room})).await["ok"], true);
    for text in ["one", "two", "three"] {
        assert_eq!(send(&mut socket, &room, text).await["ok"], true);
    }
    let (_, before) = get(&old, "/api/auth/me", Some(&bob)).await;
    drop(socket);
    assert!(old.terminate());

    let (_cluster, target) = fresh_database();
    let source = format!("sqlite://{}", old.data.path().join("tether.db").display());
    let output = copy_db(&source, &target);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("copied 2 users, 2 sessions, 1 rooms, 3 messages"), "{stdout}");
    assert!(stdout.contains("JWT secret: copied"), "{stdout}");

    let new = ServerProcess::start(&[("DATABASE_URL", &target)]).await;
    // Old cookies stay valid: the session and the secret came along.
    let (status, me) = get(&new, "/api/auth/me", Some(&bob)).await;
    assert_eq!((status, &me), (200, &before));
    let (status, head, login) = post(&new, "/api/auth/login", json!({"email": "ann@x.io", "password": PASSWORD}), None).await;
    assert_eq!(status, 200, "{login}");
    let (mut socket, _) = socket_to(new.addr, Some(&cookie_of(&head))).await;
    let join = socket.request(json!({"type": "join", "room": room})).await;
    let history = join["history"].as_array().expect("history").clone();
    let texts: Vec<_> = history.iter().map(|m| (m["text"].clone(), m["seq"].clone(), m["from"]["name"].clone())).collect();
    assert_eq!(
        texts,
        vec![(json!("one"), json!(1), json!("ann@x.io")), (json!("two"), json!(2), json!("ann@x.io")), (json!("three"), json!(3), json!("ann@x.io"))]
    );
    // New messages continue the room's numbering and its ids.
    let ack = send(&mut socket, &room, "four").await;
    let last_id: i64 = history[2]["id"].as_str().unwrap().parse().unwrap();
    assert!(ack["id"].as_str().unwrap().parse::<i64>().unwrap() > last_id, "{ack}");
    assert_eq!(socket.next_of("message").await["seq"], 4);

    let again = copy_db(&source, &target);
    assert_one_line_failure_of_copy(&again, "is not empty");
}

fn assert_one_line_failure_of_copy(output: &std::process::Output, expected: &str) {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(expected) && stderr.trim().lines().count() == 1, "{stderr}");
}

#[test]
fn copy_db_refuses_wrong_backends_and_a_missing_source() {
    let nowhere = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}", nowhere.path().join("absent.db").display());
    let target = "postgres:///postgres?host=/nonexistent";
    assert_one_line_failure_of_copy(&copy_db(&missing, target), "no such SQLite file");
    assert_one_line_failure_of_copy(&copy_db(target, &missing), "--from must be an sqlite://");
    let usage = Command::new(env!("CARGO_BIN_EXE_server")).args(["copy-db", "--from"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

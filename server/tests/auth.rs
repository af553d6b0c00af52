//! `/api/auth/*`: every row and failure code, the cookie's flags, the request
//! rules (415, 413, 400, 403 origin, 429), and tokens that never authenticate.

mod common;

use axum::http::{header, Method, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{start, start_with, TestServer, PASSWORD};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

async fn post(server: &TestServer, path: &str, body: Value) -> common::Reply {
    server.call(Method::POST, path).json(body).send().await
}

async fn me(server: &TestServer, cookie: &str) -> StatusCode {
    server.call(Method::GET, "/api/auth/me").cookie(cookie).send().await.status
}

#[tokio::test]
async fn register_logs_in_and_answers_the_user_without_secrets() {
    let server = start().await;
    let reply = post(&server, "/api/auth/register", json!({"email": "Ann@Example.com", "name": " Ann ", "password": PASSWORD})).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let user = &reply.body["user"];
    assert_eq!(user["email"], "Ann@Example.com");
    assert_eq!(user["name"], "Ann");
    assert_eq!(user["role"], "user");
    assert!(user["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(user.as_object().unwrap().len(), 4, "only id, name, email, role: {user}");
    assert!(reply.body["ticket"].as_str().is_some_and(|t| t.len() >= 32));
    let text = reply.body.to_string();
    assert!(!text.contains(PASSWORD) && !text.contains("argon2"), "{text}");

    let me = server.call(Method::GET, "/api/auth/me").cookie(&reply.cookie()).send().await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["user"], *user);
}

#[tokio::test]
async fn the_cookie_carries_every_flag() {
    let server = start_with(&[("TETHER_TOKEN_TTL_SECS", "3600")]).await;
    let reply = post(&server, "/api/auth/register", json!({"email": "a@x.io", "name": "A", "password": PASSWORD})).await;
    let cookie = reply.set_cookie();
    let attributes: Vec<String> = cookie.split(';').map(|a| a.trim().to_ascii_lowercase()).collect();
    assert!(attributes[0].starts_with("tether_session="));
    assert!(attributes.contains(&"httponly".into()), "{cookie}");
    assert!(attributes.contains(&"path=/".into()), "{cookie}");
    assert!(attributes.contains(&"samesite=lax".into()), "{cookie}");
    assert!(attributes.contains(&"max-age=3600".into()), "Max-Age no later than exp: {cookie}");
    assert!(!attributes.iter().any(|a| a.starts_with("domain")), "{cookie}");
    assert!(!attributes.contains(&"secure".into()), "plain http is not Secure: {cookie}");

    // The JWT inside: HS256, and exp exactly Max-Age after iat.
    let token = cookie.split(';').next().unwrap().trim_start_matches("tether_session=");
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
    for claim in ["sub", "sid", "name", "role", "iss"] {
        assert!(claims.get(claim).is_some(), "{claim} in {claims}");
    }

    for vars in [&[("TETHER_PUBLIC_ORIGIN", "https://chat.example.com")][..], &[("TETHER_COOKIE_SECURE", "true")][..]] {
        let secure = start_with(vars).await;
        let reply = post(&secure, "/api/auth/register", json!({"email": "a@x.io", "name": "A", "password": PASSWORD})).await;
        assert!(reply.set_cookie().to_ascii_lowercase().split(';').any(|a| a.trim() == "secure"), "{vars:?}");
    }
}

#[tokio::test]
async fn register_refuses_bad_fields_with_their_codes() {
    let server = start().await;
    let cases = [
        (json!({"email": "not-an-email", "name": "A", "password": PASSWORD}), "invalid_email"),
        (json!({"email": "a@x.io", "name": "  ", "password": PASSWORD}), "invalid_name"),
        (json!({"email": "a@x.io", "name": "x".repeat(51), "password": PASSWORD}), "invalid_name"),
        (json!({"email": "a@x.io", "name": "A", "password": "1234567"}), "weak_password"),
        (json!({"email": "a@x.io", "name": "A"}), "bad_request"),
        (json!({"email": "a@x.io", "name": 5, "password": PASSWORD}), "bad_request"),
        (json!([1, 2]), "bad_request"),
    ];
    for (body, code) in cases {
        let reply = post(&server, "/api/auth/register", body.clone()).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, code), "{body}");
        assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Exactly eight characters is enough.
    let reply = post(&server, "/api/auth/register", json!({"email": "a@x.io", "name": "A", "password": "12345678"})).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

#[tokio::test]
async fn emails_are_taken_without_regard_to_case() {
    let server = start().await;
    server.register("ann@x.io", "Ann").await;
    let reply = post(&server, "/api/auth/register", json!({"email": "ANN@X.IO", "name": "Other", "password": PASSWORD})).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "email_taken"));
    // ... and logging in ignores case too.
    let reply = post(&server, "/api/auth/login", json!({"email": "Ann@X.io", "password": PASSWORD})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["user"]["email"], "ann@x.io");
}

#[tokio::test]
async fn every_request_rule_answers_in_the_error_shape() {
    let server = start().await;
    let no_type = server.call(Method::POST, "/api/auth/login").raw(None, r#"{"email":"a@x.io","password":"x"}"#).send().await;
    assert_eq!((no_type.status, no_type.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let text = server.call(Method::POST, "/api/auth/login").raw(Some("text/plain"), "hi").send().await;
    assert_eq!((text.status, text.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let malformed = server.call(Method::POST, "/api/auth/login").raw(Some("application/json"), "{oops").send().await;
    assert_eq!((malformed.status, malformed.code()), (StatusCode::BAD_REQUEST, "bad_request"));
    let huge = format!(r#"{{"email":"a@x.io","password":"{}"}}"#, "x".repeat(65 * 1024));
    let too_large = server.call(Method::POST, "/api/auth/login").raw(Some("application/json"), huge).send().await;
    assert_eq!((too_large.status, too_large.code()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    let unknown = server.call(Method::GET, "/api/nothing/here").send().await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "not_found"));
    let wrong_method = server.call(Method::GET, "/api/auth/login").send().await;
    assert_eq!((wrong_method.status, wrong_method.code()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    let health = server.call(Method::GET, "/healthz").send().await;
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test]
async fn writes_from_a_foreign_origin_are_refused() {
    let server = start().await;
    let body = json!({"email": "a@x.io", "name": "A", "password": PASSWORD});
    for origin in ["http://evil.test", "null", &format!("{}.evil.test", server.origin()), &server.origin().replace("http:", "https:")] {
        let reply = server.call(Method::POST, "/api/auth/register").header("origin", origin).json(body.clone()).send().await;
        assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden_origin"), "{origin}");
    }
    let logout = server.call(Method::POST, "/api/auth/logout").header("origin", "http://evil.test").send().await;
    assert_eq!(logout.status, StatusCode::FORBIDDEN);
    // Reads are not state-changing.
    let read = server.call(Method::GET, "/api/rooms").header("origin", "http://evil.test").send().await;
    assert_eq!(read.status, StatusCode::OK);
    let localhost = format!("http://localhost:{}", server.addr.port());
    for (i, origin) in [server.origin(), localhost].iter().enumerate() {
        let reply = server
            .call(Method::POST, "/api/auth/register")
            .header("origin", origin)
            .json(json!({"email": format!("user{i}@x.io"), "name": "A", "password": PASSWORD}))
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{origin}");
    }
}

#[tokio::test]
async fn bad_credentials_get_one_answer_for_unknown_email_and_wrong_password() {
    let server = start().await;
    server.register("ann@x.io", "Ann").await;
    let wrong = post(&server, "/api/auth/login", json!({"email": "ann@x.io", "password": "wrong password"})).await;
    let unknown = post(&server, "/api/auth/login", json!({"email": "bob@x.io", "password": PASSWORD})).await;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::UNAUTHORIZED, "bad_credentials"));
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(wrong.body, unknown.body);
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());
    let missing = post(&server, "/api/auth/login", json!({"email": "ann@x.io"})).await;
    assert_eq!((missing.status, missing.code()), (StatusCode::BAD_REQUEST, "bad_request"));
}

#[tokio::test]
async fn ten_failures_lock_an_email_even_for_the_right_password() {
    let server = start().await;
    server.register("ann@x.io", "Ann").await;
    for _ in 0..10 {
        let reply = post(&server, "/api/auth/login", json!({"email": "ann@x.io", "password": "wrong password"})).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let locked = post(&server, "/api/auth/login", json!({"email": "ANN@x.io", "password": PASSWORD})).await;
    assert_eq!((locked.status, locked.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let retry_after: u64 = locked.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((800..=901).contains(&retry_after), "{retry_after}");
    // Another account is not locked.
    server.register("bob@x.io", "Bob").await;
    assert_eq!(post(&server, "/api/auth/login", json!({"email": "bob@x.io", "password": PASSWORD})).await.status, StatusCode::OK);
}

#[tokio::test]
async fn sixty_attempts_a_minute_from_one_address() {
    let server = start().await;
    for i in 0..60 {
        let reply = post(&server, "/api/auth/login", json!({"email": format!("u{i}@x.io"), "password": "whatever1"})).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let limited = post(&server, "/api/auth/login", json!({"email": "new@x.io", "password": "whatever1"})).await;
    assert_eq!((limited.status, limited.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(limited.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn me_and_ticket_need_a_session() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    for (method, path) in [(Method::GET, "/api/auth/me"), (Method::POST, "/api/auth/ticket")] {
        let anonymous = server.call(method.clone(), path).send().await;
        assert_eq!((anonymous.status, anonymous.code()), (StatusCode::UNAUTHORIZED, "not_authenticated"), "{path}");
        let garbage = server.call(method.clone(), path).cookie("tether_session=garbage").send().await;
        assert_eq!(garbage.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(server.call(method, path).cookie(&ann.cookie).send().await.status, StatusCode::OK, "{path}");
    }
    let first = server.ticket(&ann.cookie).await;
    assert_ne!(first, server.ticket(&ann.cookie).await, "each ticket is new");
}

#[tokio::test]
async fn logout_revokes_the_session_at_once_and_clears_the_cookie() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let other_browser = server.login("ann@x.io").await;
    let reply = server.call(Method::POST, "/api/auth/logout").cookie(&ann.cookie).send().await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let cleared = reply.set_cookie().to_ascii_lowercase();
    assert!(cleared.starts_with("tether_session=;") && cleared.contains("max-age=0"), "{cleared}");
    // The same JWT stops working, though it has not expired.
    assert_eq!(me(&server, &ann.cookie).await, StatusCode::UNAUTHORIZED);
    // Another session of the same user goes on.
    assert_eq!(me(&server, &other_browser.cookie).await, StatusCode::OK);
    // Logging out without a session is fine too.
    assert_eq!(server.call(Method::POST, "/api/auth/logout").send().await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn admin_emails_win_at_register_and_at_every_login() {
    let server = start_with(&[("TETHER_ADMIN_EMAILS", "boss@x.io, other@x.io")]).await;
    let boss = server.register("Boss@X.io", "Boss").await;
    assert_eq!(boss.user["role"], "admin");
    assert_eq!(server.register("ann@x.io", "Ann").await.user["role"], "user");
    // A stored demotion is undone by the configuration at the next login.
    let demoted = server
        .call(Method::PUT, &format!("/api/admin/users/{}/role", boss.id()))
        .cookie(&boss.cookie)
        .json(json!({"role": "user"}))
        .send()
        .await;
    assert_eq!(demoted.body["user"]["role"], "user");
    assert_eq!(server.login("boss@x.io").await.user["role"], "admin");
}

/// Claims as the server signs them, for forging variants.
fn claims(server: &TestServer, account: &common::Account) -> serde_json::Map<String, Value> {
    let token = account.cookie.trim_start_matches("tether_session=");
    let payload = token.split('.').nth(1).unwrap();
    let _ = server;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The generated secret: in `server_secrets` on Postgres, in the data directory's file on SQLite.
async fn secret_of(server: &TestServer) -> Vec<u8> {
    match &server.state.db {
        server::db::Db::Postgres(pool) => sqlx::query_scalar::<_, String>("SELECT value FROM server_secrets WHERE name = 'jwt'")
            .fetch_one(pool)
            .await
            .unwrap()
            .into_bytes(),
        server::db::Db::Sqlite(_) => std::fs::read(server.state.settings.data_dir.join(server::auth::token::SECRET_FILE)).unwrap(),
    }
}

fn sign(alg: Algorithm, claims: &serde_json::Map<String, Value>, secret: &[u8]) -> String {
    format!("tether_session={}", encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap())
}

#[tokio::test]
async fn tokens_that_must_never_authenticate() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let secret = secret_of(&server).await;
    let good = claims(&server, &ann);
    // The forging itself is right: the same claims and secret do authenticate.
    assert_eq!(me(&server, &sign(Algorithm::HS256, &good, &secret)).await, StatusCode::OK);

    let without = |name: &str| {
        let mut c = good.clone();
        c.remove(name);
        c
    };
    let with = |name: &str, value: Value| {
        let mut c = good.clone();
        c.insert(name.into(), value);
        c
    };
    let now = good["iat"].as_i64().unwrap();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good).unwrap());
    // Change a signature character in the middle (the last one may only hold padding bits).
    let signed = sign(Algorithm::HS256, &good, &secret);
    let middle = signed.len() - 20;
    let flipped = if &signed[middle..middle + 1] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &signed[..middle], &signed[middle + 1..]);
    let cases = [
        ("alg none", format!("tether_session={header}.{body}.")),
        ("bad signature", tampered),
        ("another secret", sign(Algorithm::HS256, &good, b"another secret that is long enough to use")),
        ("HS512", sign(Algorithm::HS512, &good, &secret)),
        ("missing exp", sign(Algorithm::HS256, &without("exp"), &secret)),
        ("missing iss", sign(Algorithm::HS256, &without("iss"), &secret)),
        ("missing sub", sign(Algorithm::HS256, &without("sub"), &secret)),
        ("missing sid", sign(Algorithm::HS256, &without("sid"), &secret)),
        ("wrong iss", sign(Algorithm::HS256, &with("iss", json!("someone-else")), &secret)),
        ("expired beyond leeway", sign(Algorithm::HS256, &with("exp", json!(now - 120)), &secret)),
        ("unknown session", sign(Algorithm::HS256, &with("sid", json!("no-such-session")), &secret)),
        ("sub of another user", sign(Algorithm::HS256, &with("sub", json!("someone")), &secret)),
    ];
    for (what, cookie) in &cases {
        assert_eq!(me(&server, cookie).await, StatusCode::UNAUTHORIZED, "{what}");
    }

    // A revoked session: the genuine cookie stops working after logout.
    server.call(Method::POST, "/api/auth/logout").cookie(&ann.cookie).send().await;
    assert_eq!(me(&server, &ann.cookie).await, StatusCode::UNAUTHORIZED, "revoked session");
}

#[tokio::test]
async fn a_session_past_its_expiry_does_not_authenticate() {
    // Two seconds of lifetime in whole seconds leave at least one for the first check.
    let server = start_with(&[("TETHER_TOKEN_TTL_SECS", "2")]).await;
    let ann = server.register("ann@x.io", "Ann").await;
    assert_eq!(me(&server, &ann.cookie).await, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    // Within the JWT's small leeway, but the session row has expired.
    assert_eq!(me(&server, &ann.cookie).await, StatusCode::UNAUTHORIZED);
}

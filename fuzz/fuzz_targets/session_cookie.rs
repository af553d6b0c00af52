//! The session reading path without a database: the `Cookie` header(s) read
//! by axum_extra's `CookieJar` (as `auth::session_from_headers` does), then
//! `Keys::verify` of the `tether_session` value with a fixed secret.
//!
//! The input is the value of one `Cookie` header, or of several separated by
//! `\n`. Invariants: no panic; the only token that verifies is the one this
//! target signed (nothing is forged); and that token, appended to any
//! well-formed header, is still found and verified.
#![no_main]

use std::sync::OnceLock;

use axum_extra::extract::cookie::CookieJar;
use http::header::{HeaderMap, HeaderValue, COOKIE};
use libfuzzer_sys::fuzz_target;
use server::auth::token::{Claims, Keys, ISSUER};
use server::auth::COOKIE_NAME;
use tether_protocol::Role;

const SECRET: &[u8] = b"tether-fuzz-secret-0123456789abcdef";

struct Fixture {
    keys: Keys,
    token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys = Keys::new(SECRET);
        let token = keys.sign(&Claims {
            sub: "u1".into(),
            sid: "s1".into(),
            name: "Ann".into(),
            role: Role::User,
            iat: 1_700_000_000,
            // 2100-01-01: valid for as long as this target is run.
            exp: 4_102_444_800,
            iss: ISSUER.into(),
        });
        if std::env::var_os("TETHER_FUZZ_PRINT_TOKEN").is_some() {
            eprintln!("{COOKIE_NAME}={token}");
        }
        Fixture { keys, token }
    })
}

/// The claims of the session cookie in `headers`, read as the server reads it.
fn session_claims(headers: &HeaderMap) -> Option<(String, Claims)> {
    let jar = CookieJar::from_headers(headers);
    let cookie = jar.get(COOKIE_NAME)?;
    let claims = fixture().keys.verify(cookie.value())?;
    Some((cookie.value().to_owned(), claims))
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();

    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value);
        }
    }
    if let Some((value, claims)) = session_claims(&headers) {
        assert_eq!(value, fixture.token, "a token this target never signed was accepted");
        assert_eq!((claims.sub.as_str(), claims.sid.as_str(), claims.iss.as_str()), ("u1", "s1", ISSUER));
    }

    // Whatever cookies come before it, a valid session cookie last is read.
    if !data.contains(&b'\n') {
        let mut line = data.to_vec();
        line.extend_from_slice(format!("; {COOKIE_NAME}={}", fixture.token).as_bytes());
        if let Ok(value) = HeaderValue::from_bytes(&line) {
            if value.to_str().is_ok() {
                let mut headers = HeaderMap::new();
                headers.insert(COOKIE, value);
                let found = session_claims(&headers);
                assert!(found.is_some(), "the session cookie after {:?} was not read", String::from_utf8_lossy(data));
            }
        }
    }
});

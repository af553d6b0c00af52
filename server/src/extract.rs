//! Request extractors shared by every resource.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::config::Settings;
use crate::error::ApiError;
use crate::AppState;

/// `Json<T>` whose rejections answer in the contract's error shape:
/// 415 without a JSON content type, 413 over the body limit, 400 otherwise.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// The client's address, for per-client limits: the connection's peer, or,
/// when that peer is a trusted proxy (`TETHER_TRUSTED_PROXIES`), the address
/// its `X-Forwarded-For` names (see [`client_ip`]). `0.0.0.0` for a request
/// that did not come over a connection (tests calling the router directly).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(ClientIp(client_ip(peer, &parts.headers, &state.settings)))
    }
}

/// The client address of a request from `peer`. A peer outside the trusted
/// proxies is the client. From a trusted one, `X-Forwarded-For` (every such
/// header, in order) is read from the right, since each proxy appends the
/// address it received from: the first hop that is not itself a trusted proxy
/// is the client. When every hop is trusted, the leftmost is; when a hop does
/// not parse as an address, the last trusted hop before it is. IPv4-mapped IPv6
/// addresses count as the IPv4 address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, settings: &Settings) -> IpAddr {
    let mut client = peer.to_canonical();
    if !settings.is_trusted_proxy(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) else { break };
        client = ip;
        if !settings.is_trusted_proxy(ip) {
            break;
        }
    }
    client
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The key a per-client limit counts under: an IPv4 address itself, an IPv6
/// address its /64 network (one subscriber's usual allocation, so a client
/// cannot dodge a limit, or fill its table, by cycling through its own
/// addresses). IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(proxies: &str) -> Settings {
        let leptos = leptos::config::LeptosOptions::builder()
            .output_name("tether")
            .site_addr("127.0.0.1:3000".parse::<SocketAddr>().unwrap())
            .build();
        let file = include_str!("../../Leptos.toml");
        let proxies = proxies.to_string();
        Settings::resolve(leptos, file, move |name| (name == "TETHER_TRUSTED_PROXIES").then(|| proxies.clone())).unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_FORWARDED_FOR, value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let s = settings("10.0.0.0/8");
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &headers, &s), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("192.0.2.1"), &headers, &s), ip("192.0.2.1"), "an untrusted peer is the client");
        assert_eq!(client_ip(ip("10.1.1.1"), &HeaderMap::new(), &s), ip("10.1.1.1"), "no header: the proxy itself");
        let none = settings("");
        assert_eq!(client_ip(ip("10.1.1.1"), &headers, &none), ip("10.1.1.1"), "by default no proxy is trusted");
    }

    #[test]
    fn limits_count_an_ipv6_client_by_its_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("2001:db8:1:2:bbbb::9")), client_key(ip("2001:db8:1:2::7")));
        assert_ne!(client_key(ip("2001:db8:1:3::1")), client_key(ip("2001:db8:1:2::1")));
        assert_eq!(client_key(ip("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(client_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let s = settings("10.0.0.0/8, ::1");
        // The client forged the first entry; the trusted proxies appended the rest.
        let headers = forwarded(&["1.1.1.1, 198.51.100.4", "10.0.0.2"]);
        assert_eq!(client_ip(ip("::1"), &headers, &s), ip("198.51.100.4"));
        assert_eq!(client_ip(ip("::ffff:10.0.0.3"), &headers, &s), ip("198.51.100.4"), "IPv4-mapped peer");
        let all_trusted = forwarded(&["10.0.0.9, 10.0.0.8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &all_trusted, &s), ip("10.0.0.9"));
        let garbage = forwarded(&["198.51.100.4, unknown, 10.0.0.8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &garbage, &s), ip("10.0.0.8"), "stops at what does not parse");
    }
}

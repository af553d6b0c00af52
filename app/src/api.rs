//! Calls to the JSON API from the browser, with the shared crate's types.
//! On the server these are never called (they run from event handlers only).

use serde::de::DeserializeOwned;
use serde::Serialize;
use tether_protocol::ErrorBody;

#[cfg(feature = "hydrate")]
async fn finish<T: DeserializeOwned>(sent: Result<gloo_net::http::Response, gloo_net::Error>) -> Result<T, ErrorBody> {
    let response = sent.map_err(|e| ErrorBody::new("network", e.to_string()))?;
    if response.ok() {
        // 204 and other empty answers decode as `null` (unit).
        let text = response.text().await.unwrap_or_default();
        let text = if text.is_empty() { "null" } else { text.as_str() };
        return serde_json::from_str(text).map_err(|e| ErrorBody::new("bad_response", e.to_string()));
    }
    let status = response.status();
    match response.json::<tether_protocol::ErrorResponse>().await {
        Ok(body) => Err(body.error),
        Err(_) => Err(ErrorBody::new("http_error", format!("the server answered {status}"))),
    }
}

pub async fn send<B: Serialize, T: DeserializeOwned>(method: &str, url: &str, body: Option<&B>) -> Result<T, ErrorBody> {
    #[cfg(feature = "hydrate")]
    {
        use gloo_net::http::{Method, RequestBuilder};
        let method = match method {
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "DELETE" => Method::DELETE,
            _ => Method::GET,
        };
        let builder = RequestBuilder::new(url).method(method);
        let sent = match body {
            Some(body) => match builder.json(body) {
                Ok(request) => request.send().await,
                Err(e) => return Err(ErrorBody::new("bad_request", e.to_string())),
            },
            None => builder.send().await,
        };
        finish(sent).await
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = (method, url, body.map(serde_json::to_value));
        Err(ErrorBody::new("unavailable", "API calls are made from the browser"))
    }
}

pub async fn get<T: DeserializeOwned>(url: &str) -> Result<T, ErrorBody> {
    send::<(), T>("GET", url, None).await
}

pub async fn post<B: Serialize, T: DeserializeOwned>(url: &str, body: &B) -> Result<T, ErrorBody> {
    send("POST", url, Some(body)).await
}

/// A request without a body (`POST /api/auth/logout`, `DELETE ...`).
pub async fn call<T: DeserializeOwned>(method: &str, url: &str) -> Result<T, ErrorBody> {
    send::<(), T>(method, url, None).await
}

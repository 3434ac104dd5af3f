//! The HTTP client side every network destination shares.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;

use super::destination::DeliveryError;

/// A hyper client over [`connector`] sending whole bodies (OTLP/HTTP).
pub type Client =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A hyper connector with TCP_NODELAY (without it each mid-sized insert stalls ~40 ms on Nagle
/// + delayed ACK) and rustls for `https://`.
pub fn connector(timeout: Duration) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| e.to_string())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// Sends `req`, waiting at most `timeout` for the answer and again for its body. A success is
/// its status and body; anything else a [`DeliveryError`] read as OTLP/HTTP reads statuses,
/// its message naming the URL.
pub async fn post(
    client: &Client,
    timeout: Duration,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), DeliveryError> {
    let retry = DeliveryError::Retryable;
    let url = req.uri().to_string();
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| retry(format!("POST {url}: timed out after {timeout:?}")))?
        .map_err(|e| retry(format!("POST {url}: {e}")))?;
    let status = resp.status();
    let body = tokio::time::timeout(timeout, resp.into_body().collect())
        .await
        .map_err(|_| retry(format!("POST {url}: reading the response timed out")))?
        .map_err(|e| retry(format!("POST {url}: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(DeliveryError::from_http_status(
            status.as_u16(),
            format!(
                "POST {url}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        ));
    }
    Ok((status, body))
}

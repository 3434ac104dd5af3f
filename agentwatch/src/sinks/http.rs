//! The HTTP client side every network destination shares.
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;

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

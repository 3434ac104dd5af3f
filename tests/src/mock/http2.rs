//! The HTTP/2 front (ALPN `h2`), on the `h2` crate: each stream is one request, served
//! concurrently with the others on its connection; responses are written whole or as one DATA
//! frame per event, optionally gzip- or zstd-encoded, exactly as the HTTP/1.1 front encodes
//! them. A truncated response is a stream reset (`INTERNAL_ERROR`) after a few events.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

use super::app::{self, AppState, Body, Request, Response, TRUNCATE_AFTER_EVENTS};
use super::http1::{MAX_BODY, StreamEnc, encode_whole, encoding_headers};

pub const PROTOCOL: &str = "h2";
/// Streams a client may open at once on a connection.
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// How long a connection may sit without a new stream.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a request body may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one connection until the client closes it, errs or idles out.
pub async fn serve<IO>(io: IO, state: Arc<AppState>, conn_id: u64)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .handshake::<_, Bytes>(io);
    let Ok(Ok(mut conn)) = timeout(REQUEST_TIMEOUT, handshake).await else {
        return;
    };
    let mut streams = tokio::task::JoinSet::new();
    // Polling `accept` also drives the connection's I/O for the streams being answered.
    while let Ok(Some(Ok((req, respond)))) = timeout(IDLE_TIMEOUT, conn.accept()).await {
        streams.spawn(answer(req, respond, state.clone(), conn_id));
        while streams.try_join_next().is_some() {}
    }
    streams.abort_all();
}

/// Reads one stream's request and writes its response.
async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    state: Arc<AppState>,
    conn_id: u64,
) {
    let (parts, mut recv) = req.into_parts();
    let read = timeout(REQUEST_TIMEOUT, async {
        let mut body = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.ok()?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return None;
            }
        }
        Some(body)
    })
    .await;
    let Ok(Some(body)) = read else {
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    };
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    if let Some(authority) = parts.uri.authority() {
        headers.push(("host".into(), authority.to_string()));
    }
    // HPACK makes wire bytes of a head unknowable here: count names, values and body.
    let wire_bytes = headers
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + body.len();
    let request = Request {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        headers,
        body,
        wire_bytes: wire_bytes as u64,
    };
    let resp = app::handle(&state, &request, conn_id, PROTOCOL);
    drop(request);
    match send(&mut respond, &resp).await {
        Ok((truncated, written)) => state.finish(&resp, truncated, written),
        Err(_) => state.finish(&resp, true, 0),
    }
}

fn head(resp: &Response, extra: &[(&str, String)]) -> http::Response<()> {
    let mut b = http::Response::builder().status(resp.status);
    for (k, v) in &resp.headers {
        // Connection-specific fields are not allowed in HTTP/2.
        if !matches!(
            k.to_ascii_lowercase().as_str(),
            "connection" | "transfer-encoding" | "keep-alive"
        ) {
            b = b.header(k.as_str(), v.as_str());
        }
    }
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.header("server", "mock-llm")
        .body(())
        .unwrap_or_else(|_| http::Response::new(()))
}

/// Writes a response. Returns (truncated, body bytes sent).
async fn send(
    respond: &mut h2::server::SendResponse<Bytes>,
    resp: &Response,
) -> Result<(bool, u64), h2::Error> {
    let mut extra: Vec<(&str, String)> = encoding_headers(resp);
    match &resp.body {
        Body::Full(body) => {
            let body = encode_whole(resp, body);
            extra.push(("content-length", body.len().to_string()));
            let mut stream = respond.send_response(head(resp, &extra), body.is_empty())?;
            if resp.truncate {
                let half = Bytes::copy_from_slice(&body[..body.len() / 2]);
                let n = half.len() as u64;
                stream.send_data(half, false)?;
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return Ok((true, n));
            }
            let n = body.len() as u64;
            if !body.is_empty() {
                stream.send_data(Bytes::from(body), true)?;
            }
            Ok((false, n))
        }
        Body::Events(events) => {
            let mut stream = respond.send_response(head(resp, &extra), false)?;
            let cut = TRUNCATE_AFTER_EVENTS.min(events.len().saturating_sub(1));
            let mut enc = StreamEnc::for_response(resp);
            let mut written = 0u64;
            for (i, ev) in events.iter().enumerate() {
                if resp.truncate && i == cut {
                    stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Ok((true, written));
                }
                if i > 0 && resp.event_delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(resp.event_delay_ms)).await;
                }
                let data = match enc.as_mut() {
                    Some(e) => e.event(ev).unwrap_or_default(),
                    None => ev.clone(),
                };
                if data.is_empty() {
                    continue;
                }
                written += data.len() as u64;
                stream.send_data(Bytes::from(data), false)?;
            }
            let rest = match enc {
                Some(e) => e.finish().unwrap_or_default(),
                None => Vec::new(),
            };
            written += rest.len() as u64;
            stream.send_data(Bytes::from(rest), true)?;
            Ok((false, written))
        }
    }
}

//! The server name (SNI) of a TLS ClientHello, read from the first bytes a client writes on a
//! socket. Used only where no hook sees the plaintext, to tell LLM traffic from the rest.

/// The `server_name` of the ClientHello that starts `bytes` (a TLS record), if it has one
/// and the bytes hold it. Anything else (not TLS, truncated, malformed) is `None`.
pub fn server_name(bytes: &[u8]) -> Option<String> {
    let mut r = Reader(bytes);
    // Record: handshake (22), version, length.
    if r.u8()? != 22 {
        return None;
    }
    r.take(2)?;
    let record_len = r.u16()? as usize;
    let mut r = Reader(r.0.get(..record_len.min(r.0.len()))?);
    // Handshake: client_hello (1), 24-bit length.
    if r.u8()? != 1 {
        return None;
    }
    r.take(3)?;
    r.take(2 + 32)?; // legacy_version, random
    let session = r.u8()? as usize;
    r.take(session)?;
    let suites = r.u16()? as usize;
    r.take(suites)?;
    let compression = r.u8()? as usize;
    r.take(compression)?;
    let ext_len = r.u16()? as usize;
    let mut exts = Reader(r.take(ext_len.min(r.0.len()))?);
    while let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) {
        let body = exts.take(len as usize)?;
        if kind != 0 {
            continue;
        }
        // server_name_list: length, then (type, length, name) entries; type 0 = host_name.
        let mut list = Reader(body);
        let list_len = list.u16()? as usize;
        let mut list = Reader(list.take(list_len)?);
        while let Some(name_type) = list.u8() {
            let len = list.u16()? as usize;
            let name = list.take(len)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                return valid.then(|| name.to_ascii_lowercase());
            }
        }
        return None;
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;

    /// A real ClientHello, as rustls writes it for `name`.
    pub(crate) fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn sni_of_a_real_client_hello() {
        let hello = client_hello("API.OpenAI.com");
        assert_eq!(server_name(&hello).as_deref(), Some("api.openai.com"));
        // Cut anywhere before the name: not enough to tell.
        for cut in [0, 1, 5, 9, 43, 60] {
            assert_eq!(server_name(&hello[..cut]), None, "cut at {cut}");
        }
        // An IP address is sent without SNI.
        assert_eq!(server_name(&client_hello("127.0.0.1")), None);
    }

    #[test]
    fn not_tls_or_garbage_is_none() {
        assert_eq!(server_name(b"POST /v1/chat/completions HTTP/1.1\r\n"), None);
        assert_eq!(server_name(&[22, 3, 1, 0, 4, 1, 0, 0, 0]), None);
        let hello = client_hello("api.anthropic.com");
        for i in 0..hello.len().min(400) {
            let mut bad = hello.clone();
            bad[i] ^= 0x5a;
            let _ = server_name(&bad);
        }
    }
}

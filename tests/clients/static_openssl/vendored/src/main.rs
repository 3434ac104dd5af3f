//! N OpenAI chat completions on one kept-alive TLS connection through a statically linked,
//! stripped OpenSSL (`SSL_write_ex`/`SSL_read_ex`). usage: client PORT CA_FILE TAG CALLS
use std::io::{Read, Write};
use std::net::TcpStream;

use openssl::ssl::{SslConnector, SslMethod};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, ca, tag, calls] = &args[..] else {
        eprintln!("usage: client PORT CA_FILE TAG CALLS");
        std::process::exit(2);
    };
    let calls: usize = calls.parse().expect("CALLS is a number");
    let mut connector = SslConnector::builder(SslMethod::tls_client()).expect("SSL_CTX");
    connector.set_ca_file(ca).expect("loading the CA");
    let tcp = TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("PORT")))
        .expect("connecting to the mock");
    let mut tls = connector
        .build()
        .connect("127.0.0.1", tcp)
        .expect("the TLS handshake");
    for i in 0..calls {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"say hi {i}"}}]}}"#
        );
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer test\r\nContent-Type: application/json\r\nx-test-tag: {tag}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).expect("writing the request");
        let response = read_response(&mut tls);
        println!("{}", String::from_utf8_lossy(&response));
    }
    let _ = tls.shutdown();
}

/// One HTTP/1.1 response, Content-Length or chunked.
fn read_response(tls: &mut impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = tls.read(&mut chunk).expect("reading the response");
        assert!(n > 0, "the connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match length {
            Some(len) if buf.len() >= end + 4 + len => return buf,
            None if head.contains("transfer-encoding: chunked") && buf.ends_with(b"0\r\n\r\n") => {
                return buf;
            }
            None if !head.contains("transfer-encoding: chunked") => {
                panic!("a response without Content-Length or chunked encoding")
            }
            _ => {}
        }
    }
}

//! A tiny HTTP/1.1 client for the tests: one request per connection (`Connection: close`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::{Error, Result};

/// How long a request may take before the client gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A response as the client received it.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in arrival order, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::header_values(&self.headers, name).next()
    }

    /// All values of a header (name case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        crate::header_values(&self.headers, name).collect()
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error(format!(
                "response body is not JSON ({e}); status {} body {:?}",
                self.status,
                self.text()
            ))
        })
    }
}

/// Sends one request and reads the whole response.
///
/// Adds `host: retry-guard.test` unless `headers` has a host, `content-length` whenever there is
/// a body or the method usually has one, and `connection: close`.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    send_with_timeout(addr, method, path, headers, body, DEFAULT_TIMEOUT)
}

/// [`send`] with an explicit timeout for connecting, writing and each read.
pub fn send_with_timeout(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response> {
    let stream = connect(addr, timeout)?;
    send_on(stream, method, path, headers, body, timeout)
}

/// Opens a connection (bounded by `timeout`).
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| Error(format!("connect to {addr} failed: {e}")))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The request head [`send`] writes (host, content-length and connection added as documented).
pub fn request_head(method: &str, path: &str, headers: &[(&str, &str)], body_len: usize) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        head.push_str("host: retry-guard.test\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let method_has_body = matches!(
        method.to_ascii_uppercase().as_str(),
        "POST" | "PUT" | "PATCH"
    );
    if !has("content-length") && !has("transfer-encoding") && (method_has_body || body_len > 0) {
        head.push_str(&format!("content-length: {body_len}\r\n"));
    }
    if !has("connection") {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Sends one request on an open connection (see [`connect`]) and reads the whole response.
pub fn send_on(
    stream: TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response> {
    let mut bytes = request_head(method, path, headers, body.len()).into_bytes();
    bytes.extend_from_slice(body);
    send_raw_on(stream, method, path, &bytes, timeout)
}

/// Sends a request whose body goes chunked (`transfer-encoding: chunked`, no content-length),
/// one chunk per element of `chunks`.
pub fn send_chunked(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
) -> Result<Response> {
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("transfer-encoding", "chunked"));
    let mut bytes = request_head(method, path, &all, 0).into_bytes();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    let stream = connect(addr, DEFAULT_TIMEOUT)?;
    send_raw_on(stream, method, path, &bytes, DEFAULT_TIMEOUT)
}

/// Writes the rest of a request already begun on `stream` (e.g. the tail of a body whose
/// head and first part were written by hand) and reads the whole response.
pub fn finish_on(
    stream: TcpStream,
    method: &str,
    path: &str,
    rest: &[u8],
    timeout: Duration,
) -> Result<Response> {
    send_raw_on(stream, method, path, rest, timeout)
}

/// Writes raw request bytes and reads the response. A write that fails because the server
/// already answered and closed (e.g. a 413 before the whole body was read) still returns the
/// answer when one can be read.
fn send_raw_on(
    mut stream: TcpStream,
    method: &str,
    path: &str,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Response> {
    let what = match stream.peer_addr() {
        Ok(a) => format!("{method} http://{a}{path}"),
        Err(_) => format!("{method} {path}"),
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let written = stream.write_all(bytes).and_then(|()| stream.flush());
    match read_response(BufReader::new(stream), method) {
        Ok(resp) => Ok(resp),
        Err(e) => match written {
            Err(w) => Err(Error(format!("{what}: write failed: {w}; then: {}", e.0))),
            Ok(()) => Err(Error(format!("{what}: {}", e.0))),
        },
    }
}

fn read_line(r: &mut impl BufRead) -> Result<String> {
    let mut buf = Vec::new();
    r.by_ref().take(64 * 1024).read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        return Err(Error::new(
            "connection closed (or line too long) while reading the response head",
        ));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn read_response(mut r: impl BufRead, method: &str) -> Result<Response> {
    loop {
        let status_line = read_line(&mut r)?;
        let mut parts = status_line.splitn(3, ' ');
        let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
            return Err(Error(format!("bad status line {status_line:?}")));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(Error(format!("bad status line {status_line:?}")));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| Error(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut r)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| Error(format!("bad header line {line:?}")))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if (100..200).contains(&status) {
            continue; // interim response; the real one follows
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.body = crate::backend::read_chunked(&mut r)
                .map_err(|e| Error(format!("bad chunked body: {e}")))?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| Error(format!("bad content-length {len:?}")))?;
            let mut body = vec![0; len];
            r.read_exact(&mut body)
                .map_err(|e| Error(format!("body shorter than content-length {len}: {e}")))?;
            resp.body = body;
        } else {
            r.read_to_end(&mut resp.body)?;
        }
        return Ok(resp);
    }
}

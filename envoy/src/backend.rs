//! A scripted HTTP/1.1 upstream for the end-to-end tests.
//!
//! The server listens on 127.0.0.1 (ephemeral port), runs one thread per connection, honours
//! keep-alive, reads `Content-Length` and chunked request bodies, records every request it
//! receives, and answers each one per a script the test sets:
//!
//! 1. a reply queued for the request's case ([`Backend::push_for_case`]), else
//! 2. the standing reply for its case ([`Backend::on_case`]), else
//! 3. a reply queued for that path ([`Backend::push_for_path`]), else
//! 4. a reply queued for any path ([`Backend::push`]), else
//! 5. the standing reply for that path ([`Backend::on_path`]), else
//! 6. with [`Backend::obey_request_directives`], a reply the request itself asks for through
//!    `x-backend-*` headers (for manual use with curl, see [`directive_reply`]), else
//! 7. the default reply ([`Backend::set_default`]); unset, it is `200` with
//!    `{"ok":true,"seq":<n>}` where `n` counts requests from 1.
//!
//! A request's *case* is the value of its [`CASE_HEADER`] (`x-e2e-case`) header: tests that share
//! one backend (and one Envoy) keep their scripts apart with it. Paths are compared without the
//! query string. A reply may wait for a [`Gate`] (an attempt held "in flight" until the test
//! opens it). Dropping the [`Backend`] stops it: the accept loop ends, every open connection is
//! shut down and every thread is joined.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Longest request line or header line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 256;
/// Largest request body accepted (the tests send small ones).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest a reply waits for its gate before answering anyway.
const GATE_LIMIT: Duration = Duration::from_secs(60);

/// The request header that names a test case (see the module docs).
pub const CASE_HEADER: &str = "x-e2e-case";

/// A latch a reply waits for before it is written: the test holds an attempt in flight and
/// opens the gate when it has seen what it wanted. Clones share the latch.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Self {
        Gate::default()
    }

    /// Lets every reply waiting for this gate (and every later one) go.
    pub fn open(&self) {
        *lock(&self.0 .0) = true;
        self.0 .1.notify_all();
    }

    pub fn is_open(&self) -> bool {
        *lock(&self.0 .0)
    }

    /// Waits until the gate opens, the backend stops, or `limit` passes.
    fn wait(&self, stop: &AtomicBool, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut open = lock(&self.0 .0);
        while !*open && !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let step = (deadline - now).min(Duration::from_millis(50));
            open = self
                .0
                 .1
                .wait_timeout(open, step)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// What the backend answers to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering (or before hanging up).
    pub delay: Duration,
    /// Close the connection without writing any answer.
    pub hang_up: bool,
    /// Wait for this gate (before the delay) when set.
    pub gate: Option<Gate>,
}

impl Reply {
    /// A reply with this status and an empty body.
    pub fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            hang_up: false,
            gate: None,
        }
    }

    /// A reply with this status and a JSON body (`content-type: application/json`).
    pub fn json(status: u16, body: &str) -> Self {
        Reply::new(status)
            .header("content-type", "application/json")
            .body(body)
    }

    /// Closes the connection without answering (after the delay, if any).
    pub fn hang_up() -> Self {
        Reply {
            hang_up: true,
            ..Reply::new(0)
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    /// Waits this long before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Waits until `gate` opens (at most a minute) before answering.
    pub fn gated(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }
}

/// With [`Backend::obey_request_directives`], the reply a request asks for itself, if it asks:
///
/// - `x-backend-status: <code>`: answer with this status (JSON body `{"status":<code>}`);
/// - `x-backend-delay-ms: <n>`: wait this long first (at most 60 s);
/// - `x-backend-state: unchanged`: add `retry-guard-state: unchanged` to the answer;
/// - `x-backend-hang-up: 1`: close the connection without answering.
pub fn directive_reply(headers: &[(String, String)]) -> Option<Reply> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    };
    let status = get("x-backend-status").and_then(|v| v.parse::<u16>().ok());
    let delay = get("x-backend-delay-ms").and_then(|v| v.parse::<u64>().ok());
    let state = get("x-backend-state");
    let hang_up = get("x-backend-hang-up").is_some_and(|v| v == "1" || v == "true");
    if status.is_none() && delay.is_none() && state.is_none() && !hang_up {
        return None;
    }
    let mut reply = if hang_up {
        Reply::hang_up()
    } else {
        let code = status.filter(|c| (200..600).contains(c)).unwrap_or(200);
        Reply::json(code, &format!("{{\"status\":{code}}}"))
    };
    if let Some(state) = state {
        reply = reply.header("retry-guard-state", state);
    }
    if let Some(ms) = delay {
        reply = reply.delay(Duration::from_millis(ms.min(60_000)));
    }
    Some(reply)
}

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// 1 for the first request the backend received, and so on.
    pub seq: u64,
    pub method: String,
    /// The request target as sent (with the query string, if any).
    pub path: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header names lower-cased, in arrival order, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
}

impl RecordedRequest {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::header_values(&self.headers, name).next()
    }

    /// All values of a header (name case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        crate::header_values(&self.headers, name).collect()
    }

    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct Script {
    default: Option<Reply>,
    queue: VecDeque<Reply>,
    path_queue: HashMap<String, VecDeque<Reply>>,
    per_path: HashMap<String, Reply>,
    case_queue: HashMap<String, VecDeque<Reply>>,
    per_case: HashMap<String, Reply>,
    directives: bool,
}

impl Script {
    fn next(&mut self, req: &RecordedRequest, seq: u64) -> Reply {
        if let Some(case) = req.header(CASE_HEADER) {
            if let Some(reply) = self.case_queue.get_mut(case).and_then(VecDeque::pop_front) {
                return reply;
            }
            if let Some(reply) = self.per_case.get(case) {
                return reply.clone();
            }
        }
        let key = strip_query(&req.path);
        if let Some(reply) = self.path_queue.get_mut(key).and_then(VecDeque::pop_front) {
            return reply;
        }
        if let Some(reply) = self.queue.pop_front() {
            return reply;
        }
        if let Some(reply) = self.per_path.get(key) {
            return reply.clone();
        }
        if self.directives {
            if let Some(reply) = directive_reply(&req.headers) {
                return reply;
            }
        }
        match &self.default {
            Some(reply) => reply.clone(),
            None => Reply::json(200, &format!("{{\"ok\":true,\"seq\":{seq}}}")),
        }
    }
}

struct Shared {
    script: Mutex<Script>,
    requests: Mutex<Vec<RecordedRequest>>,
    arrived: Condvar,
    stop: AtomicBool,
    /// Request heads parsed, counted before the body is read (see [`Backend::heads_seen`]).
    heads: AtomicUsize,
    conns: Mutex<Vec<TcpStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not wedge the backend).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// The scripted upstream. See the module docs.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1 with an ephemeral port.
    pub fn start() -> Result<Backend> {
        Backend::start_on(0)
    }

    /// Starts a backend on 127.0.0.1:`port` (0: the kernel picks one).
    pub fn start_on(port: u16) -> Result<Backend> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| Error(format!("backend: cannot bind 127.0.0.1:{port}: {e}")))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            stop: AtomicBool::new(false),
            heads: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("backend-accept-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(Backend {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sets the reply used when nothing more specific is scripted.
    pub fn set_default(&self, reply: Reply) {
        lock(&self.shared.script).default = Some(reply);
    }

    /// Sets the standing reply for a path (query ignored).
    pub fn on_path(&self, path: &str, reply: Reply) {
        lock(&self.shared.script)
            .per_path
            .insert(strip_query(path).to_string(), reply);
    }

    /// Sets (or with `None` clears) the standing reply for requests of this case.
    pub fn on_case(&self, case: &str, reply: Option<Reply>) {
        let mut script = lock(&self.shared.script);
        match reply {
            Some(r) => {
                script.per_case.insert(case.to_string(), r);
            }
            None => {
                script.per_case.remove(case);
            }
        }
    }

    /// Queues a one-shot reply for the next request of this case.
    pub fn push_for_case(&self, case: &str, reply: Reply) {
        lock(&self.shared.script)
            .case_queue
            .entry(case.to_string())
            .or_default()
            .push_back(reply);
    }

    /// Lets requests choose their own reply through `x-backend-*` headers ([`directive_reply`]).
    pub fn obey_request_directives(&self, on: bool) {
        lock(&self.shared.script).directives = on;
    }

    /// Queues a one-shot reply for the next request to any path.
    pub fn push(&self, reply: Reply) {
        lock(&self.shared.script).queue.push_back(reply);
    }

    /// Queues a one-shot reply for the next request to this path (query ignored).
    pub fn push_for_path(&self, path: &str, reply: Reply) {
        lock(&self.shared.script)
            .path_queue
            .entry(strip_query(path).to_string())
            .or_default()
            .push_back(reply);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests were received so far (complete: head and body).
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// How many request heads (request line and headers) arrived, complete or not. More heads
    /// than [`Backend::request_count`] means a request reached the upstream without its body,
    /// e.g. a proxy forwarded the headers before a filter decided and then reset the stream.
    pub fn heads_seen(&self) -> usize {
        self.shared.heads.load(Ordering::SeqCst)
    }

    /// The requests received so far for a path (query ignored).
    pub fn requests_for(&self, path: &str) -> Vec<RecordedRequest> {
        let key = strip_query(path);
        lock(&self.shared.requests)
            .iter()
            .filter(|r| strip_query(&r.path) == key)
            .cloned()
            .collect()
    }

    /// The requests received so far of a case (their [`CASE_HEADER`] value).
    pub fn requests_for_case(&self, case: &str) -> Vec<RecordedRequest> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.header(CASE_HEADER) == Some(case))
            .cloned()
            .collect()
    }

    /// Waits until at least `n` requests of this case were received; returns them, or an error
    /// after `timeout` that says how many came.
    pub fn wait_for_case(
        &self,
        case: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedRequest>> {
        let deadline = Instant::now() + timeout;
        let mut reqs = lock(&self.shared.requests);
        loop {
            let of_case: Vec<RecordedRequest> = reqs
                .iter()
                .filter(|r| r.header(CASE_HEADER) == Some(case))
                .cloned()
                .collect();
            if of_case.len() >= n {
                return Ok(of_case);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error(format!(
                    "backend: waited {timeout:?} for {n} request(s) of case {case:?}, got {}",
                    of_case.len()
                )));
            }
            reqs = self
                .shared
                .arrived
                .wait_timeout(reqs, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until at least `n` requests were received; returns them all, or an error after
    /// `timeout` that says how many came.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Result<Vec<RecordedRequest>> {
        let deadline = Instant::now() + timeout;
        let mut reqs = lock(&self.shared.requests);
        while reqs.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error(format!(
                    "backend: waited {timeout:?} for {n} request(s), got {}",
                    reqs.len()
                )));
            }
            reqs = self
                .shared
                .arrived
                .wait_timeout(reqs, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(reqs.clone())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a throwaway connection.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for conn in lock(&self.shared.conns).drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let workers: Vec<_> = lock(&self.shared.workers).drain(..).collect();
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.conns).push(clone);
        }
        let worker_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("backend-conn".to_string())
            .spawn(move || serve_connection(stream, worker_shared));
        if let Ok(handle) = spawned {
            let mut workers = lock(&shared.workers);
            workers.retain(|h| !h.is_finished());
            workers.push(handle);
        }
    }
}

fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let parsed = match read_request(&mut reader, &mut writer, &shared.heads) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(e) => {
                let body = format!("bad request: {e}\n");
                let _ = write!(
                    writer,
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                break;
            }
        };
        let keep_alive = parsed.keep_alive;
        // The reply is taken from the script before the request is seen as arrived: a test
        // that waits for this request and then sends another must not find the second one
        // taking the reply (a gated one, say) queued for this one.
        let (req, reply) = {
            let mut reqs = lock(&shared.requests);
            let seq = reqs.len() as u64 + 1;
            let mut req = parsed.request;
            req.seq = seq;
            let reply = lock(&shared.script).next(&req, seq);
            reqs.push(req.clone());
            shared.arrived.notify_all();
            (req, reply)
        };
        let method = req.method.clone();
        if let Some(gate) = &reply.gate {
            gate.wait(&shared.stop, GATE_LIMIT);
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
        }
        if !reply.delay.is_zero() && !sleep_unless_stopped(reply.delay, &shared.stop) {
            break;
        }
        if reply.hang_up {
            let _ = writer.shutdown(Shutdown::Both);
            break;
        }
        let close = !keep_alive
            || reply.headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close")
            });
        if write_reply(&mut writer, &reply, &method, close).is_err() || close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Sleeps for `d` in small steps; false when the backend is stopping.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

struct Parsed {
    request: RecordedRequest,
    keep_alive: bool,
}

/// Reads one line (up to LF), bounded by MAX_LINE; `None` at a clean EOF.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or truncated",
        ));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_request(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    heads: &AtomicUsize,
) -> io::Result<Option<Parsed>> {
    // Skip stray empty lines between pipelined requests (RFC 9112 section 2.2).
    let line = loop {
        match read_line(reader)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line {line:?}")));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(invalid(format!("unsupported version {version:?}")));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| invalid("EOF inside headers"))?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(invalid("too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    heads.fetch_add(1, Ordering::SeqCst);
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let connection = header("connection").unwrap_or("").to_ascii_lowercase();
    let keep_alive = if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
        if len > MAX_BODY {
            return Err(invalid(format!("body of {len} bytes is too large")));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        body
    } else {
        Vec::new()
    };
    Ok(Some(Parsed {
        request: RecordedRequest {
            seq: 0,
            method: method.to_string(),
            path: path.to_string(),
            version: version.to_string(),
            headers,
            body,
            chunked,
        },
        keep_alive,
    }))
}

/// Reads a chunked body (RFC 9112 section 7.1), dropping extensions and trailers.
pub(crate) fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| invalid("EOF in chunk size"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailer section, up to the empty line.
            loop {
                match read_line(reader)? {
                    None => return Ok(body),
                    Some(l) if l.is_empty() => return Ok(body),
                    Some(_) => {}
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("chunked body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

fn write_reply(w: &mut impl Write, reply: &Reply, method: &str, close: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        reply.status,
        reason_phrase(reply.status)
    );
    let no_body = matches!(reply.status, 100..=199 | 204 | 304);
    for (k, v) in &reply.headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !no_body {
        out.push_str(&format!("content-length: {}\r\n", reply.body.len()));
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !no_body && !method.eq_ignore_ascii_case("HEAD") {
        bytes.extend_from_slice(&reply.body);
    }
    w.write_all(&bytes)?;
    w.flush()
}

/// Reason phrases for the statuses the tests use; anything else gets "Status".
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined_and_trailers_dropped() {
        let raw = b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nx-trailer: 1\r\n\r\n";
        let body = read_chunked(&mut &raw[..]).expect("chunked body parses");
        assert_eq!(body, b"abcdefg");
    }

    #[test]
    fn bad_chunk_size_is_an_error() {
        let raw = b"zz\r\nabcd\r\n0\r\n\r\n";
        assert!(read_chunked(&mut &raw[..]).is_err());
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> RecordedRequest {
        RecordedRequest {
            seq: 0,
            method: "POST".into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            chunked: false,
        }
    }

    #[test]
    fn script_order_is_path_queue_then_queue_then_path_then_default() {
        let mut s = Script::default();
        s.per_path.insert("/a".into(), Reply::new(201));
        s.queue.push_back(Reply::new(202));
        s.path_queue
            .entry("/a".into())
            .or_default()
            .push_back(Reply::new(203));
        assert_eq!(s.next(&req("/a?x=1", &[]), 1).status, 203);
        assert_eq!(s.next(&req("/a", &[]), 2).status, 202);
        assert_eq!(s.next(&req("/a", &[]), 3).status, 201);
        let d = s.next(&req("/b", &[]), 4);
        assert_eq!(d.status, 200);
        assert_eq!(d.body, br#"{"ok":true,"seq":4}"#);
    }

    #[test]
    fn case_scripts_come_first_and_stay_apart() {
        let mut s = Script::default();
        s.per_path.insert("/a".into(), Reply::new(201));
        s.per_case.insert("c1".into(), Reply::new(500));
        s.case_queue
            .entry("c1".into())
            .or_default()
            .push_back(Reply::new(429));
        let c1 = req("/a", &[(CASE_HEADER, "c1")]);
        let c2 = req("/a", &[(CASE_HEADER, "c2")]);
        assert_eq!(s.next(&c1, 1).status, 429);
        assert_eq!(s.next(&c1, 2).status, 500);
        assert_eq!(s.next(&c2, 3).status, 201);
    }

    #[test]
    fn directives_only_when_enabled() {
        let mut s = Script::default();
        let r = req(
            "/x",
            &[
                ("x-backend-status", "503"),
                ("x-backend-state", "unchanged"),
            ],
        );
        assert_eq!(s.next(&r, 1).status, 200);
        s.directives = true;
        let d = s.next(&r, 2);
        assert_eq!(d.status, 503);
        assert!(d
            .headers
            .contains(&("retry-guard-state".to_string(), "unchanged".to_string())));
        assert!(s.next(&req("/x", &[("x-backend-hang-up", "1")]), 3).hang_up);
        assert_eq!(s.next(&req("/x", &[]), 4).status, 200);
    }

    #[test]
    fn gate_releases_waiters() {
        let gate = Gate::new();
        let stop = AtomicBool::new(false);
        let g2 = gate.clone();
        let t = thread::spawn(move || {
            let start = Instant::now();
            g2.wait(&AtomicBool::new(false), Duration::from_secs(10));
            start.elapsed()
        });
        gate.open();
        let waited = t.join().expect("waiter");
        assert!(waited < Duration::from_secs(5));
        // An open gate does not wait at all.
        let start = Instant::now();
        gate.wait(&stop, Duration::from_secs(10));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}

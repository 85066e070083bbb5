//! Hostile traffic through the real Envoy 1.40 (issue 17, part 4), over HTTP/1.1 and HTTP/2
//! (h2c, `retry_guard_e2e::h2`): very many and very large headers up to Envoy's limits, bodies
//! just under, at and over `max_body_bytes` (65,536 in the bundled configuration), chunked
//! bodies with trailers, a body sent one byte a second, clients that go away mid-body, and 1,000
//! concurrent requests holding half-sent bodies.
//!
//! Each protocol has its own bundled gateway (2 workers). Every phase runs in three identical
//! rounds (fresh fingerprints each; `RETRY_GUARD_HOSTILE_ROUNDS` sets another count) and the
//! test checks what a user would notice: every request is answered (or, past Envoy's own
//! limits, refused by Envoy) within a bound, `http.gateway.downstream_rq_active` returns to 0,
//! the wasm VM never traps and still guards a replay at the end, and memory plateaus: the first
//! round warms Envoy's allocators up (its RSS grows about 10 MB more in round 2, then levels
//! off), so Envoy's RSS after the last round must be within a small margin of the round before,
//! and so must the wasm linear memory (`wasmcustom.retry_guard.vm.memory_bytes`, refreshed by
//! the filter's 5 s tick). The figures are printed (`--nocapture`) for envoy/README.md.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use retry_guard_e2e::backend::Reply;
use retry_guard_e2e::client::{self, request_head};
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::h2::H2Conn;
use retry_guard_e2e::tokens::unsigned_jwt;
use serde_json::json;

/// `max_body_bytes` of the bundled configuration (testdata/configs/gateway.json).
const MAX_BODY: usize = 65_536;
/// Concurrent requests holding half-sent bodies.
const HELD: usize = 1_000;
/// Clients that go away mid-body, per round.
const ABORTS: usize = 50;
/// Every answer must come within this.
const ANSWER_BOUND: Duration = Duration::from_secs(20);
/// Bytes of the body sent one byte a second.
const SLOW_BYTES: usize = 4;
/// RSS after the last round may exceed RSS after the round before by at most this much (the
/// ledger holds each round's new fingerprints: about 1,100 entries a round, well under a MiB).
const RSS_MARGIN_KB: u64 = 8 * 1024;
/// The wasm linear memory after the last round may exceed the round before's by at most this much (two 64 KiB
/// pages): the gauge is the largest VM's, and how the 1,000 held requests split over the two
/// workers' VMs differs a little from round to round.
const WASM_MARGIN: u64 = 2 * 65_536;
/// The filter refreshes its memory gauge on its tick, every 5 s.
const TICK: Duration = Duration::from_millis(5_600);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    H1,
    H2,
}

/// What one request came back with: a status, or an HTTP/2 reset code (status 0).
#[derive(Debug)]
struct Answer {
    status: u16,
    reset: Option<u32>,
    took: Duration,
}

struct Run<'a> {
    gw: &'a Gateway,
    proto: Proto,
    round: u32,
    failures: &'a mut Failures,
    slowest: Duration,
}

fn rss_kb(envoy: &Envoy) -> u64 {
    let pid = envoy.pid().expect("Envoy runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stat_value(envoy: &Envoy, name: &str) -> u64 {
    let text = envoy.stats(name).unwrap_or_else(|e| panic!("{e}"));
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

fn wasm_memory(envoy: &Envoy) -> u64 {
    envoy
        .wasm_counter(retry_guard::metrics::MEMORY_GAUGE)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or(0)
}

/// Requests in flight in Envoy's connection manager.
fn rq_active(envoy: &Envoy) -> u64 {
    stat_value(envoy, "http.gateway.downstream_rq_active")
}

/// Waits (bounded, 10 s) until no request is active; the time it took, or what is left.
fn wait_idle(envoy: &Envoy) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let active = rq_active(envoy);
        if active == 0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("{active} request(s) still active after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Evidence of a wasm VM failure: log lines of a trap or a failed VM, and non-zero failure
/// stats of the V8 runtime or the wasm filter.
fn trap_evidence(envoy: &Envoy) -> Vec<String> {
    let mut found: Vec<String> = envoy
        .log_text()
        .lines()
        .filter(|l| {
            l.contains("RuntimeError")
                || l.contains("Uncaught")
                || l.contains("VM failed")
                || (l.contains("[wasm]")
                    && !l.contains("retry-guard")
                    && (l.contains("crash") || l.contains("fail")))
        })
        .map(str::to_string)
        .collect();
    let stats = envoy.stats("wasm").unwrap_or_default();
    for line in stats.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v: u64 = v.trim().parse().unwrap_or(0);
        let k = k.trim();
        if v > 0 && (k.contains("fail") || k.contains("crash")) {
            found.push(line.to_string());
        }
    }
    found
}

/// A token-route form body of exactly `len` bytes, unique to `tag`.
fn form(tag: &str, len: usize) -> Vec<u8> {
    let mut b = format!("grant_type=client_credentials&scope=case.{tag}&pad=").into_bytes();
    assert!(b.len() <= len, "{tag}: {len} is too short");
    b.resize(len, b'a');
    b
}

fn header_refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl Run<'_> {
    fn tag(&self, what: &str) -> String {
        format!("{:?}-r{}-{what}", self.proto, self.round).to_ascii_lowercase()
    }

    fn fail(&mut self, case: &str, msg: String) {
        self.failures.0.push(format!(
            "[{:?} round {} {case}] {msg}",
            self.proto, self.round
        ));
    }

    /// One whole request on a new connection (HTTP/1.1) or a new stream of a new connection
    /// (HTTP/2; `content-length` sent unless `chunked`).
    fn request(
        &mut self,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
        chunked: bool,
    ) -> Answer {
        let start = Instant::now();
        let addr = self.gw.envoy.listener_addr();
        let mut hs = header_refs(headers);
        let (status, reset) = match self.proto {
            Proto::H1 => {
                let r = if chunked {
                    let chunks: Vec<&[u8]> = body.chunks(8_192).collect();
                    client::send_chunked(addr, "POST", path, &hs, &chunks)
                } else {
                    client::send_with_timeout(addr, "POST", path, &hs, body, ANSWER_BOUND)
                };
                match r {
                    Ok(resp) => (resp.status, None),
                    Err(e) => {
                        self.fail(path, format!("no answer: {e}"));
                        (0, None)
                    }
                }
            }
            Proto::H2 => {
                let len = body.len().to_string();
                if !chunked {
                    hs.push(("content-length", &len));
                }
                let r = H2Conn::connect(addr, ANSWER_BOUND)
                    .and_then(|c| c.request("POST", path, &hs, body, ANSWER_BOUND));
                match r {
                    Ok(resp) => (resp.status, resp.reset),
                    Err(e) => {
                        self.fail(path, format!("no answer: {e}"));
                        (0, None)
                    }
                }
            }
        };
        let took = start.elapsed();
        self.slowest = self.slowest.max(took);
        Answer {
            status,
            reset,
            took,
        }
    }

    fn expect(&mut self, case: &str, a: &Answer, statuses: &[u16], reset_ok: bool) {
        let ok = statuses.contains(&a.status) || (reset_ok && a.status == 0 && a.reset.is_some());
        if !ok {
            self.fail(case, format!("expected {statuses:?}, got {a:?}"));
        }
    }

    fn token_headers(&self, case: &str) -> Vec<(String, String)> {
        vec![
            ("x-e2e-case".into(), case.to_string()),
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ]
    }

    /// Very many headers, very large ones, up to and past Envoy's limits (100 headers and
    /// 60 KiB of headers by default): under the limits the filter reads them all and decides
    /// (200; 400 for an over-long idempotency key); past them Envoy refuses the request (431
    /// over HTTP/1.1, a reset or 431 over HTTP/2) before the filter.
    fn headers(&mut self) {
        let case = self.tag("many-headers");
        let mut h = self.token_headers(&case);
        for i in 0..90 {
            h.push((format!("x-hostile-{i}"), "v".repeat(300)));
        }
        let a = self.request("/oauth/token", &h, &form(&case, 128), false);
        self.expect("90 headers of 300 bytes", &a, &[200], false);

        let case = self.tag("too-many-headers");
        let mut h = self.token_headers(&case);
        for i in 0..150 {
            h.push((format!("x-hostile-{i}"), "v".into()));
        }
        let a = self.request("/oauth/token", &h, &form(&case, 128), false);
        self.expect("150 headers", &a, &[431], true);

        let case = self.tag("huge-bearer");
        let mut h = self.token_headers(&case);
        h.push((
            "authorization".into(),
            format!("Bearer {}", "A".repeat(50_000)),
        ));
        let a = self.request("/oauth/token", &h, &form(&case, 128), false);
        self.expect("opaque bearer token of 50 KB", &a, &[200], false);

        let case = self.tag("huge-jwt");
        let mut h = self.token_headers(&case);
        let jwt = unsigned_jwt(&json!({"sub": "svc-ci", "exp": 1, "pad": "p".repeat(36_000)}));
        h.push(("authorization".into(), format!("Bearer {jwt}")));
        let a = self.request("/oauth/token", &h, &form(&case, 128), false);
        self.expect("expired JWT of 48 KB (stripped)", &a, &[200], false);

        let case = self.tag("huge-cookie");
        let mut h = self.token_headers(&case);
        h.push(("cookie".into(), format!("session={}", "c".repeat(50_000))));
        let a = self.request("/oauth/token", &h, &form(&case, 128), false);
        self.expect("session cookie of 50 KB", &a, &[200], false);

        let case = self.tag("huge-key");
        let h = vec![
            ("x-e2e-case".to_string(), case.clone()),
            ("content-type".into(), "application/json".into()),
            (
                "idempotency-key".into(),
                format!("\"{}\"", "k".repeat(50_000)),
            ),
        ];
        let body = format!(r#"{{"name":"{case}"}}"#);
        let a = self.request("/v1/secrets", &h, body.as_bytes(), false);
        self.expect("idempotency key of 50 KB", &a, &[400], false);

        let case = self.tag("headers-over-limit");
        let mut h = self.token_headers(&case);
        h.push(("x-hostile".into(), "v".repeat(70_000)));
        let a = self.request("/oauth/token", &h, &form(&case, 128), false);
        self.expect("one header of 70 KB", &a, &[431], true);
    }

    /// Bodies just under, at and over `max_body_bytes`, with and without a content-length,
    /// and far over it; and a chunked body (HTTP/1.1) or DATA frames (HTTP/2) ending in
    /// trailers.
    fn bodies(&mut self) {
        for (what, len, chunked, want) in [
            ("one byte under the limit", MAX_BODY - 1, false, 200),
            ("exactly the limit", MAX_BODY, false, 200),
            ("exactly the limit, no content-length", MAX_BODY, true, 200),
            ("one byte over the limit", MAX_BODY + 1, false, 413),
            ("one byte over, no content-length", MAX_BODY + 1, true, 413),
            ("2 MiB, no content-length", 2 << 20, true, 413),
        ] {
            let case = self.tag(&format!("body-{len}-{chunked}"));
            let h = self.token_headers(&case);
            let a = self.request("/oauth/token", &h, &form(&case, len), chunked);
            self.expect(what, &a, &[want], false);
            if want == 413 && !self.gw.upstream(&case).is_empty() {
                self.fail(what, "a refused body reached the backend".into());
            }
        }
        self.trailers();
    }

    fn trailers(&mut self) {
        let case = self.tag("trailers");
        let body = form(&case, 20_000);
        let start = Instant::now();
        let addr = self.gw.envoy.listener_addr();
        let h = self.token_headers(&case);
        let status = match self.proto {
            Proto::H1 => {
                let mut hs = header_refs(&h);
                hs.push(("transfer-encoding", "chunked"));
                let mut bytes = request_head("POST", "/oauth/token", &hs, 0).into_bytes();
                for c in body.chunks(7_000) {
                    bytes.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    bytes.extend_from_slice(c);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\nx-checksum: abc\r\nx-more: def\r\n\r\n");
                client::connect(addr, ANSWER_BOUND)
                    .and_then(|s| {
                        client::finish_on(s, "POST", "/oauth/token", &bytes, ANSWER_BOUND)
                    })
                    .map(|r| r.status)
            }
            Proto::H2 => H2Conn::connect(addr, ANSWER_BOUND).and_then(|c| {
                let id = c.open("POST", "/oauth/token", &header_refs(&h), false)?;
                for piece in body.chunks(7_000) {
                    c.data(id, piece, false, ANSWER_BOUND)?;
                }
                c.trailers(id, &[("x-checksum", "abc"), ("x-more", "def")])?;
                c.wait(id, ANSWER_BOUND).map(|r| r.status)
            }),
        };
        let a = Answer {
            status: status.unwrap_or_else(|e| {
                self.failures.0.push(format!("[trailers] {e}"));
                0
            }),
            reset: None,
            took: start.elapsed(),
        };
        self.slowest = self.slowest.max(a.took);
        self.expect("a body ending in trailers", &a, &[200], false);
    }

    /// Clients that send half a body and go away: HTTP/1.1 closes the connection; HTTP/2
    /// resets the stream (RST_STREAM CANCEL) on a connection that stays open, and the last
    /// connection closes with its streams half-sent. None reaches the backend.
    fn aborts(&mut self) {
        let addr = self.gw.envoy.listener_addr();
        let cases: Vec<String> = (0..ABORTS)
            .map(|i| self.tag(&format!("abort-{i}")))
            .collect();
        let result: retry_guard_e2e::Result<()> = (|| {
            match self.proto {
                Proto::H1 => {
                    for case in &cases {
                        let mut h = header_refs(&self.token_headers(case))
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect::<Vec<_>>();
                        h.push(("content-length".into(), "32768".into()));
                        let head = request_head("POST", "/oauth/token", &header_refs(&h), 32_768);
                        let mut s = TcpStream::connect(addr)?;
                        s.write_all(head.as_bytes())?;
                        s.write_all(&form(case, 16_384))?;
                        s.shutdown(Shutdown::Both).ok();
                    }
                }
                Proto::H2 => {
                    let c = H2Conn::connect(addr, ANSWER_BOUND)?;
                    let last = H2Conn::connect(addr, ANSWER_BOUND)?;
                    for (i, case) in cases.iter().enumerate() {
                        let mut h = self.token_headers(case);
                        h.push(("content-length".into(), "32768".into()));
                        let conn = if i % 2 == 0 { &c } else { &last };
                        let id = conn.open("POST", "/oauth/token", &header_refs(&h), false)?;
                        conn.data(id, &form(case, 16_384), false, ANSWER_BOUND)?;
                        if i % 2 == 0 {
                            conn.reset(id)?;
                        }
                    }
                    drop(last); // closes the TCP connection with 25 streams half-sent
                                // The connection that reset its streams still works.
                    let case = self.tag("after-resets");
                    let r = c.request(
                        "POST",
                        "/oauth/token",
                        &header_refs(&self.token_headers(&case)),
                        &form(&case, 128),
                        ANSWER_BOUND,
                    )?;
                    if r.status != 200 {
                        self.fail("after resets", format!("got {r:?}"));
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.fail("aborts", e.0);
        }
        if let Err(e) = wait_idle(&self.gw.envoy) {
            self.fail("aborts", e);
        }
        let reached: usize = cases.iter().map(|c| self.gw.upstream(c).len()).sum();
        if reached != 0 {
            self.fail(
                "aborts",
                format!("{reached} half-sent request(s) reached the backend"),
            );
        }
    }

    /// 1,000 requests at once, each holding half its body (4 KiB of 8 KiB) in the filter,
    /// then each completed: every one answered 200. Returns Envoy's RSS while they were held.
    fn held(&mut self) -> u64 {
        let addr = self.gw.envoy.listener_addr();
        let cases: Vec<String> = (0..HELD).map(|i| self.tag(&format!("held-{i}"))).collect();
        let bodies: Vec<Vec<u8>> = cases.iter().map(|c| form(c, 8_192)).collect();
        let mut held_rss = 0;
        let start = Instant::now();
        let wait_all_held = |gw: &Gateway| -> Result<(), String> {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let active = rq_active(&gw.envoy);
                if active >= HELD as u64 {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!("only {active} of {HELD} requests active"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        // Each answer's status and, for any other than 200, what its body said (a problem
        // document's type and detail), so a failure names its cause.
        let statuses: retry_guard_e2e::Result<Vec<(u16, String)>> = (|| match self.proto {
            Proto::H1 => {
                let mut conns = Vec::with_capacity(HELD);
                for (case, body) in cases.iter().zip(&bodies) {
                    let h = self.token_headers(case);
                    let head = request_head("POST", "/oauth/token", &header_refs(&h), 8_192);
                    let mut s = client::connect(addr, ANSWER_BOUND)?;
                    s.write_all(head.as_bytes())?;
                    s.write_all(&body[..4_096])?;
                    conns.push(s);
                }
                if let Err(e) = wait_all_held(self.gw) {
                    self.fail("1000 held", e);
                }
                held_rss = rss_kb(&self.gw.envoy);
                for (s, body) in conns.iter_mut().zip(&bodies) {
                    s.write_all(&body[4_096..])?;
                }
                conns
                    .into_iter()
                    .map(|s| {
                        client::finish_on(s, "POST", "/oauth/token", &[], ANSWER_BOUND)
                            .map(|r| (r.status, what_it_said(r.status, &r.body)))
                    })
                    .collect()
            }
            Proto::H2 => {
                let c = H2Conn::connect(addr, ANSWER_BOUND)?;
                let mut ids = Vec::with_capacity(HELD);
                for (case, body) in cases.iter().zip(&bodies) {
                    let mut h = self.token_headers(case);
                    h.push(("content-length".into(), "8192".into()));
                    let id = c.open("POST", "/oauth/token", &header_refs(&h), false)?;
                    c.data(id, &body[..4_096], false, ANSWER_BOUND)?;
                    ids.push(id);
                }
                if let Err(e) = wait_all_held(self.gw) {
                    self.fail("1000 held", e);
                }
                held_rss = rss_kb(&self.gw.envoy);
                for (id, body) in ids.iter().zip(&bodies) {
                    c.data(*id, &body[4_096..], true, ANSWER_BOUND)?;
                }
                ids.into_iter()
                    .map(|id| {
                        c.wait(id, ANSWER_BOUND)
                            .map(|r| (r.status, what_it_said(r.status, &r.body)))
                    })
                    .collect()
            }
        })();
        let took = start.elapsed();
        self.slowest = self.slowest.max(took);
        match statuses {
            Ok(s) => {
                let ok = s.iter().filter(|x| x.0 == 200).count();
                if ok != HELD {
                    let mut other: Vec<(u16, String)> =
                        s.into_iter().filter(|x| x.0 != 200).collect();
                    other.sort_unstable();
                    other.dedup();
                    self.fail(
                        "1000 held",
                        format!("{ok} of {HELD} answered 200; others {other:?}"),
                    );
                }
            }
            Err(e) => self.fail("1000 held", e.0),
        }
        println!(
            "  {:?} round {}: {HELD} held bodies answered in {:.1} s",
            self.proto,
            self.round,
            took.as_secs_f64()
        );
        held_rss
    }
}

/// What an answer other than 200 said: its problem document's type and detail, else the
/// start of its body (empty for a 200).
fn what_it_said(status: u16, body: &[u8]) -> String {
    if status == 200 {
        return String::new();
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(doc) if doc["type"].is_string() => format!("{} {}", doc["type"], doc["detail"]),
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// A body sent one byte a second ({SLOW_BYTES} bytes), on its own thread; its answer.
fn slow_body(
    addr: std::net::SocketAddr,
    proto: Proto,
    round: u32,
) -> std::thread::JoinHandle<Result<(u16, Duration), String>> {
    std::thread::spawn(move || {
        let body = format!("a={round}{}", "b".repeat(SLOW_BYTES - 3)).into_bytes();
        let headers = [
            ("x-e2e-case", "slow"),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        let pause = Duration::from_secs(1);
        match proto {
            Proto::H1 => {
                let head = request_head("POST", "/oauth/token", &headers, body.len());
                let mut s = client::connect(addr, ANSWER_BOUND).map_err(|e| e.0)?;
                s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
                for b in &body[..body.len() - 1] {
                    s.write_all(std::slice::from_ref(b))
                        .map_err(|e| e.to_string())?;
                    std::thread::sleep(pause);
                }
                let last = Instant::now();
                let r = client::finish_on(
                    s,
                    "POST",
                    "/oauth/token",
                    &body[body.len() - 1..],
                    ANSWER_BOUND,
                )
                .map_err(|e| e.0)?;
                Ok((r.status, last.elapsed()))
            }
            Proto::H2 => {
                let c = H2Conn::connect(addr, ANSWER_BOUND).map_err(|e| e.0)?;
                let len = body.len().to_string();
                let mut h = headers.to_vec();
                h.push(("content-length", &len));
                let id = c.open("POST", "/oauth/token", &h, false).map_err(|e| e.0)?;
                for b in &body[..body.len() - 1] {
                    c.data(id, std::slice::from_ref(b), false, ANSWER_BOUND)
                        .map_err(|e| e.0)?;
                    std::thread::sleep(pause);
                }
                let last = Instant::now();
                c.data(id, &body[body.len() - 1..], true, ANSWER_BOUND)
                    .map_err(|e| e.0)?;
                let r = c.wait(id, ANSWER_BOUND).map_err(|e| e.0)?;
                Ok((r.status, last.elapsed()))
            }
        }
    })
}

/// The figures of one round.
struct RoundFigures {
    rss_after: Vec<(&'static str, u64)>,
    held_rss: u64,
    wasm_memory: u64,
    slowest: Duration,
}

fn round(gw: &Gateway, proto: Proto, round: u32, failures: &mut Failures) -> RoundFigures {
    let slow = slow_body(gw.envoy.listener_addr(), proto, round);
    let mut run = Run {
        gw,
        proto,
        round,
        failures,
        slowest: Duration::ZERO,
    };
    let mut rss_after = Vec::new();
    for name in ["headers", "bodies", "aborts"] {
        match name {
            "headers" => run.headers(),
            "bodies" => run.bodies(),
            _ => run.aborts(),
        }
        if let Err(e) = wait_idle(&gw.envoy) {
            run.fail(name, e);
        }
        rss_after.push((name, rss_kb(&gw.envoy)));
    }
    let held_rss = run.held();
    if let Err(e) = wait_idle(&gw.envoy) {
        run.fail("1000 held", e);
    }
    rss_after.push(("1000 held", rss_kb(&gw.envoy)));
    match slow.join() {
        Ok(Ok((status, after_last))) => {
            if status != 200 || after_last > Duration::from_secs(2) {
                run.fail(
                    "slow body",
                    format!("status {status}, {after_last:?} after the last byte"),
                );
            }
        }
        Ok(Err(e)) => run.fail("slow body", e),
        Err(_) => run.fail("slow body", "client thread panicked".into()),
    }
    if let Err(e) = wait_idle(&gw.envoy) {
        run.fail("slow body", e);
    }
    rss_after.push(("slow body", rss_kb(&gw.envoy)));
    let slowest = run.slowest;
    // The gauge is refreshed on the filter's tick.
    std::thread::sleep(TICK);
    RoundFigures {
        rss_after,
        held_rss,
        wasm_memory: wasm_memory(&gw.envoy),
        slowest,
    }
}

fn hostile_traffic(proto: Proto) {
    let name = format!("hostile-{proto:?}").to_ascii_lowercase();
    let gw = Gateway::start(&name, None, 2).unwrap_or_else(|e| panic!("{e}"));
    // The backend closes every connection after its answer, so Envoy keeps no pool of idle
    // upstream connections between rounds (1,000 of them after the held phase, on whichever
    // worker took the traffic): what stays in memory is what the traffic left behind.
    gw.backend
        .set_default(Reply::json(200, r#"{"ok":true}"#).header("connection", "close"));
    let started = Instant::now();
    std::thread::sleep(TICK);
    let (rss0, wasm0) = (rss_kb(&gw.envoy), wasm_memory(&gw.envoy));
    println!(
        "{proto:?} baseline: Envoy RSS {} KiB, wasm linear memory {} KiB",
        rss0,
        wasm0 / 1024
    );
    let mut failures = Failures::default();
    let mut rounds = Vec::new();
    let n_rounds: u32 = std::env::var("RETRY_GUARD_HOSTILE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(2);
    // A leak grows in every identical round. Envoy's allocator sometimes keeps a few MiB
    // more after one round under load (seen once on a loaded CI machine: +9.4 MiB in round 3
    // over HTTP/2, the wasm memory unchanged), so a last round that grew past the margin is
    // followed by up to two more, and the last two rounds decide.
    let grew = |rounds: &[RoundFigures]| match rounds {
        [.., prev, last] => {
            let kb = |f: &RoundFigures| f.rss_after.last().map_or(0, |x| x.1);
            kb(last) > kb(prev) + RSS_MARGIN_KB
        }
        _ => false,
    };
    let mut r = 0;
    while r < n_rounds || (r < n_rounds + 2 && grew(&rounds)) {
        r += 1;
        let f = round(&gw, proto, r, &mut failures);
        let phases: Vec<String> = f
            .rss_after
            .iter()
            .map(|(p, kb)| format!("{p} {kb}"))
            .collect();
        println!(
            "{proto:?} round {r}: Envoy RSS (KiB) after {}; while {HELD} bodies held {}; \
             wasm linear memory {} KiB; slowest answer {:.2} s",
            phases.join(", "),
            f.held_rss,
            f.wasm_memory / 1024,
            f.slowest.as_secs_f64()
        );
        rounds.push(f);
    }

    // The plugin still answers and still guards: a new call passes, its replay is 428.
    let case = format!("{proto:?}-after").to_ascii_lowercase();
    let req = TOKEN.request(&case);
    let first = gw.send(&req).map(|r| r.status).unwrap_or(0);
    let replay = gw.send(&req.again("replay")).map(|r| r.status).unwrap_or(0);
    if (first, replay) != (200, 428) {
        failures.0.push(format!(
            "after the rounds: first {first}, replay {replay} (want 200, 428)"
        ));
    }
    let traps = trap_evidence(&gw.envoy);
    if !traps.is_empty() {
        failures
            .0
            .push(format!("wasm failure evidence:\n{}", traps.join("\n")));
    }

    let (prev, last) = (&rounds[rounds.len() - 2], &rounds[rounds.len() - 1]);
    let rss1 = prev.rss_after.last().map_or(0, |x| x.1);
    let rss2 = last.rss_after.last().map_or(0, |x| x.1);
    let (w1, w2) = (prev.wasm_memory, last.wasm_memory);
    println!(
        "{proto:?} plateau: RSS after round {} {rss1} KiB, after round {} {rss2} KiB ({:+} KiB); \
         wasm linear memory {} KiB -> {} KiB; test took {:.1} s",
        rounds.len() - 1,
        rounds.len(),
        rss2 as i64 - rss1 as i64,
        w1 / 1024,
        w2 / 1024,
        started.elapsed().as_secs_f64()
    );
    if rss2 > rss1 + RSS_MARGIN_KB {
        failures.0.push(format!(
            "Envoy RSS grew by {} KiB in the last identical round",
            rss2 - rss1
        ));
    }
    if w1 == 0 || w2 > w1 + WASM_MARGIN {
        failures.0.push(format!(
            "wasm linear memory did not plateau: {w1} then {w2} bytes"
        ));
    }
    failures.assert_none(&gw.envoy);
}

#[test]
fn http1_hostile_clients_are_all_answered_and_memory_plateaus() {
    hostile_traffic(Proto::H1);
}

#[test]
fn http2_hostile_clients_are_all_answered_and_memory_plateaus() {
    hostile_traffic(Proto::H2);
}

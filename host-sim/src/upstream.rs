//! The upstream model (what the cluster behind the route does with a forwarded request) and
//! the `http_call` clusters (scripted answers or a real HTTP endpoint on loopback).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use crate::headers::HeaderMap;
use crate::shared::lock;
use crate::vm::{HttpCall, HttpCallResponse};

/// Envoy response flags (the legacy bitmask of `response.flags`; bit N is
/// `CoreResponseFlag` N in `envoy/stream_info/stream_info.h`).
pub mod flags {
    /// `UH`: no healthy upstream.
    pub const UH: u64 = 1 << 1;
    /// `UT`: upstream request timeout.
    pub const UT: u64 = 1 << 2;
    /// `UF`: upstream connection failure.
    pub const UF: u64 = 1 << 5;
    /// `UC`: upstream connection termination.
    pub const UC: u64 = 1 << 6;
    /// `URX`: upstream retry limit exceeded.
    pub const URX: u64 = 1 << 15;
    /// `DC`: the downstream connection was closed before the response was complete.
    pub const DC: u64 = 1 << 14;
}

/// What the upstream does with one forwarded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// Answers after `delay_ms`.
    Reply {
        /// Status.
        status: u16,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: Vec<u8>,
        /// Delay before answering (past the route timeout it becomes a timeout).
        delay_ms: u64,
    },
    /// Nothing listens: Envoy retries (`connect-failure`) and answers 503 with `UF` (and `URX`
    /// when the route retries). The upstream never receives the request.
    ConnectionRefused,
    /// No healthy host: 503 with `UH`. The upstream never receives the request.
    NoHealthyUpstream,
    /// The upstream receives the request and never answers: 504 with `UT` after the route
    /// timeout.
    Timeout,
    /// The upstream receives the request and closes the connection after `delay_ms`: 503 with
    /// `UC`.
    Reset {
        /// Delay before the reset.
        delay_ms: u64,
    },
}

impl Upstream {
    /// A 200 with an empty JSON object.
    pub fn ok() -> Upstream {
        Upstream::Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
            delay_ms: 0,
        }
    }

    /// Whether the upstream receives the request.
    pub fn receives(&self) -> bool {
        !matches!(
            self,
            Upstream::ConnectionRefused | Upstream::NoHealthyUpstream
        )
    }
}

/// How Envoy's router answers when the upstream fails (status, flags, details, body).
pub struct RouterReply {
    /// Status.
    pub status: u16,
    /// Response flags.
    pub flags: u64,
    /// `response.code_details`.
    pub details: &'static str,
    /// Body (text/plain).
    pub body: &'static str,
}

/// The router's local reply for a failure (Envoy 1.40 texts).
pub fn router_reply(u: &Upstream, retries_connect_failure: bool) -> Option<RouterReply> {
    Some(match u {
        Upstream::ConnectionRefused => RouterReply {
            status: 503,
            flags: flags::UF | if retries_connect_failure { flags::URX } else { 0 },
            details: "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            body: "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused",
        },
        Upstream::NoHealthyUpstream => RouterReply {
            status: 503,
            flags: flags::UH,
            details: "no_healthy_upstream",
            body: "no healthy upstream",
        },
        Upstream::Timeout => RouterReply {
            status: 504,
            flags: flags::UT,
            details: "upstream_response_timeout",
            body: "upstream request timeout",
        },
        Upstream::Reset { .. } => RouterReply {
            status: 503,
            flags: flags::UC,
            details: "upstream_reset_before_response_started{connection_termination}",
            body: "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        },
        Upstream::Reply { .. } => return None,
    })
}

/// A scripted answer to an `http_call`.
#[derive(Clone, Debug)]
pub struct CallReply {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// One `http_call` target.
#[derive(Debug)]
pub enum Cluster {
    /// Answers from a script: queued replies first, then the standing one.
    Scripted {
        /// One-shot replies.
        queue: Mutex<VecDeque<CallReply>>,
        /// The reply when the queue is empty.
        standing: CallReply,
    },
    /// Forwards the call over HTTP/1.1 to this address (loopback only).
    Forward(SocketAddr),
}

/// A call as made: (cluster, headers, body).
pub type RecordedCall = (String, Vec<(String, String)>, Vec<u8>);

/// The clusters `http_call` may target, plus a record of every call made.
#[derive(Debug, Default)]
pub struct Clusters {
    /// By cluster name.
    pub by_name: HashMap<String, Cluster>,
    /// Every call, in order: (cluster, headers, body).
    pub calls: Mutex<Vec<RecordedCall>>,
}

impl Clusters {
    /// Whether a cluster exists (Envoy: `BadArgument` otherwise).
    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Answers a call; `Err` is a transport failure (delivered as `BrokenConnection`).
    pub fn answer(&self, call: &HttpCall) -> Result<HttpCallResponse, String> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        lock(&self.calls).push((
            call.cluster.clone(),
            call.headers
                .iter()
                .map(|(k, v)| (text(k), text(v)))
                .collect(),
            call.body.clone(),
        ));
        let reply = match self.by_name.get(&call.cluster) {
            None => return Err(format!("unknown cluster {}", call.cluster)),
            Some(Cluster::Scripted { queue, standing }) => {
                lock(queue).pop_front().unwrap_or_else(|| standing.clone())
            }
            Some(Cluster::Forward(addr)) => forward(*addr, call)?,
        };
        let mut headers = HeaderMap::new();
        headers.add(b":status", reply.status.to_string().as_bytes());
        for (k, v) in &reply.headers {
            headers.add(k.as_bytes(), v.as_bytes());
        }
        headers.add(b"content-length", reply.body.len().to_string().as_bytes());
        Ok(HttpCallResponse {
            headers,
            body: reply.body,
            trailers: HeaderMap::new(),
        })
    }
}

/// A minimal HTTP/1.1 exchange (one request per connection) for forwarded `http_call`s.
fn forward(addr: SocketAddr, call: &HttpCall) -> Result<CallReply, String> {
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to forward to non-loopback address {addr}"
        ));
    }
    let get = |name: &str| {
        call.headers
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let timeout = Duration::from_millis(u64::from(call.timeout_ms.max(1000)));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(timeout));
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\n",
        get(":method"),
        get(":path"),
        get(":authority")
    );
    for (k, v) in &call.headers {
        if k.first() == Some(&b':') || k.as_slice() == b"content-length" {
            continue;
        }
        head.push_str(&format!(
            "{}: {}\r\n",
            String::from_utf8_lossy(k),
            String::from_utf8_lossy(v)
        ));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        call.body.len()
    ));
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(&call.body).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.trim().parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut headers = Vec::new();
    let mut len: Option<usize> = None;
    loop {
        let mut l = String::new();
        r.read_line(&mut l).map_err(|e| e.to_string())?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                len = v.trim().parse().ok();
                continue;
            }
            if k == "connection" || k == "transfer-encoding" {
                continue;
            }
            headers.push((k, v.trim().to_string()));
        }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).map_err(|e| e.to_string())?;
        }
        None => {
            r.read_to_end(&mut body).map_err(|e| e.to_string())?;
        }
    }
    Ok(CallReply {
        status,
        headers,
        body,
    })
}

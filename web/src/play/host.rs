//! The playground's host: one HTTP stream as Envoy 1.40 (and host-sim) presents it to the
//! filter — request headers and body, the properties the filter reads, the upstream's
//! response — and a record of everything the filter did (log lines, counters, header changes,
//! the local reply).

use std::cell::{Cell, RefCell};

use retry_guard::headers;
use retry_guard::host::{LogLevel, Status, StreamHost};
use retry_guard::metrics::Counter;

/// A local reply the filter sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

/// One stream's host.
pub struct PlayHost<'a> {
    /// Virtual now, milliseconds since the epoch.
    pub now_ms: &'a Cell<u64>,
    /// The random source for challenges.
    pub rng: &'a Cell<u64>,
    /// `xds.route_name`.
    pub route_name: String,
    /// `connection.uri_san_peer_certificate`.
    pub peer_identity: Option<String>,
    /// Request headers (lower-case names), as the filter changed them.
    pub request_headers: RefCell<Vec<(String, String)>>,
    /// Request body.
    pub body: Vec<u8>,
    /// Response headers, once there is a response.
    pub response_headers: RefCell<Vec<(String, String)>>,
    /// `response.code`.
    pub response_code: Cell<Option<u64>>,
    /// `response.flags`.
    pub response_flags: Cell<u64>,
    /// `upstream.request_attempt_count`, once forwarded.
    pub upstream_attempts: Cell<Option<u64>>,
    /// Log lines: (level name, line).
    pub logs: RefCell<Vec<(&'static str, String)>>,
    /// Counters incremented.
    pub counters: RefCell<Vec<String>>,
    /// Properties set.
    pub properties: RefCell<Vec<(String, String)>>,
    /// The local reply, if the filter sent one.
    pub reply: RefCell<Option<Reply>>,
}

/// splitmix64: a small deterministic random source, so a shared link replays the same
/// challenges.
pub fn next_random(state: &Cell<u64>) -> u64 {
    let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
    state.set(s);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
    }
}

fn lookup(map: &RefCell<Vec<(String, String)>>, name: &str) -> Option<Vec<u8>> {
    map.borrow()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_bytes().to_vec())
}

impl StreamHost for PlayHost<'_> {
    fn now_nanos(&self) -> Option<u64> {
        Some(self.now_ms.get().saturating_mul(1_000_000))
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs
            .borrow_mut()
            .push((level_name(level), message.to_string()));
    }

    fn count(&self, counter: Counter) {
        self.counters.borrow_mut().push(counter.name());
    }

    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        let le = |v: u64| Some(v.to_le_bytes().to_vec());
        match path {
            b"xds\0route_name" => Some(self.route_name.as_bytes().to_vec()),
            b"connection\0uri_san_peer_certificate" => {
                self.peer_identity.as_ref().map(|p| p.as_bytes().to_vec())
            }
            b"response\0code" => self.response_code.get().and_then(le),
            b"response\0flags" => le(self.response_flags.get()),
            b"upstream\0request_attempt_count" => self.upstream_attempts.get().and_then(le),
            _ => None,
        }
    }

    fn set_property(&self, name: &str, value: &[u8]) {
        self.properties.borrow_mut().push((
            name.to_string(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        lookup(&self.request_headers, name)
    }

    fn request_headers(&self) -> Vec<u8> {
        let map = self.request_headers.borrow();
        let pairs: Vec<(&str, &[u8])> = map
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        headers::serialize(&pairs)
    }

    fn set_request_header(&self, name: &str, value: &str) {
        let mut map = self.request_headers.borrow_mut();
        map.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        map.push((name.to_ascii_lowercase(), value.to_string()));
    }

    fn remove_request_header(&self, name: &str) {
        self.request_headers
            .borrow_mut()
            .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        let end = start.saturating_add(len).min(self.body.len());
        self.body.get(start..end).map(<[u8]>::to_vec)
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        lookup(&self.response_headers, name)
    }

    fn send_local_reply(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Status> {
        let mut reply = self.reply.borrow_mut();
        if reply.is_some() {
            // Envoy: a second local reply on one stream hangs the client.
            return Err(Status(2));
        }
        *reply = Some(Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        });
        Ok(())
    }

    fn random_bytes(&self, buf: &mut [u8]) -> bool {
        for chunk in buf.chunks_mut(8) {
            let r = next_random(self.rng).to_le_bytes();
            for (b, r) in chunk.iter_mut().zip(r) {
                *b = r;
            }
        }
        true
    }

    fn http_call(
        &self,
        _cluster: &str,
        _authority: &str,
        _path: &str,
        _body: &[u8],
        _timeout_ms: u64,
    ) -> Result<u32, Status> {
        // The playground decides on the in-process ledger only (see `play::run`).
        Err(Status(1))
    }

    fn resume_request(&self) {}
}

//! Benchmark probe for `just bench --host-costs`: a proxy-wasm HTTP filter that makes one kind
//! of host call a fixed number of times in every request-headers callback, so the difference
//! in Envoy CPU per request against the same probe making no call prices that host call on
//! the real Envoy (host work, the V8 boundary, and the guest allocation a returned value
//! costs).
//!
//! The plugin configuration is `"<call> <count>"`, a call from [`CALLS`]. The calls are the
//! ones retry-guard makes on a guarded request, with values of the sizes it uses.
//! `pause_for_body` makes no call: it holds the request headers until the whole body has
//! arrived, as retry-guard does to fingerprint a body. `reply_428` does the same and then
//! answers the request itself (`proxy_send_local_response`) with a 428 problem document of the
//! size of retry-guard's, as retry-guard answers a replay. `etcd_txn` holds the request until
//! its body is in, as retry-guard does, then sends the count's etcd transactions one after
//! the other through the Envoy cluster [`ETCD_CLUSTER`] (each the ledger's insert-if-absent
//! of a new key, with a value of an entry's size), reading each answer's status and body as
//! retry-guard does, and lets the request go on after the last: the Envoy-side price of a
//! cluster-ledger round trip.

/// What the probe does per call, as its configuration names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Nothing: the baseline.
    None,
    /// `proxy_get_current_time_nanoseconds`.
    GetCurrentTime,
    /// `proxy_increment_metric`.
    IncrementMetric,
    /// `proxy_get_property` of `xds.route_name`.
    GetProperty,
    /// `proxy_get_header_map_value` of `:path`.
    GetHeaderMapValue,
    /// `proxy_get_header_map_pairs` of the request headers.
    GetHeaderMapPairs,
    /// `proxy_get_shared_data` of a 96-byte value.
    GetSharedData,
    /// `proxy_set_shared_data` of a 96-byte value.
    SetSharedData,
    /// `proxy_set_property`: a new filter-state object.
    SetProperty,
    /// `proxy_log` of an audit-line-sized info line.
    Log,
    /// `proxy_replace_header_map_value` of a request header (`x-envoy-max-retries: 0`, as
    /// retry-guard sets it on a guarded route).
    ReplaceHeaderMapValue,
    /// No call: hold the request headers until the whole body is in.
    PauseForBody,
    /// Hold the request until the whole body is in, then answer it with a 428 of
    /// [`REPLY_BODY_BYTES`] (`proxy_send_local_response`, once whatever the count).
    Reply428,
    /// Hold the request until the whole body is in, then send `count` etcd transactions one
    /// after the other (`proxy_http_call` to [`ETCD_CLUSTER`]) and resume after the last answer.
    EtcdTxn,
}

/// The Envoy cluster `etcd_txn` calls (the benchmark's cluster of its etcd member).
pub const ETCD_CLUSTER: &str = "retry-guard-etcd";

/// The etcd JSON gateway's transaction path.
pub const TXN_PATH: &str = "/v3/kv/txn";

/// The insert-if-absent transaction `etcd_txn` sends for key `key`: retry-guard's shape (compare
/// the key's `create_revision` with 0, put a value of [`ENTRY_BYTES`] on success, read the key
/// on failure), with no lease.
pub fn txn_body(key: &str) -> String {
    let k = base64(key.as_bytes());
    let v = base64(&[b'e'; ENTRY_BYTES]);
    format!(
        "{{\"compare\":[{{\"key\":\"{k}\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}}],\"success\":[{{\"request_put\":{{\"key\":\"{k}\",\"value\":\"{v}\",\"lease\":\"0\"}}}}],\"failure\":[{{\"request_range\":{{\"key\":\"{k}\"}}}}]}}"
    )
}

/// The size of a retry-guard ledger entry as the etcd ledger stores it.
pub const ENTRY_BYTES: usize = 124;

/// Standard base64 with padding (etcd's JSON gateway encodes bytes so).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every call with the name the configuration uses for it.
pub const CALLS: [(&str, Call); 14] = [
    ("none", Call::None),
    ("get_current_time", Call::GetCurrentTime),
    ("increment_metric", Call::IncrementMetric),
    ("get_property", Call::GetProperty),
    ("get_header_map_value", Call::GetHeaderMapValue),
    ("get_header_map_pairs", Call::GetHeaderMapPairs),
    ("get_shared_data", Call::GetSharedData),
    ("set_shared_data", Call::SetSharedData),
    ("set_property", Call::SetProperty),
    ("log", Call::Log),
    ("replace_header_map_value", Call::ReplaceHeaderMapValue),
    ("pause_for_body", Call::PauseForBody),
    ("reply_428", Call::Reply428),
    ("etcd_txn", Call::EtcdTxn),
];

/// Parses `"<call> <count>"`: the call (a name from [`CALLS`]) and the count, or a message
/// that says what is wrong. Resolved once, at configuration, so the per-request loop pays no
/// name comparison.
pub fn parse(config: &str) -> Result<(Call, u32), String> {
    let mut words = config.split_whitespace();
    let (Some(name), Some(count), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!(
            "configuration {config:?}: expected \"<call> <count>\", e.g. \"log 4\""
        ));
    };
    let call = CALLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
        .ok_or_else(|| {
            let names: Vec<&str> = CALLS.iter().map(|(n, _)| *n).collect();
            format!("unknown call {name:?}; one of {}", names.join(", "))
        })?;
    let count = count
        .parse()
        .map_err(|_| format!("count {count:?} is not a whole number"))?;
    Ok((call, count))
}

/// The length of `reply_428`'s body: about retry-guard's 428 problem document (its `detail`,
/// challenge and links), and the body of the benchmark's own `direct_response` 428.
pub const REPLY_BODY_BYTES: usize = 819;

/// `reply_428`'s body: a problem document of [`REPLY_BODY_BYTES`].
pub fn reply_body() -> String {
    let head = r#"{"type":"urn:retry-guard:problem:confirmation-required","title":"Human confirmation required","status":428,"detail":""#;
    let mut body = String::from(head);
    while body.len() < REPLY_BODY_BYTES - 2 {
        body.push('x');
    }
    body.push_str("\"}");
    body
}

/// A value of the size of a retry-guard ledger entry (126 bytes with its key).
pub const SHARED_VALUE: &[u8; 96] = &[b'x'; 96];

/// An info line of the length of a retry-guard decision audit line.
pub fn audit_sized_line() -> String {
    let mut line = String::from("retry-guard audit ");
    while line.len() < 560 {
        line.push_str("{\"k\":\"v\"}");
    }
    line
}

#[cfg(target_arch = "wasm32")]
mod filter {
    use super::Call;
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
    use std::rc::Rc;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(Root { probe: None })
        });
    }}

    struct Probe {
        call: Call,
        count: u32,
        metric: u32,
        line: String,
        reply: String,
    }

    struct Root {
        probe: Option<Rc<Probe>>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let config = self
                .get_plugin_configuration()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let (call, count) = match super::parse(&config) {
                Ok(p) => p,
                Err(e) => {
                    let _ = hostcalls::log(LogLevel::Critical, &format!("hostcost: {e}"));
                    return false;
                }
            };
            let metric =
                hostcalls::define_metric(MetricType::Counter, "hostcost.probe").unwrap_or_default();
            let _ = hostcalls::set_shared_data("hostcost.entry", Some(super::SHARED_VALUE), None);
            self.probe = Some(Rc::new(Probe {
                call,
                count,
                metric,
                line: super::audit_sized_line(),
                reply: super::reply_body(),
            }));
            true
        }

        fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
            let probe = self.probe.clone()?;
            Some(Box::new(Stream {
                txns_left: probe.count,
                probe,
                id,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream {
        probe: Rc<Probe>,
        /// `etcd_txn`: the transactions still to send.
        txns_left: u32,
        /// `etcd_txn`: this stream's keys are `<prefix><context id>-<n>`.
        id: u32,
    }

    impl Stream {
        fn pauses_for_body(&self) -> bool {
            self.probe.count > 0
                && matches!(
                    self.probe.call,
                    Call::PauseForBody | Call::Reply428 | Call::EtcdTxn
                )
        }

        /// Sends the next etcd transaction; `false` when none is left or it could not be sent.
        fn send_txn(&mut self) -> bool {
            if self.txns_left == 0 {
                return false;
            }
            self.txns_left -= 1;
            let nanos = self
                .get_current_time()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let key = format!(
                "retry-guard-bench-probe/{nanos}-{}-{}",
                self.id, self.txns_left
            );
            let body = super::txn_body(&key);
            self.dispatch_http_call(
                super::ETCD_CLUSTER,
                vec![
                    (":method", "POST"),
                    (":path", super::TXN_PATH),
                    (":authority", "etcd"),
                    ("content-type", "application/json"),
                ],
                Some(body.as_bytes()),
                vec![],
                std::time::Duration::from_millis(1000),
            )
            .is_ok()
        }

        /// Answers the request 428 with the probe's problem document, as retry-guard does.
        fn reply_428(&self) {
            self.send_http_response(
                428,
                vec![("content-type", "application/problem+json")],
                Some(self.probe.reply.as_bytes()),
            );
        }
    }

    impl Context for Stream {
        fn on_http_call_response(&mut self, _token: u32, _headers: usize, body: usize, _: usize) {
            // Read what retry-guard reads of an answer: its status and its body.
            let _ = self.get_http_call_response_header(":status");
            let _ = self.get_http_call_response_body(0, body);
            if !self.send_txn() {
                self.resume_http_request();
            }
        }
    }

    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }

    /// The whole request header map as the host serializes it, without parsing it (as
    /// retry-guard reads it), freed at once.
    fn header_map_pairs() -> usize {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: the host writes a pointer it allocated through `proxy_on_memory_allocate`
        // (a boxed slice of `size` bytes) and its size to the two live locals.
        unsafe {
            proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size);
            if !data.is_null() {
                drop(Vec::from_raw_parts(data, size, size));
            }
        }
        size
    }

    impl HttpContext for Stream {
        fn on_http_request_body(&mut self, _size: usize, eos: bool) -> Action {
            if !self.pauses_for_body() {
                return Action::Continue;
            }
            if !eos {
                return Action::Pause;
            }
            let call = self.probe.call;
            match call {
                Call::Reply428 => {
                    self.reply_428();
                    Action::Pause
                }
                Call::EtcdTxn if self.send_txn() => Action::Pause,
                _ => Action::Continue,
            }
        }

        fn on_http_request_headers(&mut self, _headers: usize, eos: bool) -> Action {
            if self.pauses_for_body() {
                if !eos {
                    return Action::Pause;
                }
                let call = self.probe.call;
                return match call {
                    Call::Reply428 => {
                        // No body at all: answer now.
                        self.reply_428();
                        Action::Pause
                    }
                    Call::EtcdTxn if self.send_txn() => Action::Pause,
                    _ => Action::Continue,
                };
            }
            let p = &*self.probe;
            for i in 0..p.count {
                match p.call {
                    Call::GetCurrentTime => {
                        let _ = hostcalls::get_current_time();
                    }
                    Call::IncrementMetric => {
                        let _ = hostcalls::increment_metric(p.metric, 1);
                    }
                    Call::GetProperty => {
                        let _ = hostcalls::get_property(vec!["xds", "route_name"]);
                    }
                    Call::GetHeaderMapValue => {
                        let _ =
                            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
                    }
                    Call::GetHeaderMapPairs => {
                        header_map_pairs();
                    }
                    Call::GetSharedData => {
                        let _ = hostcalls::get_shared_data("hostcost.entry");
                    }
                    Call::SetSharedData => {
                        let _ = hostcalls::set_shared_data(
                            "hostcost.entry",
                            Some(super::SHARED_VALUE),
                            None,
                        );
                    }
                    Call::SetProperty => {
                        // A new filter-state object per call, as retry-guard's one per request.
                        let key = [
                            "hostcost.k",
                            ["0", "1", "2", "3", "4", "5", "6", "7"][(i % 8) as usize],
                        ]
                        .concat();
                        let _ = hostcalls::set_property(vec![key.as_str()], Some(b"allow"));
                    }
                    Call::Log => {
                        let _ = hostcalls::log(LogLevel::Info, &p.line);
                    }
                    Call::ReplaceHeaderMapValue => {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            "x-envoy-max-retries",
                            Some("0"),
                        );
                    }
                    Call::None | Call::PauseForBody | Call::Reply428 | Call::EtcdTxn => {}
                }
            }
            Action::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_call_and_count_and_says_what_is_wrong() {
        assert_eq!(parse("log 4"), Ok((Call::Log, 4)));
        assert_eq!(parse(" none  0 "), Ok((Call::None, 0)));
        assert!(parse("log").unwrap_err().contains("expected"));
        assert!(parse("logs 4")
            .unwrap_err()
            .contains("unknown call \"logs\""));
        assert!(parse("log four")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(parse("log 4 5").is_err());
        assert_eq!(parse("reply_428 1"), Ok((Call::Reply428, 1)));
        assert_eq!(parse("etcd_txn 1"), Ok((Call::EtcdTxn, 1)));
    }

    #[test]
    fn the_etcd_transaction_is_the_ledgers_insert_if_absent() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let body = txn_body("k/1");
        assert!(body.contains("\"key\":\"ay8x\""), "{body}");
        assert!(body.contains("\"target\":\"CREATE\""));
        assert!(body.contains("\"request_range\""));
        assert!(body.contains(&base64(&[b'e'; ENTRY_BYTES])));
    }

    #[test]
    fn values_have_retry_guard_sizes() {
        let line = audit_sized_line();
        assert!((560..570).contains(&line.len()), "{}", line.len());
        assert_eq!(SHARED_VALUE.len(), 96);
        let reply = reply_body();
        assert_eq!(reply.len(), REPLY_BODY_BYTES);
        assert!(reply.ends_with("x\"}") && reply.contains("\"status\":428"));
    }
}

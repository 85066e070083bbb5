//! The host-sim probe: a proxy-wasm filter that exercises every host function host-sim
//! implements and Envoy supports observably, and reports what it saw in a deterministic,
//! comparable form:
//!
//! - log lines `probe|<case>|<what>|<value>` (info unless the line is about levels);
//! - response headers `x-probe-*` it adds;
//! - metrics `probe.*`, filter state `wasm.retry_guard.decision` (the e2e bootstrap's access
//!   log shows it).
//!
//! The case is the path: `/probe/headers`, `/probe/body`, `/probe/local`, `/probe/shared`,
//! `/probe/tick`. Values that differ from run to run (request ids, CAS numbers, times, ports)
//! are reported as facts about them (present, ordered, > 2020), never raw.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

mod raw;

const REQ: u32 = 0; // MapType::HttpRequestHeaders
const RESP: u32 = 2; // MapType::HttpResponseHeaders
const REQ_BODY: u32 = 0; // BufferType::HttpRequestBody
const RESP_BODY: u32 = 1; // BufferType::HttpResponseBody

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    /// WASI preview1 `random_get` (Envoy provides it; getrandom uses it).
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

const JAN_2020: u64 = 1_577_836_800;

fn plog(case: &str, what: &str, value: impl std::fmt::Display) {
    let _ = hostcalls::log(LogLevel::Info, &format!("probe|{case}|{what}|{value}"));
}

fn status_name(r: Result<(), Status>) -> String {
    match r {
        Ok(()) => "Ok".into(),
        Err(s) => format!("{s:?}"),
    }
}

/// A property value as text: `none`, `str:<text>` or `int:<u64>` (8 bytes), `hex:<..>`.
fn show(v: &Result<Vec<u8>, String>, int: bool) -> String {
    match v {
        Err(s) => format!("err:{s}"),
        Ok(b) if int && b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            format!("int:{}", u64::from_le_bytes(a))
        }
        Ok(b) => match std::str::from_utf8(b) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => format!("str:{s}"),
            _ => format!(
                "hex:{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        },
    }
}

fn prop(path: &[&str]) -> Result<Vec<u8>, String> {
    raw::get_property(path)
}

/// Decodes the proxy-wasm pairs format (a map-valued property).
fn decode_pairs(b: &[u8]) -> Vec<(String, String)> {
    let rd = |i: usize| -> Option<usize> {
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize)
    };
    let mut out = Vec::new();
    let Some(n) = rd(0) else { return out };
    let mut sizes = Vec::new();
    for i in 0..n {
        let (Some(k), Some(v)) = (rd(4 + i * 8), rd(8 + i * 8)) else {
            return out;
        };
        sizes.push((k, v));
    }
    let mut p = 4 + n * 8;
    for (k, v) in sizes {
        let key = b
            .get(p..p + k)
            .map(|x| String::from_utf8_lossy(x).into_owned());
        p += k + 1;
        let val = b
            .get(p..p + v)
            .map(|x| String::from_utf8_lossy(x).into_owned());
        p += v + 1;
        if let (Some(k), Some(v)) = (key, val) {
            out.push((k, v));
        }
    }
    out
}

fn random_bytes() -> Option<[u8; 16]> {
    let mut b = [0u8; 16];
    // SAFETY: the host writes exactly `len` bytes into the buffer we own.
    let errno = unsafe { random_get(b.as_mut_ptr(), b.len()) };
    (errno == 0).then_some(b)
}

#[derive(Default)]
struct Root {
    metrics: Metrics,
}

#[derive(Clone, Copy, Default)]
struct Metrics {
    requests: u32,
    gauge: u32,
    hist: u32,
    ticks: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let def = |t, n| hostcalls::define_metric(t, n).unwrap_or(0);
        self.metrics = Metrics {
            requests: def(MetricType::Counter, "probe.requests"),
            gauge: def(MetricType::Gauge, "probe.gauge"),
            hist: def(MetricType::Histogram, "probe.hist"),
            ticks: def(MetricType::Counter, "probe.ticks"),
        };
        let _ = hostcalls::register_shared_queue("probe_q");
        let _ = hostcalls::set_tick_period(Duration::from_millis(50));
        true
    }

    fn on_tick(&mut self) {
        // One tick per VM: count it, mark it, stop ticking.
        let _ = hostcalls::increment_metric(self.metrics.ticks, 1);
        let _ = hostcalls::set_shared_data("probe:ticked", Some(b"yes"), None);
        let _ = hostcalls::set_tick_period(Duration::from_millis(0));
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            case: String::new(),
            metrics: self.metrics,
            response_body: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    case: String,
    metrics: Metrics,
    response_body: Vec<u8>,
}

impl Stream {
    fn log(&self, what: &str, value: impl std::fmt::Display) {
        plog(&self.case, what, value);
    }

    fn headers_case(&self) {
        // Logging at each level (Envoy's -l info drops trace and debug).
        for (lvl, name) in [
            (LogLevel::Trace, "trace"),
            (LogLevel::Debug, "debug"),
            (LogLevel::Info, "info"),
            (LogLevel::Warn, "warn"),
            (LogLevel::Error, "error"),
            (LogLevel::Critical, "critical"),
        ] {
            let _ = hostcalls::log(lvl, &format!("probe|{}|level|{name}", self.case));
        }
        self.log(
            "log_level",
            format!("{:?}", hostcalls::get_log_level().map(|l| l as u32)),
        );
        // Time: proxy_get_current_time_nanoseconds and WASI clock_time_get.
        let t = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        self.log("time_after_2020", t.is_some_and(|s| s > JAN_2020));
        let w = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.log("wasi_clock_after_2020", w > JAN_2020);
        // Random through WASI random_get.
        let (a, b) = (random_bytes(), random_bytes());
        self.log(
            "random",
            format!(
                "ok={} distinct={}",
                a.is_some() && b.is_some(),
                a.is_some() && a != b
            ),
        );
        // Properties.
        for (path, int) in [
            (&["request", "path"][..], false),
            (&["request", "url_path"], false),
            (&["request", "host"], false),
            (&["request", "scheme"], false),
            (&["request", "method"], false),
            (&["request", "protocol"], false),
            (&["request", "query"], false),
            (&["request", "referer"], false),
            (&["request", "useragent"], false),
            (&["request", "headers", "x-probe-case"], false),
            (&["request", "no_such_field"], false),
            (&["xds", "route_name"], false),
            (&["xds", "cluster_name"], false),
            (&["plugin_name"], false),
            (&["plugin_root_id"], false),
            (&["plugin_vm_id"], false),
            (&["no_such_property"], false),
        ] {
            self.log(&format!("prop {}", path.join(".")), show(&prop(path), int));
        }
        let id = prop(&["request", "id"]);
        self.log(
            "prop request.id",
            format!("len={}", id.ok().map_or(0, |v| v.len())),
        );
        let time = prop(&["request", "time"]);
        self.log(
            "prop request.time",
            format!("len={}", time.ok().map_or(0, |v| v.len())),
        );
        let src = prop(&["source", "address"]).unwrap_or_default();
        self.log(
            "prop source.address",
            format!("loopback={}", src.starts_with(b"127.0.0.1:")),
        );
        let port = prop(&["source", "port"]).unwrap_or_default();
        self.log("prop source.port", format!("len={}", port.len()));
        let headers = prop(&["request", "headers"]).unwrap_or_default();
        let pairs = decode_pairs(&headers);
        self.log(
            "prop request.headers",
            format!(
                "x-probe-case={:?}",
                pairs
                    .iter()
                    .find(|(k, _)| k == "x-probe-case")
                    .map(|(_, v)| v.as_str())
            ),
        );
        // Request header map: get, missing, set/add/replace/remove, pairs.
        self.log(
            "hdr get :method",
            format!("{:?}", raw::get_header(REQ, ":method")),
        );
        self.log(
            "hdr get X-Probe-Case",
            format!("{:?}", raw::get_header(REQ, "X-Probe-Case")),
        );
        self.log(
            "hdr get missing",
            format!("{:?}", raw::get_header(REQ, "x-missing")),
        );
        self.log(
            "hdr replace new",
            raw::replace_header(REQ, "x-probe-set", "set"),
        );
        let r = raw::add_header(REQ, "X-Probe-Add", "one");
        let r2 = raw::add_header(REQ, "x-probe-add", "two");
        self.log("hdr add", format!("{r} {r2}"));
        self.log(
            "hdr replace",
            raw::replace_header(REQ, "x-replace-me", "replaced"),
        );
        self.log("hdr remove", raw::remove_header(REQ, "x-remove-me"));
        self.log(
            "hdr remove missing",
            raw::remove_header(REQ, "x-never-there"),
        );
        self.log(
            "hdr get x-probe-add",
            format!("{:?}", raw::get_header(REQ, "x-probe-add")),
        );
        self.log("hdr pairs names", format!("{:?}", raw::header_names(REQ)));
        // Metrics.
        let m = self.metrics;
        self.log("metric inc counter", raw::increment_metric(m.requests, 1));
        self.log(
            "metric inc counter by 0",
            raw::increment_metric(m.requests, 0),
        );
        self.log(
            "metric inc counter by -1",
            raw::increment_metric(m.requests, -1),
        );
        self.log("metric get counter", raw::get_metric(m.requests));
        self.log("metric record gauge", raw::record_metric(m.gauge, 42));
        self.log("metric inc gauge -2", raw::increment_metric(m.gauge, -2));
        self.log("metric get gauge", raw::get_metric(m.gauge));
        self.log("metric record hist", raw::record_metric(m.hist, 7));
        self.log("metric get hist", raw::get_metric(m.hist));
        self.log("metric get unknown id", raw::get_metric(4_000_000));
        // http_call without :authority.
        let r = hostcalls::dispatch_http_call(
            "backend",
            vec![(":method", "GET"), (":path", "/")],
            None,
            vec![],
            Duration::from_secs(1),
        );
        self.log(
            "http_call no authority",
            format!("{:?}", r.map(|_| "token")),
        );
        // Filter state (the access log's decision column).
        let r = raw::set_property(&["retry_guard.decision"], b"probe-headers");
        self.log("set_property", r);
    }

    fn shared_case(&self) {
        let key = "probe:shared";
        let g = hostcalls::get_shared_data(key);
        self.log(
            "get missing",
            format!("{:?}", g.map(|(v, c)| (v, c.is_some()))),
        );
        // CAS is not checked for a missing key.
        let r = hostcalls::set_shared_data(key, Some(b"v1"), Some(12345));
        self.log("set missing with cas", status_name(r));
        let (v1, c1) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        self.log("get v1", format!("{:?}", v1.map(String::from_utf8)));
        let c1 = c1.unwrap_or(0);
        let r = hostcalls::set_shared_data(key, Some(b"bad"), Some(c1.wrapping_add(1000)));
        self.log("set wrong cas", status_name(r));
        let r = hostcalls::set_shared_data(key, Some(b"v2"), Some(c1));
        self.log("set right cas", status_name(r));
        let (v2, c2) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        self.log(
            "get v2",
            format!(
                "{:?} cas_changed={}",
                v2.map(String::from_utf8),
                c2.is_some_and(|c| c != c1)
            ),
        );
        let r = hostcalls::set_shared_data(key, Some(b"v3"), Some(c1));
        self.log("set stale cas", status_name(r));
        let r = hostcalls::set_shared_data(key, Some(b"v4"), None);
        self.log("set cas 0", status_name(r));
        let r = hostcalls::set_shared_data(key, None, None);
        self.log("set empty", status_name(r));
        let g = hostcalls::get_shared_data(key);
        self.log(
            "get after empty",
            format!("{:?}", g.map(|(v, c)| (v.map(|v| v.len()), c.is_some()))),
        );
        // Queues.
        let vm_id = prop(&["plugin_vm_id"])
            .ok()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let q = hostcalls::resolve_shared_queue(&vm_id, "probe_q");
        self.log("queue resolve", format!("{:?}", q.map(|t| t.is_some())));
        let missing = hostcalls::resolve_shared_queue(&vm_id, "no_such_queue");
        self.log("queue resolve missing", format!("{missing:?}"));
        let own = hostcalls::register_shared_queue("probe_stream_q");
        self.log("queue register", format!("{:?}", own.map(|t| t > 0)));
        if let Ok(t) = own {
            self.log(
                "queue dequeue empty",
                format!("{:?}", hostcalls::dequeue_shared_queue(t)),
            );
            let r = hostcalls::enqueue_shared_queue(t, Some(b"hello"));
            self.log("queue enqueue", status_name(r));
            let d = hostcalls::dequeue_shared_queue(t);
            self.log(
                "queue dequeue",
                format!("{:?}", d.map(|o| o.map(String::from_utf8))),
            );
        }
        self.log(
            "queue enqueue bad token",
            status_name(hostcalls::enqueue_shared_queue(999_999, Some(b"x"))),
        );
        let _ = raw::set_property(&["retry_guard.decision"], b"probe-shared");
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _n: usize, eos: bool) -> Action {
        let path = raw::get_header(REQ, ":path").1.unwrap_or_default();
        let p = path.split('?').next().unwrap_or_default();
        self.case = p.strip_prefix("/probe/").unwrap_or("other").to_string();
        self.log("request_headers", format!("eos={eos}"));
        match self.case.as_str() {
            "headers" => {
                self.headers_case();
                Action::Continue
            }
            "shared" => {
                self.shared_case();
                Action::Continue
            }
            "tick" => {
                let (v, _) = hostcalls::get_shared_data("probe:ticked").unwrap_or((None, None));
                let v = v.map(|v| String::from_utf8_lossy(&v).into_owned());
                self.log("ticked", format!("{v:?}"));
                Action::Continue
            }
            "local" => {
                let r = hostcalls::send_http_response(
                    418,
                    vec![("x-probe-local", "yes"), ("x-probe-local", "twice")],
                    Some(b"probe local reply\n"),
                );
                self.log("send_http_response", status_name(r));
                let _ = raw::set_property(&["retry_guard.decision"], b"probe-local");
                Action::Pause
            }
            "body" => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if self.case != "body" {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        self.log("request_body", format!("size={size} eos={eos}"));
        let (st, body) = raw::get_buffer(REQ_BODY, 0, size);
        self.log("request_body get", st);
        self.log("request_body text", String::from_utf8_lossy(&body));
        let (st, part) = raw::get_buffer(REQ_BODY, 6, 5);
        self.log(
            "request_body get 6..11",
            format!("{st} {}", String::from_utf8_lossy(&part)),
        );
        let (st, _) = raw::get_buffer(REQ_BODY, size + 10, 5);
        self.log("request_body get past end", st);
        let upper = body.to_ascii_uppercase();
        self.log(
            "request_body replace",
            raw::set_buffer(REQ_BODY, 0, size, &upper),
        );
        self.log(
            "request_body hdr get",
            format!("{:?}", raw::get_header(REQ, "x-probe-case")),
        );
        self.log(
            "request_body hdr add",
            raw::add_header(REQ, "x-probe-late", "1"),
        );
        let _ = raw::set_property(&["retry_guard.decision"], b"probe-body");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> Action {
        self.log("response_headers", format!("eos={eos}"));
        self.log(
            "resp get :status",
            format!("{:?}", raw::get_header(RESP, ":status")),
        );
        self.log(
            "prop response.code",
            show(&prop(&["response", "code"]), true),
        );
        self.log(
            "prop response.code_details",
            show(&prop(&["response", "code_details"]), false),
        );
        self.log("resp pairs names", format!("{:?}", raw::header_names(RESP)));
        let ops = [
            raw::replace_header(RESP, "x-probe-resp-set", "set"),
            raw::add_header(RESP, "x-probe-resp-add", "one"),
            raw::add_header(RESP, "x-probe-resp-add", "two"),
            raw::replace_header(RESP, "x-backend-keep", "replaced"),
            raw::remove_header(RESP, "x-backend-remove"),
        ];
        self.log("resp ops", ops.join(" "));
        // The request headers after they went upstream.
        self.log(
            "resp req hdr get",
            format!("{:?}", raw::get_header(REQ, "x-probe-case")),
        );
        self.log(
            "resp req hdr add",
            raw::add_header(REQ, "x-probe-late", "1"),
        );
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if self.case != "body" {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        let (st, body) = raw::get_buffer(RESP_BODY, 0, size);
        self.log("response_body", format!("size={size} {st}"));
        self.log("response_body text", String::from_utf8_lossy(&body));
        self.log(
            "response_body replace",
            raw::set_buffer(RESP_BODY, 0, size, &body.to_ascii_uppercase()),
        );
        self.log(
            "response_body hdr get",
            format!("{:?}", raw::get_header(RESP, ":status")),
        );
        self.response_body = body;
        Action::Continue
    }

    fn on_log(&mut self) {
        self.log("on_log code", show(&prop(&["response", "code"]), true));
        self.log(
            "on_log code_details",
            show(&prop(&["response", "code_details"]), false),
        );
        self.log("on_log flags", show(&prop(&["response", "flags"]), true));
        self.log(
            "on_log resp :status",
            format!("{:?}", raw::get_header(RESP, ":status")),
        );
        self.log(
            "on_log req x-probe-case",
            format!("{:?}", raw::get_header(REQ, "x-probe-case")),
        );
        self.log("on_log req add", raw::add_header(REQ, "x-probe-late", "1"));
        self.log(
            "on_log resp add",
            raw::add_header(RESP, "x-probe-late", "1"),
        );
        self.log("on_log", "end");
    }
}

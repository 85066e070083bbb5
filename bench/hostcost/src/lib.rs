//! Benchmark probe for `just bench --host-costs`: a proxy-wasm HTTP filter that makes one kind
//! of host call a fixed number of times in every request-headers callback, so the difference
//! in Envoy CPU per request against the same probe making no call prices that host call on
//! the real Envoy (host work, the V8 boundary, and the guest allocation a returned value
//! costs).
//!
//! The plugin configuration is `"<call> <count>"`, a call from [`CALLS`]. The calls are the
//! ones retry-guard makes on a guarded request, with values of the sizes it uses.
//! `pause_for_body` makes no call: it holds the request headers until the whole body has
//! arrived, as retry-guard does to fingerprint a body.

/// The host calls the probe can make, by the name its configuration uses.
pub const CALLS: [&str; 11] = [
    "none",
    "get_current_time",
    "increment_metric",
    "get_property",
    "get_header_map_value",
    "get_header_map_pairs",
    "get_shared_data",
    "set_shared_data",
    "set_property",
    "log",
    "pause_for_body",
];

/// Parses `"<call> <count>"`: the call's index in [`CALLS`] and the count, or a message that
/// says what is wrong.
pub fn parse(config: &str) -> Result<(usize, u32), String> {
    let mut words = config.split_whitespace();
    let (Some(call), Some(count), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!(
            "configuration {config:?}: expected \"<call> <count>\", e.g. \"log 4\""
        ));
    };
    let index = CALLS
        .iter()
        .position(|c| *c == call)
        .ok_or_else(|| format!("unknown call {call:?}; one of {}", CALLS.join(", ")))?;
    let count = count
        .parse()
        .map_err(|_| format!("count {count:?} is not a whole number"))?;
    Ok((index, count))
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
        call: usize,
        count: u32,
        metric: u32,
        line: String,
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
            }));
            true
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream {
                probe: self.probe.clone()?,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream {
        probe: Rc<Probe>,
    }

    impl Stream {
        fn pauses_for_body(&self) -> bool {
            self.probe.count > 0 && super::CALLS.get(self.probe.call) == Some(&"pause_for_body")
        }
    }

    impl Context for Stream {}

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
            if self.pauses_for_body() && !eos {
                Action::Pause
            } else {
                Action::Continue
            }
        }

        fn on_http_request_headers(&mut self, _headers: usize, eos: bool) -> Action {
            if self.pauses_for_body() {
                return if eos { Action::Continue } else { Action::Pause };
            }
            let p = &*self.probe;
            for i in 0..p.count {
                match super::CALLS.get(p.call).copied().unwrap_or("none") {
                    "get_current_time" => {
                        let _ = hostcalls::get_current_time();
                    }
                    "increment_metric" => {
                        let _ = hostcalls::increment_metric(p.metric, 1);
                    }
                    "get_property" => {
                        let _ = hostcalls::get_property(vec!["xds", "route_name"]);
                    }
                    "get_header_map_value" => {
                        let _ =
                            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
                    }
                    "get_header_map_pairs" => {
                        header_map_pairs();
                    }
                    "get_shared_data" => {
                        let _ = hostcalls::get_shared_data("hostcost.entry");
                    }
                    "set_shared_data" => {
                        let _ = hostcalls::set_shared_data(
                            "hostcost.entry",
                            Some(super::SHARED_VALUE),
                            None,
                        );
                    }
                    "set_property" => {
                        // A new filter-state object per call, as retry-guard's one per request.
                        let key = [
                            "hostcost.k",
                            ["0", "1", "2", "3", "4", "5", "6", "7"][(i % 8) as usize],
                        ]
                        .concat();
                        let _ = hostcalls::set_property(vec![key.as_str()], Some(b"allow"));
                    }
                    "log" => {
                        let _ = hostcalls::log(LogLevel::Info, &p.line);
                    }
                    _ => {}
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
        assert_eq!(parse("log 4"), Ok((9, 4)));
        assert_eq!(parse(" none  0 "), Ok((0, 0)));
        assert!(parse("log").unwrap_err().contains("expected"));
        assert!(parse("logs 4")
            .unwrap_err()
            .contains("unknown call \"logs\""));
        assert!(parse("log four")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(parse("log 4 5").is_err());
    }

    #[test]
    fn values_have_retry_guard_sizes() {
        let line = audit_sized_line();
        assert!((560..570).contains(&line.len()), "{}", line.len());
        assert_eq!(SHARED_VALUE.len(), 96);
    }
}

//! Constants of the proxy-wasm ABI 0.2.1 and the map ("pairs") wire format.
//!
//! Values follow proxy-wasm-cpp-host (`include/proxy-wasm/wasm_api_impl.h`, `src/exports.cc`),
//! which is the host Envoy embeds.

/// `WasmResult` status codes returned by host functions.
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// The key, map, property or metric does not exist.
    pub const NOT_FOUND: i32 = 1;
    /// An argument is out of range or not allowed in this callback.
    pub const BAD_ARGUMENT: i32 = 2;
    /// A value could not be serialized.
    pub const SERIALIZATION_FAILURE: i32 = 3;
    /// A value could not be parsed.
    pub const PARSE_FAILURE: i32 = 4;
    /// A pointer and size do not lie inside the module's memory.
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    /// A queue is empty.
    pub const EMPTY: i32 = 7;
    /// Compare-and-swap failed.
    pub const CAS_MISMATCH: i32 = 8;
    /// The host failed internally.
    pub const INTERNAL_FAILURE: i32 = 10;
    /// Not implemented by this host.
    pub const UNIMPLEMENTED: i32 = 12;
}

/// WASI errno values used by the WASI subset.
pub mod errno {
    /// Success.
    pub const SUCCESS: i32 = 0;
    /// Bad file descriptor.
    pub const BADF: i32 = 8;
    /// Bad address.
    pub const FAULT: i32 = 21;
    /// Invalid argument.
    pub const INVAL: i32 = 28;
    /// Function not supported.
    pub const NOSYS: i32 = 52;
    /// Not supported.
    pub const NOTSUP: i32 = 58;
}

/// Header map types (`proxy_*_header_map_*` first argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    /// Request headers.
    RequestHeaders = 0,
    /// Request trailers.
    RequestTrailers = 1,
    /// Response headers.
    ResponseHeaders = 2,
    /// Response trailers.
    ResponseTrailers = 3,
    /// gRPC initial metadata received.
    GrpcReceiveInitialMetadata = 4,
    /// gRPC trailing metadata received.
    GrpcReceiveTrailingMetadata = 5,
    /// Headers of an `http_call` response.
    HttpCallResponseHeaders = 6,
    /// Trailers of an `http_call` response.
    HttpCallResponseTrailers = 7,
}

impl MapType {
    /// Decodes the ABI value; `None` beyond the last type (the host answers `BadArgument`).
    pub fn from_abi(v: i32) -> Option<MapType> {
        Some(match v {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcReceiveInitialMetadata,
            5 => MapType::GrpcReceiveTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Buffer types (`proxy_get_buffer_bytes` first argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferType {
    /// The request body seen by the current body callback.
    HttpRequestBody = 0,
    /// The response body seen by the current body callback.
    HttpResponseBody = 1,
    /// TCP downstream data (not simulated).
    DownstreamData = 2,
    /// TCP upstream data (not simulated).
    UpstreamData = 3,
    /// The body of an `http_call` response, during `proxy_on_http_call_response`.
    HttpCallResponseBody = 4,
    /// gRPC message received (not simulated).
    GrpcReceiveBuffer = 5,
    /// The VM configuration (`vm_config.configuration`).
    VmConfiguration = 6,
    /// The plugin configuration, during `proxy_on_configure`.
    PluginConfiguration = 7,
    /// Foreign-function call data.
    CallData = 8,
}

impl BufferType {
    /// Decodes the ABI value; `None` beyond the last type.
    pub fn from_abi(v: i32) -> Option<BufferType> {
        Some(match v {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// Metric types (`proxy_define_metric`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricType {
    /// Monotonic counter.
    Counter = 0,
    /// Gauge.
    Gauge = 1,
    /// Histogram (recorded values are kept; `get_metric` is `BadArgument` as in Envoy).
    Histogram = 2,
}

/// Log levels (`proxy_log`), spdlog numbering as Envoy uses it.
pub const LOG_LEVEL_NAMES: [&str; 6] = ["trace", "debug", "info", "warn", "error", "critical"];

/// Parses a log level name (`trace` … `critical`).
pub fn log_level_from_name(name: &str) -> Option<u32> {
    LOG_LEVEL_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}

/// Callback results of the request/response callbacks.
pub mod action {
    /// `Continue`.
    pub const CONTINUE: i32 = 0;
    /// `Pause` (headers: `StopIteration`; body: `StopIterationAndBuffer`).
    pub const PAUSE: i32 = 1;
}

/// Encodes pairs in the proxy-wasm wire format: `u32 count`, then `count` × (`u32 key_len`,
/// `u32 value_len`), then each key and value followed by a NUL byte (all little-endian).
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut size = 4 + pairs.len() * 8;
    for (k, v) in pairs {
        size += k.as_ref().len() + v.as_ref().len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Decodes the pairs wire format the way proxy-wasm-cpp-host's `toPairs` does: a buffer
/// shorter than its header or its declared sizes yields no pairs at all.
pub fn decode_pairs(buf: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let word = |at: usize| -> Option<usize> {
        buf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    if 4usize.saturating_add(count.saturating_mul(8)) > buf.len() {
        return Vec::new();
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let (Some(k), Some(v)) = (word(4 + i * 8), word(8 + i * 8)) else {
            return Vec::new();
        };
        sizes.push((k, v));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (k, v) in sizes {
        let Some(key) = buf.get(at..at + k) else {
            return Vec::new();
        };
        at += k + 1;
        let Some(value) = buf.get(at..at + v) else {
            return Vec::new();
        };
        at += v + 1;
        out.push((key.to_vec(), value.to_vec()));
    }
    out
}

/// Splits a property path into its NUL-separated segments.
pub fn split_path(path: &[u8]) -> Vec<&[u8]> {
    if path.is_empty() {
        return Vec::new();
    }
    path.split(|b| *b == 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_with_nul_terminators() {
        let pairs = vec![(":method", "POST"), ("x", "")];
        let enc = encode_pairs(&pairs);
        let mut want = Vec::new();
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(&7u32.to_le_bytes());
        want.extend_from_slice(&4u32.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(b":method\0POST\0x\0\0");
        assert_eq!(enc, want);
        let dec = decode_pairs(&enc);
        assert_eq!(dec[0], (b":method".to_vec(), b"POST".to_vec()));
        assert_eq!(dec[1], (b"x".to_vec(), Vec::new()));
    }

    #[test]
    fn truncated_pairs_decode_to_nothing() {
        let enc = encode_pairs(&[("abc", "def")]);
        assert!(decode_pairs(&enc[..enc.len() - 3]).is_empty());
        assert!(decode_pairs(&[1, 0]).is_empty());
        assert!(decode_pairs(&[9, 0, 0, 0]).is_empty());
    }

    #[test]
    fn paths_split_on_nul() {
        assert_eq!(
            split_path(b"xds\0route_name"),
            vec![&b"xds"[..], b"route_name"]
        );
        assert!(split_path(b"").is_empty());
    }
}

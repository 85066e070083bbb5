//! The per-stream state a VM's host functions see: header maps, body buffers, stream facts
//! (for properties), filter state, and what the filter asked the host to do.

use std::collections::BTreeMap;

use crate::headers::HeaderMap;

/// Facts about a stream that Envoy exposes as properties.
#[derive(Clone, Debug, Default)]
pub struct StreamFacts {
    /// `xds.route_name`.
    pub route_name: Option<String>,
    /// `xds.cluster_name`.
    pub cluster_name: Option<String>,
    /// `source.address` (`ip:port`).
    pub source_address: String,
    /// `source.port`.
    pub source_port: u64,
    /// `destination.address`.
    pub destination_address: String,
    /// `destination.port`.
    pub destination_port: u64,
    /// `connection.uri_san_peer_certificate` (mTLS peer identity), if any.
    pub peer_uri_san: Option<String>,
    /// Dynamic metadata other filters wrote before the plugin (`metadata`): namespace -> JSON
    /// object, as Envoy's `jwt_authn` writes the verified JWT payload (`None`: none).
    pub dynamic_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// `connection.id`.
    pub connection_id: u64,
    /// `request.time`, nanoseconds since the epoch.
    pub request_time_ns: u64,
    /// `request.protocol`.
    pub protocol: String,
    /// Request body bytes received so far (`request.size`).
    pub request_size: u64,
    /// `response.code`, once known.
    pub response_code: Option<u64>,
    /// `response.code_details`, once known.
    pub response_code_details: Option<String>,
    /// `response.flags` (Envoy's legacy bitmask).
    pub response_flags: u64,
    /// Response body bytes (`response.size`).
    pub response_size: u64,
    /// `upstream.request_attempt_count`: how many times the router sent the request upstream,
    /// once it was forwarded (`None` before, and for requests answered by the filter).
    pub upstream_attempts: Option<u64>,
}

/// A local reply the filter asked for (`proxy_send_local_response`).
#[derive(Clone, Debug)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u32,
    /// Response code details (whitespace replaced by `_`, as Envoy does).
    pub details: String,
    /// Body.
    pub body: Vec<u8>,
    /// Additional headers, in order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// gRPC status (-1: none).
    pub grpc_status: i32,
}

/// One HTTP stream's state inside a VM.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    /// Request headers (modifiable while available).
    pub request_headers: HeaderMap,
    /// Envoy hands the request header map to the filter only while its headers are held:
    /// after `Continue` from the headers callback (or `continue_stream`) it is gone.
    pub request_headers_available: bool,
    /// Request trailers, while available.
    pub request_trailers: Option<HeaderMap>,
    /// The request body the current body callback sees (cumulative while buffered).
    pub request_body: Vec<u8>,
    /// Whether `request_body` is visible (during a request body callback, or buffered).
    pub request_body_available: bool,
    /// Response headers, once the response started.
    pub response_headers: HeaderMap,
    /// Whether the response header map is available (during/after the response headers
    /// callback while held).
    pub response_headers_available: bool,
    /// Response trailers.
    pub response_trailers: Option<HeaderMap>,
    /// The response body the current body callback sees.
    pub response_body: Vec<u8>,
    /// Whether `response_body` is visible.
    pub response_body_available: bool,
    /// Access-log phase (`proxy_on_log`): maps are read-only snapshots.
    pub access_log_phase: bool,
    /// Snapshot of the request headers for the access-log phase.
    pub log_request_headers: HeaderMap,
    /// Snapshot of the response headers for the access-log phase.
    pub log_response_headers: Option<HeaderMap>,
    /// In `proxy_on_log`, the request headers are writable: Envoy still holds the request
    /// header map when the filter never let the headers continue (it returned Pause from the
    /// headers callback), otherwise `BadArgument` (checked with the probe).
    pub log_request_headers_writable: bool,
    /// The same for the response headers.
    pub log_response_headers_writable: bool,
    /// Facts exposed as properties.
    pub facts: StreamFacts,
    /// Filter state set with `proxy_set_property` (`wasm.<path>` → bytes).
    pub filter_state: BTreeMap<String, Vec<u8>>,
    /// The first local reply asked for.
    pub local_reply: Option<LocalReply>,
    /// How many times `send_local_response` was called.
    pub local_reply_calls: u32,
    /// The response headers were already sent downstream.
    pub response_started: bool,
    /// `continue_stream(Request)` was called.
    pub continue_request: bool,
    /// `continue_stream(Response)` was called.
    pub continue_response: bool,
    /// `close_stream` was called for this stream type.
    pub close_requested: Option<i32>,
    /// Host-side misuse detected during callbacks (reported by the sim as errors).
    pub misuse: Vec<String>,
}

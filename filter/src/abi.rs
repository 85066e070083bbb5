//! The proxy-wasm ABI 0.2.1 boundary, written out: the host functions the filter imports, safe
//! wrappers that return the host's status instead of panicking, and the callbacks the filter
//! exports.
//!
//! Why not the SDK (`proxy-wasm` 0.2.5)? Its host-call wrappers `panic!` on any status they do
//! not expect and its dispatcher panics on a context id it does not know: a panic kills the
//! VM for every request on the worker. Its dispatcher also costs a hash-map lookup and a
//! virtual call per callback, about 2,700 guest instructions per request before the filter
//! does anything, and 30 KB of the binary. Here a request on a route no rule can match costs
//! one host call (`xds.route_name`) and no allocation that outlives the callback.
//!
//! Callbacks the filter does not need (response body and trailers, `proxy_on_done`, queues,
//! network filters) are not exported: the host skips a callback a module does
//! not export (proxy-wasm-cpp-host returns "continue" when the export is missing), so Envoy
//! never enters the VM for them.
//!
//! Only this module uses `unsafe`: each block hands the host pointers to live buffers, or
//! takes ownership of a buffer the host allocated through [`proxy_on_memory_allocate`].

use std::ptr::null_mut;

pub use crate::host::{Action, LogLevel, Status};

/// Header maps.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
#[allow(clippy::enum_variant_names)] // The ABI's names: every map is a header map.
pub enum MapType {
    /// Request headers.
    RequestHeaders = 0,
    /// Response headers.
    ResponseHeaders = 2,
    /// Headers of the answer to an HTTP call.
    HttpCallResponseHeaders = 6,
}

/// Buffers.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum BufferType {
    /// The request body buffered so far.
    RequestBody = 0,
    /// The body of the answer to an HTTP call (during `proxy_on_http_call_response`).
    HttpCallResponseBody = 4,
    /// The plugin configuration (during `proxy_on_configure`).
    PluginConfiguration = 7,
}

/// Metric kinds.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum MetricType {
    /// A counter.
    Counter = 0,
    /// A gauge.
    Gauge = 1,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_metric(id: u32, value: *mut u64) -> u32;
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
}

fn status(code: u32) -> Result<(), Status> {
    if code == 0 {
        Ok(())
    } else {
        Err(Status(code))
    }
}

/// Calls a host function that returns a buffer it allocated with [`proxy_on_memory_allocate`]
/// and takes ownership of it: `Ok(None)` for no data or `NotFound`.
fn host_buffer(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        0 if data.is_null() => Ok(None),
        // SAFETY: the host wrote a pointer to `size` bytes it obtained from
        // `proxy_on_memory_allocate(size)` (an allocation of exactly `size` bytes, the layout
        // of a `Vec<u8>` of that capacity), filled them, and hands their ownership over.
        0 => Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) })),
        // NotFound.
        1 => Ok(None),
        code => Err(Status(code)),
    }
}

/// Writes a log line at `level`.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length of a live string.
    unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// The host's wall clock in nanoseconds since the Unix epoch.
pub fn now_nanos() -> Option<u64> {
    let mut t = 0u64;
    // SAFETY: the host writes one u64 to a live local.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut t) }).ok()?;
    Some(t)
}

/// Asks for `proxy_on_tick` every `ms` milliseconds.
pub fn set_tick_period_ms(ms: u32) {
    // SAFETY: no pointers.
    unsafe { proxy_set_tick_period_milliseconds(ms) };
}

/// Up to `max` bytes of a buffer from `start`.
pub fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: the out-parameters are live locals (see `host_buffer`).
    host_buffer(|d, s| unsafe { proxy_get_buffer_bytes(kind as u32, start, max, d, s) })
}

/// A whole header map in the ABI's serialized form (see [`crate::headers::HeaderPairs`]), in
/// one host call; empty if the host has none.
pub fn header_pairs(map: MapType) -> Vec<u8> {
    // SAFETY: the out-parameters are live locals (see `host_buffer`).
    host_buffer(|d, s| unsafe { proxy_get_header_map_pairs(map as u32, d, s) })
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// One header's value (the first, as Envoy returns it).
pub fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    // SAFETY: `name` is live; the out-parameters are live locals (see `host_buffer`).
    host_buffer(|d, s| unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), d, s)
    })
    .ok()
    .flatten()
}

/// Sets a header, replacing any value it had.
pub fn set_header(map: MapType, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live strings.
    status(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes a header.
pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live string.
    status(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property by path, its segments joined by NUL as the ABI encodes them
/// (`b"xds\0route_name"`: the filter's paths are constants, so nothing is built per call);
/// `None` if the host has none.
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: `path` is live; the out-parameters are live locals (see `host_buffer`).
    host_buffer(|d, s| unsafe { proxy_get_property(path.as_ptr(), path.len(), d, s) })
        .ok()
        .flatten()
}

/// Sets a one-segment property (Envoy keeps it as filter state `wasm.<name>`).
pub fn set_property(name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live buffers.
    status(unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// A shared-data value and its CAS: `(None, None)` if the key does not exist.
pub fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let mut cas = 0u32;
    // SAFETY: `key` is live; the out-parameters are live locals (see `host_buffer`).
    let value = host_buffer(|d, s| unsafe {
        proxy_get_shared_data(key.as_ptr(), key.len(), d, s, &mut cas)
    })?;
    Ok((value, (cas != 0).then_some(cas)))
}

/// Writes a shared-data value; with `cas`, only if the key's CAS still matches
/// ([`Status::CAS_MISMATCH`] otherwise).
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live buffers.
    status(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// The ABI's map encoding: count, (name length, value length) pairs, then each name and value
/// followed by NUL.
fn encode_map(headers: &[(&str, &str)]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let size = 4 + headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 10)
        .sum::<usize>();
    let mut map = Vec::with_capacity(size);
    map.extend_from_slice(&len(headers.len()));
    for (n, v) in headers {
        map.extend_from_slice(&len(n.len()));
        map.extend_from_slice(&len(v.len()));
    }
    for (n, v) in headers {
        map.extend_from_slice(n.as_bytes());
        map.push(0);
        map.extend_from_slice(v.as_bytes());
        map.push(0);
    }
    map
}

/// Answers the request locally with `status`, `headers` and `body`.
pub fn send_local_response(
    status_code: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), Status> {
    let map = encode_map(headers);
    // SAFETY: pointers and lengths of live buffers (no details string).
    status(unsafe {
        proxy_send_local_response(
            u32::from(status_code),
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// Sends an HTTP request to Envoy cluster `cluster` from the effective context; returns the
/// call's token (its answer comes to `proxy_on_http_call_response` of that context).
pub fn dispatch_http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u32, Status> {
    let map = encode_map(headers);
    let mut token = 0u32;
    // SAFETY: pointers and lengths of live buffers; no trailers.
    status(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            map.as_ptr(),
            map.len(),
            body.as_ptr(),
            body.len(),
            std::ptr::null(),
            0,
            u32::try_from(timeout_ms).unwrap_or(u32::MAX),
            &mut token,
        )
    })?;
    Ok(token)
}

/// Makes `context_id` the context later host calls apply to (until the callback returns).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { proxy_set_effective_context(context_id) })
}

/// Resumes the effective stream's request (held since a callback paused it).
pub fn continue_request() -> Result<(), Status> {
    // SAFETY: no pointers; stream type 0 is the request.
    status(unsafe { proxy_continue_stream(0) })
}

/// Defines a metric and returns its id.
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: `name` is live; the host writes one u32 to a live local.
    status(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds `by` to a counter.
pub fn increment_metric(id: u32, by: i64) {
    // SAFETY: no pointers.
    unsafe { proxy_increment_metric(id, by) };
}

/// Sets a gauge.
pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers.
    unsafe { proxy_record_metric(id, value) };
}

/// A metric's current value.
pub fn metric(id: u32) -> Result<u64, Status> {
    let mut v = 0u64;
    // SAFETY: the host writes one u64 to a live local.
    status(unsafe { proxy_get_metric(id, &mut v) })?;
    Ok(v)
}

// ---- Exports -----------------------------------------------------------------------------

/// Marks the module as proxy-wasm ABI 0.2.1.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The reactor entry point the host calls once after instantiation.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: runs the module's static constructors, once, before any other export.
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors()
    };
}

/// The host allocates in the module's memory through this to hand it data.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    // Exactly `size` bytes (a boxed slice, unlike `Vec::with_capacity`, promises no more), so
    // `host_buffer` can own them as a `Vec` of capacity `size`.
    Box::into_raw(Box::<[u8]>::new_uninit_slice(size)).cast::<u8>()
}

fn action(a: Action) -> u32 {
    a as u32
}

#[no_mangle]
extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    crate::shell::on_context_create(context_id, parent_context_id);
}

#[no_mangle]
extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

#[no_mangle]
extern "C" fn proxy_on_configure(root_context_id: u32, _configuration_size: usize) -> u32 {
    u32::from(crate::shell::on_configure(root_context_id))
}

#[no_mangle]
extern "C" fn proxy_on_tick(root_context_id: u32) {
    crate::shell::on_tick(root_context_id);
}

#[no_mangle]
extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _headers: usize,
    end_of_stream: u32,
) -> u32 {
    action(crate::shell::on_request_headers(
        context_id,
        end_of_stream != 0,
    ))
}

#[no_mangle]
extern "C" fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: u32) -> u32 {
    action(crate::shell::on_request_body(
        context_id,
        body_size,
        end_of_stream != 0,
    ))
}

#[no_mangle]
extern "C" fn proxy_on_request_trailers(context_id: u32, _trailers: usize) -> u32 {
    action(crate::shell::on_request_trailers(context_id))
}

#[no_mangle]
extern "C" fn proxy_on_response_headers(
    context_id: u32,
    _headers: usize,
    _end_of_stream: u32,
) -> u32 {
    action(crate::shell::on_response_headers(context_id))
}

#[no_mangle]
extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    crate::shell::on_http_call_response(context_id, token, body_size);
}

#[no_mangle]
extern "C" fn proxy_on_log(context_id: u32) {
    crate::shell::on_log(context_id);
}

#[no_mangle]
extern "C" fn proxy_on_delete(context_id: u32) {
    crate::shell::on_delete(context_id);
}

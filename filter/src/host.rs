//! What the stream state machine ([`crate::stream`]) needs from the host, as a trait.
//!
//! [`StreamHost`] lists every host interaction of a stream: header, property and body reads,
//! header and filter-state writes, the local reply, logging, metrics, the clock and random
//! bytes. The wasm shell implements it over the proxy-wasm ABI (`shell::host::AbiHost`); native
//! tests implement it with a fake that records the calls and returns scripted values. The
//! stream code is generic over it, so the wasm build calls the ABI wrappers directly (static
//! dispatch, nothing boxed). Shared data sits behind its own trait,
//! [`SharedStore`](crate::ledger::SharedStore), under the ledger.
//!
//! Resuming a stream is usually not a call here: a callback's [`Action`] tells the host to go
//! on. Only a stream whose decision waited for the cluster ledger's answer (which arrives in a
//! callback of the root context) is resumed with [`StreamHost::resume_request`].

use crate::metrics::Counter;

/// What a stream callback tells the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    /// Go on with the stream (from a body or trailers callback: resume the held headers).
    Continue = 0,
    /// Hold the stream (headers until the body is complete; a local reply was sent).
    Pause = 1,
}

/// Log levels, numbered as `proxy_log` numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    /// Info (audit lines).
    Info = 2,
    /// Warnings.
    Warn = 3,
    /// Errors.
    Error = 4,
    /// Critical: the filter cannot work as configured.
    Critical = 5,
}

/// A proxy-wasm status code returned by a host call (0 is `Ok`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    /// A shared-data write whose CAS no longer matches.
    pub const CAS_MISMATCH: Status = Status(8);
}

/// The host interactions of one HTTP stream. Every method is infallible from the stream's
/// point of view except the local reply, whose failure the stream logs: a read the host cannot
/// answer is `None`, a write it refuses is dropped (as the filter always treated them).
pub trait StreamHost {
    /// The host's wall clock in nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> Option<u64>;

    /// Writes a log line at `level`.
    fn log(&self, level: LogLevel, message: &str);

    /// Adds one to `counter`.
    fn count(&self, counter: Counter);

    /// A property by path, its segments joined by NUL (`b"xds\0route_name"`).
    fn property(&self, path: &[u8]) -> Option<Vec<u8>>;

    /// Sets a one-segment property (Envoy keeps it as filter state `wasm.<name>`).
    fn set_property(&self, name: &str, value: &[u8]);

    /// One request header's value.
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;

    /// All request headers in the ABI's serialized form ([`crate::headers::HeaderPairs`]), in
    /// one host call; empty if the host has none.
    fn request_headers(&self) -> Vec<u8>;

    /// Sets a request header, replacing any value it had.
    fn set_request_header(&self, name: &str, value: &str);

    /// Removes a request header.
    fn remove_request_header(&self, name: &str);

    /// Up to `len` bytes of the request body buffered so far, from `start`.
    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>>;

    /// One response header's value.
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;

    /// Answers the request locally with `status`, `headers` and `body`.
    fn send_local_reply(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Status>;

    /// Fills `buf` with random bytes; `false` if the host has no randomness to give.
    fn random_bytes(&self, buf: &mut [u8]) -> bool;

    /// Sends `POST <path>` with a JSON `body` to Envoy cluster `cluster` (`:authority`
    /// `authority`), answered within `timeout_ms`; returns the call's token. The call belongs
    /// to the plugin's root context, not to this stream, so it completes even if the stream
    /// ends first; its answer comes to [`Plugin::on_call_answer`](crate::stream::Plugin).
    fn http_call(
        &self,
        cluster: &str,
        authority: &str,
        path: &str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, Status>;

    /// Resumes the stream this host is for, held since an earlier callback returned
    /// [`Action::Pause`] (after a decision that waited for the cluster ledger).
    fn resume_request(&self);
}

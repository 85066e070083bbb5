//! The host behind the core's traits, over [`crate::abi`]: [`AbiHost`] is a stream's
//! [`StreamHost`], [`HostStore`] the ledger's [`SharedStore`] (Envoy shared data).

use crate::abi::{self, BufferType, MapType, Status};
use crate::host::{LogLevel, StreamHost};
use crate::ledger::{LedgerError, SharedStore};
use crate::metrics::Counter;

/// A stream's host: the ABI wrappers, and the metric ids the root context defined (indexed by
/// [`Counter::index`]). Built on the stack for each callback; it holds no state of its own.
/// Its methods forward to `abi` and are marked `#[inline]`, so the stream code compiled for it
/// makes the same host calls with no extra call in between (checked with `retry-guard bench
/// --paths`: same host calls, no more guest instructions per path than before the trait).
pub(crate) struct AbiHost<'a> {
    pub(crate) metrics: &'a [u32],
    /// The plugin's root context (HTTP calls to the cluster ledger belong to it).
    pub(crate) root_id: u32,
    /// The stream this host is for; 0 in the root context's own callbacks.
    pub(crate) stream_id: u32,
}

impl StreamHost for AbiHost<'_> {
    #[inline]
    fn now_nanos(&self) -> Option<u64> {
        abi::now_nanos()
    }

    #[inline]
    fn log(&self, level: LogLevel, message: &str) {
        abi::log(level, message);
    }

    #[inline]
    fn count(&self, counter: Counter) {
        if let Some(id) = self.metrics.get(counter.index()) {
            abi::increment_metric(*id, 1);
        }
    }

    #[inline]
    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        abi::property(path)
    }

    #[inline]
    fn set_property(&self, name: &str, value: &[u8]) {
        let _ = abi::set_property(name, value);
    }

    #[inline]
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        abi::header(MapType::RequestHeaders, name)
    }

    #[inline]
    fn request_headers(&self) -> Vec<u8> {
        abi::header_pairs(MapType::RequestHeaders)
    }

    #[inline]
    fn set_request_header(&self, name: &str, value: &str) {
        let _ = abi::set_header(MapType::RequestHeaders, name, value);
    }

    #[inline]
    fn remove_request_header(&self, name: &str) {
        let _ = abi::remove_header(MapType::RequestHeaders, name);
    }

    #[inline]
    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        abi::buffer(BufferType::RequestBody, start, len)
            .ok()
            .flatten()
    }

    #[inline]
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        abi::header(MapType::ResponseHeaders, name)
    }

    #[inline]
    fn send_local_reply(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Status> {
        abi::send_local_response(status, headers, body)
    }

    #[inline]
    /// WASI `random_get`.
    fn random_bytes(&self, buf: &mut [u8]) -> bool {
        getrandom::getrandom(buf).is_ok()
    }

    /// Dispatched from the root context (switched to for the call and back), so Envoy does not
    /// cancel the call when the stream ends first.
    fn http_call(
        &self,
        cluster: &str,
        authority: &str,
        path: &str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, Status> {
        if self.stream_id != 0 {
            abi::set_effective_context(self.root_id)?;
        }
        let result = abi::dispatch_http_call(
            cluster,
            &[
                (":method", "POST"),
                (":path", path),
                (":authority", authority),
                ("content-type", "application/json"),
            ],
            body,
            timeout_ms,
        );
        if self.stream_id != 0 {
            let _ = abi::set_effective_context(self.stream_id);
        }
        result
    }

    fn resume_request(&self) {
        if abi::set_effective_context(self.stream_id).is_ok() {
            let _ = abi::continue_request();
        }
    }
}

/// Envoy shared data through the host ABI.
pub(crate) struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, LedgerError> {
        match abi::shared_data(key) {
            // A key exists iff the host returns a CAS; an empty value comes back as no data.
            Ok((data, Some(cas))) => Ok(Some((data.unwrap_or_default(), cas))),
            Ok((Some(data), None)) => Ok(Some((data, 0))),
            Ok((None, None)) => Ok(None),
            Err(status) => Err(LedgerError::Get {
                key: key.to_string(),
                status: status.0,
            }),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), LedgerError> {
        let cas = (cas != 0).then_some(cas);
        match abi::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(Status::CAS_MISMATCH) => Err(LedgerError::CasMismatch),
            Err(status) => Err(LedgerError::Set {
                key: key.to_string(),
                status: status.0,
            }),
        }
    }
}

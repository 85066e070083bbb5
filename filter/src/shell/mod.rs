//! The proxy-wasm shell: the adapter between the host ABI ([`crate::abi`]) and the core. No
//! policy and no stream logic lives here.
//!
//! * [`host`]: the core's host traits implemented over the ABI — [`host::AbiHost`] (the
//!   stream's [`StreamHost`](crate::host::StreamHost)) and [`host::HostStore`] (the ledger's
//!   shared data);
//! * [`root`]: the root context — reads and accepts the configuration, defines the metrics,
//!   creates the ledger table, runs the tick;
//! * [`contexts`]: the VM's context table and the callbacks `abi` exports, which find a
//!   context's state and call the root or the stream state machine ([`crate::stream`]),
//!   including the answers of the cluster ledger's HTTP calls (all made by the root context).
//!
//! Host calls go through [`crate::abi`], whose wrappers return the host's status and never
//! panic (a panic would kill the VM for every request on the worker).

mod contexts;
mod host;
mod root;

pub(crate) use contexts::{
    on_configure, on_context_create, on_delete, on_http_call_response, on_log, on_request_body,
    on_request_headers, on_request_trailers, on_response_headers, on_tick,
};

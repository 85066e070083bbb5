//! retry-guard: an Envoy proxy-wasm filter that turns retries of sensitive identity calls
//! (token issuing, secret minting, session extending, privilege changing) into a control
//! boundary.
//!
//! The crate has two layers:
//!
//! * the **core** (every module except `shell` and `abi`): pure Rust that never calls the
//!   host ABI itself, compiled and unit-tested natively with `cargo test`. The policy modules
//!   decide: each decision is a function of (configuration, request facts, ledger entry, now)
//!   in [`engine`]. [`stream`] is the stream state machine that drives them — which callback
//!   matches, holds, decides, answers, resumes and records — written against two traits: the
//!   host a stream talks to ([`host::StreamHost`]) and the ledger ([`ledger::Ledger`], over
//!   [`ledger::SharedStore`] for Envoy shared data). Its native tests use a fake host;
//! * the **proxy-wasm shell** (`shell`, built only for `wasm32-wasip1`; the browser build for
//!   `wasm32-unknown-unknown` in `web/` leaves it out): the adapter. It implements
//!   those traits over `abi` (the proxy-wasm ABI 0.2.1 imports and exports written out with
//!   wrappers that never panic), reads the plugin configuration, keeps the VM's contexts, and
//!   hands each exported callback to the root or to the stream's state machine.
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo
    )
)]
#![warn(missing_docs)]

#[macro_use]
mod named_enum;

pub mod audit;
pub mod b64;
pub mod canonical;
pub mod config;
pub mod confirm;
pub mod engine;
pub mod etcd;
pub mod fingerprint;
pub mod headers;
pub mod host;
pub mod json;
pub mod jwt;
pub mod ledger;
pub mod matcher;
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
pub mod paths;
pub mod policy;
pub mod principal;
pub mod problem;
pub mod remote;
pub mod stream;
#[cfg(test)]
mod testing;
pub mod time;
pub mod token;

// The proxy-wasm shell is the filter module's (wasm32-wasip1, what Envoy loads); the browser
// build of the policy core (`web/`, wasm32-unknown-unknown) must not carry its ABI exports.
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
#[allow(unsafe_code)] // The ABI boundary: raw host imports and exports, nothing else.
mod abi;
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod shell;

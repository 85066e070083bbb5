//! retry-guard: an Envoy proxy-wasm filter that turns retries of sensitive identity calls
//! (token issuing, secret minting, session extending, privilege changing) into a control
//! boundary.
//!
//! The crate has two layers:
//!
//! * the **policy core** (every module except `shell` and `abi`): pure Rust with no proxy-wasm types.
//!   Each decision is a function of (configuration, request facts, ledger entry, now) and is
//!   unit-tested natively with `cargo test`;
//! * the **proxy-wasm shell** (`shell`, built only for `wasm32`): gathers request facts from the
//!   host, reads and updates the ledger in shared data, calls the core and applies its decision;
//!   it talks to the host through `abi`, the proxy-wasm ABI 0.2.1 imports and exports written
//!   out with wrappers that never panic.
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
pub mod config;
pub mod confirm;
pub mod engine;
pub mod fingerprint;
pub mod headers;
pub mod json;
pub mod jwt;
pub mod ledger;
pub mod matcher;
pub mod metrics;
pub mod policy;
pub mod principal;
pub mod problem;
pub mod time;
pub mod token;

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // The ABI boundary: raw host imports and exports, nothing else.
mod abi;
#[cfg(target_arch = "wasm32")]
mod shell;

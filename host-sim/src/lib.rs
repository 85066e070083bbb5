//! host-sim: a proxy-wasm ABI 0.2.1 host on wasmtime that runs a filter the way Envoy 1.40
//! runs it — several worker VMs over one shared-data store, a virtual clock, scripted
//! upstreams — plus the scenario runner on it. The operator's `retry-guard` command (`cli/`)
//! and the real-Envoy scenario target (`conformance/`) build on this library; it depends on
//! neither, nor on the real-Envoy harness.
//!
//! Layers, bottom up:
//! - [`abi`], [`headers`], [`properties`]: wire formats and Envoy's encodings;
//! - [`shared`]: what the VMs of one simulated Envoy share (shared data with Envoy's CAS rules,
//!   queues, metrics, log, clock, seeded random source);
//! - `host`: the host functions; [`vm`]: one VM (store + instance + root context);
//! - [`sim`]: the simulated Envoy (VMs, ticks, the HTTP stream lifecycle, upstream model);
//! - [`scenario`]: the JSON scenario format and its runner, and the pieces another target (the
//!   real Envoy) shares with it; [`tokens`]: approver key files, signed confirmations and test
//!   JWTs; [`bench`]: the per-path micro-benchmark; [`replay`]: host-call recordings for
//!   replaying a request on another engine.
#![warn(missing_docs)]

pub mod abi;
pub mod bench;
pub mod error;
pub mod explore;
pub mod fuzz;
pub mod headers;
mod host;
pub mod properties;
pub mod replay;
pub mod scenario;
pub mod sched;
pub mod shared;
pub mod sim;
pub mod stream;
pub mod tokens;
pub mod upstream;
pub mod vm;

pub use error::{Result, SimError, TrapInfo};
pub use sim::{Exchange, Request, Sim, SimConfig};
pub use upstream::Upstream;
pub use vm::Runtime;

//! host-sim against the real Envoy 1.40.
//!
//! host-sim promises to behave like Envoy; this crate is where that promise is checked. It is
//! the one crate that depends on both the simulator (`retry-guard-host-sim`) and the real-Envoy
//! harness (`retry-guard-e2e`), so neither has to depend on the other:
//!
//! - [`envoy_target`]: runs a scenario file on a real Envoy in front of the harness's scripted
//!   backend, with the same expectations as on the simulator (`retry-guard run --target envoy`);
//! - `tests/agreement.rs`: every scenario runnable on Envoy gives the same exchanges on both
//!   hosts;
//! - `tests/probe_vs_envoy.rs`: the probe filter (`host-sim/probes/probe`) sees the same host
//!   behaviour on both.
#![warn(missing_docs)]

pub mod envoy_target;

//! Host functions: the proxy-wasm ABI 0.2.1 (`env`) and the WASI preview1 subset Envoy provides
//! (`wasi_snapshot_preview1` and `wasi_unstable`).

pub(crate) mod mem;
mod proxy;
mod wasi;

use wasmtime::Linker;

use crate::vm::HostState;

/// Registers every host function; returns the (module, name) pairs provided, so a module that
/// imports anything else can be refused by name before instantiation.
pub fn add_to_linker(
    linker: &mut Linker<HostState>,
) -> wasmtime::Result<Vec<(&'static str, &'static str)>> {
    let mut provided = Vec::new();
    proxy::add(linker, &mut provided)?;
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        wasi::add(linker, module, &mut provided)?;
    }
    Ok(provided)
}

/// Counts one call of the host function `name` when the VM profiles (see
/// [`crate::vm::Runtime::profiling`]), and hands it to the VM's scheduler, if any, before it
/// runs (the shared-data and metric functions do that themselves, with their key or name).
#[inline]
pub(crate) fn count_call(c: &mut wasmtime::Caller<'_, HostState>, name: &'static str) {
    if c.data().scheduler.is_some() && !crate::sched::Access::reported_by_function(name) {
        crate::sched::at(c, || crate::sched::HostCall {
            function: name,
            access: crate::sched::Access::of_function(name),
        });
    }
    if let Some(counts) = c.data_mut().call_counts.as_mut() {
        *counts.entry(name).or_insert(0) += 1;
    }
    if c.data().fuel_trace.is_some() {
        let fuel_left = c.get_fuel().unwrap_or(0);
        if let Some(t) = c.data_mut().fuel_trace.as_mut() {
            t.push(crate::vm::FuelEvent {
                at: name.to_string(),
                fuel_left,
            });
        }
    }
}

/// Records the host call `name` with its arguments while the VM records (see
/// [`crate::replay`]).
#[inline]
pub(crate) fn record_call(c: &mut wasmtime::Caller<'_, HostState>, name: &str, args: &[i64]) {
    if let Some(r) = c.data_mut().replay.as_mut() {
        r.call(name, args);
    }
}

/// Records what the host call being recorded returned.
#[inline]
pub(crate) fn record_return(
    c: &mut wasmtime::Caller<'_, HostState>,
    result: &impl crate::replay::Status,
) {
    if let Some(r) = c.data_mut().replay.as_mut() {
        r.returned(result.status());
    }
}

/// Returns early from a host function with an ABI status.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return Ok(status),
        }
    };
}
pub(crate) use tri;

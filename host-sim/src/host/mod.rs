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

/// Registers the host function `$module.$name` on the linker `$l` and names it in `$p`,
/// wrapping its body: the call is counted when the runtime profiles ([`count_call`]) and
/// recorded, with the status it returns, when it records ([`record_call`],
/// [`record_return`]). The body runs in a closure, so its early `return`s land there too.
macro_rules! register {
    ($l:ident, $p:ident, $module:expr, $name:literal, |mut $c:ident: C<'_> $(, $a:ident: $t:ty)* $(,)?| -> $r:ty $body:block) => {
        $crate::host::register!($l, $p, $module, $name, |$c: C<'_> $(, $a: $t)*| -> $r $body)
    };
    ($l:ident, $p:ident, $module:expr, $name:literal, | $c:ident: C<'_> $(, $a:ident: $t:ty)* $(,)?| -> $r:ty $body:block) => {{
        $l.func_wrap(
            $module,
            $name,
            |caller: C<'_> $(, $a: $t)*| -> $r {
                #[allow(unused_mut)]
                let mut $c = caller;
                $crate::host::count_call(&mut $c, $name);
                $crate::host::record_call(&mut $c, $name, &[$(i64::from($a)),*]);
                #[allow(clippy::redundant_closure_call)]
                let result: $r = (|| -> $r { $body })();
                $crate::host::record_return(&mut $c, &result);
                result
            },
        )?;
        $p.push(($module, $name));
    }};
}
pub(crate) use register;

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

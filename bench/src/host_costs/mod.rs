//! `just bench --host-costs`: what each host call retry-guard makes costs the real Envoy, and
//! for each guarded path the limit those calls and the wasm boundary put under its cost,
//! beside what it measurably adds.
//!
//! The probe filter (`bench/hostcost`) makes one kind of host call a fixed number of times in
//! every request-headers callback, with values of the sizes retry-guard uses (a 560-byte info
//! line, a 96-byte shared-data value, a new filter-state object per call). Each probe runs in
//! its own Envoy beside the probe making no call, interleaved round by round with the
//! benchmark's configurations 2, 4 to 8, 11 and 12 (see [`probes::cases`]). A call's price is
//! the probe's Envoy CPU per request minus the no-call probe's in the same round, divided by
//! the calls per request; answering the request from the filter
//! (`proxy_send_local_response`) is priced by the probe that does it after the body
//! (`reply_428`) against the no-call probe in front of Envoy's own buffered 428.
//!
//! For each guarded path (read_only, token, 428; [`probes::guarded_paths`]) the limit is, round
//! by round: the wasm boundary on its request (the no-call probe sent that request − the same
//! request without a filter), holding the headers until the body is in where the contract
//! reads the body, and the host calls the path makes per request, counted by host-sim on the
//! very module measured and priced with that round's prices. What the path adds (retry-guard
//! − the same request without it) above the limit is the guest's own code and avoidable calls.
//! Where `perf` can record, every run is sampled as `--guest-share` samples it
//! ([`crate::guest_share::sample_if_possible`]): the share of Envoy's CPU in V8's generated
//! code, a guarded path's minus its no-call probe's, is about the module's own code, measured
//! in the same rounds, so the report can say how much of what is above the limit it explains.
//! Writes `target/bench/host-costs.{md,json}`; with `--update-readme`, the `bench-host-costs`
//! section of `bench/README.md` and the `perf-summary` table of the top-level README, which
//! are all this run's figures ([`table`]).

mod probes;
mod table;

use std::collections::BTreeMap;
use std::path::Path;

use retry_guard_e2e::{bail, Error, Result};

use crate::args::Options;
use crate::configs::{Backend, Proxies};
use crate::guest_share::{perf_available, sample_if_possible};
use crate::load::saturated_rounds_observed;
use crate::measure::file_bytes;
use crate::report::Provenance;
use probes::{at, cases, guarded_paths};
use table::HostCosts;

/// Runs the probes and writes the report to `dir`.
pub fn run(o: &Options, dir: &Path) -> Result<()> {
    if o.backend != Backend::Upstream {
        bail!("--host-costs runs in upstream mode only (drop --direct)");
    }
    let proxies = Proxies::new(o, dir)?;
    let guard = proxies.modules().guard.clone();
    let wasm_bytes = file_bytes(&guard)?;
    // What retry-guard calls on each guarded path, per request, counted by host-sim on the
    // module the Envoys load.
    let counted = host_sim::bench::run(&guard, 200, false, false, None, None).map_err(Error)?;
    let mut calls: BTreeMap<&'static str, BTreeMap<String, f64>> = BTreeMap::new();
    for p in guarded_paths() {
        let r = counted
            .iter()
            .find(|r| r.name == p.host_sim)
            .ok_or_else(|| Error(format!("host-sim measured no {} path", p.host_sim)))?;
        calls.insert(p.host_sim, r.host_calls.clone());
    }

    let cases = cases();
    // Every run is sampled with perf when it can record here (sampling costs Envoy a little
    // CPU, so every configuration pays it alike); the generated-code share is kept for each
    // guarded path and its no-call probe, by position in `cases`.
    let sampling = perf_available(dir);
    if !sampling {
        eprintln!("host costs: perf cannot record here: the module's own code is not measured");
    }
    let kept: Vec<usize> = guarded_paths()
        .iter()
        .flat_map(|p| [at(p.guard), p.boundary])
        .collect();
    let mut generated: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let data = dir.join("host-costs.perf.data");
    let runs = saturated_rounds_observed(o, &proxies, "host costs", &cases, |c, envoy, run| {
        if !sampling {
            return run();
        }
        let (r, jit) = sample_if_possible(envoy, &data, run)?;
        let i = cases.iter().position(|x| x.id == c.id);
        if let (Some(jit), Some(g)) = (
            jit,
            i.filter(|i| kept.contains(i))
                .and_then(|i| generated.get_mut(i)),
        ) {
            g.push(jit * r.cpu_us_per_req);
        }
        Ok(r)
    })?;
    drop(proxies);
    let _ = std::fs::remove_file(&data);

    HostCosts {
        provenance: Provenance::now(),
        opts: o,
        calls,
        runs: &runs,
        cases: &cases,
        generated: &generated,
        wasm_bytes,
    }
    .write(dir)
}

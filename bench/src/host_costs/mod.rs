//! `just bench --host-costs`: what each host call retry-guard makes costs the real Envoy, and
//! how much of retry-guard's cost on the token path those calls explain.
//!
//! The probe filter (`bench/hostcost`) makes one kind of host call a fixed number of times in
//! every request-headers callback, with values of the sizes retry-guard uses (a 560-byte info
//! line, a 96-byte shared-data value, a new filter-state object per call). Each probe runs in
//! its own Envoy beside the probe making no call, interleaved round by round with
//! configurations 5 and 8 of the main benchmark. A call's price is the probe's Envoy CPU per
//! request minus the no-call probe's in the same round, divided by the calls per request.
//!
//! Then what retry-guard adds on the token path in the same rounds (configuration 5 − 8) is
//! taken apart: the wasm boundary on that request (the probe making no call, sent case 8's
//! request, minus 8), holding the headers until the body is in (the probe doing just that,
//! minus the one that does not), the host calls (counted by host-sim on the same module on
//! its `token_issuing_allow` path, priced with the table), and the rest: the guest's own code.
//! Writes `target/bench/host-costs.md` and `host-costs.json`; with `--update-readme`, the
//! README's host-costs table.

mod probes;
mod table;

use std::collections::BTreeMap;
use std::path::Path;

use retry_guard_e2e::{bail, Error, Result};

use crate::args::Options;
use crate::configs::{Backend, Proxies};
use crate::load::{wrk, Run};
use crate::measure::Spread;
use crate::report::Provenance;
use probes::{cases, GUARD, NO_GUARD, POST_NONE, POST_PAUSE, PROBES, TOKEN_PATH};
use table::HostCosts;

/// Runs the probes and writes the report to `dir`.
pub fn run(o: &Options, dir: &Path) -> Result<()> {
    if o.backend != Backend::Upstream {
        bail!("--host-costs runs in upstream mode only (drop --direct)");
    }
    let proxies = Proxies::new(o, dir)?;
    // What retry-guard calls on the token path, per request, counted by host-sim.
    let counted = host_sim::bench::run(
        &proxies.modules().guard,
        200,
        false,
        false,
        None,
        Some(TOKEN_PATH),
    )
    .map_err(Error)?;
    let token_calls: BTreeMap<String, f64> = counted
        .first()
        .map(|r| r.host_calls.clone())
        .ok_or_else(|| Error::new("host-sim measured no token path"))?;

    let cases = cases();
    eprintln!(
        "host costs: starting {} Envoys (--concurrency 1, pinned to CPU 0; wrk pinned to CPU 1)",
        cases.len()
    );
    let envoys = proxies.start_warmed(&cases)?;
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); cases.len()];
    for round in 0..o.rounds {
        for ((case, envoy), case_runs) in cases.iter().zip(&envoys).zip(&mut runs) {
            let r = wrk(envoy, case, o.seconds, o.connections)?;
            if r.non2xx > 0 || r.socket_errors > 0 {
                bail!(
                    "{}: {} non-2xx answers, {} socket errors: the run is not valid",
                    case.name,
                    r.non2xx,
                    r.socket_errors
                );
            }
            eprintln!(
                "round {} {:<26} {:<6} {:>8.0} req/s  {:>6.2} µs CPU/req",
                round + 1,
                case.name,
                case.method,
                r.rps(),
                r.cpu_us_per_req
            );
            case_runs.push(r);
        }
    }
    drop(envoys);
    drop(proxies);

    let cpu = |i: usize| -> Vec<f64> {
        runs.get(i)
            .map(|v| v.iter().map(|r| r.cpu_us_per_req).collect())
            .unwrap_or_default()
    };
    let baseline = cpu(0);
    // Per call: (probe − no-call probe) of the same round ÷ calls per request.
    let mut prices: BTreeMap<&str, Spread> = BTreeMap::new();
    for (i, p) in PROBES.iter().enumerate().skip(1) {
        let per_call: Vec<f64> = cpu(i)
            .iter()
            .zip(&baseline)
            .map(|(a, b)| (a - b) / f64::from(p.count))
            .collect();
        prices.insert(p.import, Spread::of(&per_call));
    }
    let minus = |a: usize, b: usize| -> Spread {
        let d: Vec<f64> = cpu(a).iter().zip(&cpu(b)).map(|(x, y)| x - y).collect();
        Spread::of(&d)
    };
    let report = HostCosts {
        provenance: Provenance::now(),
        opts: o,
        baseline: Spread::of(&baseline),
        prices,
        token_calls,
        added: minus(GUARD, NO_GUARD),
        boundary: minus(POST_NONE, NO_GUARD),
        pause: minus(POST_PAUSE, POST_NONE),
        runs: &runs,
        cases: &cases,
    };
    report.write(dir)
}

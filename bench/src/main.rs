//! `just bench`: what retry-guard costs a real Envoy, side by side with the floor.
//!
//! Runs the pinned Envoy (`--concurrency 1`, pinned to CPU 0) in eleven configurations and
//! drives each with an existing load generator pinned to CPU 1, interleaved round by round
//! (1 2 3 … 12, 1 2 3 … 12, …) so machine drift cancels:
//!
//! 1. no wasm filter; 2. the no-op proxy-wasm filter (the floor); 3. retry-guard, request on an
//!    unmatched route; 4. retry-guard, `read_only` route; 5. retry-guard, `token_issuing` route
//!    with a unique idempotency key and a fresh JWT on every request (all allowed); 6. retry-guard
//!    answering 428 (every request a replay); 7. Envoy's own `direct_response` 428; 8. no wasm
//!    filter sent case 5's request (the same bytes), the baseline of 5 ÷ 1; 9. as 3, with the
//!    filter switched off on that route by Envoy's per-route `FilterConfig { disabled: true }`;
//!    11 and 12. no wasm filter, Envoy's own `jwt_authn` verifying case 8's JWT signed RS256 and
//!    ES256 against a local JWKS ([`jwt_authn`]), the reference beside 5 − 8.
//!
//! The configurations are in [`cases`], their Envoy bootstraps (upstream or `--direct` mode)
//! in [`configs`], built and started with the `retry-guard-e2e` harness.
//!
//! Per configuration: saturated throughput (wrk), Envoy CPU time per request (from
//! `/proc/<pid>/stat`), p50/p99 latency at a fixed rate below saturation (`oha -q` from
//! [`load::PACED_PROCESSES`] processes, each request timed from when it was sent, with how late
//! oha sent it beside) and unloaded (oha closed loop, one connection); see [`load`] and
//! [`measure`]. Then a memory run: Envoy RSS while 1,000,000 unique keys flood the token route
//! in case 5's configuration ([`configs::first_attempts_config`], [`benchmark`]). Writes `target/bench/report.md` and `report.json`;
//! `--update-readme` replaces bench/README.md's table of that mode ([`report`]).
//!
//! The default run ends with [`etcd`]: the token path with the cluster ledger on etcd next to
//! the shared-data ledger (`--etcd` runs only that, `--no-etcd` or `--cases` leave it out).
//!
//! `--host-costs` runs [`host_costs`] instead: the price of each host call retry-guard makes,
//! and each guarded path's added cost beside its limit (with `--update-readme`, also the
//! top-level README's Performance table). `--compare-wasm FILE` runs [`compare`] instead:
//! another build of retry-guard beside this one on each guarded path. `--guest-share` runs
//! [`guest_share`] instead: the share of Envoy's CPU in the module's generated code, sampled
//! with `perf`. `--pacing` runs
//! [`pacing`] instead: how evenly the paced runs' requests arrive.

mod args;
mod benchmark;
mod cases;
mod compare;
mod configs;
mod etcd;
mod guest_share;
mod host_costs;
mod jwt_authn;
mod load;
mod measure;
mod pacing;
mod report;

use std::fs;
use std::path::Path;

use args::EtcdRun;
use retry_guard_e2e::{repo_root, Error, Result};

fn main() {
    let dir = repo_root().join("target/bench");
    if let Err(e) = run(&dir) {
        eprintln!("retry-guard-bench: {e} (Envoy's logs are kept in target/bench)");
        std::process::exit(1);
    }
    configs::remove_envoy_logs(&dir);
}

/// Runs what the command line asks for, its files in `dir`.
fn run(dir: &Path) -> Result<()> {
    let o = args::parse()?;
    fs::create_dir_all(dir).map_err(|e| Error(format!("cannot create {}: {e}", dir.display())))?;
    if o.pacing {
        pacing::run(&o, dir)
    } else if o.compare_wasm.is_some() {
        compare::run(&o, dir)
    } else if o.guest_share {
        guest_share::run(&o, dir)
    } else if o.host_costs {
        host_costs::run(&o, dir)
    } else if o.etcd == EtcdRun::Only {
        etcd::run(&o, dir)
    } else {
        benchmark::run(&o, dir)?;
        match o.etcd {
            EtcdRun::After => etcd::run(&o, dir),
            _ => Ok(()),
        }
    }
}

//! The default run: the selected configurations side by side, round by round (saturated, then
//! paced at half the slowest one's saturated rate, then unloaded), and then the memory run.

use std::path::Path;
use std::time::{Duration, Instant};

use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::{bail, client, Result};

use crate::args::Options;
use crate::cases::{case, position, Case, CASES, TOKEN_ALLOW};
use crate::configs::{token_ledger_text, Proxies};
use crate::jwt_authn::tampered;
use crate::load::{
    check_statuses, oha_paced, oha_unloaded, wrk, Pace, Run, PACED_CONNECTIONS_EACH,
    PACED_PROCESSES,
};
use crate::measure::{file_bytes, median, rss_kib};
use crate::report::{Provenance, Report};

/// retry-guard's counter of ledger entries evicted.
const EVICTED: &str = "retry_guard.ledger.evicted";
/// retry-guard's gauge of its VM's linear memory, bytes.
const VM_MEMORY: &str = "retry_guard.vm.memory_bytes";

/// How long the memory run may send keys.
const FLOOD_LIMIT: Duration = Duration::from_secs(900);

/// Runs the benchmark of `o` and writes its report to `dir`.
pub fn run(o: &Options, dir: &Path) -> Result<()> {
    let proxies = Proxies::new(o, dir)?;
    let wasm_bytes = file_bytes(&proxies.modules().guard)?;
    let noop_bytes = file_bytes(&proxies.modules().noop)?;
    let selected: Vec<&Case> = CASES.iter().filter(|c| o.cases.contains(&c.id)).collect();
    eprintln!(
        "starting {} Envoys (--concurrency 1, pinned to CPU 0; wrk pinned to CPU 1)",
        selected.len()
    );
    let envoys = proxies.start_warmed(selected.iter().copied())?;
    for (case, envoy) in selected.iter().zip(&envoys) {
        check_jwt_authn(case, envoy)?;
    }

    let mut saturated: Vec<Vec<Run>> = vec![Vec::new(); CASES.len()];
    for round in 0..o.rounds {
        for (case, envoy) in selected.iter().zip(&envoys) {
            let r = wrk(envoy, case, o.seconds, o.connections)?;
            check_statuses(case, &r)?;
            eprintln!(
                "round {} case {}: {:>8.0} req/s  {:>6.2} µs CPU/req  non-2xx {}  socket errors {}",
                round + 1,
                case.id,
                r.rps(),
                r.cpu_us_per_req,
                r.non2xx,
                r.socket_errors
            );
            saturated[slot(case)].push(r);
        }
    }
    let slowest = saturated
        .iter()
        .filter(|r| !r.is_empty())
        .map(|runs| median(runs.iter().map(Run::rps).collect()))
        .fold(f64::INFINITY, f64::min);
    let target_rate = (slowest * 0.5).max(100.0);
    eprintln!(
        "paced runs at {target_rate:.0} req/s (half the slowest saturated median), {PACED_PROCESSES} oha processes × {PACED_CONNECTIONS_EACH} connections"
    );
    // Latency runs of every configuration, round by round: `rate` paced, `None` unloaded.
    let latency = |label: &str, rate: Option<f64>| -> Result<Vec<Vec<Run>>> {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); CASES.len()];
        for round in 0..o.rounds {
            for (case, envoy) in selected.iter().zip(&envoys) {
                let r = match rate {
                    Some(rate) => oha_paced(envoy, case, o.seconds, Pace::at(rate), dir)?,
                    None => oha_unloaded(envoy, case, o.seconds)?,
                };
                eprintln!(
                    "round {} case {} {label}: {:>7.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs",
                    round + 1,
                    case.id,
                    r.rps(),
                    r.p50_us,
                    r.p99_us
                );
                runs[slot(case)].push(r);
            }
        }
        Ok(runs)
    };
    let paced = latency("paced", Some(target_rate))?;
    eprintln!("unloaded runs: oha, closed loop on 1 connection");
    let unloaded = latency("unloaded", None)?;
    let evicted_during_bench = selected
        .iter()
        .zip(&envoys)
        .find(|(c, _)| c.id == TOKEN_ALLOW.id)
        .and_then(|(_, e)| metric(e, EVICTED));
    drop(envoys);

    let memory = memory_run(o, &proxies)?;
    drop(proxies);

    let report = Report {
        provenance: Provenance::now(),
        opts: o,
        sat: saturated,
        paced,
        unloaded,
        target_rate,
        wasm_bytes,
        noop_bytes,
        rss: memory.rss,
        evicted: memory.evicted,
        evicted_during_bench,
        wasm_memory: memory.wasm_memory,
        flood_ledger: memory.ledger,
    };
    report.write(dir)
}

/// Where `case`'s runs are kept in the report: its position in [`CASES`].
fn slot(case: &Case) -> usize {
    position(case.id).unwrap_or_else(|| panic!("configuration {} is not in CASES", case.id))
}

/// Before a `jwt_authn` configuration is measured: its request with the signed JWT is
/// answered 200 (verified), and the same with the signature changed 401 (so the filter does
/// verify it). Nothing for the other configurations.
fn check_jwt_authn(case: &Case, envoy: &Envoy) -> Result<()> {
    let Some(jwt) = case.signed_jwt()? else {
        return Ok(());
    };
    let status = |jwt: &str| -> Result<u16> {
        let authorization = format!("Bearer {jwt}");
        let resp = client::send_with_timeout(
            envoy.listener_addr(),
            case.method,
            case.path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-client-id", "bench-bot"),
                ("authorization", &authorization),
                ("idempotency-key", "jwt-authn-check-100000"),
            ],
            case.body.as_bytes(),
            Duration::from_secs(10),
        )?;
        Ok(resp.status)
    };
    let (signed, bad) = (status(jwt)?, status(&tampered(jwt))?);
    eprintln!(
        "case {}: jwt_authn answers {signed} with the signed JWT, {bad} with its signature changed",
        case.id
    );
    if signed != case.expect_status || bad != 401 {
        bail!(
            "case {}: expected {} with the signed JWT and 401 with its signature changed, got {signed} and {bad}",
            case.id,
            case.expect_status
        );
    }
    Ok(())
}

/// A retry-guard metric of `envoy`, if it can be read.
fn metric(envoy: &Envoy, name: &str) -> Option<u64> {
    envoy.wasm_counter(name).ok().flatten()
}

/// What the memory run saw.
struct Memory {
    /// Envoy's RSS (KiB) by unique keys sent.
    rss: Vec<(u64, u64)>,
    evicted: u64,
    wasm_memory: u64,
    /// The flooded Envoy's ledger ([`crate::configs::token_ledger_text`]).
    ledger: String,
}

/// The memory run: `o.flood` unique keys on the token route (case 5's configuration), Envoy's
/// RSS after each 10 s of them.
fn memory_run(o: &Options, proxies: &Proxies) -> Result<Memory> {
    let flood_case = case(TOKEN_ALLOW.id);
    let ledger = token_ledger_text(proxies.guard_config(flood_case));
    eprintln!(
        "memory run: {} unique keys on the token route, {ledger}",
        o.flood
    );
    let envoy = proxies.start(flood_case)?;
    wrk(&envoy, flood_case, 1, 4)?;
    let mut sent = 0u64;
    let mut rss = vec![(0u64, rss_kib(&envoy)?)];
    if o.flood == 0 {
        eprintln!("  (skipped: --flood 0)");
    }
    let flood_deadline = Instant::now() + FLOOD_LIMIT;
    while sent < o.flood && Instant::now() < flood_deadline {
        let r = wrk(&envoy, flood_case, 10, o.connections)?;
        sent += r.requests;
        let kib = rss_kib(&envoy)?;
        eprintln!("  {sent:>9} keys: RSS {kib} KiB");
        rss.push((sent, kib));
    }
    std::thread::sleep(Duration::from_secs(6)); // one tick refreshes the memory gauge
    Ok(Memory {
        rss,
        evicted: metric(&envoy, EVICTED).unwrap_or(0),
        wasm_memory: metric(&envoy, VM_MEMORY).unwrap_or(0),
        ledger,
    })
}

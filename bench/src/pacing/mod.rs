//! `just bench --pacing`: how evenly the paced runs' requests reach Envoy.
//!
//! The paced latency is only a measure of the proxy if requests arrive spread out, as from
//! independent clients; requests that arrive together queue behind each other and the
//! latency then measures the load generator. This run sends configuration 1's request to an
//! Envoy that answers it itself and records each request's start time in its access log
//! (`%START_TIME(%s.%6f)%`, microseconds), once from one oha process with all the
//! connections and once in the paced runs' shape ([`PACED_PROCESSES`] processes), interleaved
//! round by round. `START_TIME` is when Envoy's one worker read the request, so requests that
//! arrived while it was busy share its next read: the check sees arrivals as the proxy does.
//! Per shape: the gap between arrivals, the share of arrivals less than
//! [`TOGETHER_US`] after the one before, and the size of such bursts. Writes
//! `target/bench/pacing.md`; `--update-readme` fills the README's `bench-pacing` section.

mod arrivals;

use std::fmt::Write as _;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::{bail, Error, Result};

use crate::args::Options;
use crate::cases::case;
use crate::configs::{pinned_envoy, start_time_logging_bootstrap, PROXY_CPU};
use crate::load::{oha_paced, Pace, Run, PACED_CONNECTIONS_EACH, PACED_PROCESSES};
use crate::measure::median;
use crate::report::{bench_readme, Provenance, Publication};
use arrivals::{arrivals, start_times, Arrivals, TOGETHER_US};

/// The rate of the check, about direct mode's paced rate on the 2-core reference machine.
const RATE: f64 = 14_000.0;

/// One load shape of the check, at [`RATE`].
struct Shape {
    name: String,
    pace: Pace,
}

/// Runs the check and writes `pacing.md` to `dir`.
pub fn run(o: &Options, dir: &Path) -> Result<()> {
    let all = PACED_PROCESSES * PACED_CONNECTIONS_EACH;
    let shapes = [
        Shape {
            name: format!("1 oha process × {all} connections"),
            pace: Pace {
                rate: RATE,
                processes: 1,
                connections: all,
            },
        },
        Shape {
            name: format!(
                "{PACED_PROCESSES} oha processes × {PACED_CONNECTIONS_EACH} connections (the paced runs)"
            ),
            pace: Pace::at(RATE),
        },
    ];
    let case = case(1);
    let mut seen: Vec<Vec<(Arrivals, Run)>> = vec![Vec::new(), Vec::new()];
    for round in 0..o.rounds {
        for (shape, shape_seen) in shapes.iter().zip(&mut seen) {
            let envoy = pinned_envoy(
                dir,
                "pacing",
                start_time_logging_bootstrap().to_json(),
                PROXY_CPU,
                "warning",
                None,
            )
            .start()?;
            let r = oha_paced(&envoy, case, o.seconds, shape.pace, dir)?;
            let log = logged_start_times(&envoy, r.requests)?;
            let a = arrivals(&mut start_times(&log)?).ok_or_else(|| {
                Error(format!(
                    "{}: fewer than two requests recorded",
                    envoy.run_dir().display()
                ))
            })?;
            eprintln!(
                "round {} {}: {:.0} req/s, gap p50 {:.1} µs, {:.0}% within {TOGETHER_US} µs of the one before, burst p50 {} p90 {} max {}; oha p50 {:.0} µs",
                round + 1,
                shape.name,
                a.per_second,
                a.gap_p50_us,
                a.together * 100.0,
                a.burst_p50,
                a.burst_p90,
                a.burst_max,
                r.p50_us
            );
            shape_seen.push((a, r));
        }
    }
    let provenance = Provenance::now();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} at commit {} on {} with `just bench --pacing`: {RATE:.0} req/s of configuration 1's request to an Envoy that answers it itself, each request's start time from its access log; {} rounds of {} s per shape, interleaved; medians over rounds. An even pace leaves {:.0} µs between requests; independent clients (Poisson arrivals) at this rate would put {:.0}% of arrivals within {TOGETHER_US} µs of the one before.\n",
        provenance.date,
        provenance.commit,
        provenance.machine,
        o.rounds,
        o.seconds,
        1e6 / RATE,
        (1.0 - (-TOGETHER_US * RATE / 1e6).exp()) * 100.0
    );
    s.push_str("| load shape | req/s | gap p50 (µs) | arrivals within 20 µs of the one before | burst a request came in: p50 / p90 / max | latency p50 / p99 (µs) |\n|---|---|---|---|---|---|\n");
    for (shape, runs) in shapes.iter().zip(&seen) {
        let med = |f: &dyn Fn(&(Arrivals, Run)) -> f64| median(runs.iter().map(f).collect());
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.1} | {:.0}% | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} |",
            shape.name,
            med(&|x| x.0.per_second),
            med(&|x| x.0.gap_p50_us),
            med(&|x| x.0.together) * 100.0,
            med(&|x| x.0.burst_p50),
            med(&|x| x.0.burst_p90),
            med(&|x| x.0.burst_max),
            med(&|x| x.1.p50_us),
            med(&|x| x.1.p99_us),
        );
    }
    Publication {
        stem: "pacing",
        title: "How the paced requests arrive",
        json: None,
        readme_section: o.update_readme.then(|| bench_readme("bench-pacing")),
    }
    .publish(dir, &s)
}

/// `envoy`'s access log once it holds `requests` lines (the harness's Envoy flushes it every
/// 100 ms), waiting up to 20 s.
fn logged_start_times(envoy: &Envoy, requests: u64) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = envoy.access_log_text();
        let lines = log.lines().count() as u64;
        if lines >= requests {
            return Ok(log);
        }
        if Instant::now() > deadline {
            bail!(
                "the access log in {} holds {lines} of {requests} requests 20 s after the run",
                envoy.run_dir().display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

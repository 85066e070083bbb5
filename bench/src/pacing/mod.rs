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

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    bootstrap, direct_route, free_port, median, oha_paced, percentile, start_envoy, Envoy, Options,
    Pace, Result, Run, CASES, PACED_CONNECTIONS_EACH, PACED_PROCESSES,
};

/// Arrivals closer than this to the one before count as arriving together.
pub(crate) const TOGETHER_US: f64 = 20.0;

/// The rate of the check, about direct mode's paced rate on the 2-core reference machine.
const RATE: f64 = 14_000.0;

/// How requests arrived, from their start times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Arrivals {
    pub(crate) requests: usize,
    pub(crate) per_second: f64,
    /// Median gap between arrivals (µs); an even pace leaves `1e6 / per_second`.
    pub(crate) gap_p50_us: f64,
    /// Share of arrivals less than [`TOGETHER_US`] after the one before.
    pub(crate) together: f64,
    /// Sizes of bursts (arrivals each less than [`TOGETHER_US`] after the one before; a lone
    /// request is a burst of 1), weighted by request: the burst the median request came in.
    pub(crate) burst_p50: f64,
    pub(crate) burst_p90: f64,
    pub(crate) burst_max: f64,
}

/// Arrival statistics of start times in seconds (any order). `None` for fewer than two.
pub(crate) fn arrivals(times: &mut [f64]) -> Option<Arrivals> {
    if times.len() < 2 {
        return None;
    }
    times.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) * 1e6).collect();
    let span = times[times.len() - 1] - times[0];
    // The burst each request arrived in, one entry per request.
    let mut sizes = Vec::with_capacity(times.len());
    let mut run = 1usize;
    for g in gaps.iter().chain(std::iter::once(&f64::INFINITY)) {
        if *g < TOGETHER_US {
            run += 1;
        } else {
            sizes.extend(std::iter::repeat_n(run as f64, run));
            run = 1;
        }
    }
    sizes.sort_by(f64::total_cmp);
    let together = gaps.iter().filter(|g| **g < TOGETHER_US).count() as f64 / gaps.len() as f64;
    gaps.sort_by(f64::total_cmp);
    Some(Arrivals {
        requests: times.len(),
        per_second: if span > 0.0 {
            (times.len() - 1) as f64 / span
        } else {
            0.0
        },
        gap_p50_us: percentile(&gaps, 0.5),
        together,
        burst_p50: percentile(&sizes, 0.5),
        burst_p90: percentile(&sizes, 0.9),
        burst_max: sizes.last().copied().unwrap_or(0.0),
    })
}

/// Start times (seconds) from an access log of `%START_TIME(%s.%6f)%` lines.
pub(crate) fn start_times(log: &str) -> Result<Vec<f64>> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<f64>()
                .map_err(|e| format!("access log line {l:?} is not a start time: {e}"))
        })
        .collect()
}

/// One load shape of the check, at [`RATE`].
struct Shape {
    name: String,
    pace: Pace,
}

pub(crate) fn run(o: &Options, bin: &Path, dir: &Path, tck: f64) -> Result<()> {
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
    let case = &CASES[0];
    let mut seen: Vec<Vec<(Arrivals, Run)>> = vec![Vec::new(), Vec::new()];
    for round in 0..o.rounds {
        for (i, shape) in shapes.iter().enumerate() {
            let log = dir.join(format!("pacing-{i}.log"));
            let _ = fs::remove_file(&log);
            let envoy = logging_envoy(bin, dir, &log)?;
            let r = oha_paced(&envoy, case, o.seconds, shape.pace, tck, dir)?;
            stop_and_flush(envoy, &log, r.requests)?;
            let text = fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let a = arrivals(&mut start_times(&text)?)
                .ok_or_else(|| format!("{}: fewer than two requests recorded", log.display()))?;
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
            seen[i].push((a, r));
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} at commit {} on {} with `just bench --pacing`: {RATE:.0} req/s of configuration 1's request to an Envoy that answers it itself, each request's start time from its access log; {} rounds of {} s per shape, interleaved; medians over rounds. An even pace leaves {:.0} µs between requests; independent clients (Poisson arrivals) at this rate would put {:.0}% of arrivals within {TOGETHER_US} µs of the one before.\n",
        super::today(),
        super::commit(),
        super::machine(),
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
    println!("{s}");
    fs::write(
        dir.join("pacing.md"),
        format!("# How the paced requests arrive\n\n{s}"),
    )
    .map_err(|e| e.to_string())?;
    eprintln!("wrote {}/pacing.md", dir.display());
    if o.update_readme {
        super::update_readme("bench-pacing", &s)?;
    }
    Ok(())
}

/// An Envoy (pinned to CPU 0) answering every request itself with 200, logging each
/// request's start time to `log`.
fn logging_envoy(bin: &Path, dir: &Path, log: &Path) -> Result<Envoy> {
    let port = free_port()?;
    let access_log = format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format_source: {{ inline_string: "%START_TIME(%s.%6f)%\n" }} }}
"#,
        serde_json::json!(log.display().to_string())
    );
    let routes = direct_route("other", r#"{ prefix: "/" }"#, 200, r#""ok""#);
    let yaml = bootstrap(port, &access_log, &routes, "", "");
    start_envoy(bin, dir, "pacing", &yaml, port, "0", "warning")
}

/// Stops `envoy` through its admin `quitquitquit`, which flushes its access log, and waits
/// (bounded) until the log holds `requests` lines.
fn stop_and_flush(mut envoy: Envoy, log: &Path, requests: u64) -> Result<()> {
    super::http_post(&envoy.admin, "/quitquitquit")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exited = matches!(envoy.child.try_wait(), Ok(Some(_)));
        let lines = fs::read_to_string(log).map_or(0, |t| t.lines().count() as u64);
        if exited && lines >= requests {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the access log {} holds {lines} of {requests} requests after Envoy was told to quit",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_arrivals_have_no_bursts_and_bunched_ones_do() {
        // 1,000 requests 100 µs apart.
        let mut even: Vec<f64> = (0..1000).map(|i| 1.0 + f64::from(i) * 100e-6).collect();
        let a = arrivals(&mut even).unwrap();
        assert_eq!(a.requests, 1000);
        assert!((a.per_second - 10_000.0).abs() < 1.0, "{a:?}");
        assert!((a.gap_p50_us - 100.0).abs() < 0.01, "{a:?}");
        assert_eq!((a.together, a.burst_p50, a.burst_max), (0.0, 1.0, 1.0));
        // The same rate in bursts of 4 (5 µs apart) every 400 µs, given out of order.
        let mut bunched: Vec<f64> = (0..1000)
            .rev()
            .map(|i| 1.0 + f64::from(i / 4) * 400e-6 + f64::from(i % 4) * 5e-6)
            .collect();
        let b = arrivals(&mut bunched).unwrap();
        assert!((b.gap_p50_us - 5.0).abs() < 0.01, "{b:?}");
        assert!((b.together - 750.0 / 999.0).abs() < 1e-9, "{b:?}");
        assert_eq!((b.burst_p50, b.burst_p90, b.burst_max), (4.0, 4.0, 4.0));
        assert!(arrivals(&mut [1.0]).is_none());
    }

    #[test]
    fn start_times_are_read_from_the_access_log_and_bad_lines_are_named() {
        assert_eq!(
            start_times("1764400000.000100\n1764400000.000250\n\n").unwrap(),
            [1764400000.0001, 1764400000.00025]
        );
        let err = start_times("1764400000.1\n-\n").unwrap_err();
        assert!(err.contains("\"-\""), "{err}");
    }
}

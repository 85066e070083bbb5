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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::json;

use super::{
    commit, machine, median, min_max, today, wrk, Backend, Case, Envoy, Filter, Load, Options,
    Result, Run, CASES, TOKEN_ALLOW, UNMATCHED,
};

/// One probe: the plugin configuration (`"<call> <count>"`), the host import it prices, and
/// the calls per request.
struct Probe {
    config: &'static str,
    import: &'static str,
    count: u32,
}

/// The probes, the no-call baseline first. Cheap calls are repeated more, so that each
/// probe adds several microseconds, well above the run-to-run noise.
const PROBES: [Probe; 10] = [
    Probe {
        config: "none 0",
        import: "",
        count: 0,
    },
    Probe {
        config: "get_current_time 16",
        import: "proxy_get_current_time_nanoseconds",
        count: 16,
    },
    Probe {
        config: "increment_metric 16",
        import: "proxy_increment_metric",
        count: 16,
    },
    Probe {
        config: "get_property 16",
        import: "proxy_get_property",
        count: 16,
    },
    Probe {
        config: "get_header_map_value 16",
        import: "proxy_get_header_map_value",
        count: 16,
    },
    Probe {
        config: "get_header_map_pairs 8",
        import: "proxy_get_header_map_pairs",
        count: 8,
    },
    Probe {
        config: "get_shared_data 16",
        import: "proxy_get_shared_data",
        count: 16,
    },
    Probe {
        config: "set_shared_data 16",
        import: "proxy_set_shared_data",
        count: 16,
    },
    Probe {
        config: "set_property 4",
        import: "proxy_set_property",
        count: 4,
    },
    Probe {
        config: "log 4",
        import: "proxy_log",
        count: 4,
    },
];

/// Host imports the probe does not make, priced as a probed call that does the same kind of
/// work: `proxy_get_buffer_bytes` hands one buffer to the guest through its allocator, as
/// `proxy_get_header_map_value` does.
const PRICED_AS: [(&str, &str); 1] = [("proxy_get_buffer_bytes", "proxy_get_header_map_value")];

/// The host-sim path whose host calls are priced, and the two configurations whose
/// difference is retry-guard's cost on it.
const TOKEN_PATH: &str = "token_issuing_allow";
const WITH_GUARD: usize = 5;
const WITHOUT_GUARD: usize = 8;

/// The probes sent case 8's request (case 5's token request, the same bytes every time): no
/// call, and holding the headers until the body is in.
const ON_TOKEN_REQUEST: [&str; 2] = ["none 0", "pause_for_body 1"];

/// Positions in [`cases`].
const POST_NONE: usize = PROBES.len();
const POST_PAUSE: usize = PROBES.len() + 1;
const GUARD: usize = PROBES.len() + 2;
const NO_GUARD: usize = PROBES.len() + 3;

/// The configurations of the run: the probes (on configuration 3's request, an unguarded
/// `GET /other`), the two probes on case 8's request, then 5 and 8.
fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = PROBES
        .iter()
        .enumerate()
        .map(|(i, p)| Case {
            id: 100 + i,
            name: p.config,
            filter: Filter::Probe(p.config),
            ..UNMATCHED
        })
        .collect();
    for (i, config) in ON_TOKEN_REQUEST.iter().enumerate() {
        cases.push(Case {
            id: 200 + i,
            name: config,
            filter: Filter::Probe(config),
            load: Load::Shape,
            ..TOKEN_ALLOW
        });
    }
    for id in [WITH_GUARD, WITHOUT_GUARD] {
        if let Some(c) = CASES.iter().find(|c| c.id == id) {
            cases.push(Case { ..*c });
        }
    }
    cases
}

/// A price: median and range over rounds, µs.
struct Price {
    median: f64,
    min: f64,
    max: f64,
}

fn price(v: &[f64]) -> Price {
    let (min, max) = min_max(v);
    Price {
        median: median(v.to_vec()),
        min,
        max,
    }
}

/// Runs the probes and writes the report.
pub(super) fn run(
    o: &Options,
    proxy: &dyn Fn(&Case) -> Result<Envoy>,
    tck: f64,
    dir: &Path,
    guard: &Path,
) -> Result<()> {
    if o.backend != Backend::Upstream {
        return Err("--host-costs runs in upstream mode only (drop --direct)".into());
    }
    // What retry-guard calls on the token path, per request, counted by host-sim.
    let counted = host_sim::bench::run(guard, 200, false, false, None, Some(TOKEN_PATH))?;
    let token_calls: BTreeMap<String, f64> = counted
        .first()
        .map(|r| r.host_calls.clone())
        .ok_or("host-sim measured no token path")?;

    let cases = cases();
    eprintln!(
        "host costs: starting {} Envoys (--concurrency 1, pinned to CPU 0; wrk pinned to CPU 1)",
        cases.len()
    );
    let envoys: Vec<Envoy> = cases.iter().map(proxy).collect::<Result<_>>()?;
    for (case, envoy) in cases.iter().zip(&envoys) {
        wrk(envoy, case, 1, 4, tck)?;
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); cases.len()];
    for round in 0..o.rounds {
        for (i, (case, envoy)) in cases.iter().zip(&envoys).enumerate() {
            let r = wrk(envoy, case, o.seconds, o.connections, tck)?;
            if r.non2xx > 0 || r.socket_errors > 0 {
                return Err(format!(
                    "{}: {} non-2xx answers, {} socket errors: the run is not valid",
                    case.name, r.non2xx, r.socket_errors
                ));
            }
            eprintln!(
                "round {} {:<26} {:<6} {:>8.0} req/s  {:>6.2} µs CPU/req",
                round + 1,
                case.name,
                case.method,
                r.rps(),
                r.cpu_us_per_req
            );
            if let Some(v) = runs.get_mut(i) {
                v.push(r);
            }
        }
    }
    drop(envoys);

    let cpu = |i: usize| -> Vec<f64> {
        runs.get(i)
            .map(|v| v.iter().map(|r| r.cpu_us_per_req).collect())
            .unwrap_or_default()
    };
    let baseline = cpu(0);
    // Per call: (probe − no-call probe) of the same round ÷ calls per request.
    let mut prices: BTreeMap<&str, Price> = BTreeMap::new();
    for (i, p) in PROBES.iter().enumerate().skip(1) {
        let per_call: Vec<f64> = cpu(i)
            .iter()
            .zip(&baseline)
            .map(|(a, b)| (a - b) / f64::from(p.count))
            .collect();
        prices.insert(p.import, price(&per_call));
    }
    let minus = |a: usize, b: usize| -> Price {
        let d: Vec<f64> = cpu(a).iter().zip(&cpu(b)).map(|(x, y)| x - y).collect();
        price(&d)
    };
    let added = minus(GUARD, NO_GUARD);
    let boundary = minus(POST_NONE, NO_GUARD);
    let pause = minus(POST_PAUSE, POST_NONE);

    let report = HostCosts {
        opts: o,
        baseline: price(&baseline),
        prices,
        token_calls,
        added,
        boundary,
        pause,
        runs: &runs,
        cases: &cases,
    };
    report.write(dir)
}

struct HostCosts<'a> {
    opts: &'a Options,
    baseline: Price,
    prices: BTreeMap<&'static str, Price>,
    token_calls: BTreeMap<String, f64>,
    added: Price,
    boundary: Price,
    pause: Price,
    runs: &'a [Vec<Run>],
    cases: &'a [Case],
}

impl HostCosts<'_> {
    /// The price table for `import`: its own, or that of the call it is priced as.
    fn price_of(&self, import: &str) -> Option<(&Price, Option<&'static str>)> {
        if let Some(p) = self.prices.get(import) {
            return Some((p, None));
        }
        let (_, like) = PRICED_AS.iter().find(|(i, _)| *i == import)?;
        self.prices.get(like).map(|p| (p, Some(*like)))
    }

    /// The token path's host calls, priced: (import, calls per request, µs per request, note).
    fn token_rows(&self) -> Vec<(String, f64, Option<f64>, String)> {
        self.token_calls
            .iter()
            .map(|(import, n)| match self.price_of(import) {
                Some((p, like)) => (
                    import.clone(),
                    *n,
                    Some(p.median * n),
                    like.map(|l| format!("priced as {l}")).unwrap_or_default(),
                ),
                None => (import.clone(), *n, None, "not probed".to_string()),
            })
            .collect()
    }

    fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Measured {} at commit {} on {} with `just bench --host-costs` ({} interleaved rounds of {} s, Envoy 1.40.0 `--concurrency 1 -l {}` pinned to CPU 0, V8; wrk 1 thread × {} connections pinned to CPU 1 with the upstream Envoy). A call's price is the probe's Envoy CPU per request minus that of the probe making no call ({:.1} µs per request, {:.1}–{:.1}), in the same round, divided by the calls per request; the request is configuration 3's `GET /other`, forwarded upstream.\n",
            today(),
            commit(),
            machine(),
            self.opts.rounds,
            self.opts.seconds,
            self.opts.log_level,
            self.opts.connections,
            self.baseline.median,
            self.baseline.min,
            self.baseline.max,
        );
        s.push_str("| host call (what the probe does) | calls per request | Envoy CPU per call (µs, median) | min–max over rounds |\n|---|---:|---:|---|\n");
        for p in PROBES.iter().skip(1) {
            if let Some(price) = self.prices.get(p.import) {
                let _ = writeln!(
                    s,
                    "| `{}` ({}) | {} | {:.2} | {:.2}–{:.2} |",
                    p.import,
                    what(p.import),
                    p.count,
                    price.median,
                    price.min,
                    price.max
                );
            }
        }
        let rows = self.token_rows();
        let priced: f64 = rows.iter().filter_map(|r| r.2).sum();
        let _ = writeln!(
            s,
            "\nretry-guard's token path (`{TOKEN_PATH}`: a first attempt, allowed; host calls counted by host-sim on the same module), priced with the table above:\n"
        );
        s.push_str("| host call | calls per request | Envoy CPU per request (µs) | |\n|---|---:|---:|---|\n");
        for (import, n, us, note) in &rows {
            let us = us.map_or("–".to_string(), |u| format!("{u:.2}"));
            let _ = writeln!(s, "| `{import}` | {n:.2} | {us} | {note} |");
        }
        let _ = writeln!(
            s,
            "| **all host calls** | {:.2} | **{priced:.1}** | |",
            rows.iter().map(|r| r.1).sum::<f64>()
        );
        let rest = self.added.median - self.boundary.median - self.pause.median - priced;
        let share = |v: f64| {
            if self.added.median > 0.0 {
                v / self.added.median * 100.0
            } else {
                0.0
            }
        };
        let _ = writeln!(
            s,
            "\nWhat retry-guard adds on that path, taken apart (medians over the same rounds, µs of Envoy CPU per request):\n"
        );
        s.push_str("| part | how it is measured | µs per request | min–max | share |\n|---|---|---:|---|---:|\n");
        let mut row = |part: &str, how: &str, p: Option<&Price>, v: f64| {
            let range = p.map_or(String::new(), |p| format!("{:.1}–{:.1}", p.min, p.max));
            let _ = writeln!(
                s,
                "| {part} | {how} | {v:.1} | {range} | {:.0}% |",
                share(v)
            );
        };
        row(
            "the wasm boundary",
            "probe making no call, sent case 8's request, − configuration 8",
            Some(&self.boundary),
            self.boundary.median,
        );
        row(
            "holding the headers until the body is in",
            "probe doing just that − probe making no call, both on case 8's request",
            Some(&self.pause),
            self.pause.median,
        );
        row("host calls", "the table above", None, priced);
        row(
            "the guest's own code (the rest)",
            "total − the three above",
            None,
            rest,
        );
        row(
            "**total**",
            "configuration 5 − 8",
            Some(&self.added),
            self.added.median,
        );
        s
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let table = self.table();
        println!("{table}");
        fs::write(
            dir.join("host-costs.md"),
            format!("# retry-guard host-call costs\n\n{table}"),
        )
        .map_err(|e| e.to_string())?;
        let j = json!({
            "date": today(), "commit": commit(), "machine": machine(), "rounds": self.opts.rounds,
            "seconds": self.opts.seconds, "envoy_log_level": self.opts.log_level,
            "prices_us_per_call": self.prices.iter().map(|(k, p)| (k.to_string(), json!({"median": p.median, "min": p.min, "max": p.max}))).collect::<serde_json::Map<_, _>>(),
            "token_path_calls": self.token_calls,
            "token_path_added_us": {"median": self.added.median, "min": self.added.min, "max": self.added.max},
            "token_path_boundary_us": {"median": self.boundary.median, "min": self.boundary.min, "max": self.boundary.max},
            "token_path_pause_for_body_us": {"median": self.pause.median, "min": self.pause.min, "max": self.pause.max},
            "runs": self.cases.iter().zip(self.runs).map(|(c, runs)| json!({
                "configuration": c.name,
                "cpu_us_per_request": runs.iter().map(|r| r.cpu_us_per_req).collect::<Vec<_>>(),
                "rps": runs.iter().map(Run::rps).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        fs::write(
            dir.join("host-costs.json"),
            serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        eprintln!("wrote {}/host-costs.md and host-costs.json", dir.display());
        if self.opts.update_readme {
            super::update_readme("bench-host-costs", &table)?;
        }
        Ok(())
    }
}

/// What the probe does per call of `import`.
fn what(import: &str) -> &'static str {
    match import {
        "proxy_get_current_time_nanoseconds" => "the clock",
        "proxy_increment_metric" => "a counter",
        "proxy_get_property" => "`xds.route_name`",
        "proxy_get_header_map_value" => "`:path`",
        "proxy_get_header_map_pairs" => "all request headers, serialized",
        "proxy_get_shared_data" => "a 96-byte value",
        "proxy_set_shared_data" => "a 96-byte value",
        "proxy_set_property" => "a new filter-state object",
        "proxy_log" => "a 560-byte info line, written to Envoy's log",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_is_one_the_probe_filter_accepts_with_its_count() {
        for p in &PROBES {
            let (call, count) = hostcost_filter::parse(p.config).unwrap();
            assert_eq!(count, p.count, "{}", p.config);
            // The probe's call is the host import the table prices it as.
            let name = hostcost_filter::CALLS
                .iter()
                .find(|(_, c)| *c == call)
                .map(|(n, _)| *n)
                .unwrap();
            let expected = match name {
                "none" => String::new(),
                "get_current_time" => "proxy_get_current_time_nanoseconds".into(),
                call => format!("proxy_{call}"),
            };
            assert_eq!(p.import, expected, "{}", p.config);
        }
        for config in ON_TOKEN_REQUEST {
            hostcost_filter::parse(config).unwrap();
        }
    }

    #[test]
    fn the_positions_name_the_configurations_they_are_read_as() {
        let cases = cases();
        assert_eq!(cases.len(), NO_GUARD + 1);
        assert!(cases[0].filter == Filter::Probe("none 0") && cases[0].method == "GET");
        assert!(
            cases[POST_NONE].filter == Filter::Probe("none 0") && cases[POST_NONE].method == "POST"
        );
        assert!(cases[POST_PAUSE].filter == Filter::Probe("pause_for_body 1"));
        assert_eq!(cases[POST_PAUSE].body, cases[NO_GUARD].body);
        assert_eq!(
            (cases[GUARD].id, cases[NO_GUARD].id),
            (WITH_GUARD, WITHOUT_GUARD)
        );
        assert!(cases[GUARD].filter == Filter::Guard && cases[NO_GUARD].filter == Filter::None);
        // Every import the table names, and every one priced as another, has a price.
        for (import, like) in PRICED_AS {
            assert!(
                PROBES.iter().any(|p| p.import == like),
                "{import} priced as {like}"
            );
        }
    }
}

//! `just bench --compare-wasm FILE`: whether another build of retry-guard costs the real
//! Envoy less than the module measured (the release build, or `--wasm`), on each guarded path.
//!
//! Configurations 4, 5 and 6 (read_only, the token path's first attempt, the 428) each run
//! beside the same configuration loading the compared module (14, 15 and 16,
//! [`COMPARE_CASES`]), saturated, the pair back to back in every round, so the machine's drift
//! between rounds (several µs per request on a small VM) falls on both alike. For each path the
//! report gives both modules' Envoy CPU per request and, round by round, the compared module's
//! minus the measured one's: a change "measurably helps on Envoy" when that difference is
//! below zero over the rounds, not just in its median. Host-sim's guest instructions of both
//! modules stand beside it. Writes `target/bench/compare.{md,json}`; no README is changed (the
//! experiment log of bench/README.md quotes a run by hand, dated).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use retry_guard_e2e::{bail, Error, Result};
use serde_json::json;

use crate::args::Options;
use crate::cases::COMPARE_CASES;
use crate::configs::Proxies;
use crate::load::{saturated_rounds, Run};
use crate::measure::{file_bytes, Spread};
use crate::report::Provenance;

/// One guarded path of the comparison: its configuration and host-sim's name for its request.
struct GuardedPath {
    /// What the report calls it.
    name: &'static str,
    /// The configuration with the measured module (4, 5 or 6); the compared one is 10 more.
    case: usize,
    /// host-sim's path of the same request (`retry-guard bench --paths`).
    host_sim: &'static str,
}

/// The paths compared, in the order of [`COMPARE_CASES`]' pairs.
const PATHS: [GuardedPath; 3] = [
    GuardedPath {
        name: "read_only (case 4)",
        case: 4,
        host_sim: "read_only",
    },
    GuardedPath {
        name: "token, a first attempt (case 5)",
        case: 5,
        host_sim: "token_issuing_allow",
    },
    GuardedPath {
        name: "428 to a replay (case 6)",
        case: 6,
        host_sim: "replay_428",
    },
];

/// Runs the comparison and writes its report to `dir`.
pub fn run(o: &Options, dir: &Path) -> Result<()> {
    let proxies = Proxies::new(o, dir)?;
    let modules = proxies.modules();
    let Some(compared) = modules.compared.clone() else {
        bail!("--compare-wasm needs a module to compare");
    };
    let measured = modules.guard.clone();
    let fuel = |p: &Path| -> Result<Vec<(String, f64)>> {
        let r = host_sim::bench::run(p, 200, false, false, None, None).map_err(Error)?;
        Ok(r.into_iter().map(|r| (r.name, r.fuel)).collect())
    };
    let (fuel_measured, fuel_compared) = (fuel(&measured)?, fuel(&compared)?);

    let runs = saturated_rounds(o, &proxies, "compare", &COMPARE_CASES)?;
    drop(proxies);

    let report = Comparison {
        provenance: Provenance::now(),
        opts: o,
        measured: (&measured, file_bytes(&measured)?, &fuel_measured),
        compared: (&compared, file_bytes(&compared)?, &fuel_compared),
        runs: &runs,
    };
    let md = report.markdown();
    print!("{md}");
    fs::write(dir.join("compare.md"), &md).map_err(|e| Error(format!("compare.md: {e}")))?;
    let json = serde_json::to_string_pretty(&report.json())
        .map_err(|e| Error(format!("compare.json: {e}")))?;
    fs::write(dir.join("compare.json"), json).map_err(|e| Error(format!("compare.json: {e}")))?;
    eprintln!("wrote {}", dir.join("compare.md").display());
    Ok(())
}

/// A module of the comparison: its file, size in bytes and host-sim fuel by path.
type Module<'a> = (&'a Path, u64, &'a [(String, f64)]);

/// What one comparison measured.
struct Comparison<'a> {
    provenance: Provenance,
    opts: &'a Options,
    measured: Module<'a>,
    compared: Module<'a>,
    /// The runs of each of [`COMPARE_CASES`], round by round.
    runs: &'a [Vec<Run>],
}

/// One path's figures over the rounds.
struct PathFigures {
    measured: Spread,
    compared: Spread,
    /// Compared − measured, µs of Envoy CPU per request, round by round.
    difference: Spread,
    /// The rounds in which the compared module cost less, and the rounds.
    lower: (usize, usize),
    /// Compared ÷ measured throughput, round by round.
    throughput: Spread,
}

impl Comparison<'_> {
    /// The runs of configuration `id`.
    fn runs_of(&self, id: usize) -> &[Run] {
        COMPARE_CASES
            .iter()
            .position(|c| c.id == id)
            .and_then(|i| self.runs.get(i))
            .map_or(&[], Vec::as_slice)
    }

    fn figures(&self, path: &GuardedPath) -> PathFigures {
        let (a, b) = (self.runs_of(path.case), self.runs_of(path.case + 10));
        let cpu = |runs: &[Run]| runs.iter().map(|r| r.cpu_us_per_req).collect::<Vec<_>>();
        let difference: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(a, b)| b.cpu_us_per_req - a.cpu_us_per_req)
            .collect();
        let throughput: Vec<f64> = a.iter().zip(b).map(|(a, b)| b.rps() / a.rps()).collect();
        PathFigures {
            measured: Spread::of(&cpu(a)),
            compared: Spread::of(&cpu(b)),
            lower: (
                difference.iter().filter(|d| **d < 0.0).count(),
                difference.len(),
            ),
            difference: Spread::of(&difference),
            throughput: Spread::of(&throughput),
        }
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "{}; each path's two Envoys back to back in every round.\n",
            self.provenance
                .saturated_run(self.opts, "just bench --compare-wasm")
        );
        let fuel = |m: &Module<'_>, name: &str| {
            m.2.iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| "?".to_string(), |(_, f)| format!("{f:.0}"))
        };
        let _ = writeln!(
            md,
            "| module | bytes | host-sim fuel: read_only / token / 428 |"
        );
        let _ = writeln!(md, "|---|---:|---|");
        for (what, m) in [("measured", &self.measured), ("compared", &self.compared)] {
            let _ = writeln!(
                md,
                "| {what}: `{}` | {} | {} / {} / {} |",
                m.0.display(),
                m.1,
                fuel(m, "read_only"),
                fuel(m, "token_issuing_allow"),
                fuel(m, "replay_428")
            );
        }
        let _ = writeln!(
            md,
            "\n| path | measured: Envoy CPU per request (µs) | compared | compared − measured, \
             round by round (µs) | rounds the compared cost less | throughput compared ÷ \
             measured |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        let s = |x: Spread| format!("{:.1} ({:.1}–{:.1})", x.median, x.min, x.max);
        for path in &PATHS {
            let f = self.figures(path);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} of {} | {:.3} ({:.3}–{:.3}) |",
                path.name,
                s(f.measured),
                s(f.compared),
                s(f.difference),
                f.lower.0,
                f.lower.1,
                f.throughput.median,
                f.throughput.min,
                f.throughput.max
            );
        }
        md
    }

    fn json(&self) -> serde_json::Value {
        let spread = |x: Spread| json!({"median": x.median, "min": x.min, "max": x.max});
        let module = |m: &Module<'_>| {
            json!({
                "file": m.0.display().to_string(),
                "bytes": m.1,
                "fuel": m.2.iter().map(|(n, f)| (n.clone(), json!(f))).collect::<serde_json::Map<_, _>>(),
            })
        };
        let paths: Vec<serde_json::Value> = PATHS
            .iter()
            .map(|path| {
                let f = self.figures(path);
                json!({
                    "path": path.host_sim,
                    "case": path.case,
                    "measured_cpu_us": spread(f.measured),
                    "compared_cpu_us": spread(f.compared),
                    "difference_us": spread(f.difference),
                    "rounds_compared_lower": f.lower.0,
                    "rounds": f.lower.1,
                    "throughput_ratio": spread(f.throughput),
                })
            })
            .collect();
        json!({
            "date": self.provenance.date,
            "commit": self.provenance.commit,
            "machine": self.provenance.machine,
            "rounds": self.opts.rounds,
            "seconds": self.opts.seconds,
            "measured": module(&self.measured),
            "compared": module(&self.compared),
            "paths": paths,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{case, Case, Filter};

    #[test]
    fn each_path_is_a_pair_of_the_same_request() {
        for path in &PATHS {
            let pair: Vec<&Case> = COMPARE_CASES
                .iter()
                .filter(|c| c.id == path.case || c.id == path.case + 10)
                .collect();
            assert_eq!(pair.len(), 2, "{}", path.name);
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(a.id, path.case, "the measured module first");
            assert_eq!(*a, *case(path.case));
            assert_eq!(a.filter, Filter::Guard);
            assert_eq!(b.filter, Filter::GuardCompared);
            assert_eq!(
                Case {
                    id: a.id,
                    name: a.name,
                    filter: a.filter,
                    ..*b
                },
                *a,
                "{}: only the module differs",
                path.name
            );
        }
        assert_eq!(COMPARE_CASES.len(), 2 * PATHS.len());
    }

    #[test]
    fn a_round_where_the_compared_module_costs_less_is_counted() {
        let run = |cpu: f64, requests: u64| Run {
            requests,
            seconds: 1.0,
            p50_us: 0.0,
            p99_us: 0.0,
            non2xx: 0,
            socket_errors: 0,
            cpu_us_per_req: cpu,
            pacing: None,
        };
        let o = crate::args::parse_from(Vec::<String>::new())
            .unwrap()
            .unwrap();
        // Rounds of 4 then 14, 5 then 15, 6 then 16.
        let runs: Vec<Vec<Run>> = vec![
            vec![run(10.0, 100), run(12.0, 100)],
            vec![run(9.0, 110), run(11.0, 90)],
            vec![run(50.0, 10), run(50.0, 10)],
            vec![run(49.0, 11), run(51.0, 10)],
            vec![run(30.0, 10), run(30.0, 10)],
            vec![run(30.0, 10), run(30.0, 10)],
        ];
        let fuel = vec![("read_only".to_string(), 1.0)];
        let c = Comparison {
            provenance: Provenance {
                date: "d".into(),
                commit: "c".into(),
                machine: "m".into(),
            },
            opts: &o,
            measured: (Path::new("a.wasm"), 1, &fuel),
            compared: (Path::new("b.wasm"), 2, &fuel),
            runs: &runs,
        };
        let f = c.figures(&PATHS[0]);
        assert_eq!(f.lower, (2, 2));
        assert!((f.difference.median - -1.0).abs() < 1e-9);
        assert!((f.throughput.min - 0.9).abs() < 1e-9 && (f.throughput.max - 1.1).abs() < 1e-9);
        let f = c.figures(&PATHS[1]);
        assert_eq!(f.lower, (1, 2));
        assert!((f.difference.min - -1.0).abs() < 1e-9 && (f.difference.max - 1.0).abs() < 1e-9);
        assert_eq!(c.figures(&PATHS[2]).lower, (0, 2));
        let md = c.markdown();
        assert!(
            md.contains(
                "| read_only (case 4) | 11.0 (10.0–12.0) | 10.0 (9.0–11.0) | -1.0 (-1.0–-1.0) \
                 | 2 of 2 | 1.000 (0.900–1.100) |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| compared: `b.wasm` | 2 | 1 / ? / ? |"),
            "{md}"
        );
    }
}

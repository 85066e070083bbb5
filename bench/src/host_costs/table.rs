//! The `--host-costs` report: the price of each host call, the token path's host calls
//! priced, and what retry-guard adds on that path taken apart
//! (`target/bench/host-costs.{md,json}`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use retry_guard_e2e::Result;
use serde_json::json;

use super::probes::{what, PRICED_AS, PROBES, TOKEN_PATH};
use crate::args::Options;
use crate::cases::Case;
use crate::load::Run;
use crate::measure::Spread;
use crate::report::{readme, Provenance, Publication};

/// What `--host-costs` measured. Spreads are over rounds, µs of Envoy CPU.
pub struct HostCosts<'a> {
    /// When, where and at which commit.
    pub provenance: Provenance,
    /// The options of the run.
    pub opts: &'a Options,
    /// Per request, of the probe making no call.
    pub baseline: Spread,
    /// Per call, by host import.
    pub prices: BTreeMap<&'static str, Spread>,
    /// retry-guard's host calls per request on the token path, by import (counted by host-sim).
    pub token_calls: BTreeMap<String, f64>,
    /// What retry-guard adds on the token path (configuration 5 − 8), per request.
    pub added: Spread,
    /// The wasm boundary's share of it.
    pub boundary: Spread,
    /// Holding the headers until the body is in: its share.
    pub pause: Spread,
    /// The runs, by configuration (`cases`).
    pub runs: &'a [Vec<Run>],
    /// The configurations run.
    pub cases: &'a [Case],
}

impl HostCosts<'_> {
    /// The price table for `import`: its own, or that of the call it is priced as.
    fn price_of(&self, import: &str) -> Option<(&Spread, Option<&'static str>)> {
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

    /// The report's Markdown: the three tables.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Measured {} at commit {} on {} with `just bench --host-costs` ({} interleaved rounds of {} s, Envoy 1.40.0 `--concurrency 1 -l {}` pinned to CPU 0, V8; wrk 1 thread × {} connections pinned to CPU 1 with the upstream Envoy). A call's price is the probe's Envoy CPU per request minus that of the probe making no call ({:.1} µs per request, {:.1}–{:.1}), in the same round, divided by the calls per request; the request is configuration 3's `GET /other`, forwarded upstream.\n",
            self.provenance.date,
            self.provenance.commit,
            self.provenance.machine,
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
        let mut row = |part: &str, how: &str, p: Option<&Spread>, v: f64| {
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

    /// Prints the tables, writes `host-costs.md` and `host-costs.json` to `dir`, and with
    /// `--update-readme` the README's host-costs section.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let spread = |p: &Spread| json!({"median": p.median, "min": p.min, "max": p.max});
        let j = json!({
            "date": self.provenance.date, "commit": self.provenance.commit, "machine": self.provenance.machine, "rounds": self.opts.rounds,
            "seconds": self.opts.seconds, "envoy_log_level": self.opts.log_level,
            "prices_us_per_call": self.prices.iter().map(|(k, p)| (k.to_string(), spread(p))).collect::<serde_json::Map<_, _>>(),
            "token_path_calls": self.token_calls,
            "token_path_added_us": spread(&self.added),
            "token_path_boundary_us": spread(&self.boundary),
            "token_path_pause_for_body_us": spread(&self.pause),
            "runs": self.cases.iter().zip(self.runs).map(|(c, runs)| json!({
                "configuration": c.name,
                "cpu_us_per_request": runs.iter().map(|r| r.cpu_us_per_req).collect::<Vec<_>>(),
                "rps": runs.iter().map(Run::rps).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        Publication {
            stem: "host-costs",
            title: "retry-guard host-call costs",
            json: Some(j),
            readme_section: self.opts.update_readme.then(|| readme("bench-host-costs")),
        }
        .publish(dir, &self.table())
    }
}

//! The `--host-costs` report: the price of each host call, each guarded path's host calls
//! priced, its limit beside what it adds, the goals, and the top-level README's summary of
//! what each path costs (`target/bench/host-costs.{md,json}`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use retry_guard_e2e::Result;
use serde_json::{json, Value};

use super::probes::{
    at, guarded_paths, what, GuardedPath, LOCAL_REPLY, PRICED_AS, PROBES, REPLY_NONE, REPLY_PROBE,
};
use crate::args::Options;
use crate::cases::Case;
use crate::load::{unexpected, Run};
use crate::measure::Spread;
use crate::report::{bench_readme, readme, Provenance, Publication, GOAL_WASM_BYTES};

/// The goal for what a guarded path adds above its limit: at most this share of the limit.
pub const GOAL_ABOVE_LIMIT: f64 = 0.25;

/// What `--host-costs` measured: Envoy CPU per request of each configuration, round by round.
pub struct HostCosts<'a> {
    /// When, where and at which commit.
    pub provenance: Provenance,
    /// The options of the run.
    pub opts: &'a Options,
    /// retry-guard's host calls per request by import, for each guarded path (host-sim's name),
    /// counted by host-sim on the module measured.
    pub calls: BTreeMap<&'static str, BTreeMap<String, f64>>,
    /// The runs, by position in `cases`.
    pub runs: &'a [Vec<Run>],
    /// The configurations run ([`super::probes::cases`]).
    pub cases: &'a [Case],
    /// µs per request of Envoy's CPU in V8's generated code, round by round, by position in
    /// `cases`: sampled with perf for each guarded path and its no-call probe (empty for the
    /// others, and for all where perf does not run).
    pub generated: &'a [Vec<f64>],
    /// The size of retry-guard's module.
    pub wasm_bytes: u64,
}

/// A guarded path's figures, each round by round (µs of Envoy CPU per request).
pub struct PathFigures {
    /// retry-guard − the same request without a filter.
    pub added: Vec<f64>,
    /// The no-call probe − the same request without a filter.
    pub boundary: Vec<f64>,
    /// Holding the headers until the body is in (zeros where not counted apart).
    pub body_wait: Vec<f64>,
    /// The path's host calls, priced.
    pub host_calls: Vec<f64>,
    /// boundary + body wait + host calls.
    pub limit: Vec<f64>,
    /// added − limit.
    pub above: Vec<f64>,
    /// Host calls per request in all.
    pub calls_per_request: f64,
    /// Imports the path calls that have no price (the limit leaves them out).
    pub unpriced: Vec<String>,
    /// The module's own code: the path's generated code − its no-call probe's (perf), round
    /// by round; `None` when not sampled.
    pub module_code: Option<Vec<f64>>,
}

impl PathFigures {
    /// What is added above the limit as a percentage of the limit: the rounds' median of the
    /// one ÷ their median of the other (`None` when the median limit is not positive). This,
    /// not the median of the rounds' own shares, is the figure set against the goal: a round
    /// whose probes priced its limit near zero gives a share of any size or sign, and with a
    /// few such rounds the median of the shares can say "met" while most of the rounds add
    /// more above their limits than the limits themselves.
    pub fn share_of_medians(&self) -> Option<f64> {
        if self.limit.is_empty() {
            return None;
        }
        let limit = Spread::of(&self.limit).median;
        (limit > 0.0).then(|| Spread::of(&self.above).median / limit * 100.0)
    }

    /// Whether [`Self::share_of_medians`] meets the goal (`None`: not measured).
    pub fn share_met(&self) -> Option<bool> {
        self.share_of_medians()
            .map(|v| v <= GOAL_ABOVE_LIMIT * 100.0)
    }

    /// The rounds' own shares of their limits in percent, leaving out the rounds whose priced
    /// limit was not positive (a share of it means nothing; on a noisy machine the probes'
    /// differences can price a path's calls below zero).
    pub fn round_shares(&self) -> Vec<f64> {
        self.above
            .iter()
            .zip(&self.limit)
            .filter(|(_, l)| **l > 0.0)
            .map(|(a, l)| a / l * 100.0)
            .collect()
    }

    /// ` (n of m rounds with a positive limit)` when [`Self::round_shares`] left some out.
    pub fn rounds_note(&self) -> String {
        let (kept, all) = (self.round_shares().len(), self.limit.len());
        if kept == all {
            String::new()
        } else {
            format!(" ({kept} of {all} rounds with a positive limit)")
        }
    }

    /// What is above the limit beyond the module's own code, round by round: Envoy's work
    /// for the filter that the priced host calls do not account for.
    pub fn above_beyond_code(&self) -> Option<Vec<f64>> {
        self.module_code.as_ref().map(|m| minus(&self.above, m))
    }
}

/// A figure stated against its goal.
struct GoalRow {
    /// What the figure is.
    name: String,
    /// The goal's text (empty: a reference row).
    goal: String,
    /// The figure round by round (its min–max).
    rounds: Vec<f64>,
    /// Decimals shown.
    decimals: usize,
    /// Whether the figure meets the goal (`None`: a reference row, or not measured).
    met: Option<bool>,
    /// The figure: the rounds' median, or for a share of the limit
    /// [`PathFigures::share_of_medians`]; not a number when there is none (shown as "–",
    /// null in JSON).
    figure: f64,
}

impl GoalRow {
    /// A row whose figure is the rounds' median.
    fn of_median(
        name: String,
        goal: String,
        rounds: Vec<f64>,
        decimals: usize,
        met: Option<bool>,
    ) -> GoalRow {
        let figure = if rounds.is_empty() {
            f64::NAN
        } else {
            Spread::of(&rounds).median
        };
        GoalRow {
            name,
            goal,
            rounds,
            decimals,
            met,
            figure,
        }
    }
}

/// `a − b`, element by element.
fn minus(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// `median (min–max)` of `v` with `d` decimals; `–` for no values.
fn spread_text(v: &[f64], d: usize) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let s = Spread::of(v);
    format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max)
}

/// A path's share of its limit: [`PathFigures::share_of_medians`], then the min–max of the
/// rounds' own shares in brackets; `–` for either that has no value.
fn share_text(f: &PathFigures) -> String {
    let rounds = f.round_shares();
    let figure = f
        .share_of_medians()
        .map_or_else(|| "–".to_string(), |v| format!("{v:.0}"));
    if rounds.is_empty() {
        return figure;
    }
    let s = Spread::of(&rounds);
    format!("{figure} ({:.0}–{:.0})", s.min, s.max)
}

/// "met" or "**missed**".
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

impl HostCosts<'_> {
    /// Envoy CPU per request of the configuration at `i`, round by round.
    fn cpu(&self, i: usize) -> Vec<f64> {
        self.runs
            .get(i)
            .map(|v| v.iter().map(|r| r.cpu_us_per_req).collect())
            .unwrap_or_default()
    }

    /// Saturated throughput of the configuration at `a` ÷ that at `b`, round by round.
    fn tput(&self, a: usize, b: usize) -> Vec<f64> {
        let (Some(x), Some(y)) = (self.runs.get(a), self.runs.get(b)) else {
            return Vec::new();
        };
        x.iter().zip(y).map(|(x, y)| x.rps() / y.rps()).collect()
    }

    /// Each priced import's price per call, round by round: the probes', answering from the
    /// filter ([`LOCAL_REPLY`]), and the imports priced as another ([`PRICED_AS`]).
    pub fn prices(&self) -> BTreeMap<&'static str, Vec<f64>> {
        let none = self.cpu(0);
        let mut prices: BTreeMap<&'static str, Vec<f64>> = PROBES
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, p)| {
                let per_call = minus(&self.cpu(i), &none)
                    .iter()
                    .map(|d| d / f64::from(p.count))
                    .collect();
                (p.import, per_call)
            })
            .collect();
        prices.insert(
            LOCAL_REPLY,
            minus(&self.cpu(REPLY_PROBE), &self.cpu(REPLY_NONE)),
        );
        for (import, like) in PRICED_AS {
            if let Some(p) = prices.get(like).cloned() {
                prices.insert(import, p);
            }
        }
        prices
    }

    /// The figures of the guarded path `p`, priced with `prices`.
    pub fn path(&self, p: &GuardedPath, prices: &BTreeMap<&'static str, Vec<f64>>) -> PathFigures {
        let baseline = self.cpu(p.baseline);
        let added = minus(&self.cpu(at(p.guard)), &baseline);
        let rounds = added.len();
        let boundary = minus(&self.cpu(p.boundary), &baseline);
        let body_wait = match p.body_wait {
            Some((with, without)) => minus(&self.cpu(with), &self.cpu(without)),
            None => vec![0.0; rounds],
        };
        let calls = self.calls.get(p.host_sim).cloned().unwrap_or_default();
        let mut host_calls = vec![0.0; rounds];
        let mut unpriced = Vec::new();
        for (import, n) in &calls {
            match prices.get(import.as_str()) {
                Some(price) => {
                    for (total, price) in host_calls.iter_mut().zip(price) {
                        *total += n * price;
                    }
                }
                None => unpriced.push(import.clone()),
            }
        }
        let limit: Vec<f64> = (0..rounds)
            .map(|r| boundary[r] + body_wait[r] + host_calls[r])
            .collect();
        let above = minus(&added, &limit);
        let generated = |pos: usize| {
            self.generated
                .get(pos)
                .filter(|g| g.len() == rounds && rounds > 0)
        };
        let module_code = match (generated(at(p.guard)), generated(p.boundary)) {
            (Some(g), Some(b)) => Some(minus(g, b)),
            _ => None,
        };
        PathFigures {
            added,
            boundary,
            body_wait,
            host_calls,
            limit,
            above,
            calls_per_request: calls.values().sum(),
            unpriced,
            module_code,
        }
    }

    /// The throughput ratio configuration `a` ÷ `b` would have if the module's own code (perf,
    /// [`PathFigures::module_code`]) cost nothing, round by round: at saturation a
    /// configuration's throughput is the inverse of its CPU per request, so `b`'s CPU ÷ (`a`'s
    /// − the module's code). `None` where perf did not sample. What it leaves is the wasm
    /// boundary and Envoy's work for the filter's host calls: a goal this misses is out of the
    /// guest code's reach on the machine measured.
    fn ratio_without_module_code(&self, a: usize, b: usize, f: &PathFigures) -> Option<Vec<f64>> {
        let code = f.module_code.as_ref()?;
        let (x, y) = (self.cpu(at(a)), self.cpu(at(b)));
        Some(
            x.iter()
                .zip(&y)
                .zip(code)
                .map(|((x, y), c)| y / (x - c))
                .collect(),
        )
    }

    /// retry-guard's added CPU on the token request ÷ `jwt_authn`'s (configuration `jwt`, 11
    /// or 12), round by round.
    fn token_over_jwt(&self, jwt: usize) -> Vec<f64> {
        let token = minus(&self.cpu(at(5)), &self.cpu(at(8)));
        let verify = minus(&self.cpu(at(jwt)), &self.cpu(at(8)));
        token.iter().zip(&verify).map(|(t, j)| t / j).collect()
    }

    /// The figures against their goals: (figure, goal, per-round values, decimals, met).
    fn goals(&self) -> Vec<GoalRow> {
        let prices = self.prices();
        let paths = guarded_paths();
        let figures: Vec<PathFigures> = paths.iter().map(|p| self.path(p, &prices)).collect();
        let mut rows = Vec::new();
        for (p, f) in paths.iter().zip(&figures) {
            rows.push(GoalRow {
                name: format!(
                    "{}: added above the priced limit, % of the limit{}",
                    p.name,
                    f.rounds_note()
                ),
                goal: format!("≤ {:.0}%", GOAL_ABOVE_LIMIT * 100.0),
                rounds: f.round_shares(),
                decimals: 0,
                met: f.share_met(),
                figure: f.share_of_medians().unwrap_or(f64::NAN),
            });
        }
        let names = [
            "throughput 4 ÷ 2 (read_only vs no-op), upstream mode",
            "throughput 5 ÷ 1 (token vs no filter, the same request: case 5 ÷ case 8), upstream mode",
            "throughput 6 ÷ 7 (428 vs Envoy's direct_response 428)",
        ];
        for ((p, f), name) in paths.iter().zip(&figures).zip(names) {
            let (a, (b, goal)) = (p.guard, p.throughput);
            let v = self.tput(at(a), at(b));
            let met = Spread::of(&v).median >= goal;
            rows.push(GoalRow::of_median(
                name.to_string(),
                format!("≥ {goal:.2}"),
                v,
                3,
                Some(met),
            ));
            if let Some(v) = self.ratio_without_module_code(a, b, f) {
                rows.push(GoalRow::of_median(
                    format!(
                        "(for reference) {a} ÷ {b} had the module's own code cost nothing: \
                         {b}'s CPU ÷ ({a}'s − the module's own code)"
                    ),
                    String::new(),
                    v,
                    3,
                    None,
                ));
            }
        }
        let es = self.token_over_jwt(12);
        let es_met = Spread::of(&es).median < 1.0;
        rows.push(GoalRow::of_median(
            "token path's added CPU ÷ jwt_authn ES256's added CPU: (5 − 8) ÷ (12 − 8)".into(),
            "< 1 (lower)".into(),
            es,
            3,
            Some(es_met),
        ));
        rows.push(GoalRow::of_median(
            "(for reference) the same against jwt_authn RS256: (5 − 8) ÷ (11 − 8)".into(),
            String::new(),
            self.token_over_jwt(11),
            3,
            None,
        ));
        rows
    }

    /// The report's Markdown (`bench/README.md`, `bench-host-costs`): prices, each path's host
    /// calls priced, the limits, the goals.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let o = self.opts;
        let p = &self.provenance;
        let baseline = Spread::of(&self.cpu(0));
        let _ = writeln!(
            s,
            "Measured {} at commit {} on {} with `just bench --host-costs{}` ({} interleaved rounds of {} s, {} configurations, Envoy 1.40.0 `--concurrency 1 -l {}` pinned to CPU 0, V8; wrk 1 thread × {} connections pinned to CPU 1 with the upstream Envoy; saturated). A call's price is the probe's Envoy CPU per request minus that of the probe making no call ({:.1} µs per request, {:.1}–{:.1}), in the same round, divided by the calls per request; the request is configuration 3's `GET /other`, forwarded upstream.\n",
            p.date,
            p.commit,
            p.machine,
            o.timing_flags(),
            o.rounds,
            o.seconds,
            self.cases.len(),
            o.log_level,
            o.connections,
            baseline.median,
            baseline.min,
            baseline.max,
        );
        s.push_str("| host call (what the probe does) | calls per request | Envoy CPU per call (µs, median) | min–max over rounds |\n|---|---:|---:|---|\n");
        let prices = self.prices();
        let mut price_row = |import: &str, what: &str, count: u32| {
            if let Some(v) = prices.get(import) {
                let sp = Spread::of(v);
                let _ = writeln!(
                    s,
                    "| `{import}` ({what}) | {count} | {:.2} | {:.2}–{:.2} |",
                    sp.median, sp.min, sp.max
                );
            }
        };
        for pr in PROBES.iter().skip(1) {
            price_row(pr.import, what(pr.import), pr.count);
        }
        price_row(LOCAL_REPLY, what(LOCAL_REPLY), 1);
        let priced_as: Vec<String> = PRICED_AS
            .iter()
            .map(|(i, like)| format!("`{i}` is priced as `{like}`"))
            .collect();
        let _ = writeln!(s, "\n{}.", priced_as.join("; "));

        // Each path's host calls, priced.
        let paths = guarded_paths();
        let figures: Vec<PathFigures> = paths.iter().map(|p| self.path(p, &prices)).collect();
        let _ = writeln!(
            s,
            "\nThe host calls of each guarded path per request, counted by host-sim on the module measured (`retry-guard bench --paths`: read_only, token_issuing_allow, replay_428), priced with the medians above (µs of Envoy CPU per request):\n"
        );
        s.push_str("| host call |");
        for p in &paths {
            let _ = write!(s, " {}: calls | µs |", p.name);
        }
        s.push_str("\n|---|");
        for _ in &paths {
            s.push_str("---:|---:|");
        }
        s.push('\n');
        let imports: BTreeSet<&String> = self.calls.values().flat_map(|m| m.keys()).collect();
        for import in imports {
            let _ = write!(s, "| `{import}` |");
            for p in &paths {
                let n = self
                    .calls
                    .get(p.host_sim)
                    .and_then(|m| m.get(import.as_str()))
                    .copied()
                    .unwrap_or(0.0);
                let us = match prices.get(import.as_str()) {
                    _ if n == 0.0 => String::new(),
                    Some(v) => format!("{:.2}", n * Spread::of(v).median),
                    None => "not priced".into(),
                };
                let calls = if n == 0.0 {
                    String::new()
                } else {
                    format!("{n:.2}")
                };
                let _ = write!(s, " {calls} | {us} |");
            }
            s.push('\n');
        }
        s.push_str("| **all host calls** |");
        for f in &figures {
            let _ = write!(
                s,
                " {:.2} | **{:.1}** |",
                f.calls_per_request,
                Spread::of(&f.host_calls).median
            );
        }
        s.push('\n');

        // The limits.
        let _ = writeln!(
            s,
            "\nEach guarded path's limit beside what retry-guard adds to it (µs of Envoy CPU per request, median and min–max over rounds; each round priced with its own prices). Limit = the wasm boundary (the probe making no call, sent the path's request, − the same request without a filter) + holding the headers until the body is in (token path: the probe doing just that − the no-call probe; the 428's wait is in the price of `{LOCAL_REPLY}`) + the path's host calls priced. What is added above the limit is the guest's own code and avoidable calls:\n"
        );
        s.push_str("| path | baseline (the same request without retry-guard) | added (µs) | wasm boundary | holding for the body | host calls | **limit** | added above the limit | % of the limit | goal ≤ 25% | the module's own code (perf) | above the limit beyond the module's code |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (p, f) in paths.iter().zip(&figures) {
            let unpriced = if f.unpriced.is_empty() {
                String::new()
            } else {
                format!(" (without {}: not priced)", f.unpriced.join(", "))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | **{}**{unpriced} | {} | {}{} | {} | {} | {} |",
                p.name,
                p.baseline_text,
                spread_text(&f.added, 1),
                spread_text(&f.boundary, 1),
                if p.body_wait.is_some() {
                    spread_text(&f.body_wait, 1)
                } else {
                    "–".into()
                },
                spread_text(&f.host_calls, 1),
                spread_text(&f.limit, 1),
                spread_text(&f.above, 1),
                share_text(f),
                f.rounds_note(),
                f.share_met().map_or("no positive limit", verdict),
                f.module_code
                    .as_ref()
                    .map_or_else(|| "–".into(), |v| spread_text(v, 1)),
                f.above_beyond_code()
                    .map_or_else(|| "–".into(), |v| spread_text(&v, 1)),
            );
        }
        s.push_str("\nThe module's own code: the share of Envoy's CPU samples in V8's generated code (`perf record -e cpu-clock`, as `--guest-share` takes them) times Envoy's CPU per request, the path's run minus its no-call probe's (the wrappers and an empty guest), round by round (– where perf does not run); about: V8 runs the module's `memory.copy` calls in its runtime (not counted), and each host call's wrapper is generated code (counted). What is above the limit beyond it is mostly Envoy's work for the filter that the priced calls do not account for.\n");

        // The goals.
        s.push_str("\nThe goals of issue 15, measured in these rounds:\n\n| figure | goal | measured (median) | min–max over rounds | |\n|---|---|---|---|---|\n");
        for row in self.goals() {
            let GoalRow {
                name,
                goal,
                decimals: d,
                ..
            } = &row;
            if row.rounds.is_empty() {
                let _ = writeln!(s, "| {name} | {goal} | – | – | not measured |");
                continue;
            }
            let sp = Spread::of(&row.rounds);
            let _ = writeln!(
                s,
                "| {name} | {goal} | {} | {:.d$}–{:.d$} | {} |",
                if row.figure.is_nan() {
                    "–".to_string()
                } else {
                    format!("{:.d$}", row.figure)
                },
                sp.min,
                sp.max,
                row.met
                    .map_or(if goal.is_empty() { "" } else { "not measured" }, verdict)
            );
        }
        let odd: Vec<String> = self
            .cases
            .iter()
            .zip(self.runs)
            .filter_map(|(c, runs)| {
                let n: u64 = runs.iter().map(|r| unexpected(c, r)).sum();
                let all: u64 = runs.iter().map(|r| r.requests).sum();
                (n > 0).then(|| format!("{}: {n} of {all}", c.name))
            })
            .collect();
        let _ = writeln!(
            s,
            "| release wasm (bytes) | ≤ {GOAL_WASM_BYTES} (256 KiB) | {} | | {} |",
            self.wasm_bytes,
            verdict(self.wasm_bytes <= GOAL_WASM_BYTES)
        );
        s.push_str("\nThe three shares of the limit are the median added above the limit ÷ the median limit, and their min–max the rounds' own shares (rounds whose limit was not positive left out); the other figures are the rounds' medians.\n");
        if !odd.is_empty() {
            let _ = writeln!(
                s,
                "\nAnswers other than the configuration's (wrk; Envoy's log says why): {}.",
                odd.join("; ")
            );
        }
        s
    }

    /// The top-level README's table (`perf-summary`): what each path costs, its limit, and
    /// `jwt_authn` beside it, all from this run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let o = self.opts;
        let p = &self.provenance;
        let _ = writeln!(
            s,
            "Measured {} at commit {} on {} with `just bench --host-costs{} --update-readme`: Envoy 1.40.0 `--concurrency 1` pinned to one core, saturated by wrk on the other, upstream mode (each request forwarded to an upstream Envoy), {} interleaved rounds of {} s. Medians, min–max over rounds in brackets; µs are Envoy CPU per request. The method, every table, the direct mode and the latency figures: [bench/README.md](bench/README.md).\n",
            p.date,
            p.commit,
            p.machine,
            o.timing_flags(),
            o.rounds,
            o.seconds
        );
        s.push_str("| path | added to Envoy's CPU per request (µs), against | throughput ratio (goal) | priced limit (µs) | added above the limit (goal ≤ 25%); of it the module's own code (perf) |\n|---|---|---|---|---|\n");
        let prices = self.prices();
        let ratio_texts = ["4 ÷ 2, vs the no-op filter", "5 ÷ 8", "6 ÷ 7"];
        let rows = [
            "retry-guard, read_only route (`GET /v1/items`, case 4)",
            "retry-guard, token route, a first attempt (`POST /oauth/token`, case 5)",
            "retry-guard answering 428 to a replay (case 6)",
        ];
        for ((path, ratio_text), row) in guarded_paths().iter().zip(ratio_texts).zip(rows) {
            let (a, (b, goal)) = (path.guard, path.throughput);
            let f = self.path(path, &prices);
            let tput = self.tput(at(a), at(b));
            let share_text = match (f.share_of_medians(), f.share_met()) {
                (Some(v), Some(met)) => {
                    format!("{v:.0}% of the limit{}: {}", f.rounds_note(), verdict(met))
                }
                _ => "the median limit is not positive: **not measured**".to_string(),
            };
            let against = match path.guard {
                4 => "no filter, the same request",
                5 => "no filter, the same request (case 8)",
                _ => "Envoy's own 428 (case 7)",
            };
            let _ = writeln!(
                s,
                "| {row} | {} against {against} | {ratio_text}: {} (≥ {goal:.2}: {}{}) | {} | {} µs, {share_text}{} |",
                spread_text(&f.added, 1),
                spread_text(&tput, 3),
                verdict(Spread::of(&tput).median >= goal),
                self.ratio_without_module_code(a, b, &f)
                    .map_or_else(String::new, |v| format!(
                        "; {:.3} had the module's own code cost nothing",
                        Spread::of(&v).median
                    )),
                spread_text(&f.limit, 1),
                spread_text(&f.above, 1),
                f.module_code.as_ref().map_or_else(String::new, |v| format!(
                    "; the module's own code {} µs",
                    spread_text(v, 1)
                )),
            );
        }
        for (id, alg) in [(11, "RS256"), (12, "ES256")] {
            let added = minus(&self.cpu(at(id)), &self.cpu(at(8)));
            let _ = writeln!(
                s,
                "| Envoy's own `jwt_authn` verifying the token request's JWT, {alg}, local JWKS (case {id}) | {} against no filter (case 8) | {id} ÷ 8: {} | | |",
                spread_text(&added, 1),
                spread_text(&self.tput(at(id), at(8)), 3),
            );
        }
        let es = self.token_over_jwt(12);
        let _ = writeln!(
            s,
            "\nretry-guard's token path adds {} times what verifying its JWT (ES256) with `jwt_authn` adds (goal: lower, < 1: {}); {} times the RS256 verification's. Release wasm: {} bytes (goal ≤ {GOAL_WASM_BYTES}: {}).",
            spread_text(&es, 2),
            verdict(Spread::of(&es).median < 1.0),
            spread_text(&self.token_over_jwt(11), 2),
            self.wasm_bytes,
            verdict(self.wasm_bytes <= GOAL_WASM_BYTES),
        );
        s
    }

    /// The report as JSON: every run, the prices, the paths' figures and the goals.
    fn json(&self) -> Value {
        let spread = |v: &[f64]| {
            let p = Spread::of(v);
            json!({"median": p.median, "min": p.min, "max": p.max, "rounds": v})
        };
        let prices = self.prices();
        let paths: Vec<Value> = guarded_paths()
            .iter()
            .map(|p| {
                let f = self.path(p, &prices);
                json!({
                    "path": p.name, "host_sim_path": p.host_sim, "configuration": p.guard,
                    "baseline": p.baseline_text,
                    "host_calls": self.calls.get(p.host_sim),
                    "added_us": spread(&f.added), "boundary_us": spread(&f.boundary),
                    "body_wait_us": spread(&f.body_wait), "host_calls_us": spread(&f.host_calls),
                    "limit_us": spread(&f.limit), "above_limit_us": spread(&f.above),
                    "above_share_of_limit_percent": f.share_of_medians(), "above_share_of_limit_percent_rounds": spread(&f.round_shares()), "unpriced": f.unpriced,
                    "module_code_us": f.module_code.as_deref().map(spread),
                    "above_limit_beyond_module_code_us": f.above_beyond_code().as_deref().map(spread),
                })
            })
            .collect();
        json!({
            "date": self.provenance.date, "commit": self.provenance.commit, "machine": self.provenance.machine,
            "rounds": self.opts.rounds, "seconds": self.opts.seconds, "envoy_log_level": self.opts.log_level,
            "wasm_bytes": self.wasm_bytes,
            "prices_us_per_call": prices.iter().map(|(k, v)| (k.to_string(), spread(v))).collect::<serde_json::Map<_, _>>(),
            "paths": paths,
            "goals": self.goals().iter().map(|g| json!({"figure": g.name, "goal": g.goal, "measured": g.figure, "values": spread(&g.rounds), "met": g.met})).collect::<Vec<_>>(),
            "runs": self.cases.iter().zip(self.runs).map(|(c, runs)| json!({
                "configuration": c.name, "id": c.id,
                "cpu_us_per_request": runs.iter().map(|r| r.cpu_us_per_req).collect::<Vec<_>>(),
                "rps": runs.iter().map(Run::rps).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Prints the tables, writes `host-costs.md` and `host-costs.json` to `dir`, and with
    /// `--update-readme` the `bench-host-costs` section of `bench/README.md` and the
    /// top-level README's `perf-summary`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let update = self.opts.update_readme;
        Publication {
            stem: "host-costs",
            title: "retry-guard host-call costs and limits",
            json: Some(self.json()),
            readme_section: update.then(|| bench_readme("bench-host-costs")),
        }
        .publish(dir, &self.table())?;
        Publication {
            stem: "summary",
            title: "What each path costs (the top-level README's Performance table)",
            json: None,
            readme_section: update.then(|| readme("perf-summary")),
        }
        .publish(dir, &self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::super::probes::{cases, POST_NONE, POST_PAUSE, READ_BARE, READ_NONE};
    use super::*;
    use crate::report::tests::run;

    /// A run of every configuration of `--host-costs` with chosen CPU per request: every call
    /// priced 1 µs (2 µs the local reply), boundaries of 3 µs (0 for the 428), no wait for the
    /// body.
    fn runs(cases: &[Case]) -> Vec<Vec<Run>> {
        let mut cpu = vec![0.0; cases.len()];
        cpu[0] = 30.0;
        for (i, p) in PROBES.iter().enumerate().skip(1) {
            cpu[i] = 30.0 + f64::from(p.count);
        }
        cpu[POST_NONE] = 33.0;
        cpu[POST_PAUSE] = 33.0;
        cpu[READ_NONE] = 33.0;
        cpu[READ_BARE] = 30.0;
        cpu[REPLY_NONE] = 20.0;
        cpu[REPLY_PROBE] = 22.0;
        for (id, c) in [
            (2, 31.0),
            (4, 45.0),
            (5, 60.0),
            (6, 40.0),
            (7, 20.0),
            (8, 30.0),
            (11, 40.0),
            (12, 50.0),
        ] {
            cpu[at(id)] = c;
        }
        cases
            .iter()
            .zip(cpu)
            .map(|(c, cpu)| {
                let rps = 1e6 / cpu;
                let refused = if c.expect_status == 428 {
                    rps as u64
                } else {
                    0
                };
                vec![run(rps, cpu, refused)]
            })
            .collect()
    }

    #[test]
    fn rounds_without_a_positive_limit_are_left_out_of_the_share_and_said() {
        let figures = |limit: Vec<f64>, above: Vec<f64>| PathFigures {
            added: vec![0.0; limit.len()],
            boundary: limit.clone(),
            body_wait: vec![0.0; limit.len()],
            host_calls: vec![0.0; limit.len()],
            limit,
            above,
            calls_per_request: 1.0,
            unpriced: Vec::new(),
            module_code: None,
        };
        let f = figures(vec![2.0, -1.0, 2.0], vec![1.0, 5.0, 2.0]);
        assert_eq!(f.round_shares(), vec![50.0, 100.0]);
        assert_eq!(f.rounds_note(), " (2 of 3 rounds with a positive limit)");
        let all = figures(vec![2.0, 1.0, 2.0], vec![1.0, 5.0, 2.0]);
        assert_eq!(all.rounds_note(), "");
        assert_eq!(spread_text(&[], 1), "–");
    }

    #[test]
    fn the_share_set_against_the_goal_is_the_median_above_over_the_median_limit() {
        // Four rounds priced a positive limit; the median of their own shares (133%, −50%,
        // 12.5%, −18%) is −3% and would meet the goal, while the median round adds 5 µs above
        // a median limit of 11 µs: 45%.
        let f = PathFigures {
            added: vec![28.0, 1.0, 45.0, 16.0, 9.0],
            boundary: vec![0.0; 5],
            body_wait: vec![0.0; 5],
            host_calls: vec![12.0, 2.0, 40.0, -1.0, 11.0],
            limit: vec![12.0, 2.0, 40.0, -1.0, 11.0],
            above: vec![16.0, -1.0, 5.0, 17.0, -2.0],
            calls_per_request: 1.0,
            unpriced: Vec::new(),
            module_code: None,
        };
        assert!(Spread::of(&f.round_shares()).median <= 25.0);
        let v = f.share_of_medians().unwrap();
        assert!((v - 5.0 / 11.0 * 100.0).abs() < 1e-9, "{v}");
        assert_eq!(share_text(&f), "45 (-50–133)");
        let none_positive = PathFigures {
            limit: vec![-1.0, -2.0, 3.0],
            ..f
        };
        assert_eq!(none_positive.share_of_medians(), None);
    }

    #[test]
    fn each_path_is_set_beside_its_priced_limit_and_the_summary_beside_jwt_authn() {
        let o = crate::args::parse_from(["--host-costs".to_string()])
            .unwrap()
            .unwrap();
        let cases = cases();
        let runs = runs(&cases);
        // perf sampled the token path (8 µs in generated code) and its no-call probe (1 µs).
        let mut generated = vec![Vec::new(); cases.len()];
        generated[at(5)] = vec![8.0];
        generated[POST_NONE] = vec![1.0];
        let calls = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let report = HostCosts {
            provenance: Provenance {
                date: "2026-12-07".into(),
                commit: "abc1234".into(),
                machine: "a CPU, 2 cores".into(),
            },
            opts: &o,
            calls: BTreeMap::from([
                (
                    "read_only",
                    calls(&[("proxy_get_property", 1.0), ("proxy_log", 1.0)]),
                ),
                (
                    "token_issuing_allow",
                    calls(&[
                        ("proxy_get_buffer_bytes", 1.0),
                        ("proxy_log", 2.0),
                        ("proxy_unknown", 1.0),
                    ]),
                ),
                (
                    "replay_428",
                    calls(&[("proxy_send_local_response", 1.0), ("proxy_log", 1.0)]),
                ),
            ]),
            runs: &runs,
            cases: &cases,
            generated: &generated,
            wasm_bytes: 300_000,
        };
        let prices = report.prices();
        assert_eq!(prices["proxy_log"], [1.0]);
        assert_eq!(prices[LOCAL_REPLY], [2.0]);
        assert_eq!(
            prices["proxy_get_buffer_bytes"],
            [1.0],
            "priced as a header value"
        );
        let t = report.table();
        let row = |start: &str| {
            t.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no {start:?} in\n{t}"))
                .to_string()
        };
        // read_only: added 15, boundary 3, calls 2: limit 5, 10 above = 200%.
        assert_eq!(
            row("| read_only (case 4) | no wasm filter"),
            "| read_only (case 4) | no wasm filter, case 4's request | 15.0 (15.0–15.0) | 3.0 (3.0–3.0) | – | 2.0 (2.0–2.0) | **5.0 (5.0–5.0)** | 10.0 (10.0–10.0) | 200 (200–200) | **missed** | – | – |"
        );
        // token: added 30, boundary 3, wait 0, calls 3 (one unpriced, named): limit 6.
        assert_eq!(
            row("| token (case 5) | configuration 8"),
            "| token (case 5) | configuration 8 | 30.0 (30.0–30.0) | 3.0 (3.0–3.0) | 0.0 (0.0–0.0) | 3.0 (3.0–3.0) | **6.0 (6.0–6.0)** (without proxy_unknown: not priced) | 24.0 (24.0–24.0) | 400 (400–400) | **missed** | 7.0 (7.0–7.0) | 17.0 (17.0–17.0) |"
        );
        // 428: added 20, boundary 0, the local reply 2 and a log 1: limit 3.
        assert!(row("| 428 (case 6)").contains("| **3.0 (3.0–3.0)** | 17.0 (17.0–17.0) |"));
        assert!(row("| `proxy_unknown` |").contains("not priced"));
        assert!(row("| `proxy_send_local_response` (").contains("| 1 | 2.00 |"));
        // Goals: the ratios of this run, the jwt_authn comparison, the module's size.
        assert!(row("| throughput 6 ÷ 7").contains("| ≥ 0.60 | 0.500 |"));
        // Without the token path's own code (7 µs): case 8's 30 µs ÷ (60 − 7); the other
        // paths were not sampled, so they get no such row.
        assert!(
            row("| (for reference) 5 ÷ 8 had the module's own code cost nothing")
                .contains("|  | 0.566 | 0.566–0.566 |  |")
        );
        assert!(!t.contains("(for reference) 4 ÷ 2"));
        assert!(row("| token path's added CPU ÷ jwt_authn ES256")
            .contains("| < 1 (lower) | 1.500 | 1.500–1.500 | **missed** |"));
        assert!(row("| release wasm").ends_with("| 300000 | | **missed** |"));
        // The goals table is one table: its last row is the module's size, its note after it.
        let goals = &t[t.find("| figure | goal |").unwrap()..];
        let goals = &goals[..goals.find("\n\n").unwrap()];
        assert!(goals.lines().all(|l| l.starts_with('|')), "{goals}");
        assert!(goals.lines().last().unwrap().starts_with("| release wasm"));
        // The summary: three paths and jwt_authn beside them, every figure from this run.
        let s = report.summary();
        assert!(s.starts_with("Measured 2026-12-07 at commit abc1234 on a CPU, 2 cores with `just bench --host-costs --update-readme`"));
        // A run of other rounds names them, so the command repeats it.
        let fifteen = crate::args::parse_from(["--host-costs", "--rounds", "15"].map(String::from))
            .unwrap()
            .unwrap();
        assert_eq!(fifteen.timing_flags(), " --rounds 15");
        assert_eq!(o.timing_flags(), "");
        assert!(s.contains("[bench/README.md](bench/README.md)"));
        let rows: Vec<&str> = s.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(rows.len(), 2 + 5, "header, separator, 5 rows: {s}");
        assert!(
            rows[3].ends_with("**missed**; the module's own code 7.0 (7.0–7.0) µs |"),
            "{}",
            rows[3]
        );
        assert!(rows[2].contains("| 15.0 (15.0–15.0) against no filter, the same request | 4 ÷ 2, vs the no-op filter: 0.689 (0.689–0.689) (≥ 0.93: **missed**) | 5.0 (5.0–5.0) | 10.0 (10.0–10.0) µs, 200% of the limit: **missed** |"), "{}", rows[2]);
        assert!(
            rows[6].contains("ES256")
                && rows[6].contains(
                    "| 20.0 (20.0–20.0) against no filter (case 8) | 12 ÷ 8: 0.600 (0.600–0.600) |"
                ),
            "{}",
            rows[6]
        );
        assert!(s.contains("adds 1.50 (1.50–1.50) times what verifying its JWT (ES256)"));
        assert!(s.contains("(≥ 0.62: **missed**; 0.566 had the module's own code cost nothing)"));
        assert!(s.contains("3.00 (3.00–3.00) times the RS256"));
    }
}

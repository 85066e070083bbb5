//! The etcd comparison's report: `target/bench/etcd.{md,json}`, and with `--update-readme` the
//! `bench-etcd` section of `bench/README.md`.

use std::fmt::Write as _;
use std::path::Path;

use retry_guard_e2e::Result;
use serde_json::{json, Value};

use super::metrics::{Handled, KV_METHODS};
use super::rtt::RoundTrips;
use super::{EtcdLoad, Storage};
use crate::args::Options;
use crate::cases::ETCD_CASES;
use crate::configs::{Backend, ETCD_TIMEOUT_MS};
use crate::load::{Run, PACED_CONNECTIONS_EACH, PACED_PROCESSES};
use crate::measure::{median, percentile, Spread};
use crate::report::{Provenance, Publication, Section, BENCH_README};

/// The runs' kinds, indexing [`EtcdReport::etcd_load`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Saturated = 0,
    Paced = 1,
    Unloaded = 2,
}

/// Where configuration 8 (no filter), 5 (shared data) and 10 (etcd) stand in the runs
/// ([`ETCD_CASES`]).
const NONE: usize = 0;
const SHARED: usize = 1;
const ETCD: usize = 2;
/// And the probe holding the request for its body (310), and doing that and one etcd
/// transaction (311).
const HOLD: usize = 3;
const TXN: usize = 4;

/// The goal's slack over one etcd round trip for the added p50, µs.
const P50_SLACK_US: f64 = 200.0;
/// The goal for Envoy CPU per request over the shared-data path, µs.
const CPU_GOAL_US: f64 = 15.0;

/// The etcd round trips a first attempt cannot do without: what its Envoy CPU pays for (the
/// request path's and the outcome's) and what its client waits for (the request path's).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Trips {
    RequestPath = 1,
    RequestAndOutcome = 2,
}

/// etcd requests of first attempts counted one by one: on the request path (before the
/// upstream answered) and for the outcome (after).
#[derive(Clone, Debug, Default)]
pub struct Split {
    /// Per request, what etcd handled while it was decided.
    pub request_path: Vec<Handled>,
    /// Per request, what etcd handled after its answer.
    pub outcome: Vec<Handled>,
}

impl Split {
    /// Key-value requests on the request path, per request.
    fn request_path_kv(&self) -> Vec<f64> {
        self.request_path.iter().map(Handled::kv).collect()
    }

    /// Key-value requests for the outcome, per request.
    fn outcome_kv(&self) -> Vec<f64> {
        self.outcome.iter().map(Handled::kv).collect()
    }

    /// The mean of [`Split::request_path_kv`].
    pub fn request_path_mean(&self) -> f64 {
        mean(&self.request_path_kv())
    }

    /// The mean of [`Split::outcome_kv`].
    pub fn outcome_mean(&self) -> f64 {
        mean(&self.outcome_kv())
    }

    /// Every request's requests of one side summed, per method.
    fn summed(side: &[Handled]) -> Handled {
        let mut sum = Handled::default();
        for h in side {
            sum.add(h);
        }
        sum
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// What the etcd comparison measured. Runs are indexed as [`ETCD_CASES`].
pub struct EtcdReport<'a> {
    pub provenance: Provenance,
    pub opts: &'a Options,
    /// etcd's version.
    pub etcd_version: String,
    /// The machine's load averages (1, 5, 15 min) before and after the run.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    /// One transaction's round trip before and after the load runs.
    pub rtt_before: RoundTrips,
    pub rtt_after: RoundTrips,
    /// etcd requests per first attempt, one by one.
    pub split: Split,
    /// Saturated, paced and unloaded runs per configuration.
    pub sat: Vec<Vec<Run>>,
    pub paced: Vec<Vec<Run>>,
    pub unloaded: Vec<Vec<Run>>,
    /// The paced rate, req/s in all.
    pub target_rate: f64,
    /// Each configuration's Envoy CPU with no requests, µs per second.
    pub idle_cpu: Vec<f64>,
    /// What etcd did during configuration 10's runs, per [`Mode`].
    pub etcd_load: [EtcdLoad; 3],
    /// Requests the etcd ledger could not answer in time during the runs.
    pub unavailable: u64,
    /// Ledger keys in etcd after the runs.
    pub keys_after: u64,
    /// etcd's database in use for every key the run wrote.
    pub storage: Storage,
}

/// A figure against its goal.
struct Figure {
    name: String,
    goal: String,
    spread: Spread,
    pass: Option<bool>,
    /// Decimals shown.
    decimals: usize,
}

impl Figure {
    fn row(&self) -> String {
        let d = self.decimals;
        let range = if self.spread.min == self.spread.max {
            String::new()
        } else {
            format!("{:.d$}–{:.d$}", self.spread.min, self.spread.max)
        };
        format!(
            "| {} | {} | {:.d$} | {range} | {} |",
            self.name,
            self.goal,
            self.spread.median,
            match self.pass {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "",
            }
        )
    }
}

impl EtcdReport<'_> {
    /// Every round trip timed, sorted: the goal's round trip is their median.
    fn rtt_all(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .rtt_before
            .sorted_us
            .iter()
            .chain(&self.rtt_after.sorted_us)
            .copied()
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }

    /// The round trip the latency goal is stated with: the median of every transaction timed.
    fn rtt_p50(&self) -> f64 {
        percentile(&self.rtt_all(), 0.5)
    }

    /// Per round, `f` of configuration `a`'s run minus `b`'s, as values (none when either has
    /// no run).
    fn per_round(runs: &[Vec<Run>], a: usize, b: usize, f: &dyn Fn(&Run) -> f64) -> Vec<f64> {
        match (runs.get(a), runs.get(b)) {
            (Some(x), Some(y)) => x.iter().zip(y).map(|(x, y)| f(x) - f(y)).collect(),
            _ => Vec::new(),
        }
    }

    /// [`EtcdReport::per_round`] as a spread over the rounds.
    fn delta(runs: &[Vec<Run>], a: usize, b: usize, f: impl Fn(&Run) -> f64) -> Option<Spread> {
        let per_round = Self::per_round(runs, a, b, &f);
        (!per_round.is_empty()).then(|| Spread::of(&per_round))
    }

    /// What one etcd round trip costs Envoy (the probe: 311 − 310), and the etcd ledger's
    /// request above its floor of `trips` round trips ((10 − 5) − trips × (311 − 310)), per
    /// round, of `f`, in `runs`.
    fn round_trip_figures(
        runs: &[Vec<Run>],
        mode: &str,
        what: &str,
        f: &dyn Fn(&Run) -> f64,
        trips: Trips,
    ) -> Vec<Figure> {
        let one = Self::per_round(runs, TXN, HOLD, f);
        let added = Self::per_round(runs, ETCD, SHARED, f);
        if one.is_empty() || added.is_empty() {
            return Vec::new();
        }
        let n = trips as u8;
        let above: Vec<f64> = added
            .iter()
            .zip(&one)
            .map(|(a, o)| a - f64::from(n) * o)
            .collect();
        let figure = |name: String, v: &[f64]| Figure {
            name,
            goal: String::new(),
            spread: Spread::of(v),
            pass: None,
            decimals: 1,
        };
        vec![
            figure(
                format!("(for reference) {what} of one etcd round trip through Envoy, {mode}: the probe sending one etcd transaction per request and nothing else (311) − the probe holding the request for its body (310)"),
                &one,
            ),
            figure(
                match trips {
                    Trips::RequestAndOutcome => format!("(for reference) {what}, {mode}: the etcd ledger above its floor of two such round trips (the request path's and the outcome's), (10 − 5) − 2 × (311 − 310)"),
                    Trips::RequestPath => format!("(for reference) {what}, {mode}: the etcd ledger above its floor of one such round trip (the request path's; the outcome's is after the answer), (10 − 5) − (311 − 310)"),
                },
                &above,
            ),
        ]
    }

    fn figures(&self) -> Vec<Figure> {
        let mut v = Vec::new();
        let exact = |name: String, values: &[f64], goal: &str, want: Option<f64>| Figure {
            name,
            goal: goal.into(),
            spread: Spread {
                median: mean(values),
                ..Spread::of(values)
            },
            pass: want.map(|w| !values.is_empty() && values.iter().all(|x| *x == w)),
            decimals: 2,
        };
        let n = self.split.request_path.len();
        v.push(exact(
            format!("etcd requests on the request path per first attempt (mean of {n} counted one by one; from etcd's `grpc_server_handled_total`)"),
            &self.split.request_path_kv(),
            "exactly 1",
            Some(1.0),
        ));
        v.push(exact(
            format!(
                "etcd requests for the outcome per first attempt, after the answer (mean of {n})"
            ),
            &self.split.outcome_kv(),
            "1, off the response path",
            Some(1.0),
        ));
        for (mode, label) in [
            (Mode::Saturated, "saturated"),
            (Mode::Paced, "paced"),
            (Mode::Unloaded, "unloaded"),
        ] {
            let load = &self.etcd_load[mode as usize];
            if load.requests == 0 {
                continue;
            }
            let per = load.handled.kv() / load.requests as f64;
            v.push(Figure {
                name: format!(
                    "(for reference) etcd key-value requests per guarded request over configuration 10's {label} runs ({} requests; the last answers' outcomes may fall outside a run)",
                    load.requests
                ),
                goal: "2 (1 + 1)".into(),
                spread: Spread::of(&[per]),
                pass: None,
                decimals: 3,
            });
        }
        let rtt = self.rtt_p50();
        v.push(Figure {
            name: format!(
                "etcd transaction round trip, p50 (µs): {} insert-if-absent transactions from the bench process on one kept-alive connection, before and after the load runs (before {:.0}, after {:.0}; p99 {:.0} / {:.0})",
                self.rtt_all().len(),
                self.rtt_before.p50(),
                self.rtt_after.p50(),
                self.rtt_before.p99(),
                self.rtt_after.p99()
            ),
            goal: String::new(),
            spread: Spread::of(&[rtt]),
            pass: None,
            decimals: 0,
        });
        let goal_p50 = rtt + P50_SLACK_US;
        if let Some(s) = Self::delta(&self.paced, ETCD, SHARED, |r| r.p50_us) {
            v.push(Figure {
                name: "added p50 latency (µs), paced: etcd ledger (10) − shared-data ledger (5)"
                    .into(),
                goal: format!("≤ round trip + 200 = {goal_p50:.0}"),
                spread: s,
                pass: Some(s.median <= goal_p50),
                decimals: 0,
            });
        }
        let reference = |runs: &[Vec<Run>], a, b, name: &str, f: &dyn Fn(&Run) -> f64| {
            Self::delta(runs, a, b, f).map(|s| Figure {
                name: format!("(for reference) {name}"),
                goal: String::new(),
                spread: s,
                pass: None,
                decimals: 0,
            })
        };
        v.extend(reference(
            &self.paced,
            ETCD,
            SHARED,
            "added p99 latency (µs), paced: 10 − 5",
            &|r| r.p99_us,
        ));
        v.extend(reference(
            &self.unloaded,
            ETCD,
            SHARED,
            "added p50 latency (µs), unloaded (closed loop on 1 connection): 10 − 5",
            &|r| r.p50_us,
        ));
        v.extend(reference(
            &self.paced,
            ETCD,
            NONE,
            "added p50 latency (µs), paced: etcd ledger (10) − no filter (8)",
            &|r| r.p50_us,
        ));
        // The goal is read at the paced rate, the same for all three configurations: saturated,
        // the etcd ledger runs at a fraction of the shared-data ledger's rate, and Envoy's costs
        // per wakeup are then shared by fewer requests.
        if let Some(s) = Self::delta(&self.paced, ETCD, SHARED, |r| r.cpu_us_per_req) {
            v.push(Figure {
                name: "Envoy CPU per request (µs), paced (the same rate for both): 10 − 5".into(),
                goal: format!("≤ {CPU_GOAL_US:.0}"),
                spread: s,
                pass: Some(s.median <= CPU_GOAL_US),
                decimals: 1,
            });
        }
        let cpu: &dyn Fn(&Run) -> f64 = &|r| r.cpu_us_per_req;
        let p50: &dyn Fn(&Run) -> f64 = &|r| r.p50_us;
        for (what, f, trips) in [
            ("Envoy CPU per request (µs)", cpu, Trips::RequestAndOutcome),
            ("added p50 latency (µs)", p50, Trips::RequestPath),
        ] {
            v.extend(Self::round_trip_figures(
                &self.paced,
                "paced",
                what,
                f,
                trips,
            ));
        }
        for (runs, label) in [
            (&self.sat, "saturated (each at its own rate)"),
            (&self.unloaded, "unloaded"),
        ] {
            if let Some(mut f) = reference(
                runs,
                ETCD,
                SHARED,
                &format!("Envoy CPU per request (µs), {label}: 10 − 5"),
                &|r| r.cpu_us_per_req,
            ) {
                f.decimals = 1;
                v.push(f);
            }
        }
        if let (Some(x), Some(y)) = (self.sat.get(ETCD), self.sat.get(SHARED)) {
            let per_round: Vec<f64> = x.iter().zip(y).map(|(x, y)| x.rps() / y.rps()).collect();
            if !per_round.is_empty() {
                v.push(Figure {
                    name: "(for reference) saturated throughput 10 ÷ 5".into(),
                    goal: String::new(),
                    spread: Spread::of(&per_round),
                    pass: None,
                    decimals: 3,
                });
            }
        }
        v
    }

    /// The report's Markdown.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let Provenance {
            date,
            commit,
            machine,
        } = &self.provenance;
        let mode = match self.opts.backend {
            Backend::Upstream => {
                "upstream mode (the token route forwarded to the upstream Envoy pinned to CPU 1)"
            }
            Backend::Direct => {
                "direct mode (`--direct`: the token route a `direct_response` in the proxy)"
            }
        };
        let [b1, b5, b15] = self.load_before;
        let [a1, _, _] = self.load_after;
        let _ = writeln!(
            s,
            "Measured {date} at commit {commit} on {machine} with `just bench --etcd{}`, {mode}: etcd {} (one member on loopback, pinned to CPU 1 beside the load generator and the upstream; `timeout_ms` {ETCD_TIMEOUT_MS}); {} interleaved rounds of {} s per configuration and mode; Envoy 1.40.0 `--concurrency 1 -l {}` pinned to CPU 0; saturated: wrk 1 thread × {} connections; paced: {:.0} req/s in all, half the slowest configuration's saturated median, from {PACED_PROCESSES} oha processes on {PACED_CONNECTIONS_EACH} connections each, latency counted from when each request was sent; unloaded: oha closed loop on 1 connection. Every request is case 5's token request, a first attempt (unique key or query, fresh JWT). Machine load average before the run {b1:.2} / {b5:.2} / {b15:.2} (1 / 5 / 15 min; the run's own load on 2 cores is about 2), {a1:.2} (1 min) at its end.\n",
            self.opts.timing_flags(),
            self.etcd_version,
            self.opts.rounds,
            self.opts.seconds,
            self.opts.log_level,
            self.opts.connections,
            self.target_rate,
        );
        s.push_str("| # | configuration | saturated req/s (median) | Envoy CPU per request (µs), saturated | paced: req/s, p50 / p99 (µs), Envoy CPU per request (µs) | unloaded: p50 / p99 (µs), Envoy CPU per request (µs) | etcd requests per request (saturated / paced / unloaded) | etcd CPU per request (µs, saturated / paced / unloaded) | Envoy CPU with no requests (µs/s) |\n|---|---|---|---|---|---|---|---|---|\n");
        let med = |runs: &[Run], f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
        for (i, case) in ETCD_CASES.iter().enumerate() {
            let (Some(sat), Some(paced), Some(unloaded)) =
                (self.sat.get(i), self.paced.get(i), self.unloaded.get(i))
            else {
                continue;
            };
            let (etcd_requests, etcd_cpu) = if i == TXN {
                ("1 (the probe's)".to_string(), "–".to_string())
            } else if i == ETCD {
                let per = |l: &EtcdLoad, f: &dyn Fn(&EtcdLoad) -> f64| {
                    if l.requests == 0 {
                        "–".to_string()
                    } else {
                        format!("{:.2}", f(l) / l.requests as f64)
                    }
                };
                let all = |f: &dyn Fn(&EtcdLoad) -> f64| {
                    self.etcd_load
                        .iter()
                        .map(|l| per(l, f))
                        .collect::<Vec<_>>()
                        .join(" / ")
                };
                (all(&|l| l.handled.kv()), all(&|l| l.cpu_us))
            } else {
                ("0".to_string(), "–".to_string())
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.1} | {:.0}: {:.0} / {:.0}, {:.1} | {:.0} / {:.0}, {:.1} | {etcd_requests} | {etcd_cpu} | {:.0} |",
                case.id,
                case.name,
                med(sat, &Run::rps),
                med(sat, &|r| r.cpu_us_per_req),
                med(paced, &Run::rps),
                med(paced, &|r| r.p50_us),
                med(paced, &|r| r.p99_us),
                med(paced, &|r| r.cpu_us_per_req),
                med(unloaded, &|r| r.p50_us),
                med(unloaded, &|r| r.p99_us),
                med(unloaded, &|r| r.cpu_us_per_req),
                self.idle_cpu.get(i).copied().unwrap_or(f64::NAN),
            );
        }
        s.push_str("\n| figure | goal | measured (median over rounds; a count's mean) | min–max | |\n|---|---|---|---|---|\n");
        for f in self.figures() {
            let _ = writeln!(s, "{}", f.row());
        }
        let methods = |side: &[super::metrics::Handled]| {
            let sum = Split::summed(side);
            let text: Vec<String> = sum
                .0
                .iter()
                .filter(|(_, n)| **n != 0.0)
                .map(|(m, n)| format!("{m} {n:.0}"))
                .collect();
            if text.is_empty() {
                "none".to_string()
            } else {
                text.join(", ")
            }
        };
        let non2xx: u64 = self
            .sat
            .get(ETCD)
            .map_or(0, |r| r.iter().map(|r| r.non2xx).sum());
        let lease_grants: f64 = self
            .etcd_load
            .iter()
            .map(|l| l.handled.of("LeaseGrant"))
            .sum();
        let _ = writeln!(
            s,
            "\netcd's own counters by method: the {} counted first attempts' request paths {}; their outcomes {}. Over configuration 10's load runs: {} lease grants in all (one per time bucket per VM, not per request); {} answers other than 2xx in its saturated runs; `retry_guard.ledger.unavailable` moved by {}; {} ledger keys in etcd after the runs. etcd's database in use grew by {} bytes for the {} keys the whole run left (ledger entries, the probe's and the timed transactions', all values of an entry's size): {} bytes per live key.",
            self.split.request_path.len(),
            methods(&self.split.request_path),
            methods(&self.split.outcome),
            lease_grants,
            non2xx,
            self.unavailable,
            self.keys_after,
            self.storage.db_in_use,
            self.storage.keys,
            self.storage
                .db_in_use
                .checked_div(self.storage.keys)
                .map_or("–".to_string(), |b| b.to_string()),
        );
        s
    }

    fn json(&self) -> Value {
        let runs = |v: &[Vec<Run>]| -> Value {
            ETCD_CASES
                .iter()
                .zip(v)
                .map(|(c, runs)| {
                    json!({
                        "case": c.id, "name": c.name,
                        "runs": runs.iter().map(|r| json!({
                            "requests": r.requests, "seconds": r.seconds, "rps": r.rps(),
                            "cpu_us_per_request": r.cpu_us_per_req, "p50_us": r.p50_us,
                            "p99_us": r.p99_us, "non2xx": r.non2xx, "socket_errors": r.socket_errors,
                            "send_late_p50_us": r.pacing.map(|p| p.late_p50_us),
                            "send_late_p99_us": r.pacing.map(|p| p.late_p99_us),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect()
        };
        let handled = |h: &Handled| json!(h.0);
        let rtt = |r: &RoundTrips| json!({"samples": r.sorted_us.len(), "p50_us": r.p50(), "p99_us": r.p99()});
        let during: Vec<Value> = ["saturated", "paced", "unloaded"]
            .iter()
            .zip(&self.etcd_load)
            .map(|(m, l)| {
                json!({
                    "mode": m, "requests": l.requests, "etcd_cpu_us": l.cpu_us,
                    "handled": handled(&l.handled),
                })
            })
            .collect();
        json!({
            "date": self.provenance.date, "commit": self.provenance.commit,
            "machine": self.provenance.machine, "etcd_version": self.etcd_version,
            "load_average_before": self.load_before, "load_average_after": self.load_after,
            "rounds": self.opts.rounds, "seconds": self.opts.seconds,
            "connections": self.opts.connections, "paced_rate": self.target_rate,
            "idle_envoy_cpu_us_per_s": self.idle_cpu,
            "backend": match self.opts.backend { Backend::Upstream => "upstream", Backend::Direct => "direct" },
            "etcd_timeout_ms": ETCD_TIMEOUT_MS,
            "txn_round_trip_before": rtt(&self.rtt_before), "txn_round_trip_after": rtt(&self.rtt_after),
            "txn_round_trip_p50_us": self.rtt_p50(),
            "kv_methods": KV_METHODS,
            "per_first_attempt": {
                "request_path": self.split.request_path.iter().map(handled).collect::<Vec<_>>(),
                "outcome": self.split.outcome.iter().map(handled).collect::<Vec<_>>(),
            },
            "etcd_during_runs": during,
            "saturated": runs(&self.sat), "paced": runs(&self.paced), "unloaded": runs(&self.unloaded),
            "figures": self.figures().iter().map(|f| json!({
                "figure": f.name, "goal": f.goal, "median": f.spread.median, "min": f.spread.min,
                "max": f.spread.max, "met": f.pass,
            })).collect::<Vec<_>>(),
            "ledger_unavailable": self.unavailable, "ledger_keys_after": self.keys_after,
            "keys_after": self.storage.keys, "db_in_use_grown_bytes": self.storage.db_in_use,
        })
    }

    /// Prints the table, writes `etcd.md` and `etcd.json` to `dir`, and with `--update-readme`
    /// (upstream mode) the `bench-etcd` section of `bench/README.md`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let section = (self.opts.update_readme && self.opts.backend == Backend::Upstream)
            .then_some(Section {
                file: BENCH_README,
                name: "bench-etcd",
            });
        if self.opts.update_readme && section.is_none() {
            eprintln!("(bench/README.md holds the upstream mode's etcd table only: not updated)");
        }
        Publication {
            stem: "etcd",
            title: "retry-guard: the etcd ledger next to the shared-data ledger",
            json: Some(self.json()),
            readme_section: section,
        }
        .publish(dir, &self.table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handled(txn: f64, range: f64, grants: f64) -> Handled {
        Handled(
            [("Txn", txn), ("Range", range), ("LeaseGrant", grants)]
                .iter()
                .map(|(m, n)| (m.to_string(), *n))
                .collect(),
        )
    }

    #[test]
    fn the_split_counts_key_value_requests_only() {
        let split = Split {
            request_path: vec![handled(1.0, 0.0, 1.0), handled(1.0, 0.0, 0.0)],
            outcome: vec![handled(1.0, 0.0, 0.0), handled(2.0, 1.0, 0.0)],
        };
        assert_eq!(
            split.request_path_kv(),
            [1.0, 1.0],
            "a lease grant is not counted"
        );
        assert_eq!(split.request_path_mean(), 1.0);
        assert_eq!(split.outcome_kv(), [1.0, 3.0]);
        assert_eq!(split.outcome_mean(), 2.0);
        assert_eq!(Split::summed(&split.outcome).of("Txn"), 3.0);
    }

    #[test]
    fn a_figure_row_shows_its_range_only_when_there_is_one() {
        let f = Figure {
            name: "x".into(),
            goal: "≤ 1".into(),
            spread: Spread::of(&[0.5, 0.75, 1.5]),
            pass: Some(true),
            decimals: 2,
        };
        assert_eq!(f.row(), "| x | ≤ 1 | 0.75 | 0.50–1.50 | met |");
        let g = Figure {
            spread: Spread::of(&[2.0]),
            pass: None,
            ..f
        };
        assert_eq!(g.row(), "| x | ≤ 1 | 2.00 |  |  |");
    }

    #[test]
    fn the_floor_is_two_round_trips_of_cpu_and_one_of_latency() {
        let run = |cpu: f64, p50: f64| Run {
            requests: 1,
            seconds: 1.0,
            p50_us: p50,
            p99_us: p50,
            non2xx: 0,
            socket_errors: 0,
            cpu_us_per_req: cpu,
            pacing: None,
        };
        // 8, 5, 10, 310, 311: one round trip costs 60 µs of CPU and 1000 µs of latency; the
        // etcd ledger adds 130 µs and 1100 µs over the shared-data one.
        let runs: Vec<Vec<Run>> = [
            (100.0, 300.0),
            (150.0, 400.0),
            (280.0, 1500.0),
            (120.0, 350.0),
            (180.0, 1350.0),
        ]
        .iter()
        .map(|(c, p)| vec![run(*c, *p)])
        .collect();
        let cpu = EtcdReport::round_trip_figures(
            &runs,
            "paced",
            "cpu",
            &|r| r.cpu_us_per_req,
            Trips::RequestAndOutcome,
        );
        assert_eq!(cpu.len(), 2);
        assert_eq!(cpu[0].spread.median, 60.0);
        assert_eq!(cpu[1].spread.median, 10.0);
        let p50 = EtcdReport::round_trip_figures(
            &runs,
            "paced",
            "p50",
            &|r| r.p50_us,
            Trips::RequestPath,
        );
        assert_eq!(p50[0].spread.median, 1000.0);
        assert_eq!(p50[1].spread.median, 100.0);
        assert!(p50[1].name.contains("one such round trip"));
        assert!(EtcdReport::round_trip_figures(
            &runs[..3],
            "paced",
            "x",
            &|r| r.p50_us,
            Trips::RequestPath
        )
        .is_empty());
    }
}

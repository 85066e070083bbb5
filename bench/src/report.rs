//! The main benchmark's report (`target/bench/report.{md,json}`), what every report says of
//! where and when it was measured, and the README sections the reports replace: every table
//! in [`BENCH_README`], and the one summary table of the top-level [`README`] ([`SECTIONS`]
//! lists them all; a section is replaced only between its own markers, each of which must
//! stand exactly once in its file).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use retry_guard_e2e::{repo_root, Error, Result};
use serde_json::{json, Value};

use crate::args::Options;
use crate::cases::{position, CASES};
use crate::configs::Backend;
use crate::load::{
    unexpected, Pacing, Run, PACED_CONNECTIONS_EACH, PACED_PROCESSES, UNEXPECTED_ALLOWED,
};
use crate::measure::{median, Spread};

/// The top-level README (relative to the repository's root).
pub const README: &str = "README.md";

/// The benchmark's own README, `bench/README.md`: the method and every measured table.
pub const BENCH_README: &str = "bench/README.md";

/// Every section a tool writes, by file and marker name: the main benchmark's tables of each
/// mode, the pacing check, the host costs and limits, the etcd comparison, host-sim's paths
/// table (written by `retry-guard bench --paths --update-readme`, cli/src/bench.rs), and the
/// top-level README's summary (written by `--host-costs`).
pub const SECTIONS: [Section<'static>; 7] = [
    Section {
        file: BENCH_README,
        name: "bench-upstream",
    },
    Section {
        file: BENCH_README,
        name: "bench-direct",
    },
    Section {
        file: BENCH_README,
        name: "bench-pacing",
    },
    Section {
        file: BENCH_README,
        name: "bench-host-costs",
    },
    Section {
        file: BENCH_README,
        name: "bench-etcd",
    },
    Section {
        file: BENCH_README,
        name: "host-sim-paths",
    },
    Section {
        file: README,
        name: "perf-summary",
    },
];

/// Marked sections of those files that no bench tool writes: the README's audit member
/// table, which `filter/tests/docs.rs` checks against `audit::MEMBERS`. The tests know them,
/// and check that replacing a bench section leaves them as they were; [`Section::update`]
/// refuses them, as every section not in [`SECTIONS`].
pub const NOT_WRITTEN_HERE: [Section<'static>; 1] = [Section {
    file: README,
    name: "audit-members",
}];

/// When, at which commit and on what machine a report was measured.
pub struct Provenance {
    /// The day, UTC (`YYYY-MM-DD`).
    pub date: String,
    /// The short commit, `-dirty` with changes other than the README's.
    pub commit: String,
    /// The CPU model and the number of cores.
    pub machine: String,
}

impl Provenance {
    /// Today (UTC), the commit checked out and this machine.
    pub fn now() -> Provenance {
        Provenance {
            date: today(),
            commit: commit(),
            machine: machine(),
        }
    }

    /// The opening of a saturated run's report (`--compare-wasm`, `--guest-share`): when,
    /// where, with `command`, the mode, the rounds and how the load was made; the caller ends
    /// the sentence.
    pub fn saturated_run(&self, o: &Options, command: &str) -> String {
        let mode = match o.backend {
            Backend::Upstream => "upstream mode",
            Backend::Direct => "direct mode",
        };
        format!(
            "Measured {} at commit {} on {} with `{command}{}`, {mode}: {} interleaved rounds of \
             {} s, saturated (wrk 1 thread × {} connections pinned to CPU 1, Envoy \
             `--concurrency 1` pinned to CPU 0)",
            self.date,
            self.commit,
            self.machine,
            o.timing_flags(),
            o.rounds,
            o.seconds,
            o.connections
        )
    }
}

/// The CPU model and the number of cores.
fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown date".into(), |s| s.trim().to_string())
}

/// The commit measured (`git rev-parse --short HEAD`, `-dirty` with uncommitted changes
/// other than the READMEs the reports rewrite).
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
    };
    // (Only the end is trimmed: `status --porcelain` lines start with a space-padded status,
    // and trimming the first one made README.md read as "EADME.md", i.e. "-dirty".)
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            // The READMEs are what `--update-readme` rewrites; any other change is measured too.
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| {
                s.lines().any(|l| {
                    l.get(3..)
                        .is_some_and(|path| path != README && path != BENCH_README)
                })
            });
            format!("{head}{}", if dirty { "-dirty" } else { "" })
        }
        None => "unknown commit".into(),
    }
}

/// A section of a Markdown file that a report's table replaces: what stands between its
/// `<!-- {name}:start -->` and `<!-- {name}:end -->` markers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Section<'a> {
    /// The file, relative to the repository's root ([`README`], [`BENCH_README`]).
    pub file: &'a str,
    /// The markers' name (`bench`, `bench-etcd`, …).
    pub name: &'a str,
}

impl Section<'_> {
    /// The section's start and end markers, whole lines of the file.
    pub fn markers(&self) -> (String, String) {
        (
            format!("<!-- {}:start -->", self.name),
            format!("<!-- {}:end -->", self.name),
        )
    }

    /// `text`, the file's content, with what stands between the section's markers replaced
    /// by `table`. An error naming the file unless each marker stands exactly once, on a line
    /// of its own, the start before the end, and `table` holds no marker of any section (so a
    /// replacement never reaches into another table, nor plants a marker for a later one).
    pub fn replace_in(&self, text: &str, table: &str) -> Result<String> {
        let (start, end) = self.markers();
        let lines = |m: &str| text.lines().filter(|l| *l == m).count();
        let (Some(a), Some(b)) = (text.find(&start), text.find(&end)) else {
            return Err(Error(format!(
                "{} has no {start} / {end} markers",
                self.file
            )));
        };
        if text.matches(&start).count() != 1
            || text.matches(&end).count() != 1
            || lines(&start) != 1
            || lines(&end) != 1
            || b < a
        {
            return Err(Error(format!(
                "{}: {start} and {end} must each stand once, on lines of their own, in that order",
                self.file
            )));
        }
        if table.contains("<!-- ") && (table.contains(":start -->") || table.contains(":end -->")) {
            return Err(Error(format!(
                "the table for {start} in {} holds a section marker",
                self.file
            )));
        }
        let table = table.trim_end_matches('\n');
        Ok(format!("{}{start}\n{table}\n\n{}", &text[..a], &text[b..]))
    }

    /// Replaces the section in its file (see [`Section::replace_in`]) with `table`.
    pub fn update(&self, table: &str) -> Result<()> {
        if NOT_WRITTEN_HERE.contains(self) {
            return Err(Error(format!(
                "{} of {} is checked against the code by filter/tests/docs.rs, never written by the bench",
                self.name, self.file
            )));
        }
        if !SECTIONS.contains(self) {
            return Err(Error(format!(
                "{} is not a known section of {} (report::SECTIONS)",
                self.name, self.file
            )));
        }
        let path = repo_root().join(self.file);
        let text =
            fs::read_to_string(&path).map_err(|e| Error(format!("{}: {e}", path.display())))?;
        fs::write(&path, self.replace_in(&text, table)?)
            .map_err(|e| Error(format!("{}: {e}", path.display())))?;
        eprintln!("updated the {} table of {}", self.name, self.file);
        Ok(())
    }
}

/// The section `name` of the top-level README.
pub fn readme(name: &str) -> Section<'_> {
    Section { file: README, name }
}

/// The section `name` of the benchmark's README.
pub fn bench_readme(name: &str) -> Section<'_> {
    Section {
        file: BENCH_README,
        name,
    }
}

/// Writes `text` to `path`, naming the file in an error.
fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| Error(format!("cannot write {}: {e}", path.display())))
}

/// A report's files and where else it goes.
pub struct Publication<'a> {
    /// The files' name without extension (`report`, `host-costs`, `pacing`).
    pub stem: &'a str,
    /// The Markdown file's heading.
    pub title: &'a str,
    /// Also written as `<stem>.json`.
    pub json: Option<Value>,
    /// The README section the table replaces (`--update-readme`), if any.
    pub readme_section: Option<Section<'a>>,
}

impl Publication<'_> {
    /// Prints `table`, writes it to `<dir>/<stem>.md` under its title (and the JSON to
    /// `<dir>/<stem>.json`), and replaces the README section (in its file) with it.
    pub fn publish(&self, dir: &Path, table: &str) -> Result<()> {
        println!("{table}");
        let stem = self.stem;
        write_file(
            &dir.join(format!("{stem}.md")),
            &format!(
                "# {}

{table}",
                self.title
            ),
        )?;
        match &self.json {
            Some(json) => {
                write_file(
                    &dir.join(format!("{stem}.json")),
                    &serde_json::to_string_pretty(json)?,
                )?;
                eprintln!("wrote {}/{stem}.md and {stem}.json", dir.display());
            }
            None => eprintln!("wrote {}/{stem}.md", dir.display()),
        }
        match self.readme_section {
            Some(section) => section.update(table),
            None => Ok(()),
        }
    }
}

/// What the main benchmark measured. Runs are indexed by case (`sat[id - 1]`), empty for a
/// case not run.
pub struct Report<'a> {
    /// When, where and at which commit.
    pub provenance: Provenance,
    /// The options of the run.
    pub opts: &'a Options,
    /// Saturated runs (wrk).
    pub sat: Vec<Vec<Run>>,
    /// Paced runs at `target_rate` (oha).
    pub paced: Vec<Vec<Run>>,
    /// Unloaded runs (oha closed loop on one connection).
    pub unloaded: Vec<Vec<Run>>,
    /// The paced runs' rate in all, req/s.
    pub target_rate: f64,
    /// The size of retry-guard's module.
    pub wasm_bytes: u64,
    /// The size of the no-op filter's module.
    pub noop_bytes: u64,
    /// The memory run's RSS (KiB) by unique keys sent.
    pub rss: Vec<(u64, u64)>,
    /// Ledger entries evicted in the memory run.
    pub evicted: u64,
    /// Ledger entries evicted during case 5's runs.
    pub evicted_during_bench: Option<u64>,
    /// The wasm linear memory after the memory run, bytes.
    pub wasm_memory: u64,
    /// The memory run's ledger ([`crate::configs::token_ledger_text`]).
    pub flood_ledger: String,
}

/// A figure of the report and its goal.
struct Ratio {
    name: String,
    goal: &'static str,
    spread: Spread,
    /// Decimals shown (3 for a ratio, 1 for µs).
    digits: usize,
    /// Whether the goal is met; `None` for a row without a goal (shown for reference).
    pass: Option<bool>,
}

/// A figure's goal: at least or below a bound.
#[derive(Clone, Copy)]
enum Goal {
    /// No goal: a reference row.
    None,
    /// The median at least this.
    AtLeast(f64),
    /// The median below this.
    Below(f64),
}

impl Goal {
    fn met(self, median: f64) -> Option<bool> {
        match self {
            Goal::None => None,
            Goal::AtLeast(g) => Some(median >= g),
            Goal::Below(g) => Some(median < g),
        }
    }
}

/// The goals of issue 15 for the main benchmark's figures (the limit's goal is the host-costs
/// run's, [`crate::host_costs`]): 4 ÷ 2 and 5 ÷ 1 in upstream mode, 6 ÷ 7 in both.
pub const GOAL_READ_ONLY: f64 = 0.93;
/// 5 ÷ 1 (case 5 ÷ case 8), upstream mode.
pub const GOAL_TOKEN: f64 = 0.62;
/// 6 ÷ 7.
pub const GOAL_428: f64 = 0.60;
/// The release module's size, bytes (256 KiB).
pub const GOAL_WASM_BYTES: u64 = 262_144;

/// The runs of configuration `id` in `runs` (kept by position in [`CASES`]); empty if it did
/// not run.
pub fn runs_of(runs: &[Vec<Run>], id: usize) -> &[Run] {
    position(id)
        .and_then(|i| runs.get(i))
        .map_or(&[][..], Vec::as_slice)
}

impl Report<'_> {
    /// Round by round, `f` of case `a`'s run and case `b`'s; `None` unless both ran.
    fn per_round(
        &self,
        runs: &[Vec<Run>],
        a: usize,
        b: usize,
        f: impl Fn(&Run, &Run) -> f64,
    ) -> Option<Vec<f64>> {
        let (x, y) = (runs_of(runs, a), runs_of(runs, b));
        if x.is_empty() || y.is_empty() {
            return None;
        }
        Some(x.iter().zip(y).map(|(x, y)| f(x, y)).collect())
    }

    /// A figure from per-round values.
    fn figure(
        name: impl Into<String>,
        goal_text: &'static str,
        goal: Goal,
        digits: usize,
        per_round: Option<Vec<f64>>,
    ) -> Option<Ratio> {
        let spread = Spread::of(&per_round?);
        Some(Ratio {
            name: name.into(),
            goal: goal_text,
            spread,
            digits,
            pass: goal.met(spread.median),
        })
    }

    /// Saturated throughput of case `a` ÷ case `b`, round by round.
    fn tput_ratio(
        &self,
        a: usize,
        b: usize,
        name: &str,
        goal_text: &'static str,
        goal: Goal,
    ) -> Option<Ratio> {
        let v = self.per_round(&self.sat, a, b, |x, y| x.rps() / y.rps());
        Self::figure(name, goal_text, goal, 3, v)
    }

    /// Envoy CPU per request of case `a` − case `b`, saturated, round by round (µs).
    fn added_cpu(&self, a: usize, b: usize) -> Option<Vec<f64>> {
        self.per_round(&self.sat, a, b, |x, y| x.cpu_us_per_req - y.cpu_us_per_req)
    }

    fn ratios(&self) -> Vec<Ratio> {
        let upstream = self.opts.backend == Backend::Upstream;
        // Goals of upstream mode; in direct mode the same figures are shown for reference.
        let up = |goal: Goal, text: &'static str| {
            if upstream {
                (goal, text)
            } else {
                (Goal::None, "")
            }
        };
        let (g4, t4) = up(Goal::AtLeast(GOAL_READ_ONLY), "≥ 0.93 (upstream mode)");
        let (g5, t5) = up(Goal::AtLeast(GOAL_TOKEN), "≥ 0.62 (upstream mode)");
        let mode_note = if upstream {
            ""
        } else {
            " (for reference: the goal is upstream mode's)"
        };
        // retry-guard's added CPU on the token request ÷ jwt_authn's (`jwt`: 11 or 12), per round.
        let over_jwt = |jwt: usize| -> Option<Vec<f64>> {
            let (t, j) = (self.added_cpu(5, 8)?, self.added_cpu(jwt, 8)?);
            Some(t.iter().zip(&j).map(|(t, j)| t / j).collect())
        };
        let mut v: Vec<Ratio> = [
            self.tput_ratio(
                3,
                2,
                "throughput 3 ÷ 2 (unmatched vs no-op)",
                "≥ 0.98",
                Goal::AtLeast(0.98),
            ),
            self.tput_ratio(
                9,
                2,
                "(for reference) throughput 9 ÷ 2: the unmatched route with the filter off there (FilterConfig disabled) vs no-op",
                "",
                Goal::None,
            ),
            self.tput_ratio(
                4,
                2,
                &format!("throughput 4 ÷ 2 (read_only vs no-op){mode_note}"),
                t4,
                g4,
            ),
            self.tput_ratio(
                5,
                8,
                &format!("throughput 5 ÷ 1 (token_issuing vs no filter, the same token request: case 5 ÷ case 8){mode_note}"),
                t5,
                g5,
            ),
            self.tput_ratio(
                5,
                1,
                "(for reference) throughput 5 ÷ 1 with case 1's `GET /other` as the baseline, as reported before 2026-11-29",
                "",
                Goal::None,
            ),
            self.tput_ratio(
                6,
                7,
                "throughput 6 ÷ 7 (428 vs direct_response)",
                "≥ 0.60",
                Goal::AtLeast(GOAL_428),
            ),
            self.tput_ratio(
                11,
                8,
                "(for reference) throughput 11 ÷ 8: Envoy's jwt_authn verifying the token request's JWT, RS256, vs no filter",
                "",
                Goal::None,
            ),
            self.tput_ratio(
                12,
                8,
                "(for reference) throughput 12 ÷ 8: the same, ES256",
                "",
                Goal::None,
            ),
            Self::figure(
                "(for reference) Envoy CPU per request added (µs), saturated: retry-guard's token path, 5 − 8",
                "",
                Goal::None,
                1,
                self.added_cpu(5, 8),
            ),
            Self::figure(
                "(for reference) Envoy CPU per request added (µs), saturated: jwt_authn RS256, 11 − 8",
                "",
                Goal::None,
                1,
                self.added_cpu(11, 8),
            ),
            Self::figure(
                "(for reference) Envoy CPU per request added (µs), saturated: jwt_authn ES256, 12 − 8",
                "",
                Goal::None,
                1,
                self.added_cpu(12, 8),
            ),
            Self::figure(
                "token path's added CPU ÷ jwt_authn ES256's added CPU, round by round: (5 − 8) ÷ (12 − 8)",
                "< 1 (lower)",
                Goal::Below(1.0),
                3,
                over_jwt(12),
            ),
            Self::figure(
                "(for reference) the same against jwt_authn RS256: (5 − 8) ÷ (11 − 8)",
                "",
                Goal::None,
                3,
                over_jwt(11),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        // Latency: reference rows, no goal (issue 15 states none; the old ≤ 20 µs sat below
        // even the unloaded added CPU on this machine).
        let added_p50 =
            |runs: &Vec<Vec<Run>>| self.per_round(runs, 5, 8, |x, y| x.p50_us - y.p50_us);
        v.extend(Self::figure(
            "(for reference) added p50 latency (µs), 5 vs 1 (case 8), paced at half saturation",
            "",
            Goal::None,
            1,
            added_p50(&self.paced),
        ));
        v.extend(Self::figure(
            "(for reference) added p50 latency (µs), 5 vs 1 (case 8), unloaded: closed loop on 1 connection",
            "",
            Goal::None,
            1,
            added_p50(&self.unloaded),
        ));
        v
    }

    /// The median over the paced runs of one figure of the load generator's lateness.
    fn lateness(&self, f: impl Fn(&Pacing) -> f64) -> f64 {
        median(
            self.paced
                .iter()
                .flatten()
                .filter_map(|r| r.pacing.as_ref().map(&f))
                .collect(),
        )
    }

    fn shared_bytes_per_entry(&self) -> f64 {
        let set_value = 2 + retry_guard::ledger::WAYS * retry_guard::ledger::ENTRY_BYTES;
        let key = retry_guard::ledger::KEY_PREFIX.len() + 5;
        (set_value + key) as f64 / retry_guard::ledger::WAYS as f64
    }

    /// The report's Markdown: the configurations' table, the figures against their goals, and
    /// the memory run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mode = match self.opts.backend {
            Backend::Upstream => "upstream mode: every route but configuration 7's 428 forwarded to a real upstream Envoy pinned to CPU 1",
            Backend::Direct => "direct mode (`just bench --direct`): every route an Envoy `direct_response`, no upstream",
        };
        let Provenance {
            date,
            commit,
            machine,
        } = &self.provenance;
        let _ = writeln!(s, "Measured {date} at commit {commit} on {machine} with `just bench{}`, {mode} ({} interleaved rounds of {} s per configuration and mode, Envoy 1.40.0 `--concurrency 1 -l {}` pinned to CPU 0, the load generator pinned to CPU 1; saturated: wrk 1 thread × {} connections; paced: {:.0} req/s in all, half the slowest configuration's saturated median, from {PACED_PROCESSES} oha processes on {PACED_CONNECTIONS_EACH} connections each, latency counted from when each request was sent, which was a median {:.0} µs (p99 {:.0} µs) after oha's schedule had it due; unloaded: oha closed loop on 1 connection). Case 8 is configuration 1 (no filter) sent case 5's request: the same method, path, body and headers of the same lengths, so 5 ÷ 8 is the filter's share alone; 11 and 12 send it with the JWT signed (RS256, ES256) to Envoy's own `jwt_authn`. In case 5 (and 8) each paced and unloaded request has a random query string and no Idempotency-Key, so each is a first attempt; see `oha_command` in bench/src/load.rs.\n", self.opts.timing_flags(), self.opts.rounds, self.opts.seconds, self.opts.log_level, self.opts.connections, self.target_rate, self.lateness(|p| p.late_p50_us), self.lateness(|p| p.late_p99_us));
        s.push_str("| # | configuration | saturated req/s (median) | Envoy CPU per request (µs) | Envoy CPU busy when saturated | paced: req/s, p50 / p99 (µs), Envoy CPU busy | unloaded: p50 / p99 (µs), Envoy CPU per request (µs) |\n|---|---|---|---|---|---|---|\n");
        let med = |runs: &Vec<Run>, f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
        for (i, case) in CASES.iter().enumerate() {
            let (Some(sat), Some(paced), Some(unloaded)) =
                (self.sat.get(i), self.paced.get(i), self.unloaded.get(i))
            else {
                continue;
            };
            if sat.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.1} | {:.0}% | {:.0}: {:.0} / {:.0}, {:.0}% | {:.0} / {:.0}, {:.1} |",
                case.id,
                case.name,
                med(sat, &Run::rps),
                med(sat, &|r| r.cpu_us_per_req),
                med(sat, &|r| r.cpu_us_per_req * r.rps() / 1e4),
                med(paced, &Run::rps),
                med(paced, &|r| r.p50_us),
                med(paced, &|r| r.p99_us),
                med(paced, &|r| r.cpu_us_per_req * r.rps() / 1e4),
                med(unloaded, &|r| r.p50_us),
                med(unloaded, &|r| r.p99_us),
                med(unloaded, &|r| r.cpu_us_per_req),
            );
        }
        s.push_str("\n| figure | goal | measured (median) | min–max over rounds | |\n|---|---|---|---|---|\n");
        for r in self.ratios() {
            let _ = writeln!(
                s,
                "| {} | {} | {:.d$} | {:.d$}–{:.d$} | {} |",
                r.name,
                r.goal,
                r.spread.median,
                r.spread.min,
                r.spread.max,
                match r.pass {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "",
                },
                d = r.digits,
            );
        }
        let first = self.rss.first().map_or(0, |x| x.1);
        let last = self.rss.last().map_or(0, |x| x.1);
        let sent = self.rss.last().map_or(0, |x| x.0);
        let _ = writeln!(
            s,
            "| release wasm (bytes) | ≤ {GOAL_WASM_BYTES} (256 KiB) | {} | | {} |",
            self.wasm_bytes,
            if self.wasm_bytes <= GOAL_WASM_BYTES {
                "met"
            } else {
                "**missed**"
            }
        );
        let per_entry = self.shared_bytes_per_entry();
        let _ = writeln!(s, "| shared-data bytes per tracked entry (value + key, computed) | ≤ 256 | {:.0} | | {} |", per_entry, if per_entry <= 256.0 { "met" } else { "**missed**" });
        // After the figures table's last row: a paragraph inside it would end the table.
        let mut odd: Vec<String> = Vec::new();
        for (kind, runs) in [
            ("saturated", &self.sat),
            ("paced", &self.paced),
            ("unloaded", &self.unloaded),
        ] {
            for (c, runs) in CASES.iter().zip(runs) {
                let n: u64 = runs.iter().map(|r| unexpected(c, r)).sum();
                let all: u64 = runs.iter().map(|r| r.requests).sum();
                if n > 0 {
                    odd.push(format!("case {} {kind}: {n} of {all}", c.id));
                }
            }
        }
        if !odd.is_empty() {
            let _ = writeln!(
                s,
                "\nAnswers other than the configuration's (Envoy's log says why; a run allows {}%): {}.",
                UNEXPECTED_ALLOWED * 100.0,
                odd.join(", ")
            );
        }
        let _ = writeln!(s, "\nMemory: Envoy RSS {} KiB before and {} KiB after {} unique keys on the token route, case 5's configuration ({}; {} entries evicted); RSS by keys sent: {}. Wasm linear memory after the flood: {} KiB. The no-op floor filter is {} bytes.", first, last, sent, self.flood_ledger, self.evicted, self.rss.iter().map(|(n, r)| format!("{n}: {r}")).collect::<Vec<_>>().join(", "), self.wasm_memory / 1024, self.noop_bytes);
        s
    }

    /// The report as JSON: every run, the figures and the memory run.
    fn json(&self) -> Value {
        let runs = |v: &Vec<Vec<Run>>| -> Value {
            CASES.iter().zip(v).filter(|(_, runs)| !runs.is_empty()).map(|(c, runs)| json!({
                "case": c.id, "name": c.name,
                "runs": runs.iter().map(|r| json!({"requests": r.requests, "seconds": r.seconds, "rps": r.rps(), "cpu_us_per_request": r.cpu_us_per_req, "p50_us": r.p50_us, "p99_us": r.p99_us, "non2xx": r.non2xx, "socket_errors": r.socket_errors,
                    "send_late_p50_us": r.pacing.map(|p| p.late_p50_us), "send_late_p99_us": r.pacing.map(|p| p.late_p99_us)})).collect::<Vec<_>>(),
            })).collect()
        };
        json!({
            "date": self.provenance.date, "commit": self.provenance.commit, "machine": self.provenance.machine, "rounds": self.opts.rounds, "seconds": self.opts.seconds,
            "connections": self.opts.connections, "paced_rate": self.target_rate, "envoy_log_level": self.opts.log_level,
            "backend": match self.opts.backend { Backend::Upstream => "upstream", Backend::Direct => "direct" },
            "saturated": runs(&self.sat), "paced": runs(&self.paced), "unloaded": runs(&self.unloaded),
            "ratios": self.ratios().iter().map(|r| json!({"figure": r.name, "goal": r.goal, "median": r.spread.median, "min": r.spread.min, "max": r.spread.max, "met": r.pass})).collect::<Vec<_>>(),
            "wasm_bytes": self.wasm_bytes, "noop_wasm_bytes": self.noop_bytes,
            "rss_kib_by_keys": self.rss, "flood_ledger": self.flood_ledger, "evicted_in_flood": self.evicted, "evicted_during_throughput": self.evicted_during_bench,
            "wasm_memory_bytes": self.wasm_memory, "shared_bytes_per_entry": self.shared_bytes_per_entry(),
        })
    }

    /// Prints the table, writes `report.md` and `report.json` to `dir`, and with
    /// `--update-readme` the README's table of the mode.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let readme_section = match self.opts.backend {
            Backend::Upstream => "bench-upstream",
            Backend::Direct => "bench-direct",
        };
        Publication {
            stem: "report",
            title: "retry-guard benchmark",
            json: Some(self.json()),
            readme_section: self
                .opts
                .update_readme
                .then(|| bench_readme(readme_section)),
        }
        .publish(dir, &self.table())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_readme_section_is_replaced_between_its_own_markers_only() {
        let text = "a\n<!-- bench:start -->\nold\n<!-- bench:end -->\nb\n<!-- bench-direct:start -->\nkeep\n<!-- bench-direct:end -->\n";
        let out = readme("bench").replace_in(text, "new").unwrap();
        assert_eq!(
            out,
            "a\n<!-- bench:start -->\nnew\n\n<!-- bench:end -->\nb\n<!-- bench-direct:start -->\nkeep\n<!-- bench-direct:end -->\n"
        );
        // Replacing again gives the same text: the blank line before the end marker is kept,
        // not added to.
        let again = readme("bench").replace_in(&out, "new\n").unwrap();
        assert_eq!(again, out);
        let err = readme("bench-host-costs")
            .replace_in(text, "x")
            .unwrap_err();
        assert!(err.0.contains("<!-- bench-host-costs:start -->"), "{err}");
        assert!(err.0.starts_with("README.md has no"), "{err}");
        let etcd = bench_readme("bench-etcd");
        let err = etcd.replace_in(text, "x").unwrap_err();
        assert!(err.0.starts_with("bench/README.md has no"), "{err}");
        let out = etcd
            .replace_in(
                "# x\n<!-- bench-etcd:start -->\n<!-- bench-etcd:end -->\n",
                "t",
            )
            .unwrap();
        assert_eq!(
            out,
            "# x\n<!-- bench-etcd:start -->\nt\n\n<!-- bench-etcd:end -->\n"
        );
    }

    #[test]
    fn a_marker_that_stands_twice_or_out_of_order_or_inside_a_table_is_refused() {
        let s = bench_readme("bench-upstream");
        let twice = "<!-- bench-upstream:start -->\na\n<!-- bench-upstream:end -->\n<!-- bench-upstream:start -->\n<!-- bench-upstream:end -->\n";
        assert!(s.replace_in(twice, "t").is_err());
        let reversed = "<!-- bench-upstream:end -->\nx\n<!-- bench-upstream:start -->\n";
        assert!(s.replace_in(reversed, "t").is_err());
        // Quoted in prose rather than on a line of its own.
        let quoted = "see `<!-- bench-upstream:start -->`\n<!-- bench-upstream:end -->\n";
        assert!(s.replace_in(quoted, "t").is_err());
        // A table may not carry a marker along.
        let ok = "<!-- bench-upstream:start -->\n<!-- bench-upstream:end -->\n";
        assert!(s
            .replace_in(ok, "x\n<!-- perf-summary:start -->\n")
            .is_err());
        assert!(s.replace_in(ok, "| a | b |").is_ok());
    }

    /// Every section's markers stand once, in order, on their own lines, in the file the tool
    /// writes: no replacement can reach another table. Names are unique and none is a prefix
    /// of another's marker.
    #[test]
    fn every_section_has_its_markers_once_in_its_file() {
        let mut names: Vec<&str> = SECTIONS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SECTIONS.len(), "section names repeat");
        // The sections checked elsewhere are never written by the bench (`update` refuses
        // them before it reads the file), and each stands once in its file too.
        for s in &NOT_WRITTEN_HERE {
            assert!(!SECTIONS.contains(s), "{} is written and not", s.name);
            assert!(s.update("t").is_err(), "{} would be written", s.name);
            let text = fs::read_to_string(repo_root().join(s.file)).unwrap();
            assert!(s.replace_in(&text, "t").is_ok(), "{}: {}", s.file, s.name);
        }
        for s in &SECTIONS {
            let text = fs::read_to_string(repo_root().join(s.file)).unwrap();
            assert!(
                s.replace_in(&text, "t").is_ok(),
                "{}: {:?}",
                s.file,
                s.replace_in(&text, "t").err()
            );
            // Replacing one section leaves every other section's content as it was.
            let replaced = s.replace_in(&text, "REPLACED").unwrap();
            for other in SECTIONS
                .iter()
                .chain(&NOT_WRITTEN_HERE)
                .filter(|o| o.file == s.file && o.name != s.name)
            {
                let between = |t: &str| {
                    let (a, b) = other.markers();
                    let i = t.find(&a).unwrap();
                    let j = t.find(&b).unwrap();
                    t[i..j].to_string()
                };
                assert_eq!(
                    between(&text),
                    between(&replaced),
                    "{} hit {}",
                    s.name,
                    other.name
                );
            }
        }
        // The files hold no section markers other than these.
        for file in [README, BENCH_README] {
            let text = fs::read_to_string(repo_root().join(file)).unwrap();
            for line in text
                .lines()
                .filter(|l| l.starts_with("<!-- ") && l.ends_with(" -->"))
            {
                let known = SECTIONS.iter().chain(&NOT_WRITTEN_HERE).any(|s| {
                    let (a, b) = s.markers();
                    s.file == file && (line == a || line == b)
                });
                let is_marker = line.ends_with(":start -->") || line.ends_with(":end -->");
                assert!(!is_marker || known, "{file}: unknown marker {line}");
            }
        }
    }

    /// A saturated run of `rps` requests per second costing `cpu` µs per request.
    pub(crate) fn run(rps: f64, cpu: f64, non2xx: u64) -> Run {
        Run {
            requests: rps as u64,
            seconds: 1.0,
            p50_us: cpu * 3.0,
            p99_us: cpu * 9.0,
            non2xx,
            socket_errors: 0,
            cpu_us_per_req: cpu,
            pacing: None,
        }
    }

    fn report<'a>(o: &'a Options, by_id: &[(usize, [f64; 2])]) -> Report<'a> {
        let mut sat = vec![Vec::new(); CASES.len()];
        for (id, cpus) in by_id {
            let i = position(*id).unwrap();
            sat[i] = cpus
                .iter()
                .map(|c| {
                    run(
                        1e6 / c,
                        *c,
                        if *id == 6 || *id == 7 {
                            (1e6 / c) as u64
                        } else {
                            0
                        },
                    )
                })
                .collect();
        }
        // One unexpected answer in case 5's first round.
        if let Some(r) = sat[position(5).unwrap()].first_mut() {
            r.non2xx = 1;
        }
        Report {
            provenance: Provenance {
                date: "2026-12-07".into(),
                commit: "abc1234".into(),
                machine: "a CPU, 2 cores".into(),
            },
            opts: o,
            paced: sat.clone(),
            unloaded: sat.clone(),
            sat,
            target_rate: 1000.0,
            wasm_bytes: 200_000,
            noop_bytes: 100_000,
            rss: vec![(0, 1), (10, 2)],
            evicted: 0,
            evicted_during_bench: None,
            wasm_memory: 0,
            flood_ledger: "`max_entries` 524288, the token route's window 1 s".into(),
        }
    }

    /// The figure row named `start`, from the report's table.
    fn row<'t>(table: &'t str, start: &str) -> &'t str {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {start}")))
            .unwrap_or_else(|| panic!("no row {start:?} in\n{table}"))
    }

    #[test]
    fn the_figures_table_states_issue_15s_goals_and_the_jwt_authn_reference() {
        let o = crate::args::parse_from(Vec::<String>::new())
            .unwrap()
            .unwrap();
        let cpus = [
            (1, [30.0, 30.0]),
            (2, [32.0, 32.0]),
            (4, [40.0, 40.0]),
            (5, [50.0, 54.0]),
            (6, [25.0, 25.0]),
            (7, [15.0, 15.0]),
            (8, [30.0, 30.0]),
            (11, [40.0, 40.0]),
            (12, [50.0, 50.0]),
        ];
        let r = report(&o, &cpus);
        let t = r.table();
        // 4 ÷ 2 = 32/40 = 0.8, missed against 0.93 (upstream mode).
        assert_eq!(
            row(&t, "throughput 4 ÷ 2"),
            "| throughput 4 ÷ 2 (read_only vs no-op) | ≥ 0.93 (upstream mode) | 0.800 | 0.800–0.800 | **missed** |"
        );
        // 5 ÷ 8: 30/50 and 30/54; median 0.578, missed against 0.62.
        assert!(row(&t, "throughput 5 ÷ 1 (token")
            .contains("| ≥ 0.62 (upstream mode) | 0.578 | 0.556–0.600 | **missed** |"));
        // 6 ÷ 7 = 15/25 = 0.6: met (at least).
        assert!(row(&t, "throughput 6 ÷ 7").ends_with("| ≥ 0.60 | 0.600 | 0.600–0.600 | met |"));
        // Added CPU: 5 − 8 = 20 and 24; 12 − 8 = 20; 11 − 8 = 10.
        assert!(row(
            &t,
            "(for reference) Envoy CPU per request added (µs), saturated: retry-guard's token path"
        )
        .contains("| 22.0 | 20.0–24.0 |"));
        assert!(row(
            &t,
            "(for reference) Envoy CPU per request added (µs), saturated: jwt_authn ES256"
        )
        .contains("| 20.0 | 20.0–20.0 |"));
        // (5 − 8) ÷ (12 − 8): 1.0 and 1.2, median 1.1: not lower.
        assert_eq!(
            row(&t, "token path's added CPU ÷ jwt_authn ES256"),
            "| token path's added CPU ÷ jwt_authn ES256's added CPU, round by round: (5 − 8) ÷ (12 − 8) | < 1 (lower) | 1.100 | 1.000–1.200 | **missed** |"
        );
        assert!(row(&t, "(for reference) the same against jwt_authn RS256").contains("| 2.200 |"));
        // Latency: for reference, no goal.
        assert!(row(
            &t,
            "(for reference) added p50 latency (µs), 5 vs 1 (case 8), paced"
        )
        .ends_with("|  |"));
        assert!(!t.contains("≤ 20 |"), "the old latency goal is gone");
        assert!(row(&t, "release wasm").contains("≤ 262144 (256 KiB) | 200000 | | met"));
        // The jwt_authn configurations have their rows; the unexpected answer is counted.
        assert!(
            t.contains("| 11 | no wasm filter, Envoy's jwt_authn verifying case 8's JWT, RS256")
        );
        assert!(
            t.contains("| 12 | no wasm filter, Envoy's jwt_authn verifying case 8's JWT, ES256")
        );
        assert!(t.contains("Answers other than the configuration's (Envoy's log says why; a run allows 0.1%): case 5 saturated: 1 of "), "{t}");
        // ... after the figures table, whose rows run unbroken to its last.
        let figures = &t[t.find("| figure |").unwrap()..];
        let rows: Vec<&str> = figures.lines().take_while(|l| l.starts_with('|')).collect();
        assert!(
            rows.last()
                .unwrap()
                .starts_with("| shared-data bytes per tracked entry"),
            "{t}"
        );
        // Direct mode: the upstream goals are shown for reference only.
        let direct = crate::args::parse_from(["--direct".to_string()])
            .unwrap()
            .unwrap();
        let t = report(&direct, &cpus).table();
        assert!(row(&t, "throughput 4 ÷ 2").ends_with(
            "(for reference: the goal is upstream mode's) |  | 0.800 | 0.800–0.800 |  |"
        ));
        assert!(row(&t, "throughput 6 ÷ 7").ends_with("| met |"));
    }
}

//! The main benchmark's report (`target/bench/report.{md,json}`), what every report says of
//! where and when it was measured, and the README sections the reports replace (in the
//! top-level [`README`] or in [`BENCH_README`]).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use retry_guard_e2e::{repo_root, Error, Result};
use serde_json::{json, Value};

use crate::args::Options;
use crate::cases::CASES;
use crate::configs::Backend;
use crate::load::{Pacing, Run, PACED_CONNECTIONS_EACH, PACED_PROCESSES};
use crate::measure::{median, Spread};

/// The top-level README (relative to the repository's root).
pub const README: &str = "README.md";

/// The benchmark's own README, `bench/README.md` (the etcd comparison's table).
pub const BENCH_README: &str = "bench/README.md";

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
    /// `text`, the file's content, with what stands between the section's markers replaced
    /// by `table`; an error naming the file when it has no such markers.
    pub fn replace_in(&self, text: &str, table: &str) -> Result<String> {
        let (start, end) = (
            format!("<!-- {}:start -->", self.name),
            format!("<!-- {}:end -->", self.name),
        );
        let (Some(a), Some(b)) = (text.find(&start), text.find(&end)) else {
            return Err(Error(format!(
                "{} has no {start} / {end} markers",
                self.file
            )));
        };
        Ok(format!("{}{start}\n{table}\n{}", &text[..a], &text[b..]))
    }

    /// Replaces the section in its file (see [`Section::replace_in`]) with `table`.
    pub fn update(&self, table: &str) -> Result<()> {
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
}

/// A figure of the report and its goal.
struct Ratio {
    name: &'static str,
    goal: &'static str,
    spread: Spread,
    /// Whether the goal is met; `None` for a row without a goal (shown for reference).
    pass: Option<bool>,
}

impl Report<'_> {
    /// Throughput of case `a` ÷ case `b`, round by round; `None` unless both ran.
    fn tput_ratio(
        &self,
        a: usize,
        b: usize,
        name: &'static str,
        goal: &'static str,
        min_goal: Option<f64>,
    ) -> Option<Ratio> {
        if self.sat[a - 1].is_empty() || self.sat[b - 1].is_empty() {
            return None;
        }
        let per_round: Vec<f64> = self.sat[a - 1]
            .iter()
            .zip(&self.sat[b - 1])
            .map(|(x, y)| x.rps() / y.rps())
            .collect();
        let spread = Spread::of(&per_round);
        Some(Ratio {
            name,
            goal,
            spread,
            pass: min_goal.map(|g| spread.median >= g),
        })
    }

    fn ratios(&self) -> Vec<Ratio> {
        let mut v: Vec<Ratio> = [
            self.tput_ratio(
                3,
                2,
                "throughput 3 ÷ 2 (unmatched vs no-op)",
                "≥ 0.98",
                Some(0.98),
            ),
            self.tput_ratio(
                9,
                2,
                "(for reference) throughput 9 ÷ 2: the unmatched route with the filter off there (FilterConfig disabled) vs no-op",
                "",
                None,
            ),
            self.tput_ratio(
                4,
                2,
                "throughput 4 ÷ 2 (read_only vs no-op)",
                "≥ 0.95",
                Some(0.95),
            ),
            self.tput_ratio(
                5,
                8,
                "throughput 5 ÷ 1 (token_issuing vs no filter, the same token request: case 5 ÷ case 8)",
                "≥ 0.85",
                Some(0.85),
            ),
            self.tput_ratio(
                5,
                1,
                "(for reference) throughput 5 ÷ 1 with case 1's `GET /other` as the baseline, as reported before 2026-11-29",
                "",
                None,
            ),
            self.tput_ratio(
                6,
                7,
                "throughput 6 ÷ 7 (428 vs direct_response)",
                "≥ 0.90",
                Some(0.90),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        let added = |runs: &Vec<Vec<Run>>, name: &'static str, goal: Option<f64>| {
            let (a, b) = (runs.get(4)?, runs.get(7)?);
            if a.is_empty() || b.is_empty() {
                return None;
            }
            let per_round: Vec<f64> = a.iter().zip(b).map(|(x, y)| x.p50_us - y.p50_us).collect();
            let spread = Spread::of(&per_round);
            Some(Ratio {
                name,
                goal: if goal.is_some() { "≤ 20" } else { "" },
                spread,
                pass: goal.map(|g| spread.median <= g),
            })
        };
        v.extend(added(
            &self.paced,
            "added p50 latency (µs), 5 vs 1 (case 8), paced at half saturation",
            Some(20.0),
        ));
        v.extend(added(
            &self.unloaded,
            "(for reference) added p50 latency (µs), 5 vs 1 (case 8), unloaded: closed loop on 1 connection",
            None,
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
            Backend::Upstream => "upstream mode: routes 1–5 and 8 forwarded to a real upstream Envoy pinned to CPU 1",
            Backend::Direct => "direct mode (`just bench --direct`): every route an Envoy `direct_response`, no upstream",
        };
        let Provenance {
            date,
            commit,
            machine,
        } = &self.provenance;
        let _ = writeln!(s, "Measured {date} at commit {commit} on {machine} with `just bench`, {mode} ({} interleaved rounds of {} s per configuration and mode, Envoy 1.40.0 `--concurrency 1 -l {}` pinned to CPU 0, the load generator pinned to CPU 1; saturated: wrk 1 thread × {} connections; paced: {:.0} req/s in all, half the slowest configuration's saturated median, from {PACED_PROCESSES} oha processes on {PACED_CONNECTIONS_EACH} connections each, latency counted from when each request was sent, which was a median {:.0} µs (p99 {:.0} µs) after oha's schedule had it due; unloaded: oha closed loop on 1 connection). Case 8 is configuration 1 (no filter) sent case 5's request: the same method, path, body and headers of the same lengths, so 5 ÷ 8 is the filter's share alone. In case 5 (and 8) each paced and unloaded request has a random query string and no Idempotency-Key, so each is a first attempt; see `oha_command` in bench/src/load.rs.\n", self.opts.rounds, self.opts.seconds, self.opts.log_level, self.opts.connections, self.target_rate, self.lateness(|p| p.late_p50_us), self.lateness(|p| p.late_p99_us));
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
                "| {} | {} | {:.3} | {:.3}–{:.3} | {} |",
                r.name,
                r.goal,
                r.spread.median,
                r.spread.min,
                r.spread.max,
                match r.pass {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "",
                }
            );
        }
        let first = self.rss.first().map_or(0, |x| x.1);
        let last = self.rss.last().map_or(0, |x| x.1);
        let sent = self.rss.last().map_or(0, |x| x.0);
        let _ = writeln!(
            s,
            "| release wasm (bytes) | ≤ 262144 | {} | | {} |",
            self.wasm_bytes,
            if self.wasm_bytes <= 262_144 {
                "met"
            } else {
                "**missed**"
            }
        );
        let per_entry = self.shared_bytes_per_entry();
        let _ = writeln!(s, "| shared-data bytes per tracked entry (value + key, computed) | ≤ 256 | {:.0} | | {} |", per_entry, if per_entry <= 256.0 { "met" } else { "**missed**" });
        let _ = writeln!(s, "\nMemory: Envoy RSS {} KiB before and {} KiB after {} unique keys on a guarded route with `max_entries` 65536 ({} entries evicted); RSS by keys sent: {}. Wasm linear memory after the flood: {} KiB. The no-op floor filter is {} bytes.", first, last, sent, self.evicted, self.rss.iter().map(|(n, r)| format!("{n}: {r}")).collect::<Vec<_>>().join(", "), self.wasm_memory / 1024, self.noop_bytes);
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
            "rss_kib_by_keys": self.rss, "evicted_in_flood": self.evicted, "evicted_during_throughput": self.evicted_during_bench,
            "wasm_memory_bytes": self.wasm_memory, "shared_bytes_per_entry": self.shared_bytes_per_entry(),
        })
    }

    /// Prints the table, writes `report.md` and `report.json` to `dir`, and with
    /// `--update-readme` the README's table of the mode.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let readme_section = match self.opts.backend {
            Backend::Upstream => "bench",
            Backend::Direct => "bench-direct",
        };
        Publication {
            stem: "report",
            title: "retry-guard benchmark",
            json: Some(self.json()),
            readme_section: self.opts.update_readme.then(|| readme(readme_section)),
        }
        .publish(dir, &self.table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readme_section_is_replaced_between_its_own_markers_only() {
        let text = "a\n<!-- bench:start -->\nold\n<!-- bench:end -->\nb\n<!-- bench-direct:start -->\nkeep\n<!-- bench-direct:end -->\n";
        let out = readme("bench").replace_in(text, "new").unwrap();
        assert_eq!(
            out,
            "a\n<!-- bench:start -->\nnew\n<!-- bench:end -->\nb\n<!-- bench-direct:start -->\nkeep\n<!-- bench-direct:end -->\n"
        );
        let err = readme("bench-host-costs")
            .replace_in(text, "x")
            .unwrap_err();
        assert!(err.0.contains("<!-- bench-host-costs:start -->"), "{err}");
        assert!(err.0.starts_with("README.md has no"), "{err}");
        let etcd = Section {
            file: BENCH_README,
            name: "bench-etcd",
        };
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
            "# x\n<!-- bench-etcd:start -->\nt\n<!-- bench-etcd:end -->\n"
        );
    }

    #[test]
    fn the_bench_readme_has_the_etcd_sections_markers() {
        let text = fs::read_to_string(repo_root().join(BENCH_README)).unwrap();
        let etcd = Section {
            file: BENCH_README,
            name: "bench-etcd",
        };
        assert!(etcd.replace_in(&text, "t").is_ok());
    }
}

//! `just bench --guest-share`: how much of Envoy's CPU on each guarded path is the filter's
//! own code, read from Envoy itself.
//!
//! Configurations 2 (the no-op filter), 4, 5 and 6 run saturated as in the main benchmark,
//! interleaved round by round. During each run `perf record -e cpu-clock` samples the Envoy
//! process (every thread), and `perf report --sort dso` splits the samples: those in V8's
//! generated code (`[JIT]`: the module's functions compiled by TurboFan and V8's call wrappers
//! between Envoy and the module) against Envoy's binary, the kernel and libc. The JIT share
//! times the run's Envoy CPU per request is about what the guest costs Envoy per request; the
//! no-op filter's figure is the wrappers' and an empty guest's. About, both ways: V8 runs a
//! `memory.copy` as a call into its runtime (Envoy's binary and libc), so the module's copies
//! are not counted, and the wrapper of each host call is generated code, so it is.
//!
//! Writes `target/bench/guest-share.{md,json}`; no README is changed (the experiment log of
//! bench/README.md quotes a run, dated).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::{bail, Error, Result};
use serde_json::json;

use crate::args::Options;
use crate::cases::{case, Case};
use crate::configs::Proxies;
use crate::load::{saturated_rounds_observed, Run};
use crate::measure::{pid_of, Spread};
use crate::report::Provenance;

/// The configurations measured: the no-op floor, then read_only, the token path, the 428.
const CASE_IDS: [usize; 4] = [2, 4, 5, 6];

/// Samples per second per CPU `perf` takes.
const PERF_HZ: &str = "2000";

/// One run's samples: the share of them in generated code.
#[derive(Clone, Copy, Debug)]
struct Sampled {
    /// Envoy CPU per request over the run (µs).
    cpu_us: f64,
    /// Share of the samples in V8's generated code, 0 to 1.
    jit: f64,
    /// Samples taken.
    samples: u64,
}

/// Runs the measurement and writes its report to `dir`.
pub fn run(o: &Options, dir: &Path) -> Result<()> {
    if !perf_available(dir) {
        bail!(
            "--guest-share samples Envoy with `perf`, which cannot record here: apt-get install \
             linux-perf, and allow sampling (sysctl kernel.perf_event_paranoid=1, or run as root)"
        );
    }
    let cases: Vec<Case> = CASE_IDS.iter().map(|&id| *case(id)).collect();
    let proxies = Proxies::new(o, dir)?;
    let mut sampled: Vec<Vec<Sampled>> = vec![Vec::new(); cases.len()];
    let data = dir.join("guest-share.perf.data");
    saturated_rounds_observed(o, &proxies, "guest share", &cases, |c, envoy, run| {
        let (r, jit, samples) = sample(envoy, &data, run)?;
        eprintln!(
            "          case {:>3}: {:.1}% of {samples} samples in generated code",
            c.id,
            jit * 100.0
        );
        if let Some(v) = cases
            .iter()
            .position(|x| x.id == c.id)
            .and_then(|i| sampled.get_mut(i))
        {
            v.push(Sampled {
                cpu_us: r.cpu_us_per_req,
                jit,
                samples,
            });
        }
        Ok(r)
    })?;
    drop(proxies);
    let _ = fs::remove_file(&data);
    let report = Report {
        provenance: Provenance::now(),
        opts: o,
        cases: &cases,
        sampled: &sampled,
    };
    let md = report.markdown();
    print!("{md}");
    fs::write(dir.join("guest-share.md"), &md)
        .map_err(|e| Error(format!("guest-share.md: {e}")))?;
    let json = serde_json::to_string_pretty(&report.json())
        .map_err(|e| Error(format!("guest-share.json: {e}")))?;
    fs::write(dir.join("guest-share.json"), json)
        .map_err(|e| Error(format!("guest-share.json: {e}")))?;
    eprintln!("wrote {}", dir.join("guest-share.md").display());
    Ok(())
}

/// Whether `perf` can sample here: a short `perf record` of `true` (with a file in `dir`),
/// which fails where `perf` is missing or may not open events (`perf_event_paranoid`, a
/// container without `perf_event_open`).
pub fn perf_available(dir: &Path) -> bool {
    let data = dir.join("perf-probe.data");
    let ok = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-o"])
        .arg(&data)
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = fs::remove_file(&data);
    ok
}

/// Makes one run (`run`) while `perf` samples `envoy` into `data`; returns the run, the share
/// of the samples in V8's generated code (0 to 1) and how many samples there were.
pub fn sample(
    envoy: &Envoy,
    data: &Path,
    run: &mut dyn FnMut() -> Result<Run>,
) -> Result<(Run, f64, u64)> {
    let recording = Recording::start(envoy, data)?;
    let r = run()?;
    let (jit, samples) = recording.stop()?;
    Ok((r, jit, samples))
}

/// [`sample`] where sampling is a bonus: a failure of `perf` (not of the run) is printed and
/// gives no share, and the run counts as made.
pub fn sample_if_possible(
    envoy: &Envoy,
    data: &Path,
    run: &mut dyn FnMut() -> Result<Run>,
) -> Result<(Run, Option<f64>)> {
    let recording = match Recording::start(envoy, data) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("perf: {e}; this run is not sampled");
            return Ok((run()?, None));
        }
    };
    let r = run()?;
    match recording.stop() {
        Ok((jit, _)) => Ok((r, Some(jit))),
        Err(e) => {
            eprintln!("perf: {e}; this run is not sampled");
            Ok((r, None))
        }
    }
}

/// A `perf record` of one Envoy process while it runs; dropped unstopped (the run failed), it
/// stops perf and waits for it.
struct Recording {
    child: Option<Child>,
    data: PathBuf,
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Recording {
    fn start(envoy: &Envoy, data: &Path) -> Result<Recording> {
        let pid = pid_of(envoy)?;
        // A file of an earlier run must not pass for this one's.
        let _ = fs::remove_file(data);
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", PERF_HZ, "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error(format!("cannot start perf record: {e}")))?;
        Ok(Recording {
            child: Some(child),
            data: data.to_path_buf(),
        })
    }

    /// Stops the recording (SIGINT, as perf expects) and returns the share of its samples in
    /// generated code, and how many samples it took.
    fn stop(mut self) -> Result<(f64, u64)> {
        let Some(child) = self.child.take() else {
            bail!("perf record was already stopped");
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child
            .wait_with_output()
            .map_err(|e| Error(format!("perf record: {e}")))?;
        if !self.data.exists() {
            bail!(
                "perf record wrote nothing ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--sort",
                "dso",
                "-F",
                "overhead,sample,dso",
                "-i",
            ])
            .arg(&self.data)
            .output()
            .map_err(|e| Error(format!("cannot run perf report: {e}")))?;
        if !report.status.success() {
            bail!(
                "perf report failed: {}",
                String::from_utf8_lossy(&report.stderr).trim()
            );
        }
        dso_split(&String::from_utf8_lossy(&report.stdout))
    }
}

/// From `perf report --sort dso -F overhead,sample,dso` text: the share of the samples in
/// generated code (`[JIT] tid …` rows) and the samples in all.
fn dso_split(text: &str) -> Result<(f64, u64)> {
    let (mut jit, mut all) = (0u64, 0u64);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.split_whitespace();
        let (Some(_overhead), Some(samples)) = (cols.next(), cols.next()) else {
            continue;
        };
        let Ok(n) = samples.parse::<u64>() else {
            continue;
        };
        let dso: Vec<&str> = cols.collect();
        all += n;
        if dso.first() == Some(&"[JIT]") {
            jit += n;
        }
    }
    if all == 0 {
        bail!("perf report listed no samples: {text}");
    }
    Ok((jit as f64 / all as f64, all))
}

/// What one measurement found.
struct Report<'a> {
    provenance: Provenance,
    opts: &'a Options,
    cases: &'a [Case],
    sampled: &'a [Vec<Sampled>],
}

/// One configuration's figures over the rounds.
struct Figures {
    cpu_us: Spread,
    jit_percent: Spread,
    guest_us: Spread,
    samples: u64,
}

impl Report<'_> {
    fn figures(&self, i: usize) -> Figures {
        let runs = self.sampled.get(i).map_or(&[][..], Vec::as_slice);
        let of = |f: fn(&Sampled) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
        Figures {
            cpu_us: of(|s| s.cpu_us),
            jit_percent: of(|s| s.jit * 100.0),
            guest_us: of(|s| s.jit * s.cpu_us),
            samples: runs.iter().map(|s| s.samples).sum(),
        }
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "{}; `perf record -e cpu-clock -F {PERF_HZ}` on the Envoy process during each run. \
             Median (min–max) over the rounds.\n",
            self.provenance
                .saturated_run(self.opts, "just bench --guest-share")
        );
        let _ = writeln!(
            md,
            "| configuration | Envoy CPU per request (µs) | samples in generated code (%) | \
             generated code per request (µs) | samples |"
        );
        let _ = writeln!(md, "|---|---|---|---|---:|");
        let s1 = |x: Spread| format!("{:.1} ({:.1}–{:.1})", x.median, x.min, x.max);
        for (i, c) in self.cases.iter().enumerate() {
            let f = self.figures(i);
            let _ = writeln!(
                md,
                "| {} {} | {} | {} | {} | {} |",
                c.id,
                c.name,
                s1(f.cpu_us),
                s1(f.jit_percent),
                s1(f.guest_us),
                f.samples
            );
        }
        let _ = writeln!(
            md,
            "\nGenerated code is V8's: the module's functions and the wrappers between Envoy and \
             them. Configuration 2's figure is the wrappers' and an empty guest's."
        );
        md
    }

    fn json(&self) -> serde_json::Value {
        let spread = |x: Spread| json!({"median": x.median, "min": x.min, "max": x.max});
        json!({
            "tool": "just bench --guest-share",
            "date": self.provenance.date,
            "commit": self.provenance.commit,
            "machine": self.provenance.machine,
            "rounds": self.opts.rounds,
            "seconds": self.opts.seconds,
            "perf_hz": PERF_HZ,
            "configurations": self.cases.iter().enumerate().map(|(i, c)| {
                let f = self.figures(i);
                json!({
                    "id": c.id,
                    "name": c.name,
                    "cpu_us_per_request": spread(f.cpu_us),
                    "generated_code_percent": spread(f.jit_percent),
                    "generated_code_us_per_request": spread(f.guest_us),
                    "samples": f.samples,
                    "rounds": self.sampled.get(i).map(|v| v.iter().map(|s| json!({
                        "cpu_us_per_request": s.cpu_us,
                        "generated_code_share": s.jit,
                        "samples": s.samples,
                    })).collect::<Vec<_>>()),
                })
            }).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_counts_samples_in_generated_code() {
        let text = "# Samples: 9K of event 'cpu-clock'\n#\n# Overhead  Samples  Shared Object\n\
                    #\n    55.06%     5506  envoy\n    30.88%     3088  [kernel.kallsyms]\n    \
                    10.22%     1022  [JIT] tid 21286\n     3.84%      384  libc.so.6\n";
        let (jit, all) = dso_split(text).unwrap();
        assert_eq!(all, 10000);
        assert!((jit - 0.1022).abs() < 1e-9, "{jit}");
        assert!(dso_split("# nothing\n").is_err());
    }
}

//! What is read off a running Envoy (CPU time and RSS from `/proc`) and the statistics taken
//! of the runs (percentiles, medians, ranges).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::{Error, Result};

/// A reading of an Envoy's CPU time (utime + stime), to take the time spent since.
pub struct CpuMark {
    pid: u32,
    ticks: u64,
}

impl CpuMark {
    /// Reads `envoy`'s CPU time now.
    pub fn now(envoy: &Envoy) -> Result<CpuMark> {
        let pid = running_pid(envoy)?;
        Ok(CpuMark {
            pid,
            ticks: cpu_ticks(pid)?,
        })
    }

    /// Reads the CPU time of the process `pid` now (etcd's, say).
    pub fn of_pid(pid: u32) -> Result<CpuMark> {
        Ok(CpuMark {
            pid,
            ticks: cpu_ticks(pid)?,
        })
    }

    /// The process's CPU time since this mark, in µs.
    pub fn elapsed_us(&self) -> Result<f64> {
        let ticks = cpu_ticks(self.pid)?.saturating_sub(self.ticks);
        Ok(ticks as f64 / clock_ticks_per_second() * 1e6)
    }
}

/// `envoy`'s process id, or an error once it has stopped.
fn running_pid(envoy: &Envoy) -> Result<u32> {
    envoy
        .pid()
        .ok_or_else(|| Error::new("envoy has stopped: no process to measure"))
}

/// A process's CPU time so far in clock ticks (utime + stime of `/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|e| Error(format!("{path}: {e}")))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| Error(format!("bad {path}: {stat:?}")))?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error(format!("bad {path} field {}: {stat:?}", i + 3)))
    };
    Ok(num(11)? + num(12)?) // utime, stime (fields 14 and 15 of the full line)
}

/// The CPU time a process's threads have run so far, ns: the sum over `/proc/<pid>/task/*/`
/// of `schedstat`'s first field (nanoseconds, where `stat`'s utime and stime count whole clock
/// ticks). Threads that have exited are not counted: for a span in which none exit.
pub fn runtime_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let tasks = fs::read_dir(&dir).map_err(|e| Error(format!("{dir}: {e}")))?;
    let mut ns = 0;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        // A thread that has just exited has no file any more.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error(format!("bad {}: {text:?}", path.display())))?;
    }
    Ok(ns)
}

/// The process id of `envoy` while it runs.
pub fn pid_of(envoy: &Envoy) -> Result<u32> {
    running_pid(envoy)
}

/// `envoy`'s resident memory (VmRSS of `/proc/<pid>/status`), KiB.
pub fn rss_kib(envoy: &Envoy) -> Result<u64> {
    let path = format!("/proc/{}/status", running_pid(envoy)?);
    let status = fs::read_to_string(&path).map_err(|e| Error(format!("{path}: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| Error(format!("{path} has no VmRSS")))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`, asked once; 100 if it will not say).
fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU µs per request (0 without requests).
pub fn per_request(cpu_us: f64, requests: u64) -> f64 {
    if requests > 0 {
        cpu_us / requests as f64
    } else {
        0.0
    }
}

/// The nearest-rank percentile `p` (0 to 1) of sorted values (0 of none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The size of the file at `p` in bytes (a wasm module's), or an error naming it.
pub fn file_bytes(p: &Path) -> Result<u64> {
    fs::metadata(p)
        .map(|m| m.len())
        .map_err(|e| Error(format!("{}: {e}", p.display())))
}

/// The median (0 of none).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The smallest and largest value (∞ and −∞ of none).
pub fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// A figure over rounds: its median and range.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The median and range of `v`.
    pub fn of(v: &[f64]) -> Spread {
        let (min, max) = min_max(v);
        Spread {
            median: median(v.to_vec()),
            min,
            max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
        let s = Spread::of(&[2.0, 9.0, 4.0]);
        assert_eq!((s.median, s.min, s.max), (4.0, 2.0, 9.0));
    }

    #[test]
    fn this_process_has_cpu_ticks() {
        let before = runtime_ns(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(runtime_ns(std::process::id()).unwrap() > before);
        assert!(cpu_ticks(std::process::id()).is_ok());
        assert!(clock_ticks_per_second() > 0.0);
    }
}

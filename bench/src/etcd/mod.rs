//! `just bench --etcd` (and the end of the default `just bench`): the token path with the
//! cluster ledger on etcd next to the shared-data ledger, on the same token request (unique
//! key, fresh JWT: every request a first attempt).
//!
//! One etcd member on loopback (the harness's [`Etcd::start`], stopped by PID), pinned to the
//! load generator's CPU as the upstream is, so Envoy's CPU stays its own. Then:
//!
//! 1. one etcd transaction's round trip from this process ([`rtt`]: the filter's
//!    insert-if-absent on a new key, kept-alive connection), before and after the load runs;
//! 2. etcd requests per first attempt, split between the request path and the outcome write
//!    ([`count_split`]): an Envoy of configuration 10 in front of a scripted upstream that
//!    holds each answer until etcd's counters ([`metrics`]) have been read, so what etcd
//!    handled before the upstream answered is the request path's, and what it handled after,
//!    the outcome's;
//! 3. configurations 8 (no filter), 5 (shared-data ledger) and 10 (etcd ledger) side by side,
//!    interleaved round by round as in the main benchmark: saturated (wrk), paced at half the
//!    slowest one's saturated median (oha), unloaded (oha closed loop); etcd's counters and
//!    CPU time are read around each run of configuration 10.
//!
//! Writes `target/bench/etcd.{md,json}`; `--update-readme` fills the `bench-etcd` section of
//! `bench/README.md` ([`table`]).

mod metrics;
mod rtt;
mod table;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use retry_guard_e2e::backend::{Backend, Gate, Reply};
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::etcd::{etcd_binary, Etcd};
use retry_guard_e2e::{bail, client, Error, Result};
use serde_json::json;

use crate::args::Options;
use crate::cases::{Case, ETCD_CASES, TOKEN_ETCD};
use crate::configs::Proxies;
use crate::load::{oha_paced, oha_unloaded, wrk, Pace, Run, LOAD_CPU};
use crate::measure::{median, pid_of, runtime_ns, CpuMark};
use metrics::Handled;
use table::{EtcdReport, Mode, Split};

/// Transactions timed for the round trip, each time it is measured (after 200 untimed).
const RTT_SAMPLES: usize = 2000;

/// First attempts whose etcd requests are counted one by one (request path vs outcome).
const SPLIT_REQUESTS: usize = 50;

/// How long the Envoys' CPU time is read with no load.
const IDLE: Duration = Duration::from_secs(10);

/// retry-guard's counter of requests the ledger could not answer in time.
const UNAVAILABLE: &str = "retry_guard.ledger.unavailable";

/// What etcd did during the runs of configuration 10 of one mode (saturated, paced,
/// unloaded): the requests it handled, its CPU time, and the requests answered.
#[derive(Clone, Debug, Default)]
pub struct EtcdLoad {
    /// Requests etcd handled, per method.
    pub handled: Handled,
    /// etcd's CPU time, µs.
    pub cpu_us: f64,
    /// Guarded requests answered (by the load generator's count).
    pub requests: u64,
}

/// Runs the comparison and writes its report to `dir`.
pub fn run(o: &Options, dir: &Path) -> Result<()> {
    let load_before = load_average();
    let mut proxies = Proxies::new(o, dir)?;
    let etcd = Etcd::start("bench", 1)?;
    let (addr, pid) = match etcd.members.first() {
        Some(m) => (m.client, m.pid()),
        None => bail!("etcd started without a member"),
    };
    let pid = pid.ok_or_else(|| Error::new("the etcd member is not running"))?;
    pin(pid, LOAD_CPU)?;
    proxies.use_etcd(addr)?;
    let db_before = db_in_use(addr)?;
    eprintln!(
        "etcd ({}) on {addr}, pid {pid}, pinned to CPU {LOAD_CPU}",
        etcd_version()
    );

    eprintln!("timing {RTT_SAMPLES} etcd transactions from this process");
    let rtt_before = rtt::time_txns(addr, "retry-guard-bench-rtt/a/", 200, RTT_SAMPLES)?;
    eprintln!(
        "  txn round trip p50 {:.0} µs, p99 {:.0} µs",
        rtt_before.p50(),
        rtt_before.p99()
    );

    eprintln!("counting etcd requests per first attempt, {SPLIT_REQUESTS} one by one");
    let split = count_split(&proxies, addr)?;
    eprintln!(
        "  request path: {:.2} per first attempt, outcome: {:.2}",
        split.request_path_mean(),
        split.outcome_mean()
    );

    let cases: Vec<&Case> = ETCD_CASES.iter().collect();
    eprintln!(
        "starting {} Envoys (configurations {}; --concurrency 1, pinned to CPU 0)",
        cases.len(),
        cases
            .iter()
            .map(|c| c.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let envoys = proxies.start_warmed(cases.iter().copied())?;
    let etcd_envoy = cases
        .iter()
        .zip(&envoys)
        .find(|(c, _)| c.id == TOKEN_ETCD.id)
        .map(|(_, e)| e)
        .ok_or_else(|| Error::new("configuration 10 did not start"))?;
    let unavailable_before = counter(etcd_envoy, UNAVAILABLE);
    // What each Envoy spends with no request at all (timers, the etcd cluster's health
    // checks, the ledger's lease grants on its tick): a per-request figure at a low rate
    // carries its share.
    thread::sleep(Duration::from_secs(1));
    let idle_cpu = idle_cpu(&envoys, IDLE)?;
    eprintln!(
        "idle Envoy CPU (µs/s): {}",
        cases
            .iter()
            .zip(&idle_cpu)
            .map(|(c, us)| format!("{}: {us:.0}", c.id))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut sat: Vec<Vec<Run>> = vec![Vec::new(); cases.len()];
    let mut etcd_load = [
        EtcdLoad::default(),
        EtcdLoad::default(),
        EtcdLoad::default(),
    ];
    // One run of `case`, with etcd's counters and CPU read around it for configuration 10.
    let measured = |case: &Case, load: &mut EtcdLoad, go: &dyn Fn() -> Result<Run>| {
        if case.id != TOKEN_ETCD.id {
            return go();
        }
        let (before, cpu) = (Handled::read(addr)?, CpuMark::of_pid(pid)?);
        let r = go()?;
        // The last answers' outcome writes trail the run by about a millisecond.
        thread::sleep(Duration::from_millis(100));
        load.cpu_us += cpu.elapsed_us()?;
        load.handled.add(&Handled::read(addr)?.since(&before));
        load.requests += r.requests;
        Ok(r)
    };
    for round in 0..o.rounds {
        for (i, (case, envoy)) in cases.iter().zip(&envoys).enumerate() {
            let r = measured(case, &mut etcd_load[Mode::Saturated as usize], &|| {
                wrk(envoy, case, o.seconds, o.connections)
            })?;
            eprintln!(
                "round {} case {:>2}: {:>8.0} req/s  {:>6.2} µs CPU/req  non-2xx {}  socket errors {}",
                round + 1,
                case.id,
                r.rps(),
                r.cpu_us_per_req,
                r.non2xx,
                r.socket_errors
            );
            sat[i].push(r);
        }
    }
    let slowest = sat
        .iter()
        .map(|runs| median(runs.iter().map(Run::rps).collect()))
        .fold(f64::INFINITY, f64::min);
    let target_rate = (slowest * 0.5).max(100.0);
    eprintln!("paced runs at {target_rate:.0} req/s (half the slowest saturated median)");
    let mut latency = |mode: Mode, label: &str| -> Result<Vec<Vec<Run>>> {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); cases.len()];
        for round in 0..o.rounds {
            for (i, (case, envoy)) in cases.iter().zip(&envoys).enumerate() {
                let r = measured(case, &mut etcd_load[mode as usize], &|| match mode {
                    Mode::Paced => oha_paced(envoy, case, o.seconds, Pace::at(target_rate), dir),
                    _ => oha_unloaded(envoy, case, o.seconds),
                })?;
                eprintln!(
                    "round {} case {:>2} {label}: {:>7.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs",
                    round + 1,
                    case.id,
                    r.rps(),
                    r.p50_us,
                    r.p99_us
                );
                runs[i].push(r);
            }
        }
        Ok(runs)
    };
    let paced = latency(Mode::Paced, "paced")?;
    eprintln!("unloaded runs: oha, closed loop on 1 connection");
    let unloaded = latency(Mode::Unloaded, "unloaded")?;
    let unavailable = counter(etcd_envoy, UNAVAILABLE).saturating_sub(unavailable_before);
    drop(envoys);

    let keys = etcd.count(crate::configs::ETCD_KEY_PREFIX).unwrap_or(0);
    // Every key the run wrote (the ledger's, the probe's, the timed transactions'), all
    // values of an entry's size, and etcd's database in use for them (auto-compaction, one
    // minute, has dropped most old revisions by now).
    let storage = Storage {
        keys: etcd.count("retry-guard-").unwrap_or(0),
        db_in_use: db_in_use(addr)?.saturating_sub(db_before),
    };
    eprintln!(
        "timing {RTT_SAMPLES} etcd transactions again, after the load ({keys} ledger keys in etcd)"
    );
    let rtt_after = rtt::time_txns(addr, "retry-guard-bench-rtt/b/", 200, RTT_SAMPLES)?;
    let load_after = load_average();
    drop(etcd);
    drop(proxies);

    EtcdReport {
        provenance: crate::report::Provenance::now(),
        opts: o,
        etcd_version: etcd_version(),
        load_before,
        load_after,
        rtt_before,
        rtt_after,
        split,
        sat,
        paced,
        unloaded,
        target_rate,
        idle_cpu,
        etcd_load,
        unavailable,
        keys_after: keys,
        storage,
    }
    .write(dir)
}

/// etcd's database in use for the keys the run wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct Storage {
    /// Live keys after the runs.
    pub keys: u64,
    /// `dbSizeInUse` after the runs minus before them, bytes.
    pub db_in_use: u64,
}

/// etcd's `dbSizeInUse`, bytes (its database file less the free pages).
fn db_in_use(addr: std::net::SocketAddr) -> Result<u64> {
    let s = retry_guard_e2e::etcd::post(addr, "/v3/maintenance/status", &json!({}))?;
    s["dbSizeInUse"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::new(format!("etcd's status has no dbSizeInUse: {s}")))
}

/// Counts the etcd requests of [`SPLIT_REQUESTS`] first attempts on configuration 10, one at
/// a time: an Envoy in front of a scripted upstream ([`Backend`]) that holds each answer. etcd's
/// counters are read before the request, when it has reached the upstream (its decision made:
/// the request path's requests are done, and the outcome cannot have been written), and once
/// they have settled after the answer (the outcome's).
fn count_split(proxies: &Proxies, etcd: std::net::SocketAddr) -> Result<Split> {
    let backend = Backend::start()?;
    let envoy = proxies.start_named(&TOKEN_ETCD, "10-count", backend.addr())?;
    // A first request, unheld: the VMs have granted their leases and the connection to etcd
    // is open before the counting starts.
    let first = send_token_request(&envoy, "warm")?;
    if first != 200 {
        bail!("configuration 10's first request got {first}, not 200");
    }
    thread::sleep(Duration::from_millis(500));
    let mut split = Split::default();
    for i in 0..SPLIT_REQUESTS {
        let gate = Gate::new();
        backend.set_default(Reply::json(200, r#"{"access_token":"bench"}"#).gated(&gate));
        let seen = backend.request_count();
        let before = Handled::read(etcd)?;
        let listener = envoy.listener_addr();
        let sent = thread::spawn(move || send_token_request_to(listener, &format!("split-{i}")));
        let reached = backend.wait_for_requests(seen + 1, Duration::from_secs(10));
        let decided = Handled::read(etcd)?;
        gate.open();
        let status = sent
            .join()
            .map_err(|_| Error::new("the counting request's thread panicked"))??;
        reached?;
        if status != 200 {
            bail!("counting request {i} got {status}, not 200");
        }
        let settled = settle(etcd, &decided)?;
        split.request_path.push(decided.since(&before));
        split.outcome.push(settled.since(&decided));
    }
    Ok(split)
}

/// etcd's counters once the outcome write has come in after `decided`: they moved and then
/// stayed still for 200 ms (or 3 s passed).
fn settle(etcd: std::net::SocketAddr, decided: &Handled) -> Result<Handled> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = Handled::read(etcd)?;
    let mut still_since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(20));
        let now = Handled::read(etcd)?;
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if last.kv() > decided.kv() && still_since.elapsed() >= Duration::from_millis(200) {
            return Ok(last);
        }
        if Instant::now() >= deadline {
            return Ok(last);
        }
    }
}

/// Sends one token request (a new Idempotency-Key, a JWT minted now) to `envoy`; its status.
fn send_token_request(envoy: &Envoy, tag: &str) -> Result<u16> {
    send_token_request_to(envoy.listener_addr(), tag)
}

/// [`send_token_request`] to a listener's address.
fn send_token_request_to(listener: std::net::SocketAddr, tag: &str) -> Result<u16> {
    let now = retry_guard_e2e::tokens::now_unix();
    let key = format!("count-{}-{now}-{tag}", std::process::id());
    let jwt = retry_guard_e2e::tokens::unsigned_jwt(&json!({
        "sub": "bench-bot", "iat": now, "exp": now + 600, "jti": key,
    }));
    let authorization = format!("Bearer {jwt}");
    let resp = client::send_with_timeout(
        listener,
        TOKEN_ETCD.method,
        TOKEN_ETCD.path,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-client-id", "bench-bot"),
            ("authorization", &authorization),
            ("idempotency-key", &key),
        ],
        TOKEN_ETCD.body.as_bytes(),
        Duration::from_secs(10),
    )?;
    Ok(resp.status)
}

/// Each Envoy's CPU time per second over `span` without requests, µs/s (read side by side,
/// in nanoseconds: a clock tick of `/proc/<pid>/stat` is 10 ms, the whole of such a span's).
fn idle_cpu(envoys: &[Envoy], span: Duration) -> Result<Vec<f64>> {
    let pids: Vec<u32> = envoys.iter().map(pid_of).collect::<Result<_>>()?;
    let before: Vec<u64> = pids.iter().map(|p| runtime_ns(*p)).collect::<Result<_>>()?;
    thread::sleep(span);
    pids.iter()
        .zip(before)
        .map(|(p, b)| Ok(runtime_ns(*p)?.saturating_sub(b) as f64 / 1e3 / span.as_secs_f64()))
        .collect()
}

/// Pins every thread of the process `pid` to `cpu` (`taskset -a -c -p`).
fn pin(pid: u32, cpu: &str) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-c", "-p", cpu, &pid.to_string()])
        .output()
        .map_err(|e| Error(format!("cannot run taskset: {e}")))?;
    if !out.status.success() {
        bail!(
            "taskset could not pin etcd (pid {pid}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The machine's load averages over 1, 5 and 15 minutes (`/proc/loadavg`).
fn load_average() -> [f64; 3] {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(f64::NAN));
    [
        v.next().unwrap_or(f64::NAN),
        v.next().unwrap_or(f64::NAN),
        v.next().unwrap_or(f64::NAN),
    ]
}

/// etcd's version (`etcd --version`, first line's number).
fn etcd_version() -> String {
    etcd_binary()
        .ok()
        .and_then(|bin| Command::new(bin).arg("--version").output().ok())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("etcd Version:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown version".into())
}

/// A retry-guard counter of `envoy` (0 if it cannot be read).
fn counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.wasm_counter(name).ok().flatten().unwrap_or(0)
}

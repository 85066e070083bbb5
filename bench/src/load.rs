//! Load generation: wrk for the saturated runs, oha for the paced and unloaded ones, both
//! pinned to the load generator's CPU, and Envoy's CPU time per request over each run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::{bail, repo_root, Error, Result};
use serde_json::{json, Value};

use crate::args::Options;
use crate::cases::{Case, Load};
use crate::configs::Proxies;
use crate::measure::{per_request, percentile, CpuMark};

/// The CPU of the load generators (and of the upstream Envoy); the proxy keeps the other.
pub const LOAD_CPU: &str = "1";

/// oha processes of a paced run; together they send the paced rate.
///
/// oha releases the requests that fall due within one millisecond together (its timer is
/// tokio's), so one process at 14,000 req/s sends bursts of about 14, and each request queues
/// behind the others in its burst. Sixteen processes tick at unrelated phases. `just bench
/// --pacing` measures both in Envoy's access log (README, "The paced runs"): at 14,000 req/s
/// one process put 85% of the requests less than 20 µs after the one before (bursts of 8,
/// p90 13), sixteen 34% (bursts of 2, p90 3), where independent clients would put 24%.
pub const PACED_PROCESSES: usize = 16;

/// Connections of each paced oha process: with two, a request rarely falls due while its
/// process waits for both earlier answers (that wait counts in the lateness, [`Pacing`]).
pub const PACED_CONNECTIONS_EACH: usize = 2;

/// One run's result.
#[derive(Clone, Debug)]
pub struct Run {
    /// Requests answered.
    pub requests: u64,
    /// How long the run took.
    pub seconds: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Answers other than 2xx.
    pub non2xx: u64,
    /// Connection errors and timeouts (wrk), errors other than the end of the run (oha).
    pub socket_errors: u64,
    /// Envoy's CPU time over the run per request.
    pub cpu_us_per_req: f64,
    /// The load generator's lateness, for a paced run.
    pub pacing: Option<Pacing>,
}

impl Run {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// How well the paced load generator kept its schedule: how late each request left against
/// the time it was due (oha's timer firing late, and the wait for a free connection).
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// The median request's lateness, µs.
    pub late_p50_us: f64,
    /// The 99th percentile lateness, µs.
    pub late_p99_us: f64,
}

/// The load of a paced run: `rate` requests per second in all, from `processes` oha
/// processes on `connections` connections each.
#[derive(Clone, Copy)]
pub struct Pace {
    /// Requests per second, all processes together.
    pub rate: f64,
    /// oha processes.
    pub processes: usize,
    /// Connections of each process.
    pub connections: usize,
}

impl Pace {
    /// The paced runs' shape ([`PACED_PROCESSES`] × [`PACED_CONNECTIONS_EACH`]) at `rate`.
    pub fn at(rate: f64) -> Pace {
        Pace {
            rate,
            processes: PACED_PROCESSES,
            connections: PACED_CONNECTIONS_EACH,
        }
    }
}

/// `program` run on the load generator's CPU (`taskset -c 1 program`).
fn pinned(program: &str) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", LOAD_CPU, program]);
    cmd
}

/// A saturated run: wrk (`bench/wrk/load.lua`), 1 thread × `connections`, for `seconds`.
pub fn wrk(envoy: &Envoy, case: &Case, seconds: u64, connections: usize) -> Result<Run> {
    let script = repo_root().join("bench/wrk/load.lua");
    let jwt = case.signed_jwt()?.unwrap_or("");
    let cpu = CpuMark::now(envoy)?;
    let out = pinned("wrk")
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{}", envoy.listener_addr()))
        .env("RG_METHOD", case.method)
        .env("RG_PATH", case.path)
        .env("RG_BODY", case.body)
        .env(
            "RG_UNIQUE",
            match case.load {
                Load::Plain => "0",
                Load::Unique => "1",
                Load::Shape => "shape",
            },
        )
        // The JWT of a `jwt_authn` configuration, signed (empty: the script mints its own).
        .env("RG_JWT", jwt)
        .output()
        .map_err(|e| Error(format!("cannot run wrk (apt-get install wrk): {e}")))?;
    let cpu_us = cpu.elapsed_us()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("RGJSON ")) else {
        bail!(
            "wrk printed no result: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let v: Value = serde_json::from_str(line).map_err(|e| Error(format!("{e}: {line}")))?;
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let requests = n("requests") as u64;
    Ok(Run {
        requests,
        seconds: n("duration_us") / 1e6,
        p50_us: n("p50_us"),
        p99_us: n("p99_us"),
        non2xx: n("non2xx") as u64,
        socket_errors: n("socket_errors") as u64,
        cpu_us_per_req: per_request(cpu_us, requests),
        pacing: None,
    })
}

/// Starts the proxies of `cases` (warmed, [`Proxies::start_warmed`]) and measures them
/// saturated, interleaved round by round for `o.rounds` rounds of `o.seconds`; `what` names the
/// run in its progress line. Returns the runs of each case, in the order of `cases`, with the
/// proxies stopped. A run with answers that are not its configuration's ([`check_statuses`])
/// or with any socket error makes the whole measurement invalid.
pub fn saturated_rounds(
    o: &Options,
    proxies: &Proxies,
    what: &str,
    cases: &[Case],
) -> Result<Vec<Vec<Run>>> {
    saturated_rounds_observed(o, proxies, what, cases, |_, _, run| run())
}

/// [`saturated_rounds`], each run made through `around(case, envoy, run)`, which calls `run`
/// once and may watch the Envoy while it runs (`--guest-share` samples it with `perf`).
pub fn saturated_rounds_observed(
    o: &Options,
    proxies: &Proxies,
    what: &str,
    cases: &[Case],
    mut around: impl FnMut(&Case, &Envoy, &mut dyn FnMut() -> Result<Run>) -> Result<Run>,
) -> Result<Vec<Vec<Run>>> {
    eprintln!(
        "{what}: starting {} Envoys (--concurrency 1, pinned to CPU 0; wrk pinned to CPU 1)",
        cases.len()
    );
    let envoys = proxies.start_warmed(cases)?;
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); cases.len()];
    for round in 0..o.rounds {
        for ((case, envoy), case_runs) in cases.iter().zip(&envoys).zip(&mut runs) {
            let r = around(case, envoy, &mut || {
                wrk(envoy, case, o.seconds, o.connections)
            })?;
            check_statuses(case, &r)?;
            if r.socket_errors > 0 {
                bail!(
                    "{} (case {}): {} socket errors: the run is not valid",
                    case.name,
                    case.id,
                    r.socket_errors
                );
            }
            eprintln!(
                "round {} case {:>3} {:<40} {:<6} {:>8.0} req/s  {:>6.2} µs CPU/req",
                round + 1,
                case.id,
                case.name,
                case.method,
                r.rps(),
                r.cpu_us_per_req
            );
            case_runs.push(r);
        }
    }
    Ok(runs)
}

/// The share of a run's answers that may differ from the configuration's before the run is
/// refused: rare refusals of the guard itself (a ledger set full of live entries answers 503,
/// see [`crate::configs::first_attempts_config`]) are counted and reported, not hidden.
pub const UNEXPECTED_ALLOWED: f64 = 0.001;

/// How many of a saturated run's answers were not the configuration's: wrk counts the answers
/// of status 400 and above, which must be none where a 2xx is expected and all of them where
/// the configuration answers 428.
pub fn unexpected(case: &Case, r: &Run) -> u64 {
    if case.expect_status < 400 {
        r.non2xx
    } else {
        r.requests.saturating_sub(r.non2xx)
    }
}

/// Refuses a saturated run in which more than [`UNEXPECTED_ALLOWED`] of the answers were not
/// the configuration's ([`unexpected`]); a smaller number is printed, and the reports count it.
pub fn check_statuses(case: &Case, r: &Run) -> Result<()> {
    let n = unexpected(case, r);
    if n as f64 > UNEXPECTED_ALLOWED * r.requests as f64 {
        bail!(
            "case {}: {n} of {} answers in the saturated run were not {}: the run is not valid",
            case.id,
            r.requests,
            case.expect_status
        );
    }
    if n > 0 {
        eprintln!(
            "case {}: {n} of {} answers were not {} (counted in the report)",
            case.id, r.requests, case.expect_status
        );
    }
    Ok(())
}

/// oha's command line for a run of `case` against `envoy` for `seconds`, without the load
/// shape (`-q`, `-c`): the method, body and headers, and for a unique case a random query
/// string and a JWT minted now.
///
/// oha cannot vary a header or a body per request (`-Z` picks body lines at random, so a
/// file of unique lines still repeats about one in five), so a `unique` case sends a random
/// query string (`--rand-regex-url`, 24 random characters) without an Idempotency-Key: the
/// fingerprint covers the path and query, so every request is a first attempt with the same
/// work as a unique key (fingerprint, ledger write, audit line). Its JWT is minted when the
/// run starts (fresh: `iat` now, `exp` in 600 s); a `jwt_authn` configuration's is its signed
/// one ([`Case::signed_jwt`]).
fn oha_command(envoy: &Envoy, case: &Case, seconds: u64) -> Result<Command> {
    let mut url = format!("http://{}{}", envoy.listener_addr(), case.path);
    let mut cmd = pinned("oha");
    cmd.args(["--no-tui", "--output-format", "json"])
        .arg("-z")
        .arg(format!("{seconds}s"))
        .args(["-m", case.method, "-H", "x-client-id: bench-bot"]);
    if !case.body.is_empty() {
        cmd.args(["-H", "content-type: application/x-www-form-urlencoded"])
            .args(["-d", case.body]);
    }
    // A shape case sends the very requests of the unique one (the variation costs the filterless
    // Envoy nothing, and oha the same on both).
    if case.load != Load::Plain {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let jwt = match case.signed_jwt()? {
            Some(signed) => signed.to_string(),
            None => retry_guard_e2e::tokens::unsigned_jwt(&json!({
                "sub": "bench-bot", "iat": now, "exp": now + 600,
                "jti": format!("{now}-{}", std::process::id()),
            })),
        };
        cmd.args(["-H", &format!("authorization: Bearer {jwt}")])
            .arg("--rand-regex-url");
        // A regex: `?` escaped, then the random part.
        url = format!("{url}\\?n=[a-z0-9]{{24}}");
    }
    cmd.arg(url);
    Ok(cmd)
}

/// What one oha process reports: its answers and latency percentiles.
struct OhaResult {
    requests: u64,
    non2xx: u64,
    errors: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Reads oha's JSON result. Every answer must be the case's expected status but for the rare
/// refusals a run allows ([`UNEXPECTED_ALLOWED`], counted in the report), and no request may
/// fail, or the run is refused as a measurement of something else.
fn oha_result(out: &Output, case: &Case) -> Result<OhaResult> {
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error(format!(
            "oha printed no JSON result ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    let codes = v["statusCodeDistribution"].as_object();
    let count = |ok: &dyn Fn(&str) -> bool| -> u64 {
        codes.map_or(0, |m| {
            m.iter()
                .filter(|(k, _)| ok(k))
                .map(|(_, n)| n.as_u64().unwrap_or(0))
                .sum()
        })
    };
    let requests = count(&|_| true);
    // Requests still in flight when `-z` ends are aborted ("aborted due to deadline"): an end
    // of the run, not an error of the server.
    let errors = v["errorDistribution"].as_object().map_or(0, |m| {
        m.iter()
            .filter(|(k, _)| !k.contains("deadline"))
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum()
    });
    let expected = case.expect_status.to_string();
    let unexpected = count(&|k| k != expected);
    if errors > 0 || unexpected as f64 > UNEXPECTED_ALLOWED * requests as f64 {
        bail!(
            "oha run of case {} got {unexpected} of {requests} answers other than {expected} and {errors} errors: {} {}",
            case.id,
            v["statusCodeDistribution"],
            v["errorDistribution"]
        );
    }
    if unexpected > 0 {
        eprintln!(
            "case {}: {unexpected} of {requests} answers were not {expected} (counted in the report): {}",
            case.id, v["statusCodeDistribution"]
        );
    }
    let us = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(0.0) * 1e6;
    Ok(OhaResult {
        requests,
        non2xx: count(&|k| !k.starts_with('2')),
        errors,
        seconds: v["summary"]["total"].as_f64().unwrap_or(0.0),
        p50_us: us("p50"),
        p99_us: us("p99"),
    })
}

/// The error of an oha that could not be started.
fn cannot_run_oha(e: std::io::Error) -> Error {
    Error(format!("cannot run oha (cargo install oha --locked): {e}"))
}

/// An unloaded run: oha closed loop on one connection (each request sent when the previous
/// answer arrived), the latency of a request that never queues.
pub fn oha_unloaded(envoy: &Envoy, case: &Case, seconds: u64) -> Result<Run> {
    let mut cmd = oha_command(envoy, case, seconds)?;
    cmd.args(["-c", "1"]);
    let cpu = CpuMark::now(envoy)?;
    let out = cmd.output().map_err(cannot_run_oha)?;
    let cpu_us = cpu.elapsed_us()?;
    let r = oha_result(&out, case)?;
    Ok(Run {
        requests: r.requests,
        seconds: if r.seconds > 0.0 {
            r.seconds
        } else {
            seconds as f64
        },
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        non2xx: r.non2xx,
        socket_errors: r.errors,
        cpu_us_per_req: per_request(cpu_us, r.requests),
        pacing: None,
    })
}

/// A paced run of `case` for `seconds` (see [`Pace`]); oha's request records go to `dir`.
///
/// Latency counts from the moment each request was sent (oha's per-request record,
/// `--db-url`), not from when it was due: oha's timer works in whole milliseconds and
/// releases requests about a millisecond late, the same for every configuration, and counting
/// that lateness in would measure the load generator. How late the requests left is reported
/// beside it ([`Pacing`]). Every answer must be the case's expected status, every oha process
/// must succeed and have recorded every answer it counted, or the run is refused.
pub fn oha_paced(envoy: &Envoy, case: &Case, seconds: u64, pace: Pace, dir: &Path) -> Result<Run> {
    // The rate each process is given, as oha reads it (its schedule: request k at k / each).
    let each_arg = format!("{:.3}", pace.rate / pace.processes.max(1) as f64);
    let each: f64 = each_arg.parse().unwrap_or(1.0);
    let dbs: Vec<PathBuf> = (0..pace.processes.max(1))
        .map(|i| dir.join(format!("paced-{}-{i}.db", case.id)))
        .collect();
    let cpu = CpuMark::now(envoy)?;
    let mut children: Vec<std::process::Child> = Vec::new();
    for db in &dbs {
        let _ = fs::remove_file(db);
        let mut cmd = match oha_command(envoy, case, seconds) {
            Ok(cmd) => cmd,
            Err(e) => {
                for mut c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e);
            }
        };
        // `--latency-correction` makes oha record when its timer released each request, which
        // orders the requests by their place in the schedule (see `read_oha_db`).
        cmd.arg("-q")
            .arg(&each_arg)
            .arg("-c")
            .arg(pace.connections.max(1).to_string())
            .args(["--latency-correction", "--db-url"])
            .arg(db)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                // Stop the ones already started: they would load Envoy until `-z` ends.
                for mut c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(cannot_run_oha(e));
            }
        }
    }
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().map_err(|e| Error(format!("oha: {e}"))))
        .collect::<Result<_>>()?;
    let cpu_us = cpu.elapsed_us()?;
    let mut requests = 0;
    let (mut non2xx, mut errors, mut rps) = (0, 0, 0.0);
    let mut latency = Vec::new();
    let mut late = Vec::new();
    for (out, db) in outputs.iter().zip(&dbs) {
        let r = oha_result(out, case)?;
        // oha prints its result before it stores the records: a failed store (a full disk)
        // shows only in its exit status.
        if !out.status.success() {
            bail!(
                "oha ({}) failed in the paced run of case {}: {}",
                out.status,
                case.id,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let recorded = read_oha_db(db, each, &mut latency, &mut late)?;
        let _ = fs::remove_file(db);
        if recorded != r.requests {
            bail!(
                "oha recorded {recorded} of the {} answers it counted in the paced run of case {}",
                r.requests,
                case.id
            );
        }
        requests += r.requests;
        non2xx += r.non2xx;
        errors += r.errors;
        rps += r.requests as f64 / r.seconds.max(1e-9);
    }
    if latency.is_empty() {
        bail!("paced run of case {} recorded no request", case.id);
    }
    latency.sort_by(f64::total_cmp);
    late.sort_by(f64::total_cmp);
    Ok(Run {
        requests,
        // The processes ran side by side: the span that gives their summed rate.
        seconds: requests as f64 / rps.max(1e-9),
        p50_us: percentile(&latency, 0.50),
        p99_us: percentile(&latency, 0.99),
        non2xx,
        socket_errors: errors,
        cpu_us_per_req: per_request(cpu_us, requests),
        pacing: Some(Pacing {
            late_p50_us: percentile(&late, 0.50),
            late_p99_us: percentile(&late, 0.99),
        }),
    })
}

/// Appends, in µs, each request's latency from when it was sent (`end - start`) and how late
/// it was sent against its schedule, from one oha `--db-url` file of a process paced at
/// `rate`; returns how many requests it holds.
///
/// oha (1.16) schedules request k at k / `rate` seconds after its start, the zero of the
/// record's times, and records as `start_latency_correction` when its timer released the
/// request; ordered by that, the records are in schedule order.
fn read_oha_db(db: &Path, rate: f64, latency: &mut Vec<f64>, late: &mut Vec<f64>) -> Result<u64> {
    let fail = |e: rusqlite::Error| {
        Error(format!(
            "cannot read oha's request records {}: {e}",
            db.display()
        ))
    };
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(fail)?;
    let mut stmt = conn
        .prepare("SELECT start, \"end\" FROM oha ORDER BY start_latency_correction, start, rowid")
        .map_err(fail)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, f64>(0)?, r.get::<_, f64>(1)?)))
        .map_err(fail)?;
    let mut k = 0u64;
    for row in rows {
        let (start, end) = row.map_err(fail)?;
        latency.push((end - start) * 1e6);
        let due = k as f64 / rate;
        late.push((start - due).max(0.0) * 1e6);
        k += 1;
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oha_records_give_latency_from_the_send_and_lateness_from_the_schedule() {
        let dir = std::env::temp_dir().join(format!("rg-bench-oha-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let db = dir.join("paced.db");
        let _ = fs::remove_file(&db);
        // oha 1.16's table, as `--db-url` writes it (seconds from the run's start), rows out of
        // schedule order; at 1,000 req/s request k is due at k ms.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE oha (url TEXT NOT NULL, start REAL NOT NULL, start_latency_correction REAL,
              end REAL NOT NULL, duration REAL NOT NULL, status INTEGER NOT NULL,
              len_bytes INTEGER NOT NULL, run INTEGER NOT NULL);
             INSERT INTO oha VALUES ('/x', 0.0012, 0.0010, 0.0020, 0.0010, 200, 2, 1);
             INSERT INTO oha VALUES ('/x', 0.0003, 0.0001, 0.0005, 0.0004, 200, 2, 1);",
        )
        .unwrap();
        drop(conn);
        let (mut latency, mut late) = (Vec::new(), Vec::new());
        assert_eq!(
            read_oha_db(&db, 1000.0, &mut latency, &mut late).unwrap(),
            2
        );
        let round = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
        assert_eq!(round(&latency), [200.0, 800.0], "end - start, in µs");
        assert_eq!(round(&late), [300.0, 200.0], "start - k / rate, in µs");
        let err =
            read_oha_db(&dir.join("missing.db"), 1000.0, &mut latency, &mut late).unwrap_err();
        assert!(err.0.contains("missing.db"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

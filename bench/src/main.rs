//! `just bench`: what retry-guard costs a real Envoy, side by side with the floor.
//!
//! Runs the pinned Envoy (`--concurrency 1`, pinned to CPU 0) in nine configurations and
//! drives each with an existing load generator pinned to CPU 1, interleaved round by round
//! (1 2 3 … 9, 1 2 3 … 9, …) so machine drift cancels:
//!
//! 1. no wasm filter; 2. the no-op proxy-wasm filter (the floor); 3. retry-guard, request on an
//!    unmatched route; 4. retry-guard, `read_only` route; 5. retry-guard, `token_issuing` route
//!    with a unique idempotency key and a fresh JWT on every request (all allowed); 6. retry-guard
//!    answering 428 (every request a replay); 7. Envoy's own `direct_response` 428; 8. no wasm
//!    filter sent case 5's request (the same bytes), the baseline of 5 ÷ 1; 9. as 3, with the
//!    filter switched off on that route by Envoy's per-route `FilterConfig { disabled: true }`.
//!
//! By default (upstream mode) routes 1–5 and 8 are forwarded to a real upstream, a second Envoy
//! pinned to CPU 1 that reads each request whole and answers it, as in front of an identity
//! API. `--direct` makes every route a `direct_response` in the proxy itself: no upstream, so
//! the filter's share of a much cheaper request is larger. A configuration that answers a
//! body-carrying request itself without retry-guard (7, and 8 in direct mode) carries Envoy's
//! buffer filter: without it Envoy answers before the body arrives and closes the connection
//! after every answer, which would measure connection setup instead (see [`BUFFER_FILTER`]).
//!
//! Per configuration: saturated throughput (wrk), Envoy CPU time per request (from
//! `/proc/<pid>/stat`), p50/p99 latency at a fixed rate below saturation (`oha -q` from
//! [`PACED_PROCESSES`] processes, each request timed from when it was sent, with how late oha
//! sent it beside) and unloaded (oha closed loop, one connection). Then a memory run:
//! Envoy RSS while 1,000,000 unique keys flood a guarded route with `max_entries` 65536.
//! Writes `target/bench/report.md` and `report.json`; `--update-readme` replaces the README's
//! table of that mode.
//!
//! `--host-costs` runs [`host_costs`] instead: the price of each host call retry-guard makes,
//! and the token path's added cost taken apart.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod host_costs;
mod pacing;

type Result<T> = std::result::Result<T, String>;

/// What sits in Envoy's HTTP filter chain.
#[derive(Clone, Copy, PartialEq)]
enum Filter {
    None,
    Noop,
    Guard,
    /// The host-call probe (`bench/hostcost`) with this plugin configuration.
    Probe(&'static str),
}

/// The wasm modules the configurations load.
struct Modules {
    /// retry-guard.
    guard: PathBuf,
    /// The no-op floor.
    noop: PathBuf,
    /// The host-call probe (only `--host-costs` needs it).
    probe: PathBuf,
}

/// One benchmark configuration.
struct Case {
    id: usize,
    name: &'static str,
    filter: Filter,
    token_status: u16,
    method: &'static str,
    path: &'static str,
    body: &'static str,
    load: Load,
    /// The filter is switched off on the unguarded route `other` with Envoy's per-route
    /// `FilterConfig { disabled: true }`.
    off_on_other: bool,
    /// The status every request of this configuration gets.
    expect_status: u16,
}

/// What varies from request to request.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// The same request every time.
    Plain,
    /// A unique Idempotency-Key and a freshly minted JWT on every request (wrk); a random
    /// query string and a fresh JWT in the paced runs (oha): every request a first attempt.
    Unique,
    /// The bytes of a [`Load::Unique`] request (same headers, same lengths) without the
    /// variation: for a baseline without a filter, where the variation changes nothing but
    /// would cost the load generator's core per request.
    Shape,
}

/// The body of the token request, the same as host-sim's benchmark sends.
const BODY: &str = host_sim::bench::BODY;

/// Configuration 3. 1 and 2 send its request through no filter and the no-op one; 9 is the
/// same with the filter switched off on its route.
const UNMATCHED: Case = Case {
    id: 3,
    name: "retry-guard, unmatched route",
    filter: Filter::Guard,
    token_status: 200,
    method: "GET",
    path: "/other",
    body: "",
    load: Load::Plain,
    off_on_other: false,
    expect_status: 200,
};

/// Configuration 5; 8 sends its request to Envoy without the filter.
const TOKEN_ALLOW: Case = Case {
    id: 5,
    name: "retry-guard, token_issuing allow (unique key, fresh JWT)",
    filter: Filter::Guard,
    token_status: 200,
    method: "POST",
    path: "/oauth/token",
    body: BODY,
    load: Load::Unique,
    off_on_other: false,
    expect_status: 200,
};

const CASES: [Case; 9] = [
    Case {
        id: 1,
        name: "no wasm filter",
        filter: Filter::None,
        ..UNMATCHED
    },
    Case {
        id: 2,
        name: "no-op wasm filter (floor)",
        filter: Filter::Noop,
        ..UNMATCHED
    },
    UNMATCHED,
    Case {
        id: 4,
        name: "retry-guard, read_only route",
        filter: Filter::Guard,
        token_status: 200,
        method: "GET",
        path: "/v1/items",
        body: "",
        load: Load::Plain,
        off_on_other: false,
        expect_status: 200,
    },
    TOKEN_ALLOW,
    Case {
        id: 6,
        name: "retry-guard answering 428 (replays)",
        filter: Filter::Guard,
        token_status: 200,
        method: "POST",
        path: "/oauth/token",
        body: BODY,
        load: Load::Plain,
        off_on_other: false,
        expect_status: 428,
    },
    Case {
        id: 7,
        name: "Envoy direct_response 428",
        filter: Filter::None,
        token_status: 428,
        method: "POST",
        path: "/oauth/token",
        body: BODY,
        load: Load::Plain,
        off_on_other: false,
        expect_status: 428,
    },
    Case {
        id: 8,
        name: "no wasm filter, case 5's token request (the baseline of 5 ÷ 1)",
        filter: Filter::None,
        load: Load::Shape,
        ..TOKEN_ALLOW
    },
    Case {
        id: 9,
        name:
            "retry-guard, unmatched route with the filter off on that route (FilterConfig disabled)",
        off_on_other: true,
        ..UNMATCHED
    },
];

struct Options {
    wasm: Option<PathBuf>,
    cases: Vec<usize>,
    plugin_config: Option<String>,
    rounds: usize,
    seconds: u64,
    connections: usize,
    flood: u64,
    update_readme: bool,
    /// Envoy's log level; `info` writes the audit lines, `warning` drops them (to measure
    /// what the audit line costs).
    log_level: String,
    backend: Backend,
    /// Price each host call retry-guard makes instead (see [`host_costs`]).
    host_costs: bool,
    /// Check how evenly the paced runs' requests arrive instead (see [`pacing`]).
    pacing: bool,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        wasm: None,
        cases: (1..=CASES.len()).collect(),
        plugin_config: None,
        rounds: 5,
        seconds: 5,
        connections: 16,
        flood: 1_000_000,
        update_readme: false,
        log_level: "info".into(),
        backend: Backend::Upstream,
        host_costs: false,
        pacing: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--rounds" => o.rounds = num("--rounds")?.max(1) as usize,
            "--seconds" => o.seconds = num("--seconds")?.max(1),
            "--connections" => o.connections = num("--connections")?.max(1) as usize,
            "--flood" => o.flood = num("--flood")?,
            "--update-readme" => o.update_readme = true,
            "--direct" => o.backend = Backend::Direct,
            "--host-costs" => o.host_costs = true,
            "--pacing" => o.pacing = true,
            "--cases" => {
                let list = args.next().ok_or("--cases needs a list like 1,2,3")?;
                o.cases = list
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=CASES.len()).contains(n))
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        format!(
                            "--cases {list:?}: expected numbers from 1 to {}",
                            CASES.len()
                        )
                    })?;
            }
            "--envoy-log-level" => {
                o.log_level = args.next().ok_or("--envoy-log-level needs a level")?;
            }
            "--wasm" => o.wasm = Some(PathBuf::from(args.next().ok_or("--wasm needs a file")?)),
            "--plugin-config" => {
                let file = args.next().ok_or("--plugin-config needs a file")?;
                o.plugin_config =
                    Some(fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?);
            }
            "-h" | "--help" => {
                println!("usage: retry-guard-bench [--cases 1,2,.. (all)] [--plugin-config FILE] [--wasm FILE] [--rounds N (5)] [--seconds S (5)] [--connections C (16)] [--flood N (1000000)] [--envoy-log-level L (info; warning drops the audit lines)] [--direct (every route a direct_response, no upstream)] [--host-costs (price each host call retry-guard makes; writes host-costs.md)] [--pacing (how evenly the paced runs' requests arrive; writes pacing.md)] [--update-readme]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    Ok(o)
}

/// `text` with what stands between its `<!-- {section}:start -->` and
/// `<!-- {section}:end -->` markers replaced by `table`.
fn replace_section(text: &str, section: &str, table: &str) -> Result<String> {
    let (start, end) = (
        format!("<!-- {section}:start -->"),
        format!("<!-- {section}:end -->"),
    );
    let (Some(a), Some(b)) = (text.find(&start), text.find(&end)) else {
        return Err(format!("README.md has no {start} / {end} markers"));
    };
    Ok(format!("{}{start}\n{table}\n{}", &text[..a], &text[b..]))
}

/// Replaces the README's `section` (see [`replace_section`]) with `table`.
fn update_readme(section: &str, table: &str) -> Result<()> {
    let readme = repo_root().join("README.md");
    let text = fs::read_to_string(&readme).map_err(|e| e.to_string())?;
    fs::write(&readme, replace_section(&text, section, table)?).map_err(|e| e.to_string())?;
    eprintln!("updated the {section} table of README.md");
    Ok(())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn need(path: PathBuf, hint: &str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is missing; {hint}", path.display()))
    }
}

/// Where the routes' answers come from.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    /// A real upstream: a second Envoy (pinned to the load generator's core) that reads each
    /// request whole and answers it; the proxy Envoy forwards over pooled HTTP/1.1 connections,
    /// as in front of an identity API.
    Upstream,
    /// Every route is an Envoy `direct_response` in the proxy itself: no upstream at all, so
    /// the filter's share of a much cheaper request is larger.
    Direct,
}

/// The routes' answers: (route name, match, direct_response status, body).
fn answers(token_status: u16) -> [(&'static str, &'static str, u16, String); 3] {
    let token_body = if token_status == 428 {
        // About the size of retry-guard's own 428 problem document, for a fair comparison.
        let detail = "x".repeat(700);
        json!(format!(
            r#"{{"type":"urn:retry-guard:problem:confirmation-required","title":"Human confirmation required","status":428,"detail":"{detail}"}}"#
        ))
        .to_string()
    } else {
        json!(r#"{"access_token":"bench","token_type":"Bearer"}"#).to_string()
    };
    [
        (
            "token",
            r#"{ path: "/oauth/token" }"#,
            token_status,
            token_body,
        ),
        (
            "reads",
            r#"{ prefix: "/v1/" }"#,
            200,
            json!(r#"{"items":[]}"#).to_string(),
        ),
        ("other", r#"{ prefix: "/" }"#, 200, json!("ok").to_string()),
    ]
}

/// Envoy's buffer filter: the request is read whole before the route answers. A
/// `direct_response` to a request whose body has not arrived makes Envoy close the connection
/// after answering (`connection: close`, a new connection per request), which is not what an
/// upstream or retry-guard (which reads the body first) does; the configurations that answer
/// a body-carrying request themselves carry it so they are measured on kept-alive connections.
const BUFFER_FILTER: &str = r#"          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 65536
"#;

/// An Envoy bootstrap with one listener on `port`: `routes` (YAML list items) and `filters`
/// (YAML list items before the router), plus `clusters`; `hcm_extra` is added to the HTTP
/// connection manager (e.g. an access log).
fn bootstrap(port: u16, hcm_extra: &str, routes: &str, filters: &str, clusters: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
{hcm_extra}          route_config:
            name: bench
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{clusters}"#
    )
}

/// A route item answering `status` with `body` itself.
fn direct_route(name: &str, matcher: &str, status: u16, body: &str) -> String {
    format!(
        "              - name: {name}\n                match: {matcher}\n                direct_response: {{ status: {status}, body: {{ inline_string: {body} }} }}\n                response_headers_to_add:\n                - header: {{ key: content-type, value: application/json }}\n"
    )
}

/// The upstream Envoy: the answers of configurations 1 to 5, each request read whole.
fn upstream_yaml(port: u16) -> String {
    let routes: String = answers(200)
        .iter()
        .map(|(n, m, st, b)| direct_route(n, m, *st, b))
        .collect();
    bootstrap(port, "", &routes, BUFFER_FILTER, "")
}

fn envoy_yaml(
    case: &Case,
    port: u16,
    backend: Backend,
    upstream_port: u16,
    modules: &Modules,
    plugin: &str,
) -> String {
    let mut filters = match case.filter {
        Filter::None => String::new(),
        Filter::Noop | Filter::Guard | Filter::Probe(_) => {
            let (file, config) = match case.filter {
                Filter::Noop => (&modules.noop, ""),
                Filter::Probe(config) => (&modules.probe, config),
                _ => (&modules.guard, plugin),
            };
            format!(
                r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: bench
                vm_config:
                  vm_id: bench
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {file} }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {config}
                fail_open: false
                allow_on_headers_stop_iteration: true
"#,
                file = json!(file.display().to_string()),
                config = json!(config),
            )
        }
    };
    // Routes answered here: all in direct mode, and Envoy's own 428 (configuration 7).
    let local = |status: u16| backend == Backend::Direct || status == 428;
    let routes: String = answers(case.token_status)
        .iter()
        .map(|(n, m, st, b)| {
            let mut route = if local(*st) {
                direct_route(n, m, *st, b)
            } else {
                format!("              - name: {n}\n                match: {m}\n                route: {{ cluster: upstream }}\n")
            };
            if case.off_on_other && *n == "other" {
                route.push_str(
                    r#"                typed_per_filter_config:
                  envoy.filters.http.wasm:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
"#,
                );
            }
            route
        })
        .collect();
    if case.filter == Filter::None && !case.body.is_empty() && local(case.token_status) {
        filters.push_str(BUFFER_FILTER);
    }
    let clusters = if backend == Backend::Upstream {
        format!(
            r#"  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    circuit_breakers:
      thresholds:
      - {{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
"#
        )
    } else {
        String::new()
    };
    bootstrap(port, "", &routes, &filters, &clusters)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// A running Envoy, stopped by PID on drop.
struct Envoy {
    child: Child,
    port: u16,
    admin: String,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: &str, path: &str) -> Result<String> {
    http(addr, "GET", path)
}

/// A POST without a body (Envoy's admin wants POST for what changes state).
fn http_post(addr: &str, path: &str) -> Result<String> {
    http(addr, "POST", path)
}

fn http(addr: &str, method: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Starts an Envoy on `cpu` with bootstrap `yaml` listening on `port`; its files in `dir` are
/// named after `name`.
fn start_envoy(
    bin: &Path,
    dir: &Path,
    name: &str,
    yaml: &str,
    port: u16,
    cpu: &str,
    log_level: &str,
) -> Result<Envoy> {
    let cfg = dir.join(format!("envoy-{name}.yaml"));
    fs::write(&cfg, yaml).map_err(|e| e.to_string())?;
    let admin_file = dir.join(format!("admin-{name}.txt"));
    let _ = fs::remove_file(&admin_file);
    // Envoy appends to its log: without this each run would add its audit lines (gigabytes on
    // the token route) to the last run's.
    let log = dir.join(format!("envoy-{name}.log"));
    let _ = fs::remove_file(&log);
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu]).arg(bin);
    cmd.arg("-c")
        .arg(&cfg)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            log_level,
        ])
        .arg("--log-path")
        .arg(&log)
        .arg("--admin-address-path")
        .arg(&admin_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start envoy (is taskset installed?): {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut envoy = Envoy {
        child,
        port,
        admin: String::new(),
    };
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "envoy {name} did not become ready; see {}",
                dir.display()
            ));
        }
        if let Ok(Some(status)) = envoy.child.try_wait() {
            return Err(format!(
                "envoy {name} exited ({status}); see {}/envoy-{name}.log",
                dir.display(),
            ));
        }
        if envoy.admin.is_empty() {
            if let Ok(a) = fs::read_to_string(&admin_file) {
                envoy.admin = a.trim().to_string();
            }
        }
        if !envoy.admin.is_empty()
            && http_get(&envoy.admin, "/ready").is_ok_and(|r| r.contains("LIVE"))
            && TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return Ok(envoy);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A reading of Envoy's CPU time (utime + stime), to take the time spent since.
struct CpuMark {
    pid: u32,
    ticks: u64,
}

impl CpuMark {
    fn now(envoy: &Envoy) -> Result<CpuMark> {
        let pid = envoy.child.id();
        Ok(CpuMark {
            pid,
            ticks: cpu_ticks(pid)?,
        })
    }

    /// Envoy's CPU time since this mark, in µs (`tck` clock ticks per second).
    fn elapsed_us(&self, tck: f64) -> Result<f64> {
        Ok(cpu_ticks(self.pid)?.saturating_sub(self.ticks) as f64 / tck * 1e6)
    }
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("bad /proc stat field")
    };
    Ok(num(11)? + num(12)?) // utime, stime (fields 14 and 15 of the full line)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One wrk run's result.
#[derive(Clone, Debug)]
struct Run {
    requests: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    non2xx: u64,
    socket_errors: u64,
    cpu_us_per_req: f64,
    /// The load generator's lateness, for a paced run.
    pacing: Option<Pacing>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

fn wrk(envoy: &Envoy, case: &Case, seconds: u64, connections: usize, tck: f64) -> Result<Run> {
    let script = repo_root().join("bench/wrk/load.lua");
    let cpu = CpuMark::now(envoy)?;
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}", envoy.port))
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
        .output()
        .map_err(|e| format!("cannot run wrk (apt-get install wrk): {e}"))?;
    let cpu_us = cpu.elapsed_us(tck)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RGJSON "))
        .ok_or_else(|| {
            format!(
                "wrk printed no result: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
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

/// oha processes of a paced run; together they send the paced rate.
///
/// oha releases the requests that fall due within one millisecond together (its timer is
/// tokio's), so one process at 14,000 req/s sends bursts of about 14, and each request queues
/// behind the others in its burst. Sixteen processes tick at unrelated phases. `just bench
/// --pacing` measures both in Envoy's access log (README, "The paced runs"): at 14,000 req/s
/// one process put 85% of the requests less than 20 µs after the one before (bursts of 8,
/// p90 13), sixteen 34% (bursts of 2, p90 3), where independent clients would put 24%.
const PACED_PROCESSES: usize = 16;

/// Connections of each paced oha process: with two, a request rarely falls due while its
/// process waits for both earlier answers (that wait counts in the lateness, [`Pacing`]).
const PACED_CONNECTIONS_EACH: usize = 2;

/// oha's command line for a run of `case` against `envoy` for `seconds`, without the load
/// shape (`-q`, `-c`): the method, body and headers, and for a unique case a random query
/// string and a JWT minted now.
///
/// oha cannot vary a header or a body per request (`-Z` picks body lines at random, so a
/// file of unique lines still repeats about one in five), so a `unique` case sends a random
/// query string (`--rand-regex-url`, 24 random characters) without an Idempotency-Key: the
/// fingerprint covers the path and query, so every request is a first attempt with the same
/// work as a unique key (fingerprint, ledger write, audit line). Its JWT is minted when the
/// run starts (fresh: `iat` now, `exp` in 600 s).
fn oha_command(envoy: &Envoy, case: &Case, seconds: u64) -> Command {
    let mut url = format!("http://127.0.0.1:{}{}", envoy.port, case.path);
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "oha", "--no-tui", "--output-format", "json"])
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
        let jwt = retry_guard_e2e::tokens::unsigned_jwt(&json!({
            "sub": "bench-bot", "iat": now, "exp": now + 600,
            "jti": format!("{now}-{}", std::process::id()),
        }));
        cmd.args(["-H", &format!("authorization: Bearer {jwt}")])
            .arg("--rand-regex-url");
        // A regex: `?` escaped, then the random part.
        url = format!("{url}\\?n=[a-z0-9]{{24}}");
    }
    cmd.arg(url);
    cmd
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

/// Reads oha's JSON result. Every answer must be the case's expected status, or the run is
/// refused as a measurement of something else.
fn oha_result(out: &std::process::Output, case: &Case) -> Result<OhaResult> {
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "oha printed no JSON result ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
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
    let unexpected = count(&|k| k != expected) + errors;
    if unexpected > 0 {
        return Err(format!(
            "oha run of case {} got {unexpected} of {requests} answers other than {expected}: {} {}",
            case.id, v["statusCodeDistribution"], v["errorDistribution"]
        ));
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

/// An unloaded run: oha closed loop on one connection (each request sent when the previous
/// answer arrived), the latency of a request that never queues.
fn oha_unloaded(envoy: &Envoy, case: &Case, seconds: u64, tck: f64) -> Result<Run> {
    let mut cmd = oha_command(envoy, case, seconds);
    cmd.args(["-c", "1"]);
    let cpu = CpuMark::now(envoy)?;
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run oha (cargo install oha --locked): {e}"))?;
    let cpu_us = cpu.elapsed_us(tck)?;
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

/// How well the paced load generator kept its schedule: how late each request left against
/// the time it was due (oha's timer firing late, and the wait for a free connection).
#[derive(Clone, Copy, Debug)]
struct Pacing {
    late_p50_us: f64,
    late_p99_us: f64,
}

/// The load of a paced run: `rate` requests per second in all, from `processes` oha
/// processes on `connections` connections each.
#[derive(Clone, Copy)]
struct Pace {
    rate: f64,
    processes: usize,
    connections: usize,
}

impl Pace {
    /// The paced runs' shape ([`PACED_PROCESSES`] × [`PACED_CONNECTIONS_EACH`]) at `rate`.
    fn at(rate: f64) -> Pace {
        Pace {
            rate,
            processes: PACED_PROCESSES,
            connections: PACED_CONNECTIONS_EACH,
        }
    }
}

/// A paced run of `case` for `seconds` (see [`Pace`]).
///
/// Latency counts from the moment each request was sent (oha's per-request record,
/// `--db-url`), not from when it was due: oha's timer works in whole milliseconds and
/// releases requests about a millisecond late, the same for every configuration, and counting
/// that lateness in would measure the load generator. How late the requests left is reported
/// beside it ([`Pacing`]). Every answer must be the case's expected status, every oha process
/// must succeed and have recorded every answer it counted, or the run is refused.
fn oha_paced(
    envoy: &Envoy,
    case: &Case,
    seconds: u64,
    pace: Pace,
    tck: f64,
    dir: &Path,
) -> Result<Run> {
    // The rate each process is given, as oha reads it (its schedule: request k at k / each).
    let each_arg = format!("{:.3}", pace.rate / pace.processes.max(1) as f64);
    let each: f64 = each_arg.parse().unwrap_or(1.0);
    let dbs: Vec<PathBuf> = (0..pace.processes.max(1))
        .map(|i| dir.join(format!("paced-{}-{i}.db", case.id)))
        .collect();
    let cpu = CpuMark::now(envoy)?;
    let mut children = Vec::new();
    for db in &dbs {
        let _ = fs::remove_file(db);
        let mut cmd = oha_command(envoy, case, seconds);
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
                return Err(format!("cannot run oha (cargo install oha --locked): {e}"));
            }
        }
    }
    let outputs: Vec<std::process::Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().map_err(|e| format!("oha: {e}")))
        .collect::<Result<_>>()?;
    let cpu_us = cpu.elapsed_us(tck)?;
    let mut requests = 0;
    let (mut non2xx, mut errors, mut rps) = (0, 0, 0.0);
    let mut latency = Vec::new();
    let mut late = Vec::new();
    for (out, db) in outputs.iter().zip(&dbs) {
        let r = oha_result(out, case)?;
        // oha prints its result before it stores the records: a failed store (a full disk)
        // shows only in its exit status.
        if !out.status.success() {
            return Err(format!(
                "oha ({}) failed in the paced run of case {}: {}",
                out.status,
                case.id,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let recorded = read_oha_db(db, each, &mut latency, &mut late)?;
        let _ = fs::remove_file(db);
        if recorded != r.requests {
            return Err(format!(
                "oha recorded {recorded} of the {} answers it counted in the paced run of case {}",
                r.requests, case.id
            ));
        }
        requests += r.requests;
        non2xx += r.non2xx;
        errors += r.errors;
        rps += r.requests as f64 / r.seconds.max(1e-9);
    }
    if latency.is_empty() {
        return Err(format!("paced run of case {} recorded no request", case.id));
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
    let fail =
        |e: rusqlite::Error| format!("cannot read oha's request records {}: {e}", db.display());
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

/// The nearest-rank percentile `p` (0 to 1) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn per_request(cpu_us: f64, requests: u64) -> f64 {
    if requests > 0 {
        cpu_us / requests as f64
    } else {
        0.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
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

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

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

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown date".into(), |s| s.trim().to_string())
}

/// The commit measured (`git rev-parse --short HEAD`, `-dirty` with uncommitted changes
/// other than the README).
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
            // README.md is what `--update-readme` rewrites; any other change is measured too.
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| {
                s.lines()
                    .any(|l| l.get(3..).is_some_and(|path| path != "README.md"))
            });
            format!("{head}{}", if dirty { "-dirty" } else { "" })
        }
        None => "unknown commit".into(),
    }
}

fn wasmcustom(envoy: &Envoy, name: &str) -> Option<u64> {
    let text = http_get(&envoy.admin, &format!("/stats?filter={name}")).ok()?;
    text.lines().find_map(|l| {
        l.split_once(": ")
            .filter(|(k, _)| k.ends_with(name))
            .and_then(|(_, v)| v.trim().parse().ok())
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("retry-guard-bench: {e} (Envoy's logs are kept in target/bench)");
        std::process::exit(1);
    }
    remove_envoy_logs(&repo_root().join("target/bench"));
}

/// Removes the Envoys' logs of a run that succeeded: at `-l info` they hold every audit line
/// (several gigabytes per run on the token route), and the report holds what was measured.
/// A failed run keeps them for the diagnosis.
fn remove_envoy_logs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut bytes = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("envoy-") && name.ends_with(".log") {
            bytes += e.metadata().map_or(0, |m| m.len());
            let _ = fs::remove_file(e.path());
        }
    }
    if bytes > 0 {
        eprintln!(
            "removed the Envoys' logs ({:.1} MB of audit lines) from {}",
            bytes as f64 / 1e6,
            dir.display()
        );
    }
}

fn run() -> Result<()> {
    let o = parse_args()?;
    let root = repo_root();
    let bin = need(
        root.join(".tools/envoy/envoy/_bin/envoy"),
        "run `just envoy-install`",
    )?;
    let wasm = need(
        o.wasm
            .clone()
            .unwrap_or_else(|| root.join("target/wasm32-wasip1/release/retry_guard.wasm")),
        "run `just build`",
    )?;
    let noop = need(
        root.join("target/wasm32-wasip1/release/noop_filter.wasm"),
        "run `just bench` (it builds the no-op filter)",
    )?;
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tck = clock_ticks_per_second();
    if o.pacing {
        return pacing::run(&o, &bin, &dir, tck);
    }
    let wasm_bytes = fs::metadata(&wasm).map_err(|e| e.to_string())?.len();
    let noop_bytes = fs::metadata(&noop).map_err(|e| e.to_string())?.len();

    let probe = root.join("target/wasm32-wasip1/release/hostcost_filter.wasm");
    if o.host_costs {
        need(
            probe.clone(),
            "run `just bench --host-costs` (it builds the probe)",
        )?;
    }
    let modules = Modules {
        guard: wasm.clone(),
        noop: noop.clone(),
        probe,
    };

    let plugin = o.plugin_config.clone().unwrap_or_else(|| {
        // host-sim's benchmark measures the same configuration per request path.
        String::from_utf8_lossy(&host_sim::bench::plugin_config(65_536)).into_owned()
    });
    // The upstream (upstream mode) shares the load generator's core: the proxy keeps CPU 0.
    let upstream = match o.backend {
        Backend::Upstream => {
            let port = free_port()?;
            Some(start_envoy(
                &bin,
                &dir,
                "upstream",
                &upstream_yaml(port),
                port,
                "1",
                "warning",
            )?)
        }
        Backend::Direct => None,
    };
    let upstream_port = upstream.as_ref().map_or(0, |u| u.port);
    let proxy = |case: &Case| -> Result<Envoy> {
        let port = free_port()?;
        let yaml = envoy_yaml(case, port, o.backend, upstream_port, &modules, &plugin);
        start_envoy(
            &bin,
            &dir,
            &case.id.to_string(),
            &yaml,
            port,
            "0",
            &o.log_level,
        )
    };
    if o.host_costs {
        return host_costs::run(&o, &proxy, tck, &dir, &wasm);
    }
    let selected: Vec<&Case> = CASES.iter().filter(|c| o.cases.contains(&c.id)).collect();
    eprintln!(
        "starting {} Envoys (--concurrency 1, pinned to CPU 0; wrk pinned to CPU 1)",
        selected.len()
    );
    let envoys: Vec<Envoy> = selected.iter().map(|c| proxy(c)).collect::<Result<_>>()?;
    // Warm-up; it also gives case 6 its succeeded first attempt, so every later request replays.
    for (case, envoy) in selected.iter().zip(&envoys) {
        wrk(envoy, case, 1, 4, tck)?;
    }

    let mut saturated: Vec<Vec<Run>> = vec![Vec::new(); CASES.len()];
    for round in 0..o.rounds {
        for (case, envoy) in selected.iter().zip(&envoys) {
            let i = case.id - 1;
            let r = wrk(envoy, case, o.seconds, o.connections, tck)?;
            eprintln!(
                "round {} case {}: {:>8.0} req/s  {:>6.2} µs CPU/req  non-2xx {}  socket errors {}",
                round + 1,
                case.id,
                r.rps(),
                r.cpu_us_per_req,
                r.non2xx,
                r.socket_errors
            );
            saturated[i].push(r);
        }
    }
    let sat_median: Vec<f64> = saturated
        .iter()
        .filter(|r| !r.is_empty())
        .map(|runs| median(runs.iter().map(Run::rps).collect()))
        .collect();
    let slowest = sat_median.iter().cloned().fold(f64::INFINITY, f64::min);
    let target_rate = (slowest * 0.5).max(100.0);
    eprintln!(
        "paced runs at {target_rate:.0} req/s (half the slowest saturated median), {PACED_PROCESSES} oha processes × {PACED_CONNECTIONS_EACH} connections"
    );
    // Latency runs of every configuration, round by round: `rate` paced, `None` unloaded.
    let latency = |label: &str, rate: Option<f64>| -> Result<Vec<Vec<Run>>> {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); CASES.len()];
        for round in 0..o.rounds {
            for (case, envoy) in selected.iter().zip(&envoys) {
                let r = match rate {
                    Some(rate) => oha_paced(envoy, case, o.seconds, Pace::at(rate), tck, &dir)?,
                    None => oha_unloaded(envoy, case, o.seconds, tck)?,
                };
                eprintln!(
                    "round {} case {} {label}: {:>7.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs",
                    round + 1,
                    case.id,
                    r.rps(),
                    r.p50_us,
                    r.p99_us
                );
                runs[case.id - 1].push(r);
            }
        }
        Ok(runs)
    };
    let paced = latency("paced", Some(target_rate))?;
    eprintln!("unloaded runs: oha, closed loop on 1 connection");
    let unloaded = latency("unloaded", None)?;
    let evicted_during_bench = selected
        .iter()
        .zip(&envoys)
        .find(|(c, _)| c.id == 5)
        .and_then(|(_, e)| wasmcustom(e, "retry_guard.ledger.evicted"));
    drop(envoys);

    // Memory: a flood of unique keys on a guarded route with max_entries 65536.
    eprintln!(
        "memory run: {} unique keys on the token route, max_entries 65536",
        o.flood
    );
    let flood_case = &CASES[4];
    let envoy = proxy(flood_case)?;
    wrk(&envoy, flood_case, 1, 4, tck)?;
    let pid = envoy.child.id();
    let rss_before = rss_kib(pid)?;
    let mut sent = 0u64;
    let mut samples = vec![(0u64, rss_before)];
    if o.flood == 0 {
        eprintln!("  (skipped: --flood 0)");
    }
    let flood_deadline = Instant::now() + Duration::from_secs(900);
    while sent < o.flood && Instant::now() < flood_deadline {
        let r = wrk(&envoy, flood_case, 10, o.connections, tck)?;
        sent += r.requests;
        let rss = rss_kib(pid)?;
        eprintln!("  {sent:>9} keys: RSS {rss} KiB");
        samples.push((sent, rss));
    }
    std::thread::sleep(Duration::from_secs(6)); // one tick refreshes the memory gauge
    let evicted = wasmcustom(&envoy, "retry_guard.ledger.evicted").unwrap_or(0);
    let wasm_memory = wasmcustom(&envoy, "retry_guard.vm.memory_bytes").unwrap_or(0);
    drop(envoy);
    drop(upstream);

    let report = Report {
        date: today(),
        commit: commit(),
        machine: machine(),
        opts: o,
        sat: saturated,
        paced,
        unloaded,
        target_rate,
        wasm_bytes,
        noop_bytes,
        rss: samples,
        evicted,
        evicted_during_bench,
        wasm_memory,
    };
    report.write(&dir)?;
    Ok(())
}

struct Report {
    date: String,
    commit: String,
    machine: String,
    opts: Options,
    sat: Vec<Vec<Run>>,
    paced: Vec<Vec<Run>>,
    unloaded: Vec<Vec<Run>>,
    target_rate: f64,
    wasm_bytes: u64,
    noop_bytes: u64,
    rss: Vec<(u64, u64)>,
    evicted: u64,
    evicted_during_bench: Option<u64>,
    wasm_memory: u64,
}

struct Ratio {
    name: &'static str,
    goal: &'static str,
    median: f64,
    min: f64,
    max: f64,
    /// Whether the goal is met; `None` for a row without a goal (shown for reference).
    pass: Option<bool>,
}

impl Report {
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
        let (min, max) = min_max(&per_round);
        let median = median(per_round);
        Some(Ratio {
            name,
            goal,
            median,
            min,
            max,
            pass: min_goal.map(|g| median >= g),
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
            let (min, max) = min_max(&per_round);
            let median = median(per_round);
            Some(Ratio {
                name,
                goal: if goal.is_some() { "≤ 20" } else { "" },
                median,
                min,
                max,
                pass: goal.map(|g| median <= g),
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

    fn table(&self) -> String {
        let mut s = String::new();
        let mode = match self.opts.backend {
            Backend::Upstream => "upstream mode: routes 1–5 and 8 forwarded to a real upstream Envoy pinned to CPU 1",
            Backend::Direct => "direct mode (`just bench --direct`): every route an Envoy `direct_response`, no upstream",
        };
        let _ = writeln!(s, "Measured {} at commit {} on {} with `just bench`, {mode} ({} interleaved rounds of {} s per configuration and mode, Envoy 1.40.0 `--concurrency 1 -l {}` pinned to CPU 0, the load generator pinned to CPU 1; saturated: wrk 1 thread × {} connections; paced: {:.0} req/s in all, half the slowest configuration's saturated median, from {PACED_PROCESSES} oha processes on {PACED_CONNECTIONS_EACH} connections each, latency counted from when each request was sent, which was a median {:.0} µs (p99 {:.0} µs) after oha's schedule had it due; unloaded: oha closed loop on 1 connection). Case 8 is configuration 1 (no filter) sent case 5's request: the same method, path, body and headers of the same lengths, so 5 ÷ 8 is the filter's share alone. In case 5 (and 8) each paced and unloaded request has a random query string and no Idempotency-Key, so each is a first attempt; see `oha` in bench/src/main.rs.\n", self.date, self.commit, self.machine, self.opts.rounds, self.opts.seconds, self.opts.log_level, self.opts.connections, self.target_rate, self.lateness(|p| p.late_p50_us), self.lateness(|p| p.late_p99_us));
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
                r.median,
                r.min,
                r.max,
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

    fn write(&self, dir: &Path) -> Result<()> {
        let table = self.table();
        println!("{table}");
        fs::write(
            dir.join("report.md"),
            format!("# retry-guard benchmark\n\n{table}"),
        )
        .map_err(|e| e.to_string())?;
        let runs = |v: &Vec<Vec<Run>>| -> Value {
            CASES.iter().zip(v).filter(|(_, runs)| !runs.is_empty()).map(|(c, runs)| json!({
                "case": c.id, "name": c.name,
                "runs": runs.iter().map(|r| json!({"requests": r.requests, "seconds": r.seconds, "rps": r.rps(), "cpu_us_per_request": r.cpu_us_per_req, "p50_us": r.p50_us, "p99_us": r.p99_us, "non2xx": r.non2xx, "socket_errors": r.socket_errors,
                    "send_late_p50_us": r.pacing.map(|p| p.late_p50_us), "send_late_p99_us": r.pacing.map(|p| p.late_p99_us)})).collect::<Vec<_>>(),
            })).collect()
        };
        let j = json!({
            "date": self.date, "commit": self.commit, "machine": self.machine, "rounds": self.opts.rounds, "seconds": self.opts.seconds,
            "connections": self.opts.connections, "paced_rate": self.target_rate, "envoy_log_level": self.opts.log_level,
            "backend": match self.opts.backend { Backend::Upstream => "upstream", Backend::Direct => "direct" },
            "saturated": runs(&self.sat), "paced": runs(&self.paced), "unloaded": runs(&self.unloaded),
            "ratios": self.ratios().iter().map(|r| json!({"figure": r.name, "goal": r.goal, "median": r.median, "min": r.min, "max": r.max, "met": r.pass})).collect::<Vec<_>>(),
            "wasm_bytes": self.wasm_bytes, "noop_wasm_bytes": self.noop_bytes,
            "rss_kib_by_keys": self.rss, "evicted_in_flood": self.evicted, "evicted_during_throughput": self.evicted_during_bench,
            "wasm_memory_bytes": self.wasm_memory, "shared_bytes_per_entry": self.shared_bytes_per_entry(),
        });
        fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        eprintln!("wrote {}/report.md and report.json", dir.display());
        if self.opts.update_readme {
            update_readme(
                match self.opts.backend {
                    Backend::Upstream => "bench",
                    Backend::Direct => "bench-direct",
                },
                &table,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_removes_the_envoy_logs_only() {
        let dir = std::env::temp_dir().join(format!("rg-bench-logs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for f in [
            "envoy-5.log",
            "envoy-upstream.log",
            "envoy-5.yaml",
            "report.md",
        ] {
            fs::write(dir.join(f), "x").unwrap();
        }
        remove_envoy_logs(&dir);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["envoy-5.yaml", "report.md"]);
        fs::remove_dir_all(&dir).unwrap();
    }

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
        assert!(err.contains("missing.db"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_readme_section_is_replaced_between_its_own_markers_only() {
        let text = "a\n<!-- bench:start -->\nold\n<!-- bench:end -->\nb\n<!-- bench-direct:start -->\nkeep\n<!-- bench-direct:end -->\n";
        let out = replace_section(text, "bench", "new").unwrap();
        assert_eq!(
            out,
            "a\n<!-- bench:start -->\nnew\n<!-- bench:end -->\nb\n<!-- bench-direct:start -->\nkeep\n<!-- bench-direct:end -->\n"
        );
        let err = replace_section(text, "bench-host-costs", "x").unwrap_err();
        assert!(err.contains("<!-- bench-host-costs:start -->"), "{err}");
    }
}

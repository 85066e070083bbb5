//! The host-sim micro-benchmark per request path (issue 5): host calls per request (per import
//! name), guest instructions (wasmtime fuel) and wall time per request, for the request paths
//! of the Envoy benchmark (`bench/src/main.rs`): an unmatched route, a `read_only` route, a
//! `token_issuing` allow (unique idempotency key and fresh JWT each time) and a 428 replay.
//!
//! Counting runs on a profiling runtime ([`Runtime::profiling`]: fuel on, host calls
//! counted); timing runs on a normal runtime, so the counters cost the timed runs nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::sim::{Request, RouteRule, Sim, SimConfig};
use crate::upstream::Upstream;
use crate::vm::Runtime;

/// The body of the Envoy benchmark's POSTs.
pub const BODY: &str = "grant_type=client_credentials&scope=deploy";

/// The plugin configuration of the Envoy benchmark (`bench/src/main.rs` loads it too).
pub fn plugin_config(max_entries: u32) -> Vec<u8> {
    serde_json::json!({
        "window_seconds": 86400,
        "max_entries": max_entries,
        "principal": ["jwt:sub", "header:x-client-id", "token"],
        "routes": [
            {"name": "oauth-token", "match": {"route_name": "token", "methods": ["POST"], "path": "/oauth/token"},
             "class": "token_issuing", "owner": "team-iam", "escalation": "pagerduty:iam-primary", "token_max_age_seconds": 300},
            {"name": "reads", "match": {"route_name": "reads", "methods": ["GET"], "path_prefix": "/v1/"},
             "class": "read_only", "owner": "team-iam", "escalation": "pagerduty:iam-primary"}
        ]
    })
    .to_string()
    .into_bytes()
}

/// The Envoy benchmark's routes: `token` (`/oauth/token`), `reads` (prefix `/v1/`), and a
/// catch-all, so the sim gives each request the `xds.route_name` Envoy gives it.
pub fn routes() -> Vec<RouteRule> {
    let rule = |name: &str, path: Option<&str>, prefix: Option<&str>| RouteRule {
        name: name.into(),
        path: path.map(Into::into),
        prefix: prefix.map(Into::into),
        cluster: "backend".into(),
    };
    vec![
        rule("token", Some("/oauth/token"), None),
        rule("reads", None, Some("/v1/")),
        rule("catch_all", None, Some("/")),
    ]
}

/// One request path of the benchmark.
#[derive(Clone, Copy, Debug)]
pub struct PathCase {
    /// Short name.
    pub name: &'static str,
    /// What it is.
    pub description: &'static str,
    /// Method.
    pub method: &'static str,
    /// Path.
    pub path: &'static str,
    /// The status every measured request must get.
    pub expect_status: u16,
    /// A unique Idempotency-Key and a fresh JWT per request.
    pub unique: bool,
}

/// The four paths (Envoy benchmark cases 3–6).
pub const PATHS: [PathCase; 4] = [
    PathCase {
        name: "unmatched",
        description: "GET /other (no retry-guard route matches)",
        method: "GET",
        path: "/other",
        expect_status: 200,
        unique: false,
    },
    PathCase {
        name: "read_only",
        description: "GET /v1/items (route reads, class read_only)",
        method: "GET",
        path: "/v1/items",
        expect_status: 200,
        unique: false,
    },
    PathCase {
        name: "token_issuing_allow",
        description: "POST /oauth/token, unique Idempotency-Key and fresh JWT (allowed)",
        method: "POST",
        path: "/oauth/token",
        expect_status: 200,
        unique: true,
    },
    PathCase {
        name: "replay_428",
        description: "POST /oauth/token, the same request again (428)",
        method: "POST",
        path: "/oauth/token",
        expect_status: 428,
        unique: false,
    },
];

/// What one path costs, per request.
#[derive(Clone, Debug, Serialize)]
pub struct PathResult {
    /// Case name.
    pub name: String,
    /// Case description.
    pub description: String,
    /// Statuses of the measured requests.
    pub statuses: BTreeMap<u16, u64>,
    /// Measured requests (per measurement).
    pub requests: u64,
    /// Host calls per request by import name (mean over the measured requests).
    pub host_calls: BTreeMap<String, f64>,
    /// All host calls per request.
    pub host_calls_total: f64,
    /// Fuel per request (about one unit per guest wasm instruction).
    pub fuel: f64,
    /// Mean wall time per request in microseconds (normal runtime, whole exchange in the sim:
    /// context create to delete, upstream simulated).
    pub wall_us: f64,
    /// Where the guest's time goes, by function (only with `--functions`, else empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionShare>,
    /// One more request of the path, traced (only with `--segments`, else empty): the fuel
    /// the guest used between each host call or callback entry or return and the next
    /// (counted, where the function samples are estimates).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
}

/// Guest instructions between two consecutive events of a traced request. Stretches from a
/// callback's return to the next callback's entry are left out when the guest ran nothing
/// there (as it never does between callbacks).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Segment {
    /// Where the stretch starts: `→ proxy_on_…` (the host entered a callback), `← proxy_on_…`
    /// (it returned) or a host function the guest called.
    pub from: String,
    /// Where it ends (the same kinds).
    pub to: String,
    /// Fuel consumed in between (about one unit per guest wasm instruction; values a host
    /// call hands over are allocated by the guest inside the call, and count after it).
    pub instructions: u64,
}

/// The segments of one traced request: consecutive events of each VM that has any, the
/// events named after their VM (`vm 1: …`) if more than one VM has events.
fn segments(trace: &[Vec<crate::vm::FuelEvent>]) -> Vec<Segment> {
    let traced = trace.iter().filter(|events| !events.is_empty()).count();
    let label = |vm: usize, at: &str| {
        if traced > 1 {
            format!("vm {vm}: {at}")
        } else {
            at.to_string()
        }
    };
    trace
        .iter()
        .enumerate()
        .flat_map(|(vm, events)| {
            events.windows(2).map(move |w| Segment {
                from: label(vm, &w[0].at),
                to: label(vm, &w[1].at),
                instructions: w[0].fuel_left.saturating_sub(w[1].fuel_left),
            })
        })
        .filter(|g| !(g.instructions == 0 && g.from.contains('←') && g.to.contains('→')))
        .collect()
}

/// One guest function's share of a path's stack samples (see [`Runtime::sample_every`]).
#[derive(Clone, Debug, Serialize)]
pub struct FunctionShare {
    /// Function name from the module's name section (`<wasm function N>` without one).
    pub function: String,
    /// Share of samples with the function on top of the stack, in percent.
    pub self_percent: f64,
    /// Share of samples with the function anywhere on the stack, in percent.
    pub inclusive_percent: f64,
    /// The path's fuel per request times `self_percent`: guest instructions per request
    /// spent in the function itself, estimated.
    pub self_fuel: f64,
    /// Its callers when it was on top of the stack, most samples first (at most three), with
    /// their share of this function's self samples in percent.
    pub callers: Vec<(String, f64)>,
}

/// How many functions [`run`] keeps per path when it samples.
const TOP_FUNCTIONS: usize = 25;

/// Turns a path's samples into its top functions by self share.
fn top_functions(s: &crate::vm::FunctionSamples, fuel: f64) -> Vec<FunctionShare> {
    if s.total == 0 {
        return Vec::new();
    }
    let pct = |v: u64| 100.0 * v as f64 / s.total as f64;
    let mut own: BTreeMap<&str, u64> = BTreeMap::new();
    for ((top, _), n) in &s.callers {
        *own.entry(top.as_str()).or_insert(0) += n;
    }
    let own_of = |name: &str| own.get(name).copied().unwrap_or(0);
    let mut v: Vec<FunctionShare> = s
        .inclusive
        .iter()
        .map(|(name, incl)| FunctionShare {
            function: name.clone(),
            self_percent: pct(own_of(name)),
            inclusive_percent: pct(*incl),
            self_fuel: fuel * own_of(name) as f64 / s.total as f64,
            callers: Vec::new(),
        })
        .collect();
    v.sort_by(|a, b| {
        b.self_percent
            .total_cmp(&a.self_percent)
            .then(b.inclusive_percent.total_cmp(&a.inclusive_percent))
    });
    v.truncate(TOP_FUNCTIONS);
    // Callers only for the functions kept.
    for f in &mut v {
        let total = own_of(&f.function).max(1) as f64;
        f.callers = s
            .callers
            .iter()
            .filter(|((top, _), _)| *top == f.function)
            .map(|((_, caller), n)| (caller.clone(), 100.0 * *n as f64 / total))
            .collect();
        f.callers.sort_by(|a, b| b.1.total_cmp(&a.1));
        f.callers.truncate(3);
    }
    v
}

fn request(case: &PathCase, i: u64, now: u64) -> Request {
    let mut r = Request::new(case.method, case.path)
        .header("x-client-id", "bench-bot")
        .on_worker((i % 2) as usize);
    if case.method == "POST" {
        r = r
            .header("content-type", "application/x-www-form-urlencoded")
            .body(BODY);
    }
    if case.unique {
        let jwt = crate::tokens::unsigned_jwt(&serde_json::json!({
            "sub": "bench-bot", "iat": now, "exp": now + 600, "jti": format!("bench-{i}")
        }));
        r = r
            .header("authorization", format!("Bearer {jwt}"))
            .header("idempotency-key", format!("bench-key-{i}"));
    }
    r
}

fn sim(rt: &Runtime) -> Result<Sim, String> {
    Sim::new(
        rt,
        SimConfig {
            plugin_config: plugin_config(65_536),
            routes: routes(),
            ..SimConfig::default()
        },
    )
    .map_err(|e| e.to_string())
}

const WARMUP: u64 = 50;

/// Runs `n` requests of `case` (after a warm-up) and returns their statuses.
fn drive(
    sim: &Sim,
    case: &PathCase,
    from: u64,
    n: u64,
    statuses: &mut BTreeMap<u16, u64>,
) -> Result<(), String> {
    let upstream = Upstream::ok();
    for i in from..from + n {
        let ex = sim
            .request(&request(case, i, sim.now_unix()), &upstream)
            .map_err(|e| e.to_string())?;
        if let Some(t) = &ex.trap {
            return Err(format!("{}: trap {t}", case.name));
        }
        *statuses.entry(ex.status).or_insert(0) += 1;
    }
    Ok(())
}

/// The no-op floor filter (`bench/noop`) on the unmatched request: what the wasm boundary
/// alone costs, the baseline of the `unmatched` path.
pub const FLOOR: PathCase = PathCase {
    name: "noop_floor",
    description: "the no-op filter (bench/noop), GET /other",
    method: "GET",
    path: "/other",
    expect_status: 200,
    unique: false,
};

/// Refuses an `--only` that names no path of [`PATHS`], naming the paths.
fn check_only(only: Option<&str>) -> Result<(), String> {
    match only.filter(|o| !PATHS.iter().any(|p| p.name == *o)) {
        Some(name) => {
            let names: Vec<&str> = PATHS.iter().map(|p| p.name).collect();
            Err(format!(
                "--only {name:?}: no such path; the paths are {}",
                names.join(", ")
            ))
        }
        None => Ok(()),
    }
}

/// Measures every path: `n` requests each for the counts and again for the time. With
/// `sample`, the counting run also samples the guest stack about every 10 µs (see
/// [`Runtime::sample_every`]) and reports where the time goes by function; the module needs its
/// name section for names (`just profile-sim` builds one). With `trace`, one more request per
/// path is traced for its [`Segment`]s. With `floor` (the no-op filter's
/// module), the floor is measured first on the unmatched request. With `only`, just the path of
/// that name (e.g. to profile one path with `perf`).
pub fn run(
    wasm: &Path,
    n: u64,
    sample: bool,
    trace: bool,
    floor: Option<&Path>,
    only: Option<&str>,
) -> Result<Vec<PathResult>, String> {
    check_only(only)?;
    let n = n.max(1);
    let mut out = Vec::new();
    if let Some(floor) = floor {
        let profiling = Runtime::profiling(floor).map_err(|e| e.to_string())?;
        let normal = Runtime::from_file(floor).map_err(|e| e.to_string())?;
        out.push(measure(&profiling, &normal, &FLOOR, n, sample, trace)?);
    }
    let profiling = Runtime::profiling(wasm).map_err(|e| e.to_string())?;
    let normal = Runtime::from_file(wasm).map_err(|e| e.to_string())?;
    for case in PATHS.iter().filter(|p| only.is_none_or(|o| o == p.name)) {
        out.push(measure(&profiling, &normal, case, n, sample, trace)?);
    }
    Ok(out)
}

/// Measures one path: counts on the profiling runtime, time on the normal one.
fn measure(
    profiling: &Runtime,
    normal: &Runtime,
    case: &PathCase,
    n: u64,
    sample: bool,
    trace: bool,
) -> Result<PathResult, String> {
    // Counts.
    let s = sim(profiling)?;
    let mut ignore = BTreeMap::new();
    drive(&s, case, 0, WARMUP, &mut ignore)?;
    let before = s.profile();
    let mut statuses = BTreeMap::new();
    let sampler = sample.then(|| profiling.sample_every(std::time::Duration::from_micros(10)));
    drive(&s, case, WARMUP, n, &mut statuses)?;
    drop(sampler);
    let samples = s.function_samples();
    let p = s.profile().since(&before);
    let mut segments = Vec::new();
    if trace {
        let mut traced = BTreeMap::new();
        s.trace_fuel(true);
        drive(&s, case, WARMUP + n, 1, &mut traced)?;
        segments = self::segments(&s.take_fuel_trace());
        s.trace_fuel(false);
        if !traced.contains_key(&case.expect_status) {
            return Err(format!(
                "{}: the traced request got {traced:?}, not {}",
                case.name, case.expect_status
            ));
        }
    }
    if statuses.len() != 1 || !statuses.contains_key(&case.expect_status) {
        return Err(format!(
            "{}: expected every request to get {}, got {statuses:?}",
            case.name, case.expect_status
        ));
    }
    // Time.
    let s = sim(normal)?;
    drive(&s, case, 0, WARMUP, &mut ignore)?;
    let mut timed = BTreeMap::new();
    let t0 = Instant::now();
    drive(&s, case, WARMUP, n, &mut timed)?;
    let wall_us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    let per = |v: u64| v as f64 / n as f64;
    Ok(PathResult {
        name: case.name.into(),
        description: case.description.into(),
        statuses,
        requests: n,
        host_calls_total: per(p.host_calls.values().sum()),
        host_calls: p
            .host_calls
            .iter()
            .map(|(k, v)| (k.clone(), per(*v)))
            .collect(),
        fuel: per(p.fuel),
        wall_us,
        functions: top_functions(&samples, per(p.fuel)),
        segments,
    })
}

/// One path's recording for a replay on another engine (`just bench-v8`): what one VM's
/// host did from its start to the end of one request of the path.
#[derive(Clone, Debug, Serialize)]
pub struct Recording {
    /// Case name.
    pub path: String,
    /// Case description.
    pub description: String,
    /// The status the recorded request got.
    pub status: u16,
    /// The VM's start: `_initialize`, the root context, `proxy_on_vm_start`,
    /// `proxy_on_configure`.
    pub setup: Vec<crate::replay::Callback>,
    /// The earlier requests of the path on that VM (replayed once, before the timing).
    pub warm: Vec<crate::replay::Callback>,
    /// The request to time, from `proxy_on_context_create` to `proxy_on_delete`.
    pub request: Vec<crate::replay::Callback>,
}

/// Requests of a path before the recorded one (two per worker: a `replay_428`'s first
/// request is the allowed one, the ones after it the 428s).
const RECORD_WARMUP: u64 = 4;

/// Records every path (or just `only`) for a replay: a recording runtime of `wasm`, a fresh
/// sim per path, [`RECORD_WARMUP`] requests, then the one recorded.
pub fn record(wasm: &Path, only: Option<&str>) -> Result<Vec<Recording>, String> {
    check_only(only)?;
    let rt = Runtime::from_file(wasm)
        .map_err(|e| e.to_string())?
        .recording();
    let mut out = Vec::new();
    for case in PATHS.iter().filter(|p| only.is_none_or(|o| o == p.name)) {
        let s = sim(&rt)?;
        let setup = s.take_recordings()?;
        let mut ignore = BTreeMap::new();
        drive(&s, case, 0, RECORD_WARMUP, &mut ignore)?;
        let warm = s.take_recordings()?;
        let mut statuses = BTreeMap::new();
        drive(&s, case, RECORD_WARMUP, 1, &mut statuses)?;
        let request = s.take_recordings()?;
        if !statuses.contains_key(&case.expect_status) {
            return Err(format!(
                "{}: the recorded request got {statuses:?}, not {}",
                case.name, case.expect_status
            ));
        }
        let vm = request
            .iter()
            .position(|cbs| cbs.iter().any(|c| c.export == "proxy_on_request_headers"))
            .ok_or_else(|| format!("{}: no VM recorded the request", case.name))?;
        let pick = |v: Vec<Vec<crate::replay::Callback>>| v.into_iter().nth(vm).unwrap_or_default();
        out.push(Recording {
            path: case.name.into(),
            description: case.description.into(),
            status: case.expect_status,
            setup: pick(setup),
            warm: pick(warm),
            request: pick(request),
        });
    }
    Ok(out)
}

/// Issue 5's goal for the unmatched path: at most 4 host calls, never a full header-map copy.
pub fn unmatched_goal(results: &[PathResult]) -> Option<(bool, bool)> {
    let r = results.iter().find(|r| r.name == "unmatched")?;
    Some((
        r.host_calls_total <= 4.0,
        !r.host_calls.contains_key("proxy_get_header_map_pairs"),
    ))
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}")
    }
}

fn calls_text(r: &PathResult) -> String {
    r.host_calls
        .iter()
        .map(|(k, v)| format!("{} ×{}", k.trim_start_matches("proxy_"), fmt_num(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per path, the traced request's guest instructions between consecutive events.
pub fn segments_markdown(results: &[PathResult]) -> String {
    let mut s = String::new();
    for r in results {
        let total: u64 = r.segments.iter().map(|g| g.instructions).sum();
        s.push_str(&format!(
            "\n{}: guest instructions (wasmtime fuel) between host calls, one request ({total} in all; → the host enters a callback, ← it returns; a host call's stretch includes the guest allocating what the host hands over)\n\n| from | to | instructions |\n|---|---|---:|\n",
            r.name
        ));
        for g in &r.segments {
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                g.from.replace("proxy_", ""),
                g.to.replace("proxy_", ""),
                g.instructions
            ));
        }
    }
    s
}

/// The markdown table.
pub fn markdown(results: &[PathResult], wasm: &str, build: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "host-sim micro-benchmark (`retry-guard bench --paths`), {wasm}, {build} build of host-sim; \
         per request, mean over {} requests\n\n",
        results.first().map_or(0, |r| r.requests)
    ));
    s.push_str("| path | status | host calls | fuel (guest instr.) | µs | calls by name |\n");
    s.push_str("|---|---|---:|---:|---:|---|\n");
    for r in results {
        let status: Vec<String> = r.statuses.keys().map(u16::to_string).collect();
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} | {} |\n",
            r.name,
            status.join(","),
            fmt_num(r.host_calls_total),
            r.fuel,
            r.wall_us,
            calls_text(r)
        ));
    }
    for r in results.iter().filter(|r| !r.functions.is_empty()) {
        s.push_str(&format!(
            "\n{}: where the guest's time goes (stack samples every ~10 µs; top {} by self)\n\n\
             | function | self % | inclusive % | self fuel per request (est.) | called from (share of self) |\n|---|---:|---:|---:|---|\n",
            r.name, TOP_FUNCTIONS
        ));
        for f in &r.functions {
            let callers: Vec<String> = f
                .callers
                .iter()
                .map(|(c, p)| format!("`{}` {p:.0}%", c.replace('|', "\\|")))
                .collect();
            s.push_str(&format!(
                "| `{}` | {:.1} | {:.1} | {:.0} | {} |\n",
                f.function.replace('|', "\\|"),
                f.self_percent,
                f.inclusive_percent,
                f.self_fuel,
                callers.join(", ")
            ));
        }
    }
    if let Some((few, no_pairs)) = unmatched_goal(results) {
        s.push_str(&format!(
            "\nGoal (issue 5) on the unmatched path: ≤ 4 host calls — {}; no \
             `proxy_get_header_map_pairs` — {}.\n",
            if few { "met" } else { "MISSED" },
            if no_pairs { "met" } else { "MISSED" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 5's goal on the unmatched path, and every path answers as expected.
    #[test]
    fn paths_measure_and_unmatched_goal_holds() {
        let wasm = retry_guard::paths::filter_wasm();
        let results =
            run(&wasm, 10, false, true, None, None).expect("build the filter first: just build");
        assert_eq!(results.len(), PATHS.len());
        assert_eq!(unmatched_goal(&results), Some((true, true)), "{results:#?}");
        assert!(results
            .iter()
            .all(|r| r.fuel > 0.0 && r.host_calls_total >= 1.0));
        // The traced request: from stream creation to deletion, every host call counted
        // there is a segment boundary, and the unmatched and read_only requests (the same
        // work every time) add up to the measured mean exactly.
        for r in &results {
            let g = &r.segments;
            assert_eq!(
                g.first().map(|s| s.from.as_str()),
                Some("→ proxy_on_context_create"),
                "{}",
                r.name
            );
            assert_eq!(
                g.last().map(|s| s.to.as_str()),
                Some("← proxy_on_delete"),
                "{}",
                r.name
            );
            let calls = g.iter().filter(|s| !s.to.starts_with(['→', '←'])).count() as f64;
            assert_eq!(calls, r.host_calls_total, "{}: {g:#?}", r.name);
            let total: u64 = g.iter().map(|s| s.instructions).sum();
            if r.name == "unmatched" || r.name == "read_only" {
                assert_eq!(total as f64, r.fuel, "{}", r.name);
            }
        }
    }
}

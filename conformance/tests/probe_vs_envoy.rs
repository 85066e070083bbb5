//! The probe filter (`host-sim/probes/probe`) on host-sim and on the real Envoy 1.40: the same
//! requests, the same observable results — statuses, the probe's `probe|…` log lines, metric
//! values, local reply bodies and headers, filter state, what the upstream received.
//!
//! The probe is built from source by this test (`cargo build --release --target wasm32-wasip1`
//! into `<repo>/target/probes`, its own workspace and target dir, so the nested cargo never
//! waits on the lock of the `cargo test` that runs us). Envoy comes from `just envoy-install`
//! (`.tools/envoy/envoy/_bin/envoy`, or `RETRY_GUARD_ENVOY`); without it the test fails with
//! that hint.
//!
//! Every normalisation below is a known, explained difference; anything else is a host-sim bug.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use host_sim::upstream::{CallReply, Cluster, Clusters};
use host_sim::{Request, Runtime, Sim, SimConfig, Upstream};
use retry_guard_e2e::backend::{Backend, Reply};
use retry_guard_e2e::envoy::Envoy;

fn repo() -> PathBuf {
    retry_guard::paths::repo_root()
}

/// Builds the probe once per test binary; returns the `.wasm` path.
fn probe_wasm() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest = repo().join("host-sim/probes/probe/Cargo.toml");
            let target_dir = repo().join("target/probes");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let out = Command::new(cargo)
                .current_dir(repo())
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip1",
                    "--manifest-path",
                ])
                .arg(&manifest)
                .arg("--target-dir")
                .arg(&target_dir)
                // Settings of the outer build must not leak into the wasm build.
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("CARGO_BUILD_TARGET")
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building the probe failed (is the wasm32-wasip1 target installed? \
                     `rustup target add wasm32-wasip1`):\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(target_dir.join("wasm32-wasip1/release/probe.wasm"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One request of the comparison.
struct Step {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    /// Wait (Envoy: real time; sim: virtual clock) before sending, for ticks.
    wait_ms: u64,
}

fn steps() -> Vec<Step> {
    let common = vec![("x-request-id", "probe-fixed-id")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h = common.clone();
        h.extend_from_slice(extra);
        h
    };
    vec![
        Step {
            method: "GET",
            path: "/probe/headers?q=1&r=two",
            headers: with(&[
                ("x-probe-case", "headers"),
                ("referer", "https://ref.example/"),
                ("user-agent", "probe-agent/1"),
                ("x-replace-me", "original"),
                ("x-remove-me", "gone"),
            ]),
            body: "",
            wait_ms: 0,
        },
        Step {
            method: "POST",
            path: "/probe/body",
            headers: with(&[("x-probe-case", "body"), ("content-type", "text/plain")]),
            body: "hello probe body",
            wait_ms: 0,
        },
        Step {
            method: "GET",
            path: "/probe/local",
            headers: with(&[("x-probe-case", "local")]),
            body: "",
            wait_ms: 0,
        },
        Step {
            method: "GET",
            path: "/probe/shared",
            headers: with(&[("x-probe-case", "shared")]),
            body: "",
            wait_ms: 0,
        },
        Step {
            method: "GET",
            path: "/probe/tick",
            headers: with(&[("x-probe-case", "tick")]),
            body: "",
            wait_ms: 400,
        },
        Step {
            method: "GET",
            path: "/probe/headers",
            headers: with(&[("x-probe-case", "headers")]),
            body: "",
            wait_ms: 0,
        },
    ]
}

/// The backend's answer (the Envoy side's `Backend` and the sim's `Upstream`).
const BACKEND_STATUS: u16 = 200;
const BACKEND_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/plain"),
    ("x-backend-keep", "original"),
    ("x-backend-remove", "1"),
];
const BACKEND_BODY: &str = "backend says hi";

/// What the upstream received: method, path, normalised headers, body.
type Received = (String, String, Vec<(String, String)>, String);

/// What one request showed, normalised.
#[derive(Debug, PartialEq)]
struct Observed {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    probe: Vec<String>,
    decision: String,
    details: String,
    upstream: Option<Received>,
}

/// Client-visible response headers: Envoy's connection manager adds `date`, `server`
/// and `connection: close` (answering our `connection: close`) after the filters, and the
/// router `x-envoy-upstream-service-time` (a duration); none are filter-visible facts.
/// `content-length` is added by Envoy's codec after the filters for local replies (the sim's
/// `Exchange` holds the headers the filter chain produced); the body is compared instead.
/// Pseudo-headers: the status is compared on its own.
fn norm_response_headers(h: &[(String, String)]) -> Vec<(String, String)> {
    h.iter()
        .filter(|(k, _)| {
            !k.starts_with(':')
                && !matches!(
                    k.as_str(),
                    "date"
                        | "server"
                        | "connection"
                        | "content-length"
                        | "x-envoy-upstream-service-time"
                )
        })
        .cloned()
        .collect()
}

/// Upstream-received headers: `x-envoy-expected-rq-timeout-ms` is kept (both send it);
/// `connection`/`content-length`/`transfer-encoding` are HTTP/1 framing of the hop Envoy opens
/// (the sim records the forwarded header map, not the wire); the body is compared instead.
fn norm_upstream_headers(h: &[(String, String)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "connection" | "content-length" | "transfer-encoding"
            )
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    // Header order on the wire is not a filter-visible fact.
    v.sort();
    v
}

/// Probe lines at info or above: Envoy runs with `-l info` and drops the wasm logger's trace
/// and debug lines; host-sim keeps every line (scenarios may look at debug lines).
fn keep_level(level: &str) -> bool {
    !matches!(level, "trace" | "debug")
}

fn run_sim(wasm: &Path) -> (Vec<Observed>, BTreeMap<String, u64>) {
    let rt = Runtime::from_file(wasm).expect("probe loads on host-sim");
    let mut clusters = Clusters::default();
    // The e2e bootstrap's cluster (the probe's http_call names it).
    clusters.by_name.insert(
        "backend".into(),
        Cluster::Scripted {
            queue: Default::default(),
            standing: CallReply {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
            },
        },
    );
    let sim = Sim::new(
        &rt,
        SimConfig {
            plugin_config: b"{}".to_vec(),
            workers: 2,
            clusters,
            ..SimConfig::default()
        },
    )
    .expect("probe starts on host-sim");
    let upstream = Upstream::Reply {
        status: BACKEND_STATUS,
        headers: BACKEND_HEADERS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: BACKEND_BODY.as_bytes().to_vec(),
        delay_ms: 0,
    };
    let mut out = Vec::new();
    for s in steps() {
        if s.wait_ms > 0 {
            sim.advance_ms(s.wait_ms);
        }
        let mut req = Request::new(s.method, s.path);
        // What `retry_guard_e2e::client` sends besides our headers: `host`, `content-length`
        // (bodies and POST) and `connection: close`.
        req = req.header("host", "retry-guard.test");
        for (k, v) in &s.headers {
            req = req.header(k, v);
        }
        if !s.body.is_empty() || s.method == "POST" {
            req = req.header("content-length", s.body.len().to_string());
        }
        req = req.header("connection", "close");
        if !s.body.is_empty() {
            req = req.body(s.body);
        }
        let ex = sim.request(&req, &upstream).expect("exchange");
        assert!(ex.trap.is_none(), "trap: {:?}", ex.trap);
        assert!(ex.misuse.is_empty(), "misuse: {:?}", ex.misuse);
        out.push(Observed {
            status: ex.status,
            headers: norm_response_headers(&ex.headers),
            body: String::from_utf8_lossy(&ex.body).into_owned(),
            probe: ex
                .logs
                .iter()
                .filter(|l| keep_level(l.level))
                .filter_map(|l| {
                    l.message
                        .strip_prefix("probe|")
                        .map(|m| format!("[{}] {m}", l.level))
                })
                .collect(),
            decision: ex
                .filter_state
                .get("wasm.retry_guard.decision")
                .cloned()
                .unwrap_or_else(|| "-".into()),
            details: ex.code_details.clone(),
            upstream: ex.upstream.as_ref().map(|u| {
                (
                    u.method.clone(),
                    u.path.clone(),
                    norm_upstream_headers(&u.headers),
                    String::from_utf8_lossy(&u.body).into_owned(),
                )
            }),
        });
    }
    let metrics = sim
        .metrics()
        .into_iter()
        .filter(|(k, _)| k.starts_with("probe.") && k != "probe.hist")
        .collect();
    (out, metrics)
}

/// Level of an Envoy log line (`[time][tid][level][logger] ...`).
fn envoy_level(line: &str) -> &'static str {
    for (tag, name) in [
        ("][trace][", "trace"),
        ("][debug][", "debug"),
        ("][info][", "info"),
        ("][warning][", "warn"),
        ("][error][", "error"),
        ("][critical][", "critical"),
    ] {
        if line.contains(tag) {
            return name;
        }
    }
    "?"
}

fn envoy_probe_lines(envoy: &Envoy) -> Vec<String> {
    envoy
        .log_text()
        .lines()
        .filter_map(|l| {
            let i = l.find("probe|")?;
            Some(format!("[{}] {}", envoy_level(l), &l[i + "probe|".len()..]))
        })
        .collect()
}

fn run_envoy(wasm: &Path) -> (Vec<Observed>, BTreeMap<String, u64>) {
    let backend = Backend::start().expect("backend");
    let mut reply = Reply::new(BACKEND_STATUS).body(BACKEND_BODY);
    for (k, v) in BACKEND_HEADERS {
        reply = reply.header(k, v);
    }
    backend.set_default(reply);
    let envoy = Envoy::builder("probe-vs-sim", backend.addr())
        .wasm_file(wasm)
        .plugin_config("{}")
        .concurrency(2)
        .start()
        .expect("envoy starts with the probe (just envoy-install)");
    let mut out = Vec::new();
    let mut seen_lines = 0;
    let mut seen_upstream = 0;
    for (i, s) in steps().iter().enumerate() {
        if s.wait_ms > 0 {
            std::thread::sleep(Duration::from_millis(s.wait_ms));
        }
        let resp = envoy
            .send(s.method, s.path, &s.headers, s.body.as_bytes())
            .expect("request through envoy");
        // Wait until this stream's on_log line and access-log entry are written.
        let deadline = Instant::now() + Duration::from_secs(10);
        let lines = loop {
            let lines = envoy_probe_lines(&envoy);
            let done = lines[seen_lines..]
                .iter()
                .any(|l| l.contains("|on_log|end"));
            if done || Instant::now() > deadline {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mine: Vec<String> = lines[seen_lines..]
            .iter()
            .filter(|l| {
                let level = l[1..l.find(']').unwrap_or(1)].to_string();
                keep_level(&level)
            })
            .cloned()
            .collect();
        seen_lines = lines.len();
        let log = envoy
            .wait_for_access_log(i + 1, Duration::from_secs(10))
            .expect("access log");
        let entry = &log[i];
        let reqs = backend.requests();
        let upstream = if reqs.len() > seen_upstream {
            let r = &reqs[seen_upstream];
            seen_upstream = reqs.len();
            Some((
                r.method.clone(),
                r.path.clone(),
                norm_upstream_headers(&r.headers),
                r.body_text(),
            ))
        } else {
            None
        };
        let text = |k: &str| match &entry[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            v => v.to_string(),
        };
        out.push(Observed {
            status: resp.status,
            headers: norm_response_headers(&resp.headers),
            body: resp.text(),
            probe: mine,
            decision: text("decision"),
            details: text("details"),
            upstream,
        });
    }
    let stats = envoy.wasm_stats().expect("stats");
    let metrics = stats
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let name = k.trim().strip_prefix("wasmcustom.")?;
            let v = v.trim().parse().ok()?;
            name.starts_with("probe.").then(|| (name.to_string(), v))
        })
        .collect();
    (out, metrics)
}

#[test]
fn probe_on_host_sim_matches_real_envoy() {
    let wasm = probe_wasm();
    let (sim, sim_metrics) = run_sim(&wasm);
    let (envoy, envoy_metrics) = run_envoy(&wasm);
    let mut diffs = Vec::new();
    for (i, (s, e)) in sim.iter().zip(&envoy).enumerate() {
        let step = &steps()[i];
        let name = format!("#{i} {} {}", step.method, step.path);
        macro_rules! cmp {
            ($field:ident) => {
                if s.$field != e.$field {
                    diffs.push(format!(
                        "{name} {}:\n  host-sim: {:?}\n  envoy:    {:?}",
                        stringify!($field),
                        s.$field,
                        e.$field
                    ));
                }
            };
        }
        cmp!(status);
        cmp!(headers);
        cmp!(body);
        cmp!(decision);
        cmp!(details);
        cmp!(upstream);
        if s.probe != e.probe {
            let only_sim: Vec<&String> = s.probe.iter().filter(|l| !e.probe.contains(l)).collect();
            let only_envoy: Vec<&String> =
                e.probe.iter().filter(|l| !s.probe.contains(l)).collect();
            diffs.push(format!(
                "{name} probe lines differ:\n  only host-sim: {only_sim:#?}\n  only envoy: \
                 {only_envoy:#?}\n  host-sim all: {:#?}\n  envoy all: {:#?}",
                s.probe, e.probe
            ));
        }
    }
    if sim_metrics != envoy_metrics {
        diffs.push(format!(
            "metrics:\n  host-sim: {sim_metrics:?}\n  envoy:    {envoy_metrics:?}"
        ));
    }
    assert!(
        diffs.is_empty(),
        "host-sim and Envoy differ:\n{}",
        diffs.join("\n")
    );
    // The comparison is not vacuous.
    assert_eq!(sim.len(), steps().len());
    assert!(sim[0].probe.len() > 30, "{:#?}", sim[0].probe);
    assert_eq!(sim_metrics.get("probe.requests"), Some(&2));
}

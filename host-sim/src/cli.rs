//! The `retry-guard` operator commands: `run`, `demo`, `check`, `keygen`, `approve`.
//!
//! Each command returns its exit code; output goes to stdout, problems to stderr with a hint
//! on what to change.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::scenario::{self, RunOptions, Summary};
use crate::tokens;
use crate::vm::Runtime;

/// Where `cargo build --release --target wasm32-wasip1 -p retry-guard-filter` puts the filter.
pub const DEFAULT_WASM: &str = "target/wasm32-wasip1/release/retry_guard.wasm";

/// The repository root this binary was built in (fallback for default paths).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A default path: relative to the current directory if it exists there, else to the
/// repository root.
fn default_path(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        here
    } else {
        repo_root().join(rel)
    }
}

/// Usage text.
pub const USAGE: &str = "retry-guard — the retry-guard operator tool (host simulator inside)

USAGE:
  retry-guard run [--target sim|envoy] [--json] [--wasm <path>] [--log <level>] <scenario.json | dir>...
      Run scenarios on the simulated Envoy (default) or, with --target envoy, on the real Envoy
      1.40 (`just envoy-install`) with a scripted backend over real HTTP; prints a trace and
      `N passed, M failed`. The Envoy target refuses scenarios that are not runnable there and
      says why. Exit 1 when any expectation fails. Default wasm: target/wasm32-wasip1/release/retry_guard.wasm
  retry-guard demo [--wasm <path>]
      The narrated story (testdata/scenarios/demo-story.json).
  retry-guard check <config.json | wasmplugin.yaml>
      Validate a plugin configuration (or an Istio WasmPlugin's pluginConfig) with the
      filter's own parser; prints the field path of the first error.
  retry-guard keygen [--out <file.key>]
      A new Ed25519 approver key pair: the private key (base64 seed) and the public key as the
      configuration's confirmation.keys wants it.
  retry-guard approve --key <file> --challenge <id> --fingerprint <fp> --approver <who>
                      [--ttl <seconds>] [--kid <key id>] [--now <unix seconds>]
      Print a signed confirmation token (v1.<payload>.<signature>). The key id defaults to the
      key file's name without extension.
  retry-guard bench [--wasm <path>] [--requests <n>]
      Time n (default 10000) requests of the demo configuration on the simulator (build with
      --release for a meaningful figure).
  retry-guard bench --paths [--functions] [--segments] [--only <path>] [--json] [--wasm <path>] [--floor <path>] [--requests <n>]
      Per request path (unmatched, read_only, token_issuing allow, 428 replay): host calls by
      import name, guest instructions (wasmtime fuel), wall time; first the no-op floor filter on
      the unmatched request (--floor, default target/wasm32-wasip1/release/noop_filter.wasm
      when built); writes
      target/bench/host-sim.json and target/bench/host-sim.md (default n: 2000).
      --functions also samples the guest stack and lists where each path's time goes by
      function (needs a module with its name section: `just profile-sim` builds one).
      --segments also lists, for one more request of each path, the fuel the guest used
      between each host call (or callback entry or return) and the next: counted, where the
      function samples are estimates. --only <path> measures that path alone.";

fn take_opt(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            if i + 1 >= args.len() {
                return Err(format!("{name} needs a value"));
            }
            let v = args.remove(i + 1);
            args.remove(i);
            Ok(Some(v))
        }
    }
}

fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    }
}

/// Runs the CLI with arguments (without the program name); returns the exit code.
pub fn main(mut args: Vec<String>) -> i32 {
    if args.is_empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
        println!("{USAGE}");
        return if args.is_empty() { 2 } else { 0 };
    }
    let cmd = args.remove(0);
    let result = match cmd.as_str() {
        "run" => run(args),
        "demo" => demo(args),
        "check" => check(args),
        "keygen" => keygen(args),
        "approve" => approve(args),
        "bench" => bench(args),
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("retry-guard {cmd}: {e}");
            2
        }
    }
}

fn runtime(wasm: Option<String>) -> Result<Runtime, String> {
    let path = wasm
        .map(PathBuf::from)
        .unwrap_or_else(|| default_path(DEFAULT_WASM));
    Runtime::from_file(&path).map_err(|e| e.to_string())
}

/// Expands folders into their `*.json` files (sorted).
pub fn scenario_files(inputs: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for i in inputs {
        let p = PathBuf::from(i);
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(|e| format!("cannot list {}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err("no scenario given; pass files or a folder, e.g. testdata/scenarios".into());
    }
    Ok(files)
}

fn run(mut args: Vec<String>) -> Result<i32, String> {
    let json = take_flag(&mut args, "--json");
    let wasm = take_opt(&mut args, "--wasm")?;
    let target = take_opt(&mut args, "--target")?.unwrap_or_else(|| "sim".into());
    if target != "sim" && target != "envoy" {
        return Err(format!("--target {target}: expected sim or envoy"));
    }
    let echo = match take_opt(&mut args, "--log")? {
        Some(l) => Some(crate::abi::log_level_from_name(&l).ok_or_else(|| {
            format!("--log {l}: expected trace, debug, info, warn, error or critical")
        })?),
        None => None,
    };
    if let Some(bad) = args.iter().find(|a| a.starts_with("--")) {
        return Err(format!("unknown option {bad}\n\n{USAGE}"));
    }
    let files = scenario_files(&args)?;
    if target == "envoy" {
        let opts = scenario::envoy::EnvoyOptions {
            wasm: wasm.map(PathBuf::from),
        };
        let mut summary = Summary::default();
        for f in &files {
            let r = scenario::envoy::run_file(f, &opts);
            if !json {
                print!("{}", r.render());
            }
            summary.push(r);
        }
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?
            );
        } else {
            println!("{}", summary.line());
        }
        return Ok(if summary.failed == 0 { 0 } else { 1 });
    }
    let rt = runtime(wasm)?;
    let opts = RunOptions { echo_log: echo };
    let mut summary = Summary::default();
    for f in &files {
        let r = scenario::run_file(&rt, f, &opts);
        if !json {
            print!("{}", r.render());
        }
        summary.push(r);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?
        );
    } else {
        println!("{}", summary.line());
    }
    Ok(if summary.failed == 0 { 0 } else { 1 })
}

fn demo(mut args: Vec<String>) -> Result<i32, String> {
    let wasm = take_opt(&mut args, "--wasm")?;
    let file = take_opt(&mut args, "--scenario")?
        .map(PathBuf::from)
        .unwrap_or_else(|| default_path("testdata/scenarios/demo-story.json"));
    let rt = runtime(wasm)?;
    println!(
        "retry-guard demo: the filter ({}) on host-sim, a simulated Envoy 1.40 with 2 worker VMs, \
         a virtual clock and a scripted upstream.\n",
        rt.source
    );
    let report = scenario::run_file(&rt, &file, &RunOptions::default());
    for s in &report.steps {
        for l in &s.lines {
            if let Some(note) = l.strip_prefix("# ") {
                println!("\n== {note}");
            } else {
                println!("   {l}");
            }
        }
        for f in &s.failures {
            println!("   ✗ {f}");
        }
    }
    if let Some(e) = &report.error {
        println!("error: {e}");
    }
    println!(
        "\n{}",
        if report.passed {
            "Demo finished: every step behaved as the contract says.\n1 passed, 0 failed"
        } else {
            "Demo FAILED: see the ✗ lines above.\n0 passed, 1 failed"
        }
    );
    Ok(if report.passed { 0 } else { 1 })
}

/// Extracts the plugin configuration from a JSON file or an Istio WasmPlugin YAML.
pub fn config_from_text(text: &str, name: &str) -> Result<Vec<u8>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return Ok(text.as_bytes().to_vec());
    }
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).map_err(|e| format!("{name}: not YAML: {e}")))
        .collect::<Result<_, _>>()?;
    for doc in docs {
        if doc.get("kind").and_then(|k| k.as_str()) != Some("WasmPlugin") {
            continue;
        }
        let pc = doc
            .get("spec")
            .and_then(|s| s.get("pluginConfig"))
            .ok_or_else(|| format!("{name}: WasmPlugin without spec.pluginConfig"))?;
        let json: Value = match pc {
            serde_yaml::Value::String(s) => serde_json::from_str(s)
                .map_err(|e| format!("{name}: spec.pluginConfig is a string but not JSON: {e}"))?,
            other => serde_json::to_value(other)
                .map_err(|e| format!("{name}: spec.pluginConfig: {e}"))?,
        };
        return Ok(json.to_string().into_bytes());
    }
    // An Envoy bootstrap or an Istio EnvoyFilter: the wasm filter's
    // `configuration: {"@type": ".../google.protobuf.StringValue", value: "<json>"}`.
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .collect();
    if let Some(value) = docs.iter().find_map(string_value_configuration) {
        return Ok(value.as_bytes().to_vec());
    }
    Err(format!(
        "{name}: neither a JSON configuration, nor YAML with a `kind: WasmPlugin` document, nor an \
         Envoy/EnvoyFilter YAML with a wasm `configuration` (google.protobuf.StringValue)"
    ))
}

/// The first `configuration` mapping typed `google.protobuf.StringValue` anywhere in `doc`
/// (how Envoy's wasm filter carries the plugin configuration), as its `value` text.
fn string_value_configuration(doc: &serde_yaml::Value) -> Option<&str> {
    match doc {
        serde_yaml::Value::Mapping(m) => {
            if let Some(cfg) = m.get("configuration") {
                let typed = cfg
                    .get("@type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with("google.protobuf.StringValue"));
                if let (true, Some(v)) = (typed, cfg.get("value").and_then(|v| v.as_str())) {
                    return Some(v);
                }
            }
            m.values().find_map(string_value_configuration)
        }
        serde_yaml::Value::Sequence(items) => items.iter().find_map(string_value_configuration),
        serde_yaml::Value::Tagged(t) => string_value_configuration(&t.value),
        _ => None,
    }
}

fn check(args: Vec<String>) -> Result<i32, String> {
    let [file] = args.as_slice() else {
        return Err(format!("check takes one file\n\n{USAGE}"));
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let bytes = config_from_text(&text, file)?;
    match retry_guard::config::Config::parse(&bytes) {
        Ok(c) => {
            println!(
                "{file}: valid — {} route(s) ({}), mode {}, ledger {} entries, confirmation {}",
                c.routes.len(),
                c.routes
                    .iter()
                    .map(|r| format!("{}: {}", r.name, r.class.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.mode.name(),
                c.max_entries,
                match &c.confirmation {
                    Some(k) => format!(
                        "keys {}",
                        k.keys
                            .iter()
                            .map(|(id, _)| id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => "off".into(),
                }
            );
            Ok(0)
        }
        Err(e) => {
            println!("{file}: invalid\n  error: {e}");
            Ok(1)
        }
    }
}

fn keygen(mut args: Vec<String>) -> Result<i32, String> {
    let out = take_opt(&mut args, "--out")?;
    let key = tokens::generate();
    let private = tokens::private_key_b64(&key);
    let public = tokens::public_key_b64(&key);
    match out {
        Some(path) => {
            let p = PathBuf::from(&path);
            if p.exists() {
                return Err(format!("{path} exists; refusing to overwrite a key"));
            }
            std::fs::write(&p, format!("{private}\n"))
                .map_err(|e| format!("cannot write {path}: {e}"))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
            let pub_path = p.with_extension("pub");
            std::fs::write(&pub_path, format!("{public}\n"))
                .map_err(|e| format!("cannot write {}: {e}", pub_path.display()))?;
            let kid = tokens::default_kid(&p);
            println!(
                "private key: {path} (keep it secret)\npublic key:  {}",
                pub_path.display()
            );
            println!(
                "configuration: \"confirmation\": {{ \"keys\": {{ \"{kid}\": \"{public}\" }} }}"
            );
        }
        None => {
            println!("private key (base64 Ed25519 seed; store it in a file, keep it secret):\n  {private}");
            println!("public key (for confirmation.keys):\n  {public}");
        }
    }
    Ok(0)
}

fn approve(mut args: Vec<String>) -> Result<i32, String> {
    let need = |v: Option<String>, n: &str| v.ok_or_else(|| format!("{n} is required\n\n{USAGE}"));
    let key_path = need(take_opt(&mut args, "--key")?, "--key")?;
    let chl = need(take_opt(&mut args, "--challenge")?, "--challenge")?;
    let fp = need(take_opt(&mut args, "--fingerprint")?, "--fingerprint")?;
    let sub = need(take_opt(&mut args, "--approver")?, "--approver")?;
    let ttl: i64 = take_opt(&mut args, "--ttl")?
        .map(|t| {
            t.parse()
                .map_err(|_| format!("--ttl {t}: a number of seconds"))
        })
        .transpose()?
        .unwrap_or(300);
    if ttl <= 0 {
        return Err("--ttl must be positive".into());
    }
    let now: i64 = match take_opt(&mut args, "--now")? {
        Some(n) => n.parse().map_err(|_| format!("--now {n}: unix seconds"))?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    let kid =
        take_opt(&mut args, "--kid")?.unwrap_or_else(|| tokens::default_kid(Path::new(&key_path)));
    if let Some(extra) = args.first() {
        return Err(format!("unexpected argument {extra}\n\n{USAGE}"));
    }
    let key = tokens::read_signing_key(Path::new(&key_path))?;
    let c = tokens::Confirmation {
        kid,
        chl,
        fp,
        sub,
        iat: now,
        exp: now + ttl,
    };
    println!("{}", c.sign(&key));
    Ok(0)
}

fn bench(mut args: Vec<String>) -> Result<i32, String> {
    if take_flag(&mut args, "--paths") {
        return bench_paths(args);
    }
    let wasm = take_opt(&mut args, "--wasm")?;
    let n: u64 = take_opt(&mut args, "--requests")?
        .map(|v| v.parse().map_err(|_| format!("--requests {v}: a number")))
        .transpose()?
        .unwrap_or(10_000);
    let config = std::fs::read(default_path("testdata/configs/smoke.json"))
        .map_err(|e| format!("testdata/configs/smoke.json: {e}"))?;
    let t0 = std::time::Instant::now();
    let rt = runtime(wasm)?;
    let t1 = std::time::Instant::now();
    let sim = crate::sim::Sim::new(
        &rt,
        crate::sim::SimConfig {
            plugin_config: config,
            ..crate::sim::SimConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let t2 = std::time::Instant::now();
    let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
    for i in 0..n {
        // Three in four are new token calls (allowed, recorded), one in four replays the
        // previous one (428 with a challenge); alternating workers.
        let body = format!(
            "grant_type=client_credentials&n={}",
            i - i % 4 + (i % 4).min(2)
        );
        let req = crate::sim::Request::new("POST", "/oauth/token")
            .header("x-client-id", "ci-bot")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .on_worker((i % 2) as usize);
        let ex = sim
            .request(&req, &crate::upstream::Upstream::ok())
            .map_err(|e| e.to_string())?;
        *statuses.entry(ex.status).or_default() += 1;
    }
    let t3 = std::time::Instant::now();
    let per = (t3 - t2).as_secs_f64() / n as f64;
    println!(
        "compile {:.0} ms, start 3 VMs (main + 2 workers, ledger of {} keys) {:.0} ms",
        (t1 - t0).as_secs_f64() * 1e3,
        crate::shared::lock(&sim.shared().data).len(),
        (t2 - t1).as_secs_f64() * 1e3
    );
    println!(
        "{n} requests of the demo config in {:.3} s: {:.1} µs per request ({:.0} requests/s); statuses {statuses:?}",
        (t3 - t2).as_secs_f64(),
        per * 1e6,
        1.0 / per
    );
    Ok(0)
}

/// `bench --paths`: the per-path micro-benchmark ([`crate::bench`]).
fn bench_paths(mut args: Vec<String>) -> Result<i32, String> {
    let json = take_flag(&mut args, "--json");
    let functions = take_flag(&mut args, "--functions");
    let segments = take_flag(&mut args, "--segments");
    let floor = match take_opt(&mut args, "--floor")? {
        Some(f) => Some(PathBuf::from(f)),
        // The no-op floor filter, when `just build` or `just bench` has built it.
        None => Some(default_path(
            "target/wasm32-wasip1/release/noop_filter.wasm",
        ))
        .filter(|p| p.exists()),
    };
    let wasm = take_opt(&mut args, "--wasm")?
        .map(PathBuf::from)
        .unwrap_or_else(|| default_path(DEFAULT_WASM));
    let n: u64 = take_opt(&mut args, "--requests")?
        .map(|v| v.parse().map_err(|_| format!("--requests {v}: a number")))
        .transpose()?
        .unwrap_or(2_000);
    let only = take_opt(&mut args, "--only")?;
    if let Some(a) = args.first() {
        return Err(format!("bench --paths: unexpected argument {a:?}"));
    }
    let floor = floor.filter(|_| only.is_none());
    let results = crate::bench::run(
        &wasm,
        n,
        functions,
        segments,
        floor.as_deref(),
        only.as_deref(),
    )?;
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let wasm_text = wasm.display().to_string();
    let wasm_bytes = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    let goal = crate::bench::unmatched_goal(&results);
    let doc = serde_json::json!({
        "tool": "retry-guard bench --paths (host-sim)",
        "wasm": wasm_text,
        "wasm_bytes": wasm_bytes,
        "host_sim_build": build,
        "requests_per_path": n,
        "paths": results,
        "goals": {
            "unmatched_host_calls_at_most_4": goal.map(|g| g.0),
            "unmatched_no_get_header_map_pairs": goal.map(|g| g.1),
        },
    });
    let mut md = crate::bench::markdown(&results, &wasm_text, build);
    if segments {
        md.push_str(&crate::bench::segments_markdown(&results));
    }
    let dir = repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pretty = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("host-sim.json"), format!("{pretty}\n"))
        .map_err(|e| format!("target/bench/host-sim.json: {e}"))?;
    std::fs::write(dir.join("host-sim.md"), &md)
        .map_err(|e| format!("target/bench/host-sim.md: {e}"))?;
    if json {
        println!("{pretty}");
        return Ok(0);
    }
    print!("{md}");
    if let Some(r) = results.iter().find(|r| r.name == "unmatched") {
        println!("\nhost calls on the unmatched path (per request):");
        for (name, v) in &r.host_calls {
            println!("  {name} ×{v}");
        }
    }
    println!("\nwritten: target/bench/host-sim.json, target/bench/host-sim.md");
    Ok(0)
}

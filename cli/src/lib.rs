//! `retry-guard`, the operator's tool: checks configurations, makes approver keys, signs
//! confirmations, runs scenarios on host-sim or the real Envoy, tells the demo and starts the
//! bundled gateway (see `retry-guard --help`).
//!
//! Each command returns its exit code; output goes to stdout, problems to stderr with a hint
//! on what to change. Commands by concern:
//! - [`check`]: the deployment lint (plugin configuration, Envoy, Istio);
//! - [`keys`]: `keygen` and `approve` (the one approver's command; signing is the policy
//!   core's `retry_guard::confirm::sign`);
//! - [`scenarios`]: `run` and `demo`, on host-sim or (through `conformance`) the real Envoy;
//! - [`bench`]: host-sim's micro-benchmarks;
//! - [`gateway`] and [`demo_envoy`]: the real Envoy for a person to watch.
#![warn(missing_docs)]

use std::path::PathBuf;

use host_sim::vm::Runtime;

pub mod bench;
pub mod check;
pub mod demo_cluster;
pub mod demo_envoy;
pub mod gateway;
pub mod keys;
pub mod scenarios;

pub use check::config_from_text;

/// Usage text.
pub const USAGE: &str = "retry-guard — the retry-guard operator tool

USAGE:
  retry-guard check [--format text|json] <file>...
      Lint a retry-guard deployment, read from all files together: plugin configuration JSON,
      Envoy bootstrap YAML/JSON (or listener, connection manager, route configuration), Istio
      WasmPlugin, EnvoyFilter and VirtualService YAML (several documents per file). Reports
      every problem with its file, YAML/JSON path and what to change. Errors: the plugin
      configuration's own (by field path), fail_open / FAIL_OPEN, allow_on_headers_stop_iteration
      missing or false where a route reads the body, a WasmPlugin guarding such routes, a
      route_name naming no route, router or VirtualService retries beyond
      connect-failure,refused-stream on a guarded route (Istio's default when `retries` is
      missing), the filter switched off on a guarded route. Warnings: routes that look sensitive
      by path but are not guarded, the filter running on Envoy routes it does not guard.
      Exit 0 clean (warnings allowed), 1 errors, 2 unreadable input. --format json prints one
      JSON document (findings, errors, warnings, configurations, routes) for CI pipelines.
  retry-guard keygen [--out <file.key>]
      A new Ed25519 approver key pair: the private key (base64 seed) and the public key as the
      configuration's confirmation.keys wants it.
  retry-guard approve --key <file> --approver <who> [--challenge <id> --fingerprint <fp>]
                      [--ttl <seconds>] [--kid <key id>] [--now <unix seconds>]
      Print a signed confirmation token (v1.<payload>.<signature>). Without --challenge and
      --fingerprint it reads the 428 problem document (or a whole `curl -i` answer) on stdin.
      The key id defaults to the key file's name without extension, the ttl to 300 s. When an
      option is given twice the last one counts (`just approve` gives the test key and approver
      first, so yours win).
  retry-guard run [--target sim|envoy] [--json] [--wasm <path>] [--log <level>] <scenario.json | dir>...
      Run scenarios on the simulated Envoy (default) or, with --target envoy, on the real Envoy
      1.40 (`just envoy-install`) with a scripted backend over real HTTP; prints a trace and
      `N passed, M failed`. The Envoy target refuses scenarios that are not runnable there and
      says why. Exit 1 when any expectation fails. Default wasm: $RETRY_GUARD_WASM, else
      target/wasm32-wasip1/release/retry_guard.wasm
  retry-guard demo [--target sim|envoy] [--wasm <path>] [--scenario <file>]
      The narrated story: on host-sim (testdata/scenarios/demo-story.json), or with --target
      envoy on the real Envoy 1.40 with the scripted backend.
  retry-guard demo-cluster [--wasm <path>]
      The cluster ledger, narrated on real processes: 3 etcd members, two Envoy replicas of
      envoy/envoy-cluster.yaml and the backend. A token call through replica A passes, its replay
      through B gets 428, a confirmation through B passes once; the etcd leader is stopped and
      calls are still decided; all of etcd is stopped (token route 503 ledger-unavailable, an
      idempotent write passes); etcd returns and guarding resumes. Exit 1 if a step surprises.
  retry-guard gateway
      The bundled gateway (envoy/envoy.yaml) on the real Envoy with a scriptable backend for
      trying it by hand: validates the configuration, prints a curl session, echoes access-log
      and audit lines; Ctrl-C stops both.
  retry-guard bench [--wasm <path>] [--requests <n>]
      Time n (default 10000) requests of the demo configuration on the simulator (build with
      --release for a meaningful figure).
  retry-guard bench --paths [--functions] [--segments] [--only <path>] [--json] [--wasm <path>] [--floor <path>] [--requests <n>] [--update-readme]
      Per request path (unmatched, read_only, token_issuing allow, 428 replay): host calls by
      import name, guest instructions (wasmtime fuel), wall time; first the no-op floor filter on
      the unmatched request (--floor, default target/wasm32-wasip1/release/noop_filter.wasm
      when built); writes
      target/bench/host-sim.json and target/bench/host-sim.md (default n: 2000).
      --functions also samples the guest stack and lists where each path's time goes by
      function (needs a module with its name section: `just profile-sim` builds one).
      --segments also lists, for one more request of each path, the fuel the guest used
      between each host call (or callback entry or return) and the next: counted, where the
      function samples are estimates. --only <path> measures that path alone.
      --update-readme also replaces the host-sim-paths table of bench/README.md.";

/// A default path: relative to the current directory if it exists there, else to the
/// repository root.
pub(crate) fn default_path(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        here
    } else {
        retry_guard::paths::repo_root().join(rel)
    }
}

/// Removes every `name <value>` from `args` and returns the last value (a later option
/// overrides an earlier one).
pub(crate) fn take_opt(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    let mut found = None;
    while let Some(i) = args.iter().position(|a| a == name) {
        if i + 1 >= args.len() {
            return Err(format!("{name} needs a value"));
        }
        found = Some(args.remove(i + 1));
        args.remove(i);
    }
    Ok(found)
}

pub(crate) fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
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
        "run" => scenarios::run(args),
        "demo" => scenarios::demo(args),
        "demo-cluster" => demo_cluster::main(args),
        "check" => check::check(args),
        "keygen" => keys::keygen(args),
        "approve" => keys::approve(args),
        "bench" => bench::bench(args),
        "gateway" => gateway::main(args),
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

/// The filter module: `--wasm`, else the workspace's ([`retry_guard::paths::filter_wasm`]).
pub(crate) fn wasm_or_default(wasm: Option<String>) -> PathBuf {
    wasm.map(PathBuf::from)
        .unwrap_or_else(retry_guard::paths::filter_wasm)
}

pub(crate) fn runtime(wasm: Option<String>) -> Result<Runtime, String> {
    Runtime::from_file(&wasm_or_default(wasm)).map_err(|e| e.to_string())
}

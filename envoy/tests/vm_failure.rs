//! When the VM does fail (issue 17, part 5), on the real Envoy 1.40: a test-only build of the
//! module (cargo feature `test-trap`, built by `just build` into `target/trap/`) traps on a
//! request carrying `x-retry-guard-test-trap`. The same token replay is sent after the trap
//! under each of Envoy's wasm `failure_policy` values, one worker, to see what a user gets.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use retry_guard_e2e::backend::Backend;
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::gateway::{envoy_yaml, wasm_plugin_config_mut, TestGateway};
use retry_guard_e2e::Result;
use serde_json::json;

/// The trapping module (never the release one).
fn trap_module() -> PathBuf {
    retry_guard::paths::repo_root().join("target/trap/wasm32-wasip1/release/retry_guard.wasm")
}

/// The bundled gateway on the trapping module, its wasm filter's failure handling replaced
/// by `policy`: a `failure_policy` value, or `fail_open` for the older `fail_open: false`
/// (`None`: as bundled).
fn start(name: &str, policy: Option<&str>) -> Result<Gateway> {
    let backend = Backend::start()?;
    let mut b = TestGateway::new().build(&envoy_yaml()?, backend.addr())?;
    let config = wasm_plugin_config_mut(&mut b)?;
    if let Some(p) = policy {
        if let Some(c) = config.as_object_mut() {
            c.remove("fail_open");
            c.remove("failure_policy");
        }
        match p {
            "fail_open" => config["fail_open"] = json!(false),
            _ => config["failure_policy"] = json!(p),
        }
    }
    let envoy = Envoy::builder(name, backend.addr())
        .bootstrap(b)
        .wasm_file(trap_module())
        .concurrency(1)
        .start()?;
    Ok(Gateway { envoy, backend })
}

/// What the replay of a token call gets, every 250 ms for 4 s after a request trapped the
/// (only) VM, and how often the backend executed the call.
fn after_a_trap(policy: Option<&str>) -> (Vec<u16>, usize) {
    let gw = start("vm-failure", policy).unwrap_or_else(|e| panic!("{e}"));
    let req = TOKEN.request("vmfail");
    assert_eq!(gw.send(&req).map(|r| r.status).ok(), Some(200));
    let trap = READS.request("trap").header("x-retry-guard-test-trap", "1");
    let resp = gw.send(&trap).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status, 503, "{policy:?}: the trapping request");
    let mut statuses = Vec::new();
    for i in 0..16 {
        let replay = req.again(&format!("after{i}"));
        statuses.push(gw.send(&replay).map(|r| r.status).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        gw.envoy.log_text().contains("RuntimeError: unreachable"),
        "the VM trapped"
    );
    (statuses, gw.upstream("vmfail").len())
}

/// The bundled choice (`envoy/envoy.yaml`), FAIL_RELOAD: while the VM is down requests fail closed (503); after
/// Envoy's 1 s backoff the VM is back, and the replay is caught (428): the ledger lives in
/// shared data, which outlives the VM.
#[test]
fn fail_reload_fails_closed_then_guards_again_with_the_ledger_intact() {
    let (statuses, executed) = after_a_trap(None);
    assert_eq!(statuses[0], 503, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 428),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&428),
        "the VM came back: {statuses:?}"
    );
    assert_eq!(executed, 1, "{statuses:?}");
}

/// FAIL_CLOSED (and the older `fail_open: false`): safe but a standing outage: every later
/// request on the worker is 503 until Envoy restarts.
#[test]
fn fail_closed_answers_503_until_envoy_restarts() {
    for policy in [Some("fail_open"), Some("FAIL_CLOSED")] {
        let (statuses, executed) = after_a_trap(policy);
        assert!(
            statuses.iter().all(|s| *s == 503),
            "{policy:?}: {statuses:?}"
        );
        assert_eq!(executed, 1);
    }
}

/// FAIL_OPEN: after one trap every request passes unguarded, and the replay of the token call
/// executes again and again. `retry-guard check` refuses this setting.
#[test]
fn fail_open_lets_every_replay_through_after_a_trap() {
    let (statuses, executed) = after_a_trap(Some("FAIL_OPEN"));
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(executed, 1 + statuses.len(), "every replay executed");
}

//! The real retry-guard filter on host-sim: the basic story without the scenario runner.

use std::path::PathBuf;

use host_sim::{Request, Runtime, Sim, SimConfig, Upstream};

fn wasm() -> PathBuf {
    retry_guard::paths::filter_wasm()
}

fn config() -> Vec<u8> {
    std::fs::read(retry_guard::paths::repo_root().join("testdata/configs/smoke.json"))
        .expect("smoke config")
}

#[test]
fn first_call_passes_replay_gets_428() {
    let rt = Runtime::from_file(&wasm()).expect("build the filter first: just build");
    let sim = Sim::new(
        &rt,
        SimConfig {
            plugin_config: config(),
            ..SimConfig::default()
        },
    )
    .expect("starts");
    let req = Request::new("POST", "/oauth/token")
        .header("x-client-id", "ci-bot")
        .body("grant_type=client_credentials");
    let first = sim.request(&req, &Upstream::ok()).expect("first");
    assert_eq!(first.status, 200, "{first:#?}");
    assert!(first.upstream.is_some());
    let replay = sim
        .request(&req.clone().on_worker(1), &Upstream::ok())
        .expect("replay");
    assert_eq!(replay.status, 428, "{replay:#?}");
    assert!(replay.upstream.is_none());
    let doc = replay.json().expect("problem json");
    assert_eq!(doc["owner"], "team-iam");
    assert_eq!(
        replay
            .filter_state
            .get("wasm.retry_guard.decision")
            .map(String::as_str),
        Some("confirm")
    );
    let m = sim.metrics();
    assert_eq!(m.get("retry_guard.decision.allow"), Some(&1));
    assert_eq!(m.get("retry_guard.decision.confirm"), Some(&1));
}

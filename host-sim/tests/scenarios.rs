//! Every scenario in `testdata/scenarios` passes on the simulator with the release filter.

use host_sim::scenario::files as scenario_files;
use host_sim::scenario::{run_file, RunOptions, Summary};
use host_sim::Runtime;

#[test]
fn all_scenarios_pass() {
    let root = retry_guard::paths::repo_root();
    let wasm = retry_guard::paths::filter_wasm();
    let rt = Runtime::from_file(&wasm).expect("the release filter (run `just build`)");
    let dir = root.join("testdata/scenarios");
    let files = scenario_files(&[dir.display().to_string()]).expect("scenario files");
    assert!(files.len() >= 15, "found only {} scenarios", files.len());
    let mut summary = Summary::default();
    let mut on_etcd = Vec::new();
    for f in files {
        // Scenarios on the cluster ledger need a real etcd, which host-sim does not start:
        // conformance's agreement test runs them on both hosts, each with its own etcd.
        if host_sim::scenario::load(&f)
            .ok()
            .is_some_and(|sc| host_sim::scenario::etcd_cluster(&sc).is_some())
        {
            on_etcd.push(f.display().to_string());
            continue;
        }
        summary.push(run_file(&rt, &f, &RunOptions::default()));
    }
    eprintln!("run by conformance (they need etcd): {on_etcd:?}");
    let failed: Vec<String> = summary
        .scenarios
        .iter()
        .filter(|s| !s.passed)
        .map(|s| s.render())
        .collect();
    assert!(
        failed.is_empty(),
        "{}\n{}",
        failed.join("\n"),
        summary.line()
    );
}

#[test]
fn demo_story_exists_and_every_scenario_says_if_envoy_can_run_it() {
    let root = retry_guard::paths::repo_root().join("testdata/scenarios");
    assert!(root.join("demo-story.json").is_file());
    for f in scenario_files(&[root.display().to_string()]).expect("files") {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).expect("read")).expect("json");
        let envoy = &v["envoy"];
        assert!(
            envoy["runnable"].is_boolean(),
            "{}: envoy.runnable missing",
            f.display()
        );
        if envoy["runnable"] == false {
            assert!(
                envoy["why"].is_string(),
                "{}: envoy.why missing",
                f.display()
            );
        }
    }
}

/// A scenario file in a folder of its own (as a user writes one outside `testdata/`).
fn user_scenario(name: &str, doc: &serde_json::Value) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rg-user-scenario-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(doc).expect("json")).expect("write");
    file
}

fn token_config() -> serde_json::Value {
    serde_json::json!({
        "principal": ["header:x-client-id"],
        "confirmation": {"keys": {"approvals-test": "uX8eW6DxEemuCaI/oNCq6KDo6Y8z5eww9v+3EFwvU0A="}},
        "routes": [{"name": "oauth-token", "match": {"route_name": "token"},
                    "class": "token_issuing", "owner": "team-iam", "escalation": "pager"}]
    })
}

#[test]
fn a_scenario_outside_testdata_confirms_with_the_repository_test_key() {
    let file = user_scenario(
        "confirm",
        &serde_json::json!({
            "config": token_config(),
            "request_defaults": {"headers": {"x-client-id": "ci-bot"}, "body": "grant_type=x"},
            "steps": [
                {"name": "first", "request": {}, "expect": {"status": 200}},
                {"name": "replay", "request": {}, "expect": {"status": 428}},
                {"request": {"headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay"}}}},
                 "expect": {"status": 200, "audit": {"decision": "confirmed", "approver": "alice@example.com"}}}
            ]
        }),
    );
    let rt = Runtime::from_file(&retry_guard::paths::filter_wasm()).expect("just build");
    let r = run_file(&rt, &file, &RunOptions::default());
    assert!(r.passed, "{}", r.render());
}

#[test]
fn a_request_that_matches_no_route_says_so_and_names_the_listener_routes() {
    let file = user_scenario(
        "unmatched",
        &serde_json::json!({
            "config": token_config(),
            "steps": [{"request": {"method": "GET", "path": "/health"}, "expect": {"status": 200}}]
        }),
    );
    let rt = Runtime::from_file(&retry_guard::paths::filter_wasm()).expect("just build");
    let r = run_file(&rt, &file, &RunOptions::default());
    assert!(r.passed, "{}", r.render());
    let line = r.steps[0].lines.join("\n");
    assert!(
        line.contains("matched no route of the configuration")
            && line.contains("token (/oauth/token), catch_all (prefix /)"),
        "{line}"
    );
}

#[test]
fn an_invalid_scenario_reports_every_problem_and_runs_nothing() {
    let file = user_scenario(
        "invalid",
        &serde_json::json!({
            "config": token_config(),
            "steps": [
                {"request": {}, "expect": {"status": 200}},
                {"request": {"pth": "/oauth/token"}, "expect": {"upstream": "yes"}},
                {"advance": "later"}
            ]
        }),
    );
    let rt = Runtime::from_file(&retry_guard::paths::filter_wasm()).expect("just build");
    let r = run_file(&rt, &file, &RunOptions::default());
    assert!(!r.passed);
    assert!(r.steps.is_empty(), "no step may run: {}", r.render());
    let error = r.error.unwrap_or_default();
    for want in [
        "3 problem(s)",
        "steps[1].request.pth: unknown request field",
        "steps[1].expect.upstream: \"yes\" is not a form this expectation takes",
        "steps[2].advance: \"later\" is not a duration",
    ] {
        assert!(error.contains(want), "missing {want:?} in {error}");
    }
}

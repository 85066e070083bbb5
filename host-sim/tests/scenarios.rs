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
    for f in files {
        summary.push(run_file(&rt, &f, &RunOptions::default()));
    }
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

//! Agreement between host-sim and the real Envoy 1.40: every scenario in `testdata/scenarios`
//! marked `envoy.runnable: true` runs on both hosts (the simulator, and Envoy with 2 workers in
//! front of the scripted backend over real HTTP); each must pass its own expectations on both,
//! and every exchange must show the same status, problem `type`, decision and upstream-received
//! facts (whether the upstream got the request; `authorization` present; the
//! `retry-guard-token` header; no `retry-guard-confirmation`). Confirmations are signed at run
//! time from the challenge each host returned. Scenarios not runnable on Envoy must say why.
//!
//! Needs `just build` and `just envoy-install`; without them the test fails saying so.

use std::path::PathBuf;
use std::time::Instant;

use conformance::envoy_target::{self as envoy, EnvoyOptions};
use host_sim::scenario::files as scenario_files;
use host_sim::scenario::{load, Observed, RunOptions, Scenario, ScenarioReport};
use host_sim::Runtime;

/// Envoys running at once (each with 2 workers).
const PARALLEL: usize = 3;

fn root() -> PathBuf {
    retry_guard::paths::repo_root()
}

fn observed(r: &ScenarioReport) -> Vec<(usize, Observed)> {
    r.steps
        .iter()
        .flat_map(|s| s.observed.iter().map(move |o| (s.index, o.clone())))
        .collect()
}

/// The differences between the two hosts' exchanges, one line each.
fn differences(sim: &ScenarioReport, env: &ScenarioReport) -> Vec<String> {
    let (a, b) = (observed(sim), observed(env));
    let mut out = Vec::new();
    if a.len() != b.len() {
        out.push(format!(
            "{} exchanges on host-sim, {} on Envoy",
            a.len(),
            b.len()
        ));
    }
    for ((step, x), (_, y)) in a.iter().zip(b.iter()) {
        if x != y {
            out.push(format!(
                "step {step} {}: host-sim {} | Envoy {}",
                x.name,
                serde_json::to_string(x).unwrap_or_default(),
                serde_json::to_string(y).unwrap_or_default()
            ));
        }
    }
    out
}

#[test]
fn runnable_scenarios_agree_between_host_sim_and_envoy() {
    let started = Instant::now();
    let wasm = retry_guard::paths::filter_wasm();
    let rt = Runtime::from_file(&wasm).expect("the release filter (run `just build`)");
    let dir = root().join("testdata/scenarios");
    let files = scenario_files(&[dir.display().to_string()]).expect("scenario files");
    let mut runnable: Vec<Scenario> = Vec::new();
    let mut not_runnable = Vec::new();
    for f in &files {
        let sc = load(f).expect("scenario loads");
        let e = &sc.json["envoy"];
        assert!(
            e["runnable"].is_boolean(),
            "{}: envoy.runnable missing",
            sc.name
        );
        if e["runnable"] == true {
            assert_eq!(
                envoy::not_runnable(&sc),
                None,
                "{}: marked runnable on Envoy, but the Envoy target cannot run it",
                sc.name
            );
            runnable.push(sc);
        } else {
            let why = e["why"].as_str().unwrap_or_default().trim().to_string();
            assert!(
                !why.is_empty(),
                "{}: not runnable on Envoy, and no `why`",
                sc.name
            );
            not_runnable.push(format!("{}: {why}", sc.name));
        }
    }
    assert!(
        runnable.len() >= 10,
        "only {} runnable scenarios",
        runnable.len()
    );

    // Envoy: a few at once (each scenario has its own Envoy, backend and owner thread).
    let opts = EnvoyOptions::default();
    let mut on_envoy: Vec<Option<ScenarioReport>> = vec![None; runnable.len()];
    for (chunk_i, chunk) in runnable.chunks(PARALLEL).enumerate() {
        let reports: Vec<ScenarioReport> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|sc| s.spawn(|| envoy::run_scenario(sc, &opts)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("an Envoy run panicked"))
                .collect()
        });
        for (j, r) in reports.into_iter().enumerate() {
            on_envoy[chunk_i * PARALLEL + j] = Some(r);
        }
    }

    let mut problems = Vec::new();
    let mut agreed = Vec::new();
    for (sc, env) in runnable.iter().zip(on_envoy) {
        let env = env.expect("every scenario ran");
        let sim = envoy::run_on_sim(&rt, sc, &RunOptions::default());
        if !sim.passed {
            problems.push(format!("{} failed on host-sim:\n{}", sc.name, sim.render()));
            continue;
        }
        if !env.passed {
            problems.push(format!("{} failed on Envoy:\n{}", sc.name, env.render()));
            continue;
        }
        let diff = differences(&sim, &env);
        if diff.is_empty() {
            agreed.push(format!("{} ({} exchanges)", sc.name, observed(&sim).len()));
        } else {
            problems.push(format!(
                "{}: host-sim and Envoy disagree:\n  {}",
                sc.name,
                diff.join("\n  ")
            ));
        }
    }
    eprintln!(
        "agreement: {} scenario(s) agree on host-sim and Envoy in {:.1} s:\n  {}\nnot runnable on Envoy:\n  {}",
        agreed.len(),
        started.elapsed().as_secs_f64(),
        agreed.join("\n  "),
        not_runnable.join("\n  ")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn the_envoy_target_refuses_non_runnable_scenarios_with_their_why() {
    let sc =
        load(&root().join("testdata/scenarios/headers-stop-iteration-off.json")).expect("loads");
    let r = envoy::run_scenario(&sc, &EnvoyOptions::default());
    let why = sc.json["envoy"]["why"].as_str().expect("why");
    assert_eq!(r.refused.as_deref(), Some(why));
    assert!(r.render().contains(why));
}

/// Scenarios on the cluster ledger that Envoy cannot run (they need mTLS identities, for
/// instance) still run on host-sim, each with its own real etcd: host-sim's own scenario test
/// skips every etcd scenario, and the agreement test above runs only the runnable ones.
#[test]
fn etcd_scenarios_envoy_cannot_run_pass_on_host_sim() {
    let wasm = retry_guard::paths::filter_wasm();
    let rt = Runtime::from_file(&wasm).expect("the release filter (run `just build`)");
    let dir = root().join("testdata/scenarios");
    let files = scenario_files(&[dir.display().to_string()]).expect("scenario files");
    let mut ran = Vec::new();
    for f in &files {
        let sc = load(f).expect("scenario loads");
        if sc.json["envoy"]["runnable"] == true || host_sim::scenario::etcd_cluster(&sc).is_none() {
            continue;
        }
        let report = envoy::run_on_sim(&rt, &sc, &RunOptions::default());
        assert!(report.passed, "{}", report.render());
        ran.push(sc.name.clone());
    }
    assert!(
        ran.iter().any(|n| n == "credential-shared-etcd"),
        "ran {ran:?}"
    );
}

//! `run` and `demo`: scenarios on host-sim, or on the real Envoy through
//! [`conformance::envoy_target`].

use std::path::PathBuf;

use conformance::envoy_target;
use host_sim::scenario::{self, RunOptions, Summary};

use crate::{default_path, runtime, take_flag, take_opt, USAGE};

/// `retry-guard run`: every scenario given (files or folders) on the chosen target.
pub fn run(mut args: Vec<String>) -> Result<i32, String> {
    let json = take_flag(&mut args, "--json");
    let wasm = take_opt(&mut args, "--wasm")?;
    let target = take_opt(&mut args, "--target")?.unwrap_or_else(|| "sim".into());
    if target != "sim" && target != "envoy" {
        return Err(format!("--target {target}: expected sim or envoy"));
    }
    let echo = match take_opt(&mut args, "--log")? {
        Some(l) => Some(host_sim::abi::log_level_from_name(&l).ok_or_else(|| {
            format!("--log {l}: expected trace, debug, info, warn, error or critical")
        })?),
        None => None,
    };
    if let Some(bad) = args.iter().find(|a| a.starts_with("--")) {
        return Err(format!("unknown option {bad}\n\n{USAGE}"));
    }
    let files = host_sim::scenario::files(&args)?;
    if target == "envoy" {
        let opts = envoy_target::EnvoyOptions {
            wasm: wasm.map(PathBuf::from),
        };
        return report_all(&files, json, |f| envoy_target::run_file(f, &opts));
    }
    let rt = runtime(wasm)?;
    let opts = RunOptions {
        echo_log: echo,
        etcd: None,
    };
    report_all(&files, json, |f| match scenario::load(f) {
        Ok(sc) => envoy_target::run_on_sim(&rt, &sc, &opts),
        Err(_) => scenario::run_file(&rt, f, &opts),
    })
}

/// Runs every file with `run` and prints each report (or, with `--json`, all of them as one
/// document) and the summary line; exit 1 when any scenario failed.
fn report_all(
    files: &[PathBuf],
    json: bool,
    mut run: impl FnMut(&std::path::Path) -> host_sim::scenario::ScenarioReport,
) -> Result<i32, String> {
    let mut summary = Summary::default();
    for f in files {
        let r = run(f);
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

/// `retry-guard demo`: the narrated story on host-sim, or on the real Envoy.
pub fn demo(mut args: Vec<String>) -> Result<i32, String> {
    let target = take_opt(&mut args, "--target")?.unwrap_or_else(|| "sim".into());
    let wasm = take_opt(&mut args, "--wasm")?;
    let file = take_opt(&mut args, "--scenario")?
        .map(PathBuf::from)
        .unwrap_or_else(|| default_path("testdata/scenarios/demo-story.json"));
    if let Some(extra) = args.first() {
        return Err(format!("unexpected argument {extra}\n\n{USAGE}"));
    }
    match target.as_str() {
        "sim" => {}
        "envoy" => {
            // The harness's launcher loads the module named by this variable.
            if let Some(w) = wasm {
                std::env::set_var(retry_guard::paths::FILTER_WASM_ENV, w);
            }
            return Ok(crate::demo_envoy::main());
        }
        other => return Err(format!("--target {other}: expected sim or envoy")),
    }
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

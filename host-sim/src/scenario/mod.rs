//! Scenarios: JSON files (`testdata/scenarios/*.json`) that script a simulated Envoy — the
//! plugin configuration, the workers, the clock, requests with their upstream behaviour and
//! what must come out. The format is documented in `host-sim/README.md` ("Scenario format").
//!
//! The simulator is one target; the real Envoy (`conformance::envoy_target`) is another. The
//! parts both share — reading steps and requests, resolving values, checking expectations,
//! building reports — are public here ([`expect`], [`values`], [`target`]), so the scenario
//! format has one implementation whichever host runs it.

use std::path::PathBuf;

pub mod expect;
mod report;
mod run;
mod validate;
pub mod values;

pub use report::{Observed, ScenarioReport, StepReport, Summary, UpstreamFacts};
pub use run::{etcd_cluster, invalid, load, run_file, run_scenario, RunOptions, Scenario};
pub use validate::validate;

/// What another scenario target builds on: the step reader, the report builders and the plan
/// of a `concurrent` step, shared with the simulator's runner.
pub mod target {
    pub use super::run::{
        capture_of, expect_of, new_report, parse_order, plugin_config, report_metrics, step_kind,
        summarize, wanted_metrics, ConcurrentPlan, Entry, Flood, FloodTally,
    };
}

/// Expands folders into their `*.json` files (sorted); files are kept as given.
pub fn files(inputs: &[String]) -> Result<Vec<PathBuf>, String> {
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

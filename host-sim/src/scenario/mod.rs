//! Scenarios: JSON files (`testdata/scenarios/*.json`) that script a simulated Envoy — the
//! plugin configuration, the workers, the clock, requests with their upstream behaviour and
//! what must come out. The format is documented in `host-sim/README.md` ("Scenario format").

pub mod envoy;
mod expect;
mod report;
mod run;
mod values;

pub use report::{Observed, ScenarioReport, StepReport, Summary, UpstreamFacts};
pub use run::{load, run_file, run_scenario, RunOptions, Scenario};

//! Scenario results: a readable trace and a JSON form for machines.

use serde::Serialize;

/// The result of one step.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepReport {
    /// Position in the scenario (1-based).
    pub index: usize,
    /// `request`, `concurrent`, `flood`, `advance`, `metrics`, `log`, `note`.
    pub kind: String,
    /// The step's name, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Virtual seconds since the scenario started, when the step began.
    pub time: f64,
    /// One line per request or event: what happened.
    pub lines: Vec<String>,
    /// Failed expectations (empty: passed).
    pub failures: Vec<String>,
}

/// The result of one scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// File it came from.
    pub file: String,
    /// What it shows.
    pub description: String,
    /// Whether the scenario can also run against a real Envoy (no long clock jumps, no mTLS).
    pub envoy_runnable: bool,
    /// Why not, if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envoy_why: Option<String>,
    /// All expectations held.
    pub passed: bool,
    /// A problem that stopped the scenario (bad file, plugin did not start, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Steps.
    pub steps: Vec<StepReport>,
}

impl ScenarioReport {
    /// The readable trace.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mark = if self.passed { "PASS" } else { "FAIL" };
        out.push_str(&format!("{mark} {} ({})\n", self.name, self.file));
        if !self.description.is_empty() {
            out.push_str(&format!("     {}\n", self.description));
        }
        for s in &self.steps {
            let name = s
                .name
                .as_deref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:>2} [+{:.3}s] {}{name}\n",
                s.index, s.time, s.kind
            ));
            for l in &s.lines {
                out.push_str(&format!("       {l}\n"));
            }
            for f in &s.failures {
                out.push_str(&format!("       ✗ {f}\n"));
            }
        }
        if let Some(e) = &self.error {
            for (i, l) in e.lines().enumerate() {
                out.push_str(&format!(
                    "  {} {l}\n",
                    if i == 0 { "error:" } else { "      " }
                ));
            }
        }
        out
    }
}

/// Results of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Each scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// How many passed.
    pub passed: usize,
    /// How many failed.
    pub failed: usize,
}

impl Summary {
    /// Adds a scenario result.
    pub fn push(&mut self, r: ScenarioReport) {
        if r.passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        self.scenarios.push(r);
    }

    /// The closing line, `N passed, M failed`.
    pub fn line(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed)
    }
}

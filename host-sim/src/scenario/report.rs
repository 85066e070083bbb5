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
    /// The host-independent facts of each exchange of the step, in order (what the agreement
    /// test compares between host-sim and Envoy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<Observed>,
}

/// What one exchange showed, in terms both hosts can report: the client's status, the problem
/// type, the decision (filter state) and what the upstream received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// The request's name (step name, concurrent request name, or `flood[i]`).
    pub name: String,
    /// Status the client got (0: none).
    pub status: u16,
    /// The problem document's `type`, without `urn:retry-guard:problem:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Filter state `wasm.retry_guard.decision`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// What the upstream received (`None`: it never got the request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamFacts>,
}

/// The upstream-received facts an agreement check compares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamFacts {
    /// An `authorization` header reached the upstream.
    pub authorization: bool,
    /// The `retry-guard-token` header the filter added (stripped tokens), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_guard_token: Option<String>,
    /// A `retry-guard-confirmation` header reached the upstream (it must not).
    pub confirmation: bool,
}

impl Observed {
    /// The facts of an exchange (either host's, both as [`crate::sim::Exchange`]).
    pub fn of(name: &str, ex: &crate::sim::Exchange) -> Observed {
        Observed {
            name: name.to_string(),
            status: ex.status,
            problem: ex
                .json()
                .and_then(|b| b.get("type").and_then(|t| t.as_str()).map(str::to_string))
                .map(|t| t.trim_start_matches("urn:retry-guard:problem:").to_string()),
            decision: ex.filter_state.get("wasm.retry_guard.decision").cloned(),
            upstream: ex.upstream.as_ref().map(|r| UpstreamFacts {
                authorization: r.header("authorization").is_some(),
                retry_guard_token: r.header("retry-guard-token").map(str::to_string),
                confirmation: r.header("retry-guard-confirmation").is_some(),
            }),
        }
    }
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
    /// The host that ran it: `sim` or `envoy`.
    pub target: String,
    /// The Envoy target refused to run it (not runnable there); the text says why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
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
        if let Some(why) = &self.refused {
            out.push_str(&format!(
                "REFUSED {} ({}): not runnable on Envoy: {why}\n",
                self.name, self.file
            ));
            return out;
        }
        let mark = if self.passed { "PASS" } else { "FAIL" };
        let on = if self.target == "envoy" {
            " [envoy]"
        } else {
            ""
        };
        out.push_str(&format!("{mark}{on} {} ({})\n", self.name, self.file));
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
    /// How many the Envoy target refused (not runnable there).
    pub refused: usize,
}

impl Summary {
    /// Adds a scenario result.
    pub fn push(&mut self, r: ScenarioReport) {
        if r.refused.is_some() {
            self.refused += 1;
        } else if r.passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        self.scenarios.push(r);
    }

    /// The closing line, `N passed, M failed`.
    pub fn line(&self) -> String {
        let mut line = format!("{} passed, {} failed", self.passed, self.failed);
        if self.refused > 0 {
            line.push_str(&format!(
                ", {} refused (not runnable on Envoy)",
                self.refused
            ));
        }
        line
    }
}

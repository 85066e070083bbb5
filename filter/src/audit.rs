//! Audit lines: one `retry-guard audit <json>` info line per decision on a matched route, and
//! one per recorded outcome (`"event": "outcome"`).

use serde_json::{Map, Value};

use crate::config::Route;
use crate::engine::{Decision, Facts};
use crate::policy::Outcome;
use crate::time::rfc3339;

/// Prefix of every audit line.
pub const PREFIX: &str = "retry-guard audit ";

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

/// The audit line of a decision.
pub fn decision_line(route: &Route, facts: &Facts<'_>, d: &Decision) -> String {
    let mut m = Map::new();
    m.insert("event".into(), "decision".into());
    m.insert("ts".into(), rfc3339(facts.now).into());
    m.insert("request_id".into(), opt(facts.request_id));
    m.insert("route".into(), route.name.clone().into());
    m.insert("class".into(), route.class.name().into());
    m.insert("owner".into(), route.owner.clone().into());
    m.insert("escalation".into(), route.escalation.clone().into());
    m.insert("principal".into(), facts.principal.into());
    m.insert(
        "fingerprint".into(),
        opt(facts.fingerprint.map(|f| f.text())),
    );
    m.insert("key_present".into(), facts.key.key().is_some().into());
    m.insert("attempt".into(), d.attempt.into());
    m.insert(
        "previous_outcome".into(),
        opt(d.previous.map(|(o, _)| o.name())),
    );
    m.insert("previous_status".into(), opt(d.previous.map(|(_, s)| s)));
    m.insert("decision".into(), d.verdict.name().into());
    m.insert("policy".into(), opt(d.policy.map(|p| p.name())));
    m.insert("reason".into(), d.reason.clone().into());
    m.insert("token_action".into(), d.token_action.name().into());
    m.insert("token_reason".into(), opt(d.token_reason.map(|r| r.name())));
    m.insert("approver".into(), opt(d.approver.clone()));
    m.insert(
        "confirmation_error".into(),
        opt(d.confirmation_error.map(|e| e.name())),
    );
    m.insert("mode".into(), d.mode.name().into());
    m.insert("would_block".into(), d.would_block.into());
    format!("{PREFIX}{}", Value::Object(m))
}

/// What the outcome line reports.
pub struct OutcomeRecord<'a> {
    /// Now, Unix seconds.
    pub now: u64,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// Fingerprint text.
    pub fingerprint: &'a str,
    /// Attempt number.
    pub attempt: u32,
    /// The recorded outcome.
    pub outcome: Outcome,
    /// Response status (0: none).
    pub status: u16,
    /// Envoy response flags.
    pub response_flags: u64,
}

/// The audit line of a recorded outcome.
pub fn outcome_line(route: &Route, r: &OutcomeRecord<'_>) -> String {
    let mut m = Map::new();
    m.insert("event".into(), "outcome".into());
    m.insert("ts".into(), rfc3339(r.now).into());
    m.insert("request_id".into(), opt(r.request_id));
    m.insert("route".into(), route.name.clone().into());
    m.insert("class".into(), route.class.name().into());
    m.insert("owner".into(), route.owner.clone().into());
    m.insert("escalation".into(), route.escalation.clone().into());
    m.insert("fingerprint".into(), r.fingerprint.into());
    m.insert("attempt".into(), r.attempt.into());
    m.insert("outcome".into(), r.outcome.name().into());
    m.insert("status".into(), r.status.into());
    m.insert("response_flags".into(), r.response_flags.into());
    format!("{PREFIX}{}", Value::Object(m))
}

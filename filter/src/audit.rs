//! Audit lines: one `retry-guard audit <json>` info line per decision on a matched route, and
//! one per recorded outcome (`"event": "outcome"`).

use crate::config::Route;
use crate::engine::{Decision, Facts};
use crate::fingerprint::Fingerprint;
use crate::json::Obj;
use crate::policy::Outcome;

/// Prefix of every audit line.
pub const PREFIX: &str = "retry-guard audit ";

/// The members of a decision line ([`decision_line`]), in the order it writes them. Every
/// line carries every member: one without a value (no `x-request-id`, no earlier attempt, no
/// policy applied, no stale token, no approver, no refused confirmation, no fingerprint before
/// the body is known) is `null`. A test checks the writer against this list, so tools and
/// tests that read audit lines can rely on it.
pub const DECISION_MEMBERS: &[&str] = &[
    "event",
    "ts",
    "request_id",
    "route",
    "class",
    "owner",
    "escalation",
    "principal",
    "fingerprint",
    "key_present",
    "attempt",
    "previous_outcome",
    "previous_status",
    "since_previous_ms",
    "decision",
    "policy",
    "reason",
    "token_action",
    "token_reason",
    "approver",
    "confirmation_error",
    "credential_holder",
    "credential_shared_with",
    "upstream_attempt",
    "key_regenerated_ms",
    "mode",
    "would_block",
];

fn start(event: &str, now: u64, request_id: Option<&str>, route: &Route) -> Obj {
    let mut m = Obj::after(PREFIX);
    m.word("event", event)
        .time("ts", now)
        .opt_str("request_id", request_id)
        .str("route", &route.name)
        .word("class", route.class.name())
        .str("owner", &route.owner)
        .str("escalation", &route.escalation);
    m
}

/// The audit line of a decision: [`PREFIX`], then a JSON object of the
/// [`DECISION_MEMBERS`].
pub fn decision_line(route: &Route, facts: &Facts<'_>, d: &Decision) -> String {
    let mut m = start("decision", facts.now(), facts.request_id, route);
    m.str("principal", facts.principal)
        .opt_b64url("fingerprint", facts.fingerprint.as_ref().map(|f| &f.0[..]))
        .bool("key_present", facts.key.key().is_some())
        .num("attempt", u64::from(d.attempt))
        .opt_word("previous_outcome", d.previous.map(|(o, _)| o.name()))
        .opt_num("previous_status", d.previous.map(|(_, s)| u64::from(s)))
        .opt_num("since_previous_ms", d.since_previous_ms)
        .word("decision", d.verdict.name())
        .opt_word("policy", d.policy.map(|p| p.name()))
        .str("reason", &d.reason)
        .word("token_action", d.token_action.name())
        .opt_word("token_reason", d.token_reason.map(|r| r.name()))
        .opt_str("approver", d.approver.as_deref())
        .opt_word("confirmation_error", d.confirmation_error.map(|e| e.name()))
        // Both workload identities that presented the credential (never the credential),
        // when they differ.
        .opt_str(
            "credential_holder",
            facts.credential_shared_with.and(facts.credential_holder),
        )
        .opt_str("credential_shared_with", facts.credential_shared_with)
        .opt_num("upstream_attempt", facts.client_attempt.map(u64::from))
        .opt_num("key_regenerated_ms", facts.key_regenerated_ms)
        .word("mode", d.mode.name())
        .bool("would_block", d.would_block);
    m.finish()
}

/// What the outcome line reports.
pub struct OutcomeRecord<'a> {
    /// Now, Unix seconds.
    pub now: u64,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// The attempt's fingerprint.
    pub fingerprint: &'a Fingerprint,
    /// Attempt number.
    pub attempt: u32,
    /// The recorded outcome.
    pub outcome: Outcome,
    /// Response status (0: none).
    pub status: u16,
    /// Envoy response flags.
    pub response_flags: u64,
    /// How many times Envoy's router sent the request upstream (`upstream.request_attempt_count`;
    /// more than 1 means the router retried it), when Envoy says.
    pub upstream_attempts: Option<u64>,
}

/// The audit line of a recorded outcome.
pub fn outcome_line(route: &Route, r: &OutcomeRecord<'_>) -> String {
    let mut m = start("outcome", r.now, r.request_id, route);
    m.opt_b64url("fingerprint", Some(&r.fingerprint.0))
        .num("attempt", u64::from(r.attempt))
        .word("outcome", r.outcome.name())
        .num("status", u64::from(r.status))
        .num("response_flags", r.response_flags)
        .opt_num("upstream_attempts", r.upstream_attempts);
    m.finish()
}

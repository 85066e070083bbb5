//! The audit line: one `retry-guard audit <json>` info line per request on a matched route
//! (on untracked routes only when something happened, see `audit.untracked`), written when the
//! stream ends. Its decision members are written when the request is decided ([`record`]); the
//! stream's end adds how it ended ([`Record::line`]): the outcome the attempt recorded, the
//! status and response flags, and how long it took.

use crate::config::Route;
use crate::engine::{Decision, Facts};
use crate::json::Obj;
use crate::key;
use crate::policy::Outcome;

/// Prefix of every audit line.
pub const PREFIX: &str = "retry-guard audit ";

/// The members of an audit line, in the order it writes them. Every line carries every
/// member: one without a value (no `x-request-id`, no earlier attempt, no policy applied, no
/// stale token, no approver, no refused confirmation, no fingerprint before the body is
/// known, no outcome for a request that did not go upstream as a tracked attempt) is `null`.
/// Tests check the writer, and the README's table of them, against this list, so tools that
/// read audit lines can rely on it.
pub const MEMBERS: &[&str] = &[
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
    "outcome",
    "status",
    "response_flags",
    "router_attempts",
    "duration_ms",
];

/// A request's audit line in the making: the decision's members, waiting for the stream's end.
#[derive(Debug)]
pub struct Record(Obj);

/// How a stream ended: the members [`Record::line`] adds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ending {
    /// The outcome the request's attempt recorded in the ledger (or, on the cluster ledger, is
    /// recording): `None` for a request that was not a tracked attempt let through, or whose
    /// outcome a later attempt made moot.
    pub outcome: Option<Outcome>,
    /// The response status the client got: the filter's own answer, the upstream's, or
    /// Envoy's (`None`: no response).
    pub status: Option<u16>,
    /// Envoy's response flags (`response.flags`), when Envoy says.
    pub response_flags: Option<u64>,
    /// How many times Envoy's router sent the request upstream
    /// (`upstream.request_attempt_count`; more than 1: the router retried it), when Envoy says.
    pub router_attempts: Option<u64>,
    /// Milliseconds from the request's headers to the stream's end.
    pub duration_ms: Option<u64>,
}

/// The decision members of the audit line of `d`, made on `route` with `facts`.
pub fn record(route: &Route, facts: &Facts<'_>, d: &Decision) -> Record {
    let mut m = Obj::after(PREFIX);
    m.time(key!("ts"), facts.now())
        .opt_str(key!("request_id"), facts.request_id)
        .members(route.identity_json())
        .str(key!("principal"), facts.principal)
        .opt_b64url(
            key!("fingerprint"),
            facts.fingerprint.as_ref().map(|f| &f.0[..]),
        )
        .bool(key!("key_present"), facts.key.key().is_some())
        .num(key!("attempt"), u64::from(d.attempt))
        .opt_word(key!("previous_outcome"), d.previous.map(|(o, _)| o.name()))
        .opt_num(
            key!("previous_status"),
            d.previous.map(|(_, s)| u64::from(s)),
        )
        .opt_num(key!("since_previous_ms"), d.since_previous_ms)
        .word(key!("decision"), d.verdict.name())
        .opt_word(key!("policy"), d.policy.map(|p| p.name()))
        .str(key!("reason"), &d.reason)
        .word(key!("token_action"), d.token_action.name())
        .opt_word(key!("token_reason"), d.token_reason.map(|r| r.name()))
        .opt_str(key!("approver"), d.approver.as_deref())
        .opt_word(
            key!("confirmation_error"),
            d.confirmation_error.map(|e| e.name()),
        )
        // Both workload identities that presented the credential (never the credential),
        // when they differ.
        .opt_str(
            key!("credential_holder"),
            facts.credential_shared_with.and(facts.credential_holder),
        )
        .opt_str(key!("credential_shared_with"), facts.credential_shared_with)
        .opt_num(
            key!("upstream_attempt"),
            facts.client_attempt.map(u64::from),
        )
        .opt_num(key!("key_regenerated_ms"), facts.key_regenerated_ms)
        .word(key!("mode"), d.mode.name())
        .bool(key!("would_block"), d.would_block);
    Record(m)
}

impl Record {
    /// The finished line: [`PREFIX`], then a JSON object of the [`MEMBERS`].
    pub fn line(mut self, end: &Ending) -> String {
        self.0
            .opt_word(key!("outcome"), end.outcome.map(Outcome::name))
            .opt_num(key!("status"), end.status.map(u64::from))
            .opt_num(key!("response_flags"), end.response_flags)
            .opt_num(key!("router_attempts"), end.router_attempts)
            .opt_num(key!("duration_ms"), end.duration_ms);
        self.0.finish()
    }
}

/// The whole audit line of `d` with the stream's `end`: [`record`] then [`Record::line`].
pub fn line(route: &Route, facts: &Facts<'_>, d: &Decision, end: &Ending) -> String {
    record(route, facts, d).line(end)
}

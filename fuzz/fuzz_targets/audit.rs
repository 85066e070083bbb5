//! Differential: every audit line (`audit::decision_line`, `audit::outcome_line`) is the
//! prefix and one line of JSON that serde_json reads, with exactly the documented members
//! (`audit::DECISION_MEMBERS` for a decision), each once, in order, carrying exactly the
//! values it was written from: nothing a client sends (request id, principal, key, approver,
//! workload identities) nor a route's strings can add, drop or forge a member.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::audit::{decision_line, outcome_line, OutcomeRecord, DECISION_MEMBERS, PREFIX};
use retry_guard::fingerprint::Fingerprint;
use retry_guard::policy::Outcome;
use retry_guard_fuzz::{
    assert_members, b64url_oracle, opt_num, opt_str, rfc3339_oracle, DocInput, Expected,
};
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let input = DocInput::read(data);
    let facts = input.facts();
    let d = &input.decision;
    let route = &input.route;
    let head = |event: &str| -> Expected {
        vec![
            ("event", json!(event)),
            ("ts", json!(rfc3339_oracle(input.now))),
            ("request_id", opt_str(input.request_id.as_deref())),
            ("route", json!(route.name)),
            ("class", json!(route.class.name())),
            ("owner", json!(route.owner)),
            ("escalation", json!(route.escalation)),
        ]
    };
    let line = decision_line(route, &facts, d);
    let body = line.strip_prefix(PREFIX).expect("the audit prefix");
    let shared = input.shared_with.as_deref();
    let mut want = head("decision");
    want.extend([
        ("principal", json!(input.principal)),
        (
            "fingerprint",
            input
                .fingerprint
                .map_or(Value::Null, |f| json!(b64url_oracle(&f))),
        ),
        ("key_present", json!(input.key.key().is_some())),
        ("attempt", json!(d.attempt)),
        (
            "previous_outcome",
            opt_str(d.previous.map(|(o, _)| o.name())),
        ),
        (
            "previous_status",
            opt_num(d.previous.map(|(_, s)| u64::from(s))),
        ),
        ("since_previous_ms", opt_num(d.since_previous_ms)),
        ("decision", json!(d.verdict.name())),
        ("policy", opt_str(d.policy.map(|p| p.name()))),
        ("reason", json!(d.reason)),
        ("token_action", json!(d.token_action.name())),
        ("token_reason", opt_str(d.token_reason.map(|r| r.name()))),
        ("approver", opt_str(d.approver.as_deref())),
        (
            "confirmation_error",
            opt_str(d.confirmation_error.map(|e| e.name())),
        ),
        (
            "credential_holder",
            opt_str(shared.and(input.holder.as_deref())),
        ),
        ("credential_shared_with", opt_str(shared)),
        (
            "upstream_attempt",
            opt_num(input.client_attempt.map(u64::from)),
        ),
        ("key_regenerated_ms", opt_num(input.key_regenerated_ms)),
        ("mode", json!(d.mode.name())),
        ("would_block", json!(d.would_block)),
    ]);
    let names: Vec<&str> = want.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, DECISION_MEMBERS);
    assert_members(body, &want);

    let fingerprint = Fingerprint(input.fingerprint.unwrap_or([7; 32]));
    let record = OutcomeRecord {
        now: input.now,
        request_id: input.request_id.as_deref(),
        fingerprint: &fingerprint,
        attempt: d.attempt,
        outcome: d.previous.map_or(Outcome::InFlight, |(o, _)| o),
        status: d.previous.map_or(0, |(_, s)| s),
        response_flags: input.now.rotate_left(17),
        upstream_attempts: input.client_attempt.map(|a| u64::from(a) << 20),
    };
    let line = outcome_line(route, &record);
    let body = line.strip_prefix(PREFIX).expect("the audit prefix");
    let mut want = head("outcome");
    want.extend([
        ("fingerprint", json!(b64url_oracle(&fingerprint.0))),
        ("attempt", json!(record.attempt)),
        ("outcome", json!(record.outcome.name())),
        ("status", json!(record.status)),
        ("response_flags", json!(record.response_flags)),
        ("upstream_attempts", opt_num(record.upstream_attempts)),
    ]);
    assert_members(body, &want);
});

//! Differential: every audit line (`audit::record` finished by `Record::line`) is the prefix
//! and one line of JSON that serde_json reads, with exactly the documented members
//! (`audit::MEMBERS`), each once, in order, carrying exactly the values it was written from: nothing a client sends (request id, principal, key, approver,
//! workload identities) nor a route's strings can add, drop or forge a member.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::audit::{line, Ending, MEMBERS, PREFIX};
use retry_guard_fuzz::{
    assert_members, b64url_oracle, opt_num, opt_str, rfc3339_oracle, DocInput, Expected,
};
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let input = DocInput::read(data);
    let facts = input.facts();
    let d = &input.decision;
    let route = &input.route;
    // How the stream ended, from the same input: some members absent, some present.
    let end = Ending {
        outcome: d.previous.map(|(o, _)| o),
        status: d.previous.map(|(_, s)| s),
        response_flags: input.client_attempt.map(|_| input.now.rotate_left(17)),
        router_attempts: input.client_attempt.map(|a| u64::from(a) << 20),
        duration_ms: input.key_regenerated_ms.map(|ms| ms ^ input.now),
    };
    let mut want: Expected = vec![
        ("ts", json!(rfc3339_oracle(input.now))),
        ("request_id", opt_str(input.request_id.as_deref())),
        ("route", json!(route.name)),
        ("class", json!(route.class.name())),
        ("owner", json!(route.owner)),
        ("escalation", json!(route.escalation)),
    ];
    let text = line(route, &facts, d, &end);
    let body = text.strip_prefix(PREFIX).expect("the audit prefix");
    let shared = input.shared_with.as_deref();
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
        ("outcome", opt_str(end.outcome.map(|o| o.name()))),
        ("status", opt_num(end.status.map(u64::from))),
        ("response_flags", opt_num(end.response_flags)),
        ("router_attempts", opt_num(end.router_attempts)),
        ("duration_ms", opt_num(end.duration_ms)),
    ]);
    let names: Vec<&str> = want.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, MEMBERS);
    assert_members(body, &want);
});

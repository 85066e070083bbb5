//! Differential: every problem document the filter answers with (`Decision::reply`, RFC 9457)
//! is one line of JSON that serde_json reads, with exactly the members the verdict calls for,
//! each once, in order, carrying exactly the values it was written from: whatever bytes a
//! route's name, owner or escalation, the request id or the confirmation header name hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::config::Mode;
use retry_guard::engine::Verdict;
use retry_guard::problem::ProblemType;
use retry_guard_fuzz::{
    assert_members, b64url_oracle, object_members, opt_str, rfc3339_oracle, DocInput, Expected,
};
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let input = DocInput::read(data);
    let facts = input.facts();
    let d = &input.decision;
    let reply = d.reply(&input.config, &input.route, &facts);
    let blocked =
        d.mode == Mode::Enforce && !matches!(d.verdict, Verdict::Allow | Verdict::Confirmed);
    let Some(reply) = reply else {
        assert!(!blocked, "{:?} blocked without a reply", d.verdict);
        return;
    };
    assert!(blocked, "{:?} in {:?} answered", d.verdict, d.mode);
    let kind = match d.verdict {
        Verdict::Confirm => ProblemType::ConfirmationRequired,
        Verdict::Conflict => ProblemType::RequestInFlight,
        Verdict::Deny => ProblemType::DoNotRetry,
        Verdict::Mismatch => ProblemType::IdempotencyKeyMismatch,
        Verdict::BadRequest => d.problem.unwrap_or(ProblemType::IdempotencyKeyInvalid),
        Verdict::TooLarge => ProblemType::BodyTooLarge,
        Verdict::StaleToken => ProblemType::StaleToken,
        Verdict::Unavailable => ProblemType::LedgerUnavailable,
        Verdict::CredentialShared => ProblemType::CredentialShared,
        Verdict::Allow | Verdict::Confirmed => unreachable!(),
    };
    assert_eq!(reply.status, kind.status());
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let route = &input.route;
    // `detail` is prose; it ends naming the route's owner and escalation, as given.
    let doc = object_members(&reply.body);
    let detail = doc
        .0
        .iter()
        .find(|(k, _)| k == "detail")
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no detail in {:?}", reply.body))
        .to_string();
    let tail = format!(
        "Route {} is owned by {}; escalate via {}.",
        route.name, route.owner, route.escalation
    );
    assert!(detail.ends_with(&tail), "{detail:?}");
    let mut want: Expected = vec![
        ("type", json!(kind.uri())),
        ("title", json!(kind.title())),
        ("status", json!(kind.status())),
        ("detail", json!(detail)),
        ("route", json!(route.name)),
        ("class", json!(route.class.name())),
        ("owner", json!(route.owner)),
        ("escalation", json!(route.escalation)),
        (
            "fingerprint",
            input
                .fingerprint
                .map_or(Value::Null, |f| json!(b64url_oracle(&f))),
        ),
        ("attempt", json!(d.attempt)),
        ("request_id", opt_str(input.request_id.as_deref())),
    ];
    if let Some((o, s)) = d.previous {
        want.push(("previous_outcome", json!(o.name())));
        want.push(("previous_status", json!(s)));
    }
    if let Some(ms) = d.since_previous_ms {
        want.push(("since_previous_ms", json!(ms)));
    }
    if let Some(r) = d.token_reason {
        want.push(("token_reason", json!(r.name())));
    }
    let mut challenge_header = None;
    if d.verdict == Verdict::Confirm {
        if let Some(c) = d.challenge {
            challenge_header = Some(b64url_oracle(&c));
            want.push(("challenge", json!(b64url_oracle(&c))));
        }
        if let Some(t) = d.first_seen {
            want.push(("first_seen", json!(rfc3339_oracle(t))));
        }
        if let Some(t) = d.window_ends {
            want.push(("window_ends", json!(rfc3339_oracle(t))));
        }
        want.push((
            "confirmation_header",
            json!(input.config.confirmation_header),
        ));
        if let Some(e) = d.confirmation_error {
            want.push(("confirmation_error", json!(e.name())));
        }
    }
    assert_members(&reply.body, &want);
    assert_eq!(
        reply.header("retry-guard-challenge"),
        challenge_header.as_deref()
    );
});

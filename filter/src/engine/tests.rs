//! Native tests of the decision engine: every policy cell, key handling, stale tokens,
//! confirmations, shadow mode, answers and audit lines, and the ledger race.

use super::*;
use crate::confirm::tests::{sign, NOW};
use crate::fingerprint::{empty_body_digest, NaturalKey};
use crate::ledger::{IndexKey, MemoryStore, SlotLedger, Table};
use crate::policy::RouteClass;
use serde_json::{json, Value};

fn config_with(route_extra: Value, top_extra: Value) -> Config {
    let key = crate::b64::standard(
        crate::confirm::tests::signing_key()
            .verifying_key()
            .as_bytes(),
    );
    let mut route = json!({
        "name": "oauth-token",
        "match": {"path": "/oauth/token"},
        "class": "token_issuing",
        "owner": "team-iam",
        "escalation": "pagerduty:iam-primary",
    });
    if let (Value::Object(r), Value::Object(extra)) = (&mut route, route_extra) {
        r.extend(extra);
    }
    let mut top = json!({
        "confirmation": {"keys": {"k1": key}},
        "routes": [route],
    });
    if let (Value::Object(t), Value::Object(extra)) = (&mut top, top_extra) {
        t.extend(extra);
    }
    Config::from_value(&top).unwrap()
}

fn config() -> Config {
    config_with(json!({}), json!({}))
}

fn class_config(class: RouteClass) -> Config {
    config_with(json!({"class": class.name()}), json!({}))
}

struct Req {
    key: KeyCheck,
    body: BodyDigest,
    stale: Option<StaleReason>,
    confirmation: Option<String>,
    now: u64,
}

impl Default for Req {
    fn default() -> Req {
        Req {
            key: KeyCheck::Absent,
            body: empty_body_digest(),
            stale: None,
            confirmation: None,
            now: NOW,
        }
    }
}

impl Req {
    fn facts(&self, route: &Route) -> Facts<'_> {
        Facts {
            now_ms: self.now * 1000,
            request_id: Some("req-1"),
            principal: "ci-bot",
            key: &self.key,
            fingerprint: Some(Fingerprint::compute(
                &route.name,
                "ci-bot",
                self.key.key(),
                &NaturalKey {
                    method: "POST",
                    path: "/oauth/token",
                    query: "",
                    body: &self.body,
                },
            )),
            body_digest: self.body,
            stale: self.stale,
            confirmation: self.confirmation.as_deref().map(str::as_bytes),
            credential_holder: None,
            credential_shared_with: None,
            client_attempt: None,
            key_regenerated_ms: None,
        }
    }
}

fn entry_after(outcome: Outcome, status: u16, req: &Req, route: &Route) -> Entry {
    Entry {
        id: req.facts(route).fingerprint.unwrap().0,
        first_seen_ms: (NOW - 60) * 1000,
        last_attempt_ms: (NOW - 30) * 1000,
        window_seconds: 900,
        attempts: 1,
        outcome,
        status,
        body_digest: req.body,
        challenge: None,
        consumed: None,
        sensitive: false,
    }
}

/// The attempt table of 64 entries over `store`, with a fixed index key.
fn attempts(store: &MemoryStore, window_seconds: u64) -> SlotLedger<&MemoryStore> {
    SlotLedger::new(
        store,
        Table::Attempts,
        64,
        window_seconds,
        IndexKey::new([7; 16]),
    )
}

fn fixed_challenge() -> Challenge {
    [42; 16]
}

fn run(cfg: &Config, req: &Req, entry: Option<&Entry>) -> Decision {
    let route = &cfg.routes[0];
    decide(cfg, route, &req.facts(route), entry, &mut fixed_challenge)
}

#[test]
fn every_policy_cell_gives_its_verdict() {
    for class in RouteClass::ALL {
        let cfg = class_config(class);
        let route = &cfg.routes[0];
        for outcome in Outcome::ALL {
            let req = Req::default();
            let e = entry_after(outcome, 503, &req, route);
            let d = run(&cfg, &req, Some(&e));
            let expected = match crate::policy::default_policy(class, outcome) {
                Policy::RetrySafe => Verdict::Allow,
                Policy::RetryWithReview => Verdict::Confirm,
                Policy::DoNotRetry if outcome == Outcome::InFlight => Verdict::Conflict,
                Policy::DoNotRetry => Verdict::Deny,
            };
            assert_eq!(d.verdict, expected, "{class} after {outcome}");
            assert_eq!(
                d.policy,
                Some(crate::policy::default_policy(class, outcome))
            );
            assert_eq!(d.attempt, 2);
            assert_eq!(d.previous, Some((outcome, 503)));
            let reply = d.reply(&cfg, route, &req.facts(route));
            assert_eq!(
                reply.as_ref().map(|r| r.status),
                match expected {
                    Verdict::Allow => None,
                    Verdict::Confirm => Some(428),
                    Verdict::Conflict => Some(409),
                    _ => Some(403),
                },
                "{class} after {outcome}"
            );
        }
    }
}

#[test]
fn first_attempt_is_always_allowed_and_recorded_in_flight() {
    for class in RouteClass::ALL
        .into_iter()
        .filter(|c| *c != RouteClass::ReadOnly)
    {
        let cfg = class_config(class);
        let req = Req::default();
        let d = run(&cfg, &req, None);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.reason, "first_attempt");
        let w = d.write.unwrap();
        assert_eq!(
            (w.attempts, w.outcome, w.first_seen_ms, w.last_attempt_ms),
            (1, Outcome::InFlight, NOW * 1000, NOW * 1000)
        );
    }
}

#[test]
fn read_only_routes_are_untracked_unless_something_can_block() {
    let cfg = class_config(RouteClass::ReadOnly);
    let route = &cfg.routes[0];
    assert!(!route.needs_ledger());
    let store = MemoryStore::default();
    let ledger = attempts(&store, cfg.window_seconds);
    ledger.ensure_slots().unwrap();
    let req = Req {
        stale: Some(StaleReason::Expired),
        ..Req::default()
    };
    for _ in 0..3 {
        let d = decide_with_ledger(
            &ledger,
            &cfg,
            route,
            &req.facts(route),
            &mut fixed_challenge,
        )
        .unwrap()
        .decision;
        assert_eq!(
            (d.verdict, d.reason.as_str(), d.attempt),
            (Verdict::Allow, "untracked", 1)
        );
        assert!(d.write.is_none());
        assert_eq!(
            d.token_action,
            TokenAction::Strip,
            "stale tokens are still stripped"
        );
    }
    let snap = ledger
        .load(&req.facts(route).fingerprint.unwrap().0, NOW * 1000)
        .unwrap();
    assert!(
        SlotLedger::<&MemoryStore>::entry(&snap).is_none(),
        "nothing written"
    );
    for tracked in [
        json!({"class": "read_only", "max_attempts": 3}),
        json!({"class": "read_only", "on": {"in_flight": "do_not_retry"}}),
    ] {
        assert!(config_with(tracked, json!({})).routes[0].needs_ledger());
    }
    for class in RouteClass::ALL
        .into_iter()
        .filter(|c| *c != RouteClass::ReadOnly)
    {
        assert!(class_config(class).routes[0].needs_ledger(), "{class}");
    }
}

#[test]
fn route_overrides_change_a_cell() {
    let cfg = config_with(
        json!({"on": {"succeeded": "do_not_retry", "not_sent": "retry_with_review"}}),
        json!({}),
    );
    let route = &cfg.routes[0];
    let req = Req::default();
    assert_eq!(
        run(
            &cfg,
            &req,
            Some(&entry_after(Outcome::Succeeded, 200, &req, route))
        )
        .verdict,
        Verdict::Deny
    );
    assert_eq!(
        run(
            &cfg,
            &req,
            Some(&entry_after(Outcome::NotSent, 503, &req, route))
        )
        .verdict,
        Verdict::Confirm
    );
}

#[test]
fn attempts_beyond_max_need_review() {
    let cfg = config_with(json!({"max_attempts": 3}), json!({}));
    let route = &cfg.routes[0];
    let req = Req::default();
    let mut e = entry_after(Outcome::NotSent, 503, &req, route);
    e.attempts = 2;
    assert_eq!(
        run(&cfg, &req, Some(&e)).verdict,
        Verdict::Allow,
        "attempt 3 of 3"
    );
    e.attempts = 3;
    let d = run(&cfg, &req, Some(&e));
    assert_eq!(d.verdict, Verdict::Confirm, "attempt 4 of 3");
    assert_eq!(d.reason, "max_attempts_exceeded");
    assert_eq!(d.policy, Some(Policy::RetryWithReview));
}

#[test]
fn idempotency_key_missing_invalid_and_mismatch() {
    let cfg = config_with(json!({"require_idempotency_key": true}), json!({}));
    let route = &cfg.routes[0];
    let missing = check_key(route, &KeyCheck::Absent).unwrap();
    let req = Req::default();
    let reply = missing.reply(&cfg, route, &req.facts(route)).unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply
        .body
        .contains("urn:retry-guard:problem:idempotency-key-missing"));
    let invalid = check_key(route, &KeyCheck::Invalid("empty")).unwrap();
    let reply = invalid.reply(&cfg, route, &req.facts(route)).unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply
        .body
        .contains("urn:retry-guard:problem:idempotency-key-invalid"));
    assert!(check_key(route, &KeyCheck::Present("k".into())).is_none());
    assert!(
        check_key(&config().routes[0], &KeyCheck::Absent).is_none(),
        "not required"
    );

    let first = Req {
        key: KeyCheck::Present("k-1".into()),
        ..Req::default()
    };
    let e = entry_after(Outcome::FailedUnknown, 503, &first, route);
    let other_body = Req {
        key: KeyCheck::Present("k-1".into()),
        body: [9; 32],
        ..Req::default()
    };
    let d = run(&cfg, &other_body, Some(&e));
    assert_eq!(d.verdict, Verdict::Mismatch);
    let reply = d.reply(&cfg, route, &other_body.facts(route)).unwrap();
    assert_eq!(reply.status, 422);
    assert!(reply
        .body
        .contains("urn:retry-guard:problem:idempotency-key-mismatch"));
    assert_eq!(
        run(&cfg, &first, Some(&e)).verdict,
        Verdict::Confirm,
        "same body is a retry"
    );
}

#[test]
fn stale_tokens_stripped_or_rejected() {
    for reason in [
        StaleReason::Expired,
        StaleReason::NotYetValid,
        StaleReason::TooOld,
        StaleReason::NoExpiry,
    ] {
        let strip = config();
        let req = Req {
            stale: Some(reason),
            ..Req::default()
        };
        let d = run(&strip, &req, None);
        assert_eq!(
            (d.verdict, d.token_action, d.token_reason),
            (Verdict::Allow, TokenAction::Strip, Some(reason))
        );
        assert!(d.strips_token());

        let reject = config_with(json!({}), json!({"stale_token_action": "reject"}));
        let route = &reject.routes[0];
        let d = run(&reject, &req, None);
        assert_eq!(
            (d.verdict, d.token_action),
            (Verdict::StaleToken, TokenAction::Reject)
        );
        assert!(d.write.is_none(), "a rejected request is not an attempt");
        let reply = d.reply(&reject, route, &req.facts(route)).unwrap();
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.header("www-authenticate"),
            Some(
                format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"").as_str()
            )
        );
        assert!(reply.body.contains("urn:retry-guard:problem:stale-token"));
    }
    // A blocked request does not need its token stripped.
    let cfg = config();
    let route = &cfg.routes[0];
    let req = Req {
        stale: Some(StaleReason::Expired),
        ..Req::default()
    };
    let d = run(
        &cfg,
        &req,
        Some(&entry_after(Outcome::Succeeded, 200, &req, route)),
    );
    assert_eq!(
        (d.verdict, d.token_action),
        (Verdict::Confirm, TokenAction::None)
    );
}

fn challenged(cfg: &Config, req: &Req) -> Entry {
    let route = &cfg.routes[0];
    let e = entry_after(Outcome::Succeeded, 200, req, route);
    let d = run(cfg, req, Some(&e));
    assert_eq!(d.verdict, Verdict::Confirm);
    d.write.unwrap()
}

#[test]
fn confirmation_required_then_accepted_once() {
    let cfg = config();
    let route = &cfg.routes[0];
    let req = Req::default();
    let e = entry_after(Outcome::Succeeded, 200, &req, route);
    let d = run(&cfg, &req, Some(&e));
    assert_eq!(d.verdict, Verdict::Confirm);
    assert_eq!(d.challenge, Some([42; 16]));
    let reply = d.reply(&cfg, route, &req.facts(route)).unwrap();
    assert_eq!(reply.status, 428);
    let challenge_text = crate::b64::url(&[42; 16]);
    assert_eq!(
        reply.header("retry-guard-challenge"),
        Some(challenge_text.as_str())
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let doc: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(doc["type"], "urn:retry-guard:problem:confirmation-required");
    assert_eq!(doc["status"], 428);
    assert_eq!(doc["owner"], "team-iam");
    assert_eq!(doc["escalation"], "pagerduty:iam-primary");
    assert_eq!(doc["route"], "oauth-token");
    assert_eq!(doc["class"], "token_issuing");
    assert_eq!(doc["challenge"], challenge_text.as_str());
    assert_eq!(doc["previous_outcome"], "succeeded");
    assert_eq!(doc["previous_status"], 200);
    assert_eq!(doc["attempt"], 2);
    assert_eq!(doc["request_id"], "req-1");
    assert_eq!(doc["confirmation_header"], "retry-guard-confirmation");
    assert_eq!(doc["first_seen"], crate::time::rfc3339(NOW - 60).as_str());
    assert_eq!(
        doc["window_ends"],
        crate::time::rfc3339(NOW - 30 + 900).as_str()
    );
    assert!(doc.get("confirmation_error").is_none());
    let fp = req.facts(route).fingerprint.unwrap().text();
    assert_eq!(doc["fingerprint"], fp.as_str());

    assert_eq!(d.new_attempt(), None, "a 428 starts no attempt");
    // The challenge stays the same for further automated retries.
    let stored = d.write.unwrap();
    assert_eq!(stored.attempts, 1, "a 428 is not an attempt");
    assert_eq!(
        stored.last_attempt_ms,
        (NOW - 30) * 1000,
        "a 428 does not extend the window"
    );
    let again = run(&cfg, &req, Some(&stored));
    assert_eq!(again.challenge, Some([42; 16]));
    assert!(again.write.is_none());

    // A signed confirmation lets it through once.
    let token = sign("k1", &[42; 16], &fp, NOW, NOW + 300);
    let confirmed_req = Req {
        confirmation: Some(token.clone()),
        ..Req::default()
    };
    let d = run(&cfg, &confirmed_req, Some(&stored));
    assert_eq!(d.verdict, Verdict::Confirmed);
    assert_eq!(d.approver.as_deref(), Some("alice@example.com"));
    assert!(d.reply(&cfg, route, &confirmed_req.facts(route)).is_none());
    assert_eq!(d.new_attempt(), Some(2), "the confirmed retry is attempt 2");
    let after = d.write.unwrap();
    assert_eq!(
        (
            after.attempts,
            after.outcome,
            after.challenge,
            after.consumed
        ),
        (2, Outcome::InFlight, None, Some([42; 16]))
    );

    // Reused: already_used, with a fresh challenge.
    let mut done = after.clone();
    done.outcome = Outcome::Succeeded;
    done.status = 200;
    let d = run(&cfg, &confirmed_req, Some(&done));
    assert_eq!(d.verdict, Verdict::Confirm);
    assert_eq!(d.confirmation_error, Some(ConfirmationError::AlreadyUsed));
    let doc: Value = serde_json::from_str(
        &d.reply(&cfg, route, &confirmed_req.facts(route))
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(doc["confirmation_error"], "already_used");
}

#[test]
fn each_confirmation_error_reaches_the_answer() {
    let cfg = config();
    let route = &cfg.routes[0];
    let req = Req::default();
    let stored = challenged(&cfg, &req);
    let fp = req.facts(route).fingerprint.unwrap().text();
    let cases = [
        (
            sign("nope", &[42; 16], &fp, NOW, NOW + 60),
            ConfirmationError::UnknownKey,
        ),
        (
            sign("k1", &[1; 16], &fp, NOW, NOW + 60),
            ConfirmationError::WrongChallenge,
        ),
        (
            sign("k1", &[42; 16], "other", NOW, NOW + 60),
            ConfirmationError::WrongFingerprint,
        ),
        (
            sign("k1", &[42; 16], &fp, NOW - 700, NOW - 100),
            ConfirmationError::Expired,
        ),
        ("v1.garbage".to_string(), ConfirmationError::Malformed),
    ];
    for (token, expected) in cases {
        let r = Req {
            confirmation: Some(token),
            ..Req::default()
        };
        let d = run(&cfg, &r, Some(&stored));
        assert_eq!(
            (d.verdict, d.confirmation_error),
            (Verdict::Confirm, Some(expected))
        );
        assert_eq!(
            d.challenge,
            Some([42; 16]),
            "the outstanding challenge survives a bad confirmation"
        );
    }
    let mut bad_sig = sign("k1", &[42; 16], &fp, NOW, NOW + 60);
    bad_sig.pop();
    bad_sig.push('A');
    let r = Req {
        confirmation: Some(bad_sig),
        ..Req::default()
    };
    let d = run(&cfg, &r, Some(&stored));
    assert!(matches!(
        d.confirmation_error,
        Some(ConfirmationError::BadSignature | ConfirmationError::Malformed)
    ));
    // No confirmation configured: nothing can be accepted.
    let bare = Config::from_value(&json!({"routes": [{"name": "oauth-token", "match": {"path": "/oauth/token"}, "class": "token_issuing", "owner": "o", "escalation": "e"}]})).unwrap();
    let r = Req {
        confirmation: Some(sign("k1", &[42; 16], &fp, NOW, NOW + 60)),
        ..Req::default()
    };
    let d = run(&bare, &r, Some(&stored));
    assert_eq!(d.confirmation_error, Some(ConfirmationError::UnknownKey));
}

#[test]
fn shadow_mode_blocks_and_strips_nothing_but_decides() {
    let cfg = config_with(json!({}), json!({"mode": "shadow"}));
    let route = &cfg.routes[0];
    let req = Req {
        stale: Some(StaleReason::Expired),
        ..Req::default()
    };
    let e = entry_after(Outcome::InFlight, 0, &req, route);
    let d = run(&cfg, &req, Some(&e));
    assert_eq!(d.verdict, Verdict::Conflict);
    assert!(d.would_block && !d.is_blocked());
    assert!(d.reply(&cfg, route, &req.facts(route)).is_none());
    assert_eq!(
        d.write.as_ref().map(|w| w.attempts),
        Some(2),
        "the request goes on as an attempt"
    );
    assert_eq!(d.new_attempt(), Some(2), "and its outcome is recorded");
    let first = run(&cfg, &req, None);
    assert_eq!(
        (first.verdict, first.token_action),
        (Verdict::Allow, TokenAction::WouldStrip)
    );
    assert!(!first.strips_token());
    let reject = config_with(
        json!({"mode": "shadow"}),
        json!({"stale_token_action": "reject"}),
    );
    let d = run(&reject, &req, None);
    assert_eq!(
        (d.verdict, d.token_action, d.would_block),
        (Verdict::StaleToken, TokenAction::WouldReject, true)
    );
    let line = crate::audit::line(
        &reject.routes[0],
        &req.facts(&reject.routes[0]),
        &d,
        &Default::default(),
    );
    assert!(line.contains(r#""mode":"shadow""#) && line.contains(r#""would_block":true"#));
}

#[test]
fn every_answer_names_owner_and_escalation() {
    let cfg = config();
    let route = &cfg.routes[0];
    let req = Req::default();
    for outcome in [Outcome::InFlight, Outcome::Rejected, Outcome::Succeeded] {
        let d = run(&cfg, &req, Some(&entry_after(outcome, 400, &req, route)));
        let reply = d.reply(&cfg, route, &req.facts(route)).unwrap();
        let doc: Value = serde_json::from_str(&reply.body).unwrap();
        for member in [
            "type",
            "title",
            "status",
            "detail",
            "route",
            "class",
            "owner",
            "escalation",
            "fingerprint",
            "attempt",
            "request_id",
            "previous_outcome",
            "previous_status",
        ] {
            assert!(
                doc.get(member).is_some(),
                "{member} missing in {}",
                reply.body
            );
        }
        assert!(doc["detail"]
            .as_str()
            .unwrap()
            .contains("pagerduty:iam-primary"));
    }
    let big = too_large(route)
        .reply(&cfg, route, &req.facts(route))
        .unwrap();
    assert_eq!(big.status, 413);
    assert!(big.body.contains("urn:retry-guard:problem:body-too-large"));
}

#[test]
fn audit_line_has_every_field() {
    let cfg = config();
    let route = &cfg.routes[0];
    let req = Req::default();
    let d = run(
        &cfg,
        &req,
        Some(&entry_after(Outcome::FailedUnknown, 503, &req, route)),
    );
    let line = crate::audit::line(route, &req.facts(route), &d, &Default::default());
    let json = line.strip_prefix("retry-guard audit ").unwrap();
    let v: Value = serde_json::from_str(json).unwrap();
    for f in crate::audit::MEMBERS {
        assert!(v.get(f).is_some(), "{f}");
    }
    assert_eq!(v["decision"], "confirm");
    assert_eq!(v["previous_outcome"], "failed_unknown");
    assert_eq!(v["previous_status"], 503);
    assert_eq!(v["attempt"], 2);
    assert_eq!(v["policy"], "retry_with_review");
}

/// The member names of a JSON object, in the order written (serde_json's `Value` sorts them).
fn member_names(json: &str) -> Vec<String> {
    struct Names(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Names {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Names, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Names;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Names, A::Error> {
                    let mut names = Vec::new();
                    while let Some((k, serde::de::IgnoredAny)) = map.next_entry::<String, _>()? {
                        names.push(k);
                    }
                    Ok(Names(names))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_str::<Names>(json).unwrap().0
}

#[test]
fn audit_lines_write_exactly_the_members_in_order() {
    let cfg = config();
    let route = &cfg.routes[0];
    let req = Req::default();
    let first = run(&cfg, &req, None);
    let replay = run(
        &cfg,
        &req,
        Some(&entry_after(Outcome::FailedUnknown, 503, &req, route)),
    );
    let early = check_key(route, &KeyCheck::Invalid("empty")).unwrap();
    let mut early_facts = req.facts(route);
    early_facts.fingerprint = None;
    early_facts.request_id = None;
    for (facts, d) in [
        (req.facts(route), &first),
        (req.facts(route), &replay),
        (early_facts, &early),
    ] {
        let ended = crate::audit::Ending {
            outcome: Some(Outcome::Succeeded),
            status: Some(200),
            response_flags: Some(0),
            router_attempts: Some(1),
            duration_ms: Some(7),
        };
        for end in [Default::default(), ended] {
            let line = crate::audit::line(route, &facts, d, &end);
            let json = line.strip_prefix(crate::audit::PREFIX).unwrap();
            assert_eq!(member_names(json), crate::audit::MEMBERS, "{line}");
        }
    }
}

#[test]
fn outcomes_are_recorded_only_for_the_owning_attempt() {
    let cfg = config();
    let route = &cfg.routes[0];
    let req = Req::default();
    let e = entry_after(Outcome::InFlight, 0, &req, route);
    let resp = ResponseFacts {
        status: 503,
        flags: crate::policy::flags::UPSTREAM_CONNECTION_FAILURE,
        unchanged_state: false,
    };
    let (u, o) = record_outcome(Some(&e), 1, resp).unwrap();
    assert_eq!((o, u.status), (Outcome::NotSent, 503));
    assert!(
        record_outcome(Some(&e), 2, resp).is_none(),
        "not our attempt"
    );
    assert!(
        record_outcome(Some(&u), 1, resp).is_none(),
        "already recorded"
    );
    assert!(record_outcome(None, 1, resp).is_none());
}

#[test]
fn concurrent_identical_requests_exactly_one_wins() {
    for class in [RouteClass::TokenIssuing, RouteClass::IdempotentWrite] {
        let cfg = class_config(class);
        let route = &cfg.routes[0];
        let store = MemoryStore::default();
        let ledger = attempts(&store, cfg.window_seconds);
        ledger.ensure_slots().unwrap();
        let req = Req::default();
        let facts = req.facts(route);
        // Eight workers load before anyone commits, then commit in turn.
        let snaps: Vec<_> = (0..8)
            .map(|_| {
                ledger
                    .load(&facts.fingerprint.unwrap().0, NOW * 1000)
                    .unwrap()
            })
            .collect();
        let mut verdicts = Vec::new();
        for snap in &snaps {
            let d = decide(
                &cfg,
                route,
                &facts,
                SlotLedger::<&MemoryStore>::entry(snap),
                &mut fixed_challenge,
            );
            let w = d.write.clone().unwrap();
            match ledger.commit(snap, &w, NOW * 1000).unwrap() {
                Commit::Stored { .. } => verdicts.push(d.verdict),
                Commit::Conflict => {
                    let settled =
                        decide_with_ledger(&ledger, &cfg, route, &facts, &mut fixed_challenge)
                            .unwrap();
                    verdicts.push(settled.decision.verdict);
                }
                Commit::Full => panic!("a table of 64 has room for one entry"),
            }
        }
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Allow).count(),
            1,
            "{class}: {verdicts:?}"
        );
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Conflict).count(),
            7,
            "{class}"
        );
    }
}

#[test]
fn threads_racing_on_the_store_allow_exactly_one() {
    let cfg = class_config(RouteClass::PrivilegeChanging);
    let store = MemoryStore::default();
    let ledger = attempts(&store, cfg.window_seconds);
    ledger.ensure_slots().unwrap();
    let allowed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let route = &cfg.routes[0];
                let req = Req::default();
                let d = decide_with_ledger(
                    &ledger,
                    &cfg,
                    route,
                    &req.facts(route),
                    &mut fixed_challenge,
                )
                .unwrap();
                if d.decision.verdict == Verdict::Allow {
                    allowed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(allowed.into_inner(), 1);
}

#[test]
fn full_flow_through_the_ledger() {
    let cfg = config();
    let route = &cfg.routes[0];
    let store = MemoryStore::default();
    let ledger = attempts(&store, cfg.window_seconds);
    ledger.ensure_slots().unwrap();
    let req = Req::default();
    let facts = req.facts(route);
    let fp = facts.fingerprint.unwrap();
    let first = decide_with_ledger(&ledger, &cfg, route, &facts, &mut fixed_challenge).unwrap();
    assert_eq!(first.decision.verdict, Verdict::Allow);
    // The upstream connection failed: not sent, so the retry is safe.
    let flags = crate::policy::flags::UPSTREAM_CONNECTION_FAILURE;
    let rec = record_with_ledger(
        &ledger,
        &fp,
        1,
        NOW * 1000,
        ResponseFacts {
            status: 503,
            flags,
            unchanged_state: false,
        },
        NOW * 1000,
    )
    .unwrap();
    assert_eq!(rec, Some(Outcome::NotSent));
    let second = decide_with_ledger(&ledger, &cfg, route, &facts, &mut fixed_challenge).unwrap();
    assert_eq!(
        (second.decision.verdict, second.decision.attempt),
        (Verdict::Allow, 2)
    );
    // A 503 with unknown state: review needed.
    record_with_ledger(
        &ledger,
        &fp,
        2,
        NOW * 1000,
        ResponseFacts {
            status: 503,
            flags: 0,
            unchanged_state: false,
        },
        NOW * 1000,
    )
    .unwrap();
    let third = decide_with_ledger(&ledger, &cfg, route, &facts, &mut fixed_challenge).unwrap();
    assert_eq!(third.decision.verdict, Verdict::Confirm);
    assert_eq!(third.decision.previous, Some((Outcome::FailedUnknown, 503)));
    // After the window the same request is a first attempt again.
    let later = Req {
        now: NOW + 901,
        ..Req::default()
    };
    let d = decide_with_ledger(
        &ledger,
        &cfg,
        route,
        &later.facts(route),
        &mut fixed_challenge,
    )
    .unwrap();
    assert_eq!(
        (d.decision.verdict, d.decision.reason.as_str()),
        (Verdict::Allow, "first_attempt")
    );
}

#[test]
fn opaque_token_age_comes_from_the_first_sighting() {
    let store = MemoryStore::default();
    let ledger = SlotLedger::new(&store, Table::Attempts, 64, 900, IndexKey::new([7; 16]));
    ledger.ensure_slots().unwrap();
    assert_eq!(
        first_seen_with_ledger(&ledger, "opaque-1", (NOW) * 1000, 900).unwrap(),
        NOW
    );
    assert_eq!(
        first_seen_with_ledger(&ledger, "opaque-1", (NOW + 100) * 1000, 900).unwrap(),
        NOW
    );
    assert_eq!(
        first_seen_with_ledger(&ledger, "opaque-1", (NOW + 800) * 1000, 900).unwrap(),
        NOW,
        "refreshed, not reset"
    );
    assert_eq!(
        first_seen_with_ledger(&ledger, "opaque-1", (NOW + 1500) * 1000, 900).unwrap(),
        NOW
    );
    assert_eq!(
        first_seen_with_ledger(&ledger, "opaque-2", (NOW + 1500) * 1000, 900).unwrap(),
        NOW + 1500
    );
}

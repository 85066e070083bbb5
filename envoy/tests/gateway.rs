//! The bundled gateway (`envoy/envoy.yaml` with its plugin configuration) over real HTTP through
//! a real Envoy 1.40 (2 workers): every row of the retry-policy table for every class, the
//! problem documents, stale tokens, confirmations, unguarded requests, the access log and the
//! admin stats.
//!
//! All tests of this file share one Envoy and one backend ([`fixture::Shared`]); each case
//! uses its own path/body/idempotency key (so its own fingerprint) and its own `x-e2e-case`
//! header (so its own backend script). Outcomes come from real events: backend statuses, a
//! closed upstream port (connection refused), a route timeout shorter than the backend's delay,
//! the backend closing the connection without answering.
//!
//! Nothing is skipped: without Envoy or the wasm these tests fail and say what to run.

mod common;

use std::time::Duration;

use common::*;
use retry_guard::principal::token_principal;
use retry_guard_e2e::backend::{Gate, Reply};
use retry_guard_e2e::client;
use retry_guard_e2e::fixture::{Handle, Shared};
use retry_guard_e2e::tokens::{now_unix, test_confirmation, test_signing_key, unsigned_jwt};
use retry_guard_e2e::Result;
use serde_json::{json, Value};

static GATEWAY: Shared<Gateway> = Shared::new();

fn gateway() -> Result<Handle<Gateway>> {
    GATEWAY.get(|| Gateway::start("gateway", None, 2))
}

static GATEWAY_AUDITING_ALL: Shared<Gateway> = Shared::new();

/// The bundled gateway with `audit.untracked: "all"`: every decision of the untracked
/// `reads` route is logged (by default a plain allow there is only counted).
fn gateway_auditing_all() -> Result<Handle<Gateway>> {
    GATEWAY_AUDITING_ALL.get(|| {
        let mut config =
            retry_guard_e2e::gateway::plugin_config(&retry_guard_e2e::gateway::envoy_yaml()?)?;
        config["audit"] = json!({"untracked": "all"});
        Gateway::start("gateway-audit-all", Some(config), 2)
    })
}

/// How the first attempt of a row ends.
#[derive(Clone, Copy, Debug)]
enum First {
    /// Still waiting for the backend when the retry comes.
    InFlight,
    /// The backend answers with this status.
    Status(u16),
    /// The backend answers with this status and `retry-guard-state: unchanged`.
    Unchanged(u16),
    /// The upstream port is closed (connection refused).
    Closed,
    /// The backend answers after the route timeout (1 s).
    Timeout,
    /// The backend closes the connection without answering.
    HangUp,
}

/// What the retry gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Allow,
    Conflict,
    Deny,
    Confirm,
}

/// The rows: how attempt 1 ends, the outcome the filter must record, the status the client
/// sees for attempt 1.
const ROWS: [(&str, First, &str, u16); 10] = [
    ("in-flight", First::InFlight, "in_flight", 200),
    ("succeeded", First::Status(201), "succeeded", 201),
    ("failed-500", First::Status(500), "failed_unknown", 500),
    ("failed-timeout", First::Timeout, "failed_unknown", 504),
    ("failed-hangup", First::HangUp, "failed_unknown", 503),
    ("rejected", First::Status(400), "rejected", 400),
    ("not-sent", First::Closed, "not_sent", 503),
    ("unchanged", First::Unchanged(503), "unchanged", 503),
    ("rate-limited", First::Status(429), "rate_limited", 429),
    (
        "unauthenticated",
        First::Status(401),
        "unauthenticated",
        401,
    ),
];

/// The retry-policy table of the contract (issue 2), written out independently of the filter.
fn expected(route: &RouteSpec, outcome: &str) -> Expect {
    match (route.class, outcome) {
        ("read_only", _) => Expect::Allow,
        (_, "in_flight") => Expect::Conflict,
        ("idempotent_write", _) => Expect::Allow,
        (_, "succeeded" | "failed_unknown") => Expect::Confirm,
        (_, "rejected") => Expect::Deny,
        _ => Expect::Allow,
    }
}

fn decision_name(e: Expect) -> &'static str {
    match e {
        Expect::Allow => "allow",
        Expect::Conflict => "conflict",
        Expect::Deny => "deny",
        Expect::Confirm => "confirm",
    }
}

fn run_row(
    gw: &Gateway,
    route: &RouteSpec,
    label: &str,
    first: First,
    outcome: &str,
    first_status: u16,
) -> std::result::Result<(), String> {
    let case = format!("row-{}-{label}", route.name);
    let req = route.request(&case);
    let retry = req.again("2");
    let want = expected(route, outcome);

    // Attempt 1.
    let mut gate = None;
    let first_resp = std::thread::scope(|s| -> std::result::Result<_, String> {
        let pending = match first {
            First::InFlight => {
                let g = Gate::new();
                gw.backend
                    .push_for_case(&case, Reply::json(200, r#"{"ok":"late"}"#).gated(&g));
                gate = Some(g);
                let req = req.clone();
                let handle = s.spawn(move || gw.send(&req));
                h(gw.backend.wait_for_case(&case, 1, Duration::from_secs(10)))?;
                Some(handle)
            }
            First::Status(st) => {
                gw.backend
                    .on_case(&case, Some(Reply::json(st, r#"{"first":true}"#)));
                None
            }
            First::Unchanged(st) => {
                gw.backend.on_case(
                    &case,
                    Some(
                        Reply::json(st, r#"{"first":true}"#)
                            .header("retry-guard-state", "unchanged"),
                    ),
                );
                None
            }
            First::Closed => None,
            First::Timeout => {
                gw.backend.on_case(
                    &case,
                    Some(Reply::json(200, "{}").delay(Duration::from_millis(2500))),
                );
                None
            }
            First::HangUp => {
                gw.backend.on_case(&case, Some(Reply::hang_up()));
                None
            }
        };
        let first_resp = match pending {
            // In flight: the retry comes while attempt 1 waits at the backend.
            Some(handle) => {
                let retry_resp = h(gw.send(&retry))?;
                let fp = check_retry(gw, route, &retry, &retry_resp, want, outcome, 0, &case)?;
                if let Some(g) = &gate {
                    g.open();
                }
                let first = handle
                    .join()
                    .map_err(|_| "attempt 1 panicked".to_string())?
                    .map_err(|e| e.0)?;
                same_fingerprint(gw, &case, fp)?;
                first
            }
            None => {
                let up = matches!(first, First::Closed).then_some("closed");
                let up = up.or(matches!(first, First::Timeout).then_some("slow"));
                h(gw.send(&req.clone().upstream(up)))?
            }
        };
        Ok(first_resp)
    })?;
    if first_resp.status != first_status {
        return Err(format!(
            "attempt 1: expected status {first_status}: {}",
            describe(&first_resp)
        ));
    }
    let before = gw.upstream(&case).len();
    if matches!(first, First::Closed) && before != 0 {
        return Err(format!(
            "attempt 1 to a closed port reached the backend ({before})"
        ));
    }
    if route.class != "read_only" {
        // The audit line of attempt 1, with the outcome recorded when its response headers passed.
        let rec = h(gw.outcome(&req.request_id))?;
        let recorded = if matches!(first, First::InFlight) {
            "succeeded"
        } else {
            outcome
        };
        if rec["outcome"] != recorded || rec["status"] != first_status {
            return Err(format!(
                "attempt 1 recorded {} {} instead of {recorded} {first_status}: {rec}",
                rec["outcome"], rec["status"]
            ));
        }
    }
    if matches!(first, First::InFlight) {
        return Ok(());
    }
    // The backend answers the retry 200 (the standing script of the case is cleared).
    gw.backend.on_case(&case, None);
    let retry_resp = h(gw.send(&retry))?;
    let fp = check_retry(
        gw,
        route,
        &retry,
        &retry_resp,
        want,
        outcome,
        first_status,
        &case,
    )?;
    same_fingerprint(gw, &case, fp)?;
    let after = gw.upstream(&case).len();
    let reached = after > before;
    if reached != (want == Expect::Allow) {
        return Err(format!(
            "the retry {} the backend (expected {want:?})",
            if reached { "reached" } else { "did not reach" }
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_retry(
    gw: &Gateway,
    route: &RouteSpec,
    retry: &Req,
    resp: &client::Response,
    want: Expect,
    outcome: &str,
    previous_status: u16,
    case: &str,
) -> std::result::Result<Option<String>, String> {
    let rid = retry.request_id.as_str();
    let mut fingerprint = None;
    match want {
        Expect::Allow => {
            if resp.status != 200 {
                return Err(format!(
                    "retry: expected 200 from the backend: {}",
                    describe(resp)
                ));
            }
            let got = gw.upstream(case);
            if !got.iter().any(|r| r.header("x-request-id") == Some(rid)) {
                return Err("the allowed retry did not reach the backend".into());
            }
        }
        Expect::Conflict | Expect::Deny | Expect::Confirm => {
            let (status, ty) = match want {
                Expect::Conflict => (409, "urn:retry-guard:problem:request-in-flight"),
                Expect::Deny => (403, "urn:retry-guard:problem:do-not-retry"),
                _ => (428, "urn:retry-guard:problem:confirmation-required"),
            };
            let doc = check_problem(resp, status, ty, route, rid)?;
            fingerprint = Some(check_fingerprint(&doc)?);
            if doc["attempt"] != 2 {
                return Err(format!("attempt is {} not 2: {doc}", doc["attempt"]));
            }
            if doc["previous_outcome"] != outcome {
                return Err(format!("previous_outcome is not {outcome}: {doc}"));
            }
            if want != Expect::Conflict && doc["previous_status"] != previous_status {
                return Err(format!("previous_status is not {previous_status}: {doc}"));
            }
            if want == Expect::Confirm {
                let chl = resp
                    .header(CHALLENGE_HEADER)
                    .ok_or_else(|| format!("428 without {CHALLENGE_HEADER}"))?;
                if doc["challenge"] != chl || doc["confirmation_header"] != CONFIRMATION_HEADER {
                    return Err(format!("428 challenge members: {doc}"));
                }
                for m in ["first_seen", "window_ends"] {
                    let t = doc[m].as_str().unwrap_or("");
                    if retry_guard_e2e::rfc3339::parse(t).is_err() {
                        return Err(format!("{m} is not RFC 3339: {doc}"));
                    }
                }
            }
        }
    }
    // The audit line and the access log carry the decision.
    let d = h(gw.decision(rid))?;
    let name = decision_name(want);
    if d["decision"] != name || d["route"] != route.name || d["owner"] != route.owner {
        return Err(format!("audit decision line: expected {name}: {d}"));
    }
    if route.class != "read_only" && d["previous_outcome"] != outcome {
        return Err(format!("audit previous_outcome is not {outcome}: {d}"));
    }
    let entry = h(gw.access_entry(rid))?;
    if entry["retry_guard_decision"] != name {
        return Err(format!("access log: expected decision {name}: {entry}"));
    }
    Ok(fingerprint)
}

/// The retry's fingerprint (from its problem document) is attempt 1's, read from attempt 1's
/// audit line: written when attempt 1's stream ended.
fn same_fingerprint(
    gw: &Gateway,
    case: &str,
    fp: Option<String>,
) -> std::result::Result<(), String> {
    let Some(fp) = fp else {
        return Ok(());
    };
    let first = h(gw.decision(&format!("{case}-1")))?;
    if first["fingerprint"] != fp.as_str() {
        return Err(format!(
            "the retry's fingerprint {fp} differs from attempt 1's {}",
            first["fingerprint"]
        ));
    }
    Ok(())
}

fn policy_rows(route: RouteSpec) {
    let gw = if route.class == "read_only" {
        gateway_auditing_all()
    } else {
        gateway()
    }
    .unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Failures::default();
    for (label, first, outcome, status) in ROWS {
        failures.check(
            &format!("{} {label}", route.name),
            run_row(&gw, &route, label, first, outcome, status),
        );
    }
    failures.assert_none(&gw.envoy);
}

#[test]
fn policy_table_token_issuing() {
    policy_rows(TOKEN);
}

#[test]
fn policy_table_privilege_changing() {
    policy_rows(ROLE_GRANT);
}

#[test]
fn policy_table_secret_minting() {
    policy_rows(SECRETS);
}

#[test]
fn policy_table_session_extending() {
    policy_rows(SESSION_REFRESH);
}

#[test]
fn policy_table_idempotent_write() {
    policy_rows(PREFERENCES);
}

#[test]
fn policy_table_read_only() {
    policy_rows(READS);
}

/// 400 (missing and invalid key), 422 (same key, other body) and 413 (by content-length and
/// by a chunked body without one): problem documents, and nothing reaches the backend.
#[test]
fn key_and_body_problems() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let mut f = Failures::default();

    // 400: the secrets route requires a key.
    let mut req = SECRETS.request("kb-missing");
    req.headers.retain(|(k, _)| k != "idempotency-key");
    f.check(
        "missing key",
        (|| {
            let resp = h(gw.send(&req))?;
            let doc = check_problem(
                &resp,
                400,
                "urn:retry-guard:problem:idempotency-key-missing",
                &SECRETS,
                &req.request_id,
            )?;
            let d = h(gw.decision(&req.request_id))?;
            if d["decision"] != "bad_request" || d["key_present"] != false {
                return Err(format!("audit: {d}"));
            }
            let _ = doc;
            Ok(())
        })(),
    );

    // 400: invalid keys, on a route that requires one and on one that does not.
    let long = "k".repeat(256);
    for (label, route, key) in [
        ("bare-space", SECRETS, "has space"),
        ("unterminated", SECRETS, "\"open"),
        ("empty", SECRETS, "\"\""),
        ("too-long", SECRETS, long.as_str()),
        ("non-ascii", TOKEN, "schl\u{fc}ssel"),
    ] {
        let mut req = route.request(&format!("kb-invalid-{label}"));
        req.headers.retain(|(k, _)| k != "idempotency-key");
        let req = req.header("idempotency-key", key);
        f.check(
            &format!("invalid key {label}"),
            (|| {
                let resp = h(gw.send(&req))?;
                check_problem(
                    &resp,
                    400,
                    "urn:retry-guard:problem:idempotency-key-invalid",
                    &route,
                    &req.request_id,
                )?;
                Ok(())
            })(),
        );
    }
    // A bare-token key and a structured-field string name the same key.
    let bare = SECRETS.request("kb-bare");
    let mut quoted = bare.again("2");
    quoted.headers.retain(|(k, _)| k != "idempotency-key");
    let quoted = quoted.header("idempotency-key", "key-kb-bare");
    f.check(
        "bare and quoted key",
        (|| {
            let first = h(gw.send(&bare))?;
            if first.status != 200 {
                return Err(describe(&first));
            }
            let second = h(gw.send(&quoted))?;
            check_problem(
                &second,
                428,
                "urn:retry-guard:problem:confirmation-required",
                &SECRETS,
                &quoted.request_id,
            )?;
            Ok(())
        })(),
    );

    // 422: the same key with another body.
    let first = SECRETS.request("kb-mismatch");
    let other = first.again("2").body(r#"{"name":"something-else"}"#);
    f.check(
        "mismatch",
        (|| {
            let r1 = h(gw.send(&first))?;
            if r1.status != 200 {
                return Err(describe(&r1));
            }
            let r2 = h(gw.send(&other))?;
            let doc = check_problem(
                &r2,
                422,
                "urn:retry-guard:problem:idempotency-key-mismatch",
                &SECRETS,
                &other.request_id,
            )?;
            check_fingerprint(&doc)?;
            if gw.upstream("kb-mismatch").len() != 1 {
                return Err("the mismatching request reached the backend".into());
            }
            let d = h(gw.decision(&other.request_id))?;
            if d["decision"] != "mismatch" || d["key_present"] != true {
                return Err(format!("audit: {d}"));
            }
            Ok(())
        })(),
    );

    // 413 by content-length (answered at the request headers) ...
    let big = "x".repeat(65_537);
    let req = SESSION_REFRESH.request("kb-too-large").body(&big);
    f.check(
        "413 content-length",
        (|| {
            let resp = h(gw.send(&req))?;
            check_problem(
                &resp,
                413,
                "urn:retry-guard:problem:body-too-large",
                &SESSION_REFRESH,
                &req.request_id,
            )?;
            if !gw.upstream("kb-too-large").is_empty() {
                return Err("the oversized body reached the backend".into());
            }
            let d = h(gw.decision(&req.request_id))?;
            if d["decision"] != "too_large" {
                return Err(format!("audit: {d}"));
            }
            Ok(())
        })(),
    );
    // ... exactly at the limit is fine ...
    let at_limit = "y".repeat(65_536);
    let req = SESSION_REFRESH.request("kb-at-limit").body(&at_limit);
    f.check(
        "body at the limit",
        (|| {
            let resp = h(gw.send(&req))?;
            let got = gw.upstream("kb-at-limit");
            if resp.status != 200 || got.len() != 1 || got[0].body.len() != 65_536 {
                return Err(format!("{} / upstream {}", describe(&resp), got.len()));
            }
            Ok(())
        })(),
    );
    // ... and by a chunked body without content-length (answered in the body callback).
    f.check(
        "413 chunked",
        (|| {
            let chunk = vec![b'z'; 30_000];
            let resp = h(client::send_chunked(
                gw.envoy.listener_addr(),
                "POST",
                "/v1/sessions/refresh",
                &[
                    ("x-e2e-case", "kb-chunked"),
                    ("x-request-id", "kb-chunked-1"),
                    ("content-type", "application/json"),
                ],
                &[&chunk, &chunk, &chunk],
            ))?;
            check_problem(
                &resp,
                413,
                "urn:retry-guard:problem:body-too-large",
                &SESSION_REFRESH,
                "kb-chunked-1",
            )?;
            if !gw.upstream("kb-chunked").is_empty() {
                return Err("the oversized chunked body reached the backend".into());
            }
            Ok(())
        })(),
    );
    // A small chunked body is hashed like any other: its content-length twin is the same
    // operation (same fingerprint), so the twin is a replay.
    f.check(
        "chunked replay",
        (|| {
            let body = br#"{"session":"kb-chunked-small"}"#;
            let resp = h(client::send_chunked(
                gw.envoy.listener_addr(),
                "POST",
                "/v1/sessions/refresh",
                &[
                    ("x-e2e-case", "kb-chunked-small"),
                    ("x-request-id", "kb-chunked-small-1"),
                ],
                &[&body[..10], &body[10..]],
            ))?;
            if resp.status != 200 {
                return Err(describe(&resp));
            }
            let got = gw.upstream("kb-chunked-small");
            if got.len() != 1 || got[0].body != body {
                return Err(format!("upstream got {got:?}"));
            }
            let replay = SESSION_REFRESH.request("kb-chunked-small").again("2");
            let r2 = h(gw.send(&replay))?;
            check_problem(
                &r2,
                428,
                "urn:retry-guard:problem:confirmation-required",
                &SESSION_REFRESH,
                &replay.request_id,
            )?;
            Ok(())
        })(),
    );
    f.assert_none(&gw.envoy);
}

fn jwt(claims: Value) -> String {
    format!("Bearer {}", unsigned_jwt(&claims))
}

/// Stale bearer tokens are stripped before the upstream (the bundled config uses `strip`),
/// for each reason real clocks can produce; fresh tokens pass untouched.
#[test]
fn stale_tokens_are_stripped() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let now = now_unix();
    let mut f = Failures::default();
    let cases: [(&str, RouteSpec, Value, Option<&str>); 7] = [
        (
            "expired",
            TOKEN,
            json!({"sub": "ci-bot", "iat": now - 120, "exp": now - 90}),
            Some("expired"),
        ),
        (
            "not-yet-valid",
            TOKEN,
            json!({"sub": "ci-bot", "iat": now, "nbf": now + 600, "exp": now + 900}),
            Some("not_yet_valid"),
        ),
        (
            "no-expiry",
            ROLE_GRANT,
            json!({"sub": "ci-bot", "iat": now}),
            Some("no_expiry"),
        ),
        (
            "too-old",
            TOKEN,
            json!({"sub": "ci-bot", "iat": now - 400, "exp": now + 600}),
            Some("too_old"),
        ),
        (
            "fresh",
            TOKEN,
            json!({"sub": "ci-bot", "iat": now - 10, "exp": now + 300}),
            None,
        ),
        // no_expiry applies to sensitive routes only.
        (
            "no-expiry-read",
            READS,
            json!({"sub": "ci-bot", "iat": now}),
            None,
        ),
        (
            "within-skew",
            SESSION_REFRESH,
            json!({"sub": "ci-bot", "iat": now - 60, "exp": now - 10}),
            None,
        ),
    ];
    for (label, route, claims, reason) in cases {
        let case = format!("stale-{label}");
        let bearer = jwt(claims);
        let req = route.request(&case).header("authorization", &bearer);
        f.check(
            label,
            (|| {
                let resp = h(gw.send(&req))?;
                if resp.status != 200 {
                    return Err(describe(&resp));
                }
                let got = gw.upstream(&case);
                let up = got.first().ok_or("nothing reached the backend")?;
                match reason {
                    Some(reason) => {
                        if up.header("authorization").is_some() {
                            return Err(format!(
                                "the stale token reached the backend: {:?}",
                                up.headers
                            ));
                        }
                        let mark = format!("stripped; reason={reason}");
                        if up.header("retry-guard-token") != Some(mark.as_str()) {
                            return Err(format!(
                                "retry-guard-token is not {mark:?}: {:?}",
                                up.headers
                            ));
                        }
                    }
                    None => {
                        if up.header("authorization") != Some(bearer.as_str()) {
                            return Err(format!(
                                "a fresh token was not forwarded as sent: {:?}",
                                up.headers
                            ));
                        }
                        if up.header("retry-guard-token").is_some() {
                            return Err("retry-guard-token on a fresh token".into());
                        }
                    }
                }
                if route.class == "read_only" && reason.is_none() {
                    // A plain allow on an untracked route writes no line (audit.untracked).
                    return Ok(());
                }
                let d = h(gw.decision(&req.request_id))?;
                let want_action = if reason.is_some() { "strip" } else { "none" };
                if d["token_action"] != want_action || d["token_reason"] != json!(reason) {
                    return Err(format!("audit token_action/token_reason: {d}"));
                }
                // The principal comes from what goes upstream (`token`: the forwarded
                // credential's hash); a stripped token names no one.
                let want = match reason {
                    Some(_) => "anonymous".to_string(),
                    None => token_principal(bearer.trim_start_matches("Bearer ")),
                };
                if d["principal"] != want.as_str() {
                    return Err(format!("principal is not {want}: {d}"));
                }
                Ok(())
            })(),
        );
    }
    f.assert_none(&gw.envoy);
    assert!(gw.counter("retry_guard.token.stripped") >= 4);
}

/// A confirmation is checked (signature, key, fingerprint), accepted once, then refused as
/// `already_used`; the confirmation header never reaches the backend.
#[test]
fn confirmation_is_accepted_once() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let key = test_signing_key().unwrap_or_else(|e| panic!("{e}"));
    let route = ROLE_GRANT;
    let case = "confirm-once";
    let req = route.request(case);
    let r1 = gw.send(&req).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r1.status, 200, "{}", describe(&r1));
    let replay = req.again("2");
    let r2 = gw.send(&replay).unwrap_or_else(|e| panic!("{e}"));
    let doc = check_problem(
        &r2,
        428,
        "urn:retry-guard:problem:confirmation-required",
        &route,
        &replay.request_id,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let chl = doc["challenge"].as_str().expect("challenge").to_string();
    let fp = doc["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();

    // Refused confirmations: each keeps the same outstanding challenge.
    let good = test_confirmation(&chl, &fp, "alice@example.com", 300);
    // Flip a character inside the signature (not the last one, whose low bits are padding).
    let mut tampered: Vec<char> = good.sign(&key).chars().collect();
    let at = tampered.len() - 20;
    tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let mut unknown = good.clone();
    unknown.kid = "approvals-unknown".into();
    let mut wrong_fp = good.clone();
    wrong_fp.fp = "x".repeat(43);
    let mut wrong_chl = good.clone();
    wrong_chl.chl = "AAAAAAAAAAAAAAAAAAAAAA".into();
    let mut too_long = good.clone();
    too_long.exp = too_long.iat + 601;
    for (n, (token, error)) in [
        (tampered, "bad_signature"),
        (unknown.sign(&key), "unknown_key"),
        (wrong_fp.sign(&key), "wrong_fingerprint"),
        (wrong_chl.sign(&key), "wrong_challenge"),
        (too_long.sign(&key), "expired"),
        ("v1.not-a-token".to_string(), "malformed"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = req
            .again(&format!("bad{n}"))
            .header(CONFIRMATION_HEADER, &token);
        let resp = gw.send(&r).unwrap_or_else(|e| panic!("{e}"));
        let d = check_problem(
            &resp,
            428,
            "urn:retry-guard:problem:confirmation-required",
            &route,
            &r.request_id,
        )
        .unwrap_or_else(|e| panic!("{error}: {e}"));
        assert_eq!(d["confirmation_error"], error, "{d}");
        assert_eq!(
            d["challenge"],
            chl.as_str(),
            "a refused confirmation changed the challenge: {d}"
        );
    }
    assert_eq!(gw.upstream(case).len(), 1);

    // The valid one goes through once, without the header.
    let token = good.sign(&key);
    let ok = req.again("ok").header(CONFIRMATION_HEADER, &token);
    let r3 = gw.send(&ok).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r3.status, 200, "{}", describe(&r3));
    let got = gw.upstream(case);
    assert_eq!(got.len(), 2);
    assert!(
        got[1].header(CONFIRMATION_HEADER).is_none(),
        "{:?}",
        got[1].headers
    );
    let d = gw
        .decision(&ok.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d["decision"], "confirmed", "{d}");
    assert_eq!(d["approver"], "alice@example.com", "{d}");
    assert_eq!(
        gw.access_entry(&ok.request_id).expect("access")["retry_guard_decision"],
        "confirmed"
    );

    // Again: refused as already used, with a fresh challenge.
    let again = req.again("reuse").header(CONFIRMATION_HEADER, &token);
    let r4 = gw.send(&again).unwrap_or_else(|e| panic!("{e}"));
    let d4 = check_problem(
        &r4,
        428,
        "urn:retry-guard:problem:confirmation-required",
        &route,
        &again.request_id,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d4["confirmation_error"], "already_used", "{d4}");
    assert_ne!(d4["challenge"], chl.as_str(), "{d4}");
    assert_eq!(d4["previous_outcome"], "succeeded", "{d4}");
    assert_eq!(
        gw.upstream(case).len(),
        2,
        "the reused confirmation reached the backend"
    );
}

/// Requests the plugin configuration does not guard pass untouched: headers the filter would
/// act on reach the backend as sent, and no audit line is written.
#[test]
fn unguarded_requests_pass_untouched() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let now = now_unix();
    let expired = jwt(json!({"sub": "ci-bot", "iat": now - 1000, "exp": now - 900}));
    for (n, (method, path)) in [
        ("GET", "/health"),
        // (Other methods on the identity paths, like DELETE /v1/secrets, are refused by the
        // gateway's `identity-unrouted` route: envoy/tests/attacks.rs.)
        ("DELETE", "/v1/preferences"),
        ("POST", "/v1/other"),
    ]
    .into_iter()
    .enumerate()
    {
        let case = format!("unguarded-{n}");
        let rid = format!("{case}-1");
        let headers = [
            ("x-e2e-case", case.as_str()),
            ("x-request-id", rid.as_str()),
            ("authorization", expired.as_str()),
            (CONFIRMATION_HEADER, "v1.anything.at-all"),
            ("idempotency-key", "\"not valid\""),
        ];
        let resp = gw
            .envoy
            .send(method, path, &headers, b"body")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status, 200, "{method} {path}: {}", describe(&resp));
        let got = gw.upstream(&case);
        assert_eq!(got.len(), 1);
        for (k, v) in &headers[2..] {
            assert_eq!(
                got[0].header(k),
                Some(*v),
                "{method} {path}: {k} changed: {:?}",
                got[0].headers
            );
        }
        assert!(got[0].header("retry-guard-token").is_none());
        let entry = gw.access_entry(&rid).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entry["route"], "passthrough", "{entry}");
        assert!(entry["retry_guard_decision"].is_null(), "{entry}");
        // A guarded request sent afterwards is audited; by then the unguarded one would have
        // been too, had it been.
        let sentinel = TOKEN.request(&format!("{case}-sentinel"));
        gw.send(&sentinel).unwrap_or_else(|e| panic!("{e}"));
        gw.decision(&sentinel.request_id)
            .unwrap_or_else(|e| panic!("{e}"));
        let audited: Vec<Value> = gw
            .envoy
            .audit_records()
            .into_iter()
            .filter(|r| r["request_id"] == rid.as_str())
            .collect();
        assert!(
            audited.is_empty(),
            "unguarded request audited: {audited:#?}"
        );
    }
}

/// Admin `/stats` shows every `wasmcustom.retry_guard.*` counter of the contract, and they
/// count.
#[test]
fn admin_stats_show_the_counters() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let before = gw.counter("retry_guard.decision.allow");
    let req = TOKEN.request("stats-allow");
    let resp = gw.send(&req).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status, 200);
    let stats = gw.envoy.wasm_stats().unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<String> = [
        "allow",
        "confirm",
        "confirmed",
        "conflict",
        "deny",
        "mismatch",
        "bad_request",
        "too_large",
        "stale_token",
    ]
    .iter()
    .map(|d| format!("retry_guard.decision.{d}"))
    .collect();
    names.extend(
        [
            "retry_guard.shadow.would_block",
            "retry_guard.token.stripped",
            "retry_guard.token.rejected",
            "retry_guard.confirmation.invalid",
            "retry_guard.ledger.evicted",
        ]
        .map(String::from),
    );
    for name in &names {
        let line = format!("wasmcustom.{name}: ");
        assert!(
            stats.contains(&line),
            "admin /stats lacks {line:?}:\n{stats}"
        );
    }
    assert!(gw.counter("retry_guard.decision.allow") > before, "{stats}");
    // The same counters in Prometheus format: Envoy drops the `wasmcustom.` namespace there.
    let prom = gw
        .envoy
        .admin_get("/stats/prometheus")
        .unwrap_or_else(|e| panic!("{e}"))
        .text();
    for name in &names {
        let line = format!("# TYPE {} counter", name.replace('.', "_"));
        assert!(prom.contains(&line), "prometheus stats lack {line:?}");
    }
}

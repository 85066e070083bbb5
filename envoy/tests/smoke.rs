//! Real-Envoy smoke test of the retry-guard filter (issue 2, "Done when").
//!
//! Loads the release wasm (`target/wasm32-wasip1/release/retry_guard.wasm`, built by
//! `just build`) into the pinned Envoy 1.40 (V8 runtime, 2 workers, so the ledger is shared
//! between VMs) and shows, over real HTTP to the scripted backend:
//!
//! - a first `POST /oauth/token` reaches the upstream;
//! - its replay gets the 428 problem document with a challenge (the same one on every replay);
//! - a replay carrying a confirmation signed by the test Ed25519 key is let through once, without
//!   the confirmation header; the same confirmation again is refused as `already_used`;
//! - audit lines and `wasmcustom.*` counters record it all;
//! - an expired bearer JWT never reaches the upstream: stripped (`strip`) or answered 401
//!   (`reject`).
//!
//! Nothing is skipped: without Envoy or the wasm these tests fail and say what to run.

use std::time::Duration;

use retry_guard_e2e::backend::{Backend, RecordedRequest};
use retry_guard_e2e::client::Response;
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::tokens::{
    b64url_decode, now_unix, test_confirmation, test_signing_key, unsigned_jwt,
};
use retry_guard_e2e::{plugin_config, rfc3339, Result};
use serde_json::{json, Value};

const TOKEN_PATH: &str = "/oauth/token";
const CLIENT_ID: &str = "ci-bot";
const CONFIRMATION_HEADER: &str = "retry-guard-confirmation";
const CHALLENGE_HEADER: &str = "retry-guard-challenge";
const APPROVER: &str = "alice@example.com";
/// The token route's window in testdata/configs/smoke.json (its `window_seconds`).
const WINDOW_SECONDS: i64 = 300;

/// Members every audit decision line carries (issue 2, "Audit and stats"), defined once in the core.
const AUDIT_MEMBERS: &[&str] = retry_guard::audit::MEMBERS;

fn start_envoy(name: &str, backend: &Backend, config: &Value) -> Result<Envoy> {
    Envoy::builder(name, backend.addr())
        .plugin_config(config.to_string())
        .concurrency(2)
        .start()
}

/// POST /oauth/token as the `ci-bot` client.
fn post_token(
    envoy: &Envoy,
    request_id: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Result<Response> {
    let mut headers = vec![
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-client-id", CLIENT_ID),
        ("x-request-id", request_id),
    ];
    headers.extend_from_slice(extra);
    envoy.send("POST", TOKEN_PATH, &headers, body.as_bytes())
}

/// Prints one step of the story (shown with `--nocapture`, e.g. by `just demo`).
fn show(step: &str, detail: impl std::fmt::Display) {
    println!("== {step}\n{detail}\n");
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn describe(resp: &Response) -> String {
    format!(
        "status {} headers {:?} body {}",
        resp.status,
        resp.headers,
        resp.text()
    )
}

fn str_member<'a>(doc: &'a Value, name: &str) -> &'a str {
    doc[name]
        .as_str()
        .unwrap_or_else(|| panic!("problem member {name:?} is not a string in {doc}"))
}

/// Checks the members every local reply carries; returns the problem document.
fn check_problem(resp: &Response, status: u16, problem_type: &str, request_id: &str) -> Value {
    assert_eq!(resp.status, status, "{}", describe(resp));
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{}",
        describe(resp)
    );
    assert_eq!(
        resp.header("cache-control"),
        Some("no-store"),
        "{}",
        describe(resp)
    );
    let doc = resp
        .json()
        .unwrap_or_else(|e| panic!("problem body is not JSON: {e}"));
    assert_eq!(doc["type"], problem_type, "{doc}");
    assert_eq!(doc["status"], status, "{doc}");
    assert!(!str_member(&doc, "title").is_empty(), "{doc}");
    assert!(!str_member(&doc, "detail").is_empty(), "{doc}");
    assert_eq!(doc["route"], "oauth-token", "{doc}");
    assert_eq!(doc["class"], "token_issuing", "{doc}");
    assert_eq!(doc["owner"], "team-iam", "{doc}");
    assert_eq!(doc["escalation"], "pagerduty:iam-primary", "{doc}");
    assert_eq!(doc["request_id"], request_id, "{doc}");
    assert!(doc["attempt"].is_u64(), "attempt is not a count: {doc}");
    let fp = str_member(&doc, "fingerprint");
    let fp_bytes = b64url_decode(fp).unwrap_or_else(|e| panic!("fingerprint: {e}"));
    assert_eq!(fp_bytes.len(), 32, "fingerprint is not a SHA-256: {fp}");
    doc
}

/// Checks a 428 answer; returns (problem document, challenge).
fn check_428(resp: &Response, request_id: &str) -> (Value, String) {
    let doc = check_problem(
        resp,
        428,
        "urn:retry-guard:problem:confirmation-required",
        request_id,
    );
    let challenge = resp
        .header(CHALLENGE_HEADER)
        .unwrap_or_else(|| panic!("428 without {CHALLENGE_HEADER}: {}", describe(resp)))
        .to_string();
    assert_eq!(doc["challenge"], challenge.as_str(), "{doc}");
    let chl_bytes = b64url_decode(&challenge).unwrap_or_else(|e| panic!("challenge: {e}"));
    assert_eq!(
        chl_bytes.len(),
        16,
        "challenge is not 128 bits: {challenge}"
    );
    assert_eq!(doc["confirmation_header"], CONFIRMATION_HEADER, "{doc}");
    (doc, challenge)
}

fn rfc3339_member(doc: &Value, name: &str) -> i64 {
    rfc3339::parse(str_member(doc, name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_no_header(req: &RecordedRequest, name: &str) {
    assert!(
        req.header(name).is_none(),
        "the backend received {name}: {:?}",
        req.headers
    );
}

fn counter(envoy: &Envoy, name: &str) -> Option<u64> {
    envoy
        .wasm_counter(name)
        .unwrap_or_else(|e| panic!("admin stats: {e}"))
}

/// a–d and f of the smoke: first attempt, 428 replay, confirmed replay, reused confirmation,
/// audit lines and counters.
#[test]
fn replay_needs_a_signed_confirmation() -> Result<()> {
    let config = plugin_config("smoke.json")?;
    let key = test_signing_key()?;
    let backend = Backend::start()?;
    let envoy = start_envoy("smoke-confirm", &backend, &config)?;
    let body = "grant_type=client_credentials&scope=tokens.read";

    // a. The first attempt reaches the upstream.
    let t_first = now_unix();
    let first = post_token(&envoy, "smoke-a", body, &[])?;
    let t_after_first = now_unix();
    show(
        "a. first POST /oauth/token (x-client-id: ci-bot) -> upstream",
        describe(&first),
    );
    assert_eq!(first.status, 200, "{}", describe(&first));
    assert_eq!(first.json()?, json!({"ok": true, "seq": 1}));
    assert!(first.header(CHALLENGE_HEADER).is_none());
    assert_eq!(backend.request_count(), 1);
    let upstream_first = &backend.requests()[0];
    assert_eq!(upstream_first.body_text(), body);
    assert_eq!(upstream_first.header("x-client-id"), Some(CLIENT_ID));

    // b. The identical replay is answered 428 with a challenge; the upstream sees nothing.
    let replay = post_token(&envoy, "smoke-b", body, &[])?;
    show(
        "b. identical replay -> 428 problem document",
        format!(
            "{CHALLENGE_HEADER}: {}\n{}",
            replay.header(CHALLENGE_HEADER).unwrap_or("-"),
            replay
                .json()
                .map(|d| pretty(&d))
                .unwrap_or_else(|_| replay.text())
        ),
    );
    let (doc, challenge) = check_428(&replay, "smoke-b");
    assert_eq!(
        backend.request_count(),
        1,
        "the 428 replay reached the backend"
    );
    assert!(doc.get("confirmation_error").is_none(), "{doc}");
    assert_eq!(doc["previous_outcome"], "succeeded", "{doc}");
    assert_eq!(doc["previous_status"], 200, "{doc}");
    assert_eq!(doc["attempt"], 2, "{doc}");
    let fingerprint = str_member(&doc, "fingerprint").to_string();
    let first_seen = rfc3339_member(&doc, "first_seen");
    let window_ends = rfc3339_member(&doc, "window_ends");
    assert!(
        (t_first - 1..=t_after_first + 1).contains(&first_seen),
        "first_seen {} is not the time of the first attempt ({t_first}..{t_after_first})",
        doc["first_seen"]
    );
    assert!(
        (first_seen + WINDOW_SECONDS..=now_unix() + WINDOW_SECONDS + 1).contains(&window_ends),
        "window_ends {} is not window_seconds ({WINDOW_SECONDS}) after the latest attempt \
         (first_seen {})",
        doc["window_ends"],
        doc["first_seen"]
    );

    // b'. Another automated replay keeps the same outstanding challenge.
    let replay2 = post_token(&envoy, "smoke-b2", body, &[])?;
    let (doc2, challenge2) = check_428(&replay2, "smoke-b2");
    assert_eq!(
        challenge2, challenge,
        "the outstanding challenge changed on a replay"
    );
    assert_eq!(doc2["fingerprint"], fingerprint.as_str());
    assert_eq!(backend.request_count(), 1);

    // c. A replay with a confirmation signed over (challenge, fingerprint) goes through once,
    //    and the confirmation header is not forwarded.
    let token = test_confirmation(&challenge, &fingerprint, APPROVER, 300).sign(&key);
    let confirmed = post_token(&envoy, "smoke-c", body, &[(CONFIRMATION_HEADER, &token)])?;
    show(
        "c. replay with a confirmation signed by the test key -> upstream",
        format!("{CONFIRMATION_HEADER}: {token}\n{}", describe(&confirmed)),
    );
    assert_eq!(confirmed.status, 200, "{}", describe(&confirmed));
    assert_eq!(confirmed.json()?, json!({"ok": true, "seq": 2}));
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].body_text(), body);
    assert_no_header(&reqs[1], CONFIRMATION_HEADER);
    assert!(
        !reqs[1].headers.iter().any(|(_, v)| v.contains(&token)),
        "the confirmation token reached the backend: {:?}",
        reqs[1].headers
    );

    // d. The same confirmation again is refused: single use.
    let reused = post_token(&envoy, "smoke-d", body, &[(CONFIRMATION_HEADER, &token)])?;
    show(
        "d. the same confirmation again -> 428 already_used",
        reused
            .json()
            .map(|d| pretty(&d))
            .unwrap_or_else(|_| reused.text()),
    );
    let (doc_d, challenge_d) = check_428(&reused, "smoke-d");
    assert_eq!(doc_d["confirmation_error"], "already_used", "{doc_d}");
    assert_eq!(doc_d["fingerprint"], fingerprint.as_str());
    assert_eq!(doc_d["previous_outcome"], "succeeded", "{doc_d}");
    assert_eq!(doc_d["previous_status"], 200, "{doc_d}");
    assert_ne!(
        challenge_d, challenge,
        "a consumed challenge is outstanding again"
    );
    assert_eq!(
        backend.request_count(),
        2,
        "the reused confirmation reached the backend"
    );
    assert_eq!(
        backend.heads_seen(),
        2,
        "a blocked request's headers reached the backend without its body"
    );

    // f. Audit lines: one per decision, with the contract's members, in request order.
    let expected = ["allow", "confirm", "confirm", "confirmed", "confirm"];
    let request_ids = ["smoke-a", "smoke-b", "smoke-b2", "smoke-c", "smoke-d"];
    envoy.wait_for_log(Duration::from_secs(10), |log| {
        retry_guard_e2e::envoy::parse_audit_lines(log)
            .iter()
            .filter(|r| r.get("decision").is_some())
            .count()
            >= expected.len()
    })?;
    let log = envoy.log_text();
    assert!(
        log.contains("retry-guard audit {"),
        "no audit lines in the Envoy log"
    );
    let records = envoy.audit_records();
    show(
        "f. audit lines (retry-guard audit {...})",
        records
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let decisions: Vec<&Value> = records.iter().collect();
    let names: Vec<&str> = decisions
        .iter()
        .map(|r| r["decision"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(names, expected, "audit decisions: {decisions:#?}");
    for (rec, rid) in decisions.iter().zip(request_ids) {
        for member in AUDIT_MEMBERS {
            assert!(
                rec.get(*member).is_some(),
                "audit line lacks {member:?}: {rec}"
            );
        }
        assert_eq!(rec["request_id"], rid, "{rec}");
        assert_eq!(rec["route"], "oauth-token", "{rec}");
        assert_eq!(rec["class"], "token_issuing", "{rec}");
        assert_eq!(rec["owner"], "team-iam", "{rec}");
        assert_eq!(rec["escalation"], "pagerduty:iam-primary", "{rec}");
        assert_eq!(rec["fingerprint"], fingerprint.as_str(), "{rec}");
        assert_eq!(rec["mode"], "enforce", "{rec}");
        assert_eq!(rec["key_present"], false, "{rec}");
        let principal = rec["principal"].as_str().unwrap_or("");
        assert!(
            !principal.is_empty() && principal != "anonymous",
            "principal should come from x-client-id: {rec}"
        );
    }
    assert_eq!(decisions[3]["approver"], APPROVER, "{}", decisions[3]);
    let outcomes: Vec<&Value> = records.iter().filter(|r| !r["outcome"].is_null()).collect();
    let succeeded = outcomes
        .iter()
        .filter(|r| r["outcome"] == "succeeded")
        .count();
    assert!(
        succeeded >= 2,
        "expected an outcome in the audit lines of the two attempts that reached the backend: {outcomes:#?}"
    );

    // f. Counters.
    let stats = envoy.wasm_stats()?;
    show("f. admin /stats?filter=wasmcustom", stats.trim_end());
    assert!(
        stats.contains("wasmcustom.retry_guard.decision.confirm"),
        "admin stats:\n{stats}"
    );
    assert_eq!(
        counter(&envoy, "retry_guard.decision.allow"),
        Some(1),
        "{stats}"
    );
    assert_eq!(
        counter(&envoy, "retry_guard.decision.confirm"),
        Some(3),
        "{stats}"
    );
    assert_eq!(
        counter(&envoy, "retry_guard.decision.confirmed"),
        Some(1),
        "{stats}"
    );
    assert_eq!(
        counter(&envoy, "retry_guard.confirmation.invalid"),
        Some(1),
        "{stats}"
    );

    // The decision is visible to Envoy's access log as filter state
    // (%FILTER_STATE(wasm.retry_guard.decision:PLAIN)%).
    let access = envoy.wait_for_access_log(expected.len(), Duration::from_secs(5))?;
    let logged: Vec<&str> = access
        .iter()
        .map(|e| e["decision"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(logged, expected, "access log: {access:#?}");
    Ok(())
}

fn expired_jwt() -> String {
    let now = now_unix();
    // Expired well past the 30 s skew, but issued within token_max_age_seconds (300), so the
    // only reason is "expired".
    unsigned_jwt(&json!({"sub": CLIENT_ID, "iat": now - 120, "exp": now - 90}))
}

/// e (strip): an expired bearer JWT is removed before the upstream and the upstream is told why.
#[test]
fn expired_jwt_is_stripped() -> Result<()> {
    let config = plugin_config("smoke.json")?;
    assert_eq!(config["stale_token_action"], "strip");
    let backend = Backend::start()?;
    let envoy = start_envoy("smoke-strip", &backend, &config)?;
    let jwt = expired_jwt();
    let bearer = format!("Bearer {jwt}");
    let resp = post_token(
        &envoy,
        "smoke-strip",
        "grant_type=client_credentials&case=strip",
        &[("authorization", &bearer)],
    )?;
    let reqs = backend.requests();
    show(
        "e. expired bearer JWT, stale_token_action strip -> upstream without it",
        format!(
            "client got: {}\nupstream got headers: {:?}",
            describe(&resp),
            reqs.first().map(|r| r.headers.clone()).unwrap_or_default()
        ),
    );
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    assert_eq!(reqs.len(), 1);
    assert_no_header(&reqs[0], "authorization");
    assert_eq!(
        reqs[0].header("retry-guard-token"),
        Some("stripped; reason=expired"),
        "{:?}",
        reqs[0].headers
    );
    assert!(
        !reqs[0].headers.iter().any(|(_, v)| v.contains(&jwt)),
        "the expired JWT reached the backend: {:?}",
        reqs[0].headers
    );
    assert_eq!(counter(&envoy, "retry_guard.token.stripped"), Some(1));
    envoy.wait_for_log(Duration::from_secs(10), |l| {
        l.contains("retry-guard audit {")
    })?;
    let audit = envoy.audit_records();
    let decision = audit
        .first()
        .unwrap_or_else(|| panic!("no audit decision line: {audit:#?}"));
    assert_eq!(decision["token_reason"], "expired", "{decision}");
    Ok(())
}

/// e (reject): with `stale_token_action: reject` an expired bearer JWT gets a 401 and the
/// upstream never sees the request.
#[test]
fn expired_jwt_is_rejected() -> Result<()> {
    let mut config = plugin_config("smoke.json")?;
    config["stale_token_action"] = json!("reject");
    let backend = Backend::start()?;
    let envoy = start_envoy("smoke-reject", &backend, &config)?;
    let bearer = format!("Bearer {}", expired_jwt());
    let resp = post_token(
        &envoy,
        "smoke-reject",
        "grant_type=client_credentials&case=reject",
        &[("authorization", &bearer)],
    )?;
    show(
        "e. expired bearer JWT, stale_token_action reject -> 401",
        describe(&resp),
    );
    let doc = check_problem(
        &resp,
        401,
        "urn:retry-guard:problem:stale-token",
        "smoke-reject",
    );
    let www = resp.header("www-authenticate").unwrap_or("");
    assert!(
        www.contains(r#"error="invalid_token""#),
        "{}",
        describe(&resp)
    );
    assert_eq!(
        www, r#"Bearer error="invalid_token", error_description="expired""#,
        "{doc}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        backend.request_count(),
        0,
        "the rejected request reached the backend"
    );
    assert_eq!(
        backend.heads_seen(),
        0,
        "the rejected request's headers reached the backend"
    );
    assert_eq!(counter(&envoy, "retry_guard.token.rejected"), Some(1));
    assert_eq!(counter(&envoy, "retry_guard.decision.stale_token"), Some(1));
    Ok(())
}

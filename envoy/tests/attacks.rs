//! The attacks of the "no caller-chosen fingerprints" issue, sent as an attacker would to the
//! bundled gateway (`envoy/envoy.yaml`, its plugin configuration unchanged) on a real Envoy 1.40
//! with two workers. Each test makes a first call that the backend executes, then the
//! attacker's variants of it, and shows that the backend executed the operation once: every
//! variant is answered by the gateway (428 from retry-guard, 400 or 404 from Envoy's path
//! handling, 400 from retry-guard for ambiguous requests), never forwarded.
//!
//! Attack 5 (flushing the ledger) has two tests: requests aimed at a replay's set on the
//! bundled gateway, and a gateway with a tiny table flooded until it is full.

mod common;

use common::*;
use retry_guard::b64;
use retry_guard::canonical::BodyForm;
use retry_guard::engine::token_record_id;
use retry_guard::fingerprint::{body_digest, Fingerprint, NaturalKey};
use retry_guard::ledger::WAYS;
use retry_guard_e2e::client::Response;
use retry_guard_e2e::fixture::{Handle, Shared};
use retry_guard_e2e::gateway::{envoy_yaml, plugin_config};
use retry_guard_e2e::tokens::{now_unix, unsigned_jwt};
use retry_guard_e2e::Result;
use serde_json::json;
use std::time::Duration;

static GATEWAY: Shared<Gateway> = Shared::new();

fn gateway() -> Result<Handle<Gateway>> {
    GATEWAY.get(|| Gateway::start("attacks", None, 2))
}

const CONFIRMATION_REQUIRED: &str = "urn:retry-guard:problem:confirmation-required";

/// Sends the first call of a case; the backend must execute it.
fn first_call(gw: &Gateway, req: &Req) {
    let resp = gw.send(req).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status, 200, "first call: {}", describe(&resp));
    assert_eq!(
        gw.upstream(&req.case).len(),
        1,
        "the first call was executed"
    );
}

/// Sends a variant; returns the answer.
fn variant(gw: &Gateway, req: &Req) -> Response {
    gw.send(req)
        .unwrap_or_else(|e| panic!("{}: {e}", req.request_id))
}

/// The variant was answered 428 by retry-guard as a replay of the first call.
fn assert_replay(route: &RouteSpec, req: &Req, resp: &Response) {
    let doc = check_problem(resp, 428, CONFIRMATION_REQUIRED, route, &req.request_id)
        .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.path));
    assert_eq!(doc["previous_outcome"], "succeeded", "{doc}");
}

/// After all variants: the backend executed the case's operation exactly once.
fn assert_executed_once(gw: &Gateway, case: &str) {
    let got = gw.upstream(case);
    assert_eq!(
        got.len(),
        1,
        "the backend executed {case} {} times: {:#?}",
        got.len(),
        got.iter()
            .map(|r| format!("{} {} {:?}", r.method, r.path, r.body_text()))
            .collect::<Vec<_>>()
    );
}

/// An unsecured JWT (`alg: none`, empty signature) with these claims.
fn alg_none_jwt(claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.",
        b64::url(br#"{"alg":"none","typ":"JWT"}"#),
        b64::url(claims.to_string().as_bytes())
    )
}

/// Attack 1: a retry carrying a forged bearer token (`alg: none`, a random `sub`, no `exp`)
/// used to get a new principal from the unverified `jwt:sub`, while the filter stripped the
/// token as `no_expiry`: the upstream received the original request again. The principal now
/// comes from what goes upstream, so the stripped token names no one.
#[test]
fn attack_1_a_forged_then_stripped_principal_is_no_new_caller() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let case = "attack1";
    let req = TOKEN.request(case);
    first_call(&gw, &req);
    for (n, token) in [
        alg_none_jwt(&json!({"sub": "attacker-7f3a9c"})),
        alg_none_jwt(&json!({"sub": "attacker-0b12de", "iat": now_unix()})),
        unsigned_jwt(&json!({"sub": "attacker-5d5d5d"})),
    ]
    .into_iter()
    .enumerate()
    {
        let retry = req
            .again(&format!("forged{n}"))
            .header("authorization", &format!("Bearer {token}"));
        let resp = variant(&gw, &retry);
        assert_replay(&TOKEN, &retry, &resp);
        let d = gw
            .decision(&retry.request_id)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d["principal"], "anonymous", "{d}");
        assert_eq!(d["token_reason"], "no_expiry", "{d}");
    }
    assert_executed_once(&gw, case);
}

/// Attack 2: the query string was part of the natural key, so `?` or `?x=1` made a new
/// operation. It is left out by default (`natural_key.query: "ignore"`).
#[test]
fn attack_2_a_query_string_is_no_new_operation() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let case = "attack2";
    let req = TOKEN.request(case);
    first_call(&gw, &req);
    for (n, path) in [
        "/oauth/token?",
        "/oauth/token?x=1",
        "/oauth/token?grant_type=x&y",
    ]
    .into_iter()
    .enumerate()
    {
        let mut retry = req.again(&format!("q{n}"));
        retry.path = path.to_string();
        let resp = variant(&gw, &retry);
        assert_replay(&TOKEN, &retry, &resp);
    }
    assert_executed_once(&gw, case);
}

/// Attack 3: path spellings missed the guarded route (the connection manager normalized
/// nothing and the catch-all forwarded to the same backend) or made a new fingerprint. The
/// gateway now normalizes paths before routing, refuses encoded slashes, and refuses other
/// spellings of the identity paths instead of forwarding them.
#[test]
fn attack_3_path_spellings_reach_the_guarded_route_or_nothing() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let case = "attack3";
    let req = TOKEN.request(case);
    first_call(&gw, &req);
    let mut n = 0;
    let mut send = |path: &str| {
        n += 1;
        let mut retry = req.again(&format!("p{n}"));
        retry.path = path.to_string();
        (variant(&gw, &retry), retry)
    };
    // Normalized by Envoy onto the guarded route: the same operation.
    for path in [
        "//oauth/token",
        "/oauth//token",
        "/oauth/%74oken",
        "/%6Fauth/token",
        "/oauth/./token",
        "/oauth/x/../token",
        "/oauth/%2e/token",
    ] {
        let (resp, retry) = send(path);
        assert_replay(&TOKEN, &retry, &resp);
    }
    // Encoded slashes: refused by Envoy before any route.
    for path in ["/oauth%2Ftoken", "/oauth%2ftoken", "/oauth%5Ctoken"] {
        let (resp, _) = send(path);
        assert_eq!(resp.status, 400, "{path}: {}", describe(&resp));
    }
    // Spellings a lenient upstream may route to the same handler: never forwarded.
    for path in [
        "/OAuth/Token",
        "/oauth/token/",
        "/oauth/token;jsessionid=x",
        "/oauth/token.json",
    ] {
        let (resp, _) = send(path);
        assert_eq!(resp.status, 404, "{path}: {}", describe(&resp));
    }
    assert_executed_once(&gw, case);

    // A role grant spelled with an escape in the role name.
    let case = "attack3-role";
    let req = ROLE_GRANT.request(case);
    first_call(&gw, &req);
    for (n, path) in [
        "/v1/roles/%61ttack3-role/members",
        "/v1/roles/attack3%2Drole/members",
        "//v1/roles/attack3-role//members",
        "/v1/roles/./attack3-role/members",
    ]
    .into_iter()
    .enumerate()
    {
        let mut retry = req.again(&format!("p{n}"));
        retry.path = path.to_string();
        let resp = variant(&gw, &retry);
        assert_replay(&ROLE_GRANT, &retry, &resp);
    }
    for path in [
        "/v1/roles/attack3-role/members/",
        "/V1/Roles/attack3-role/members",
    ] {
        let mut retry = req.again("other");
        retry.path = path.to_string();
        let resp = variant(&gw, &retry);
        assert_eq!(resp.status, 404, "{path}: {}", describe(&resp));
    }
    assert_executed_once(&gw, case);
}

/// Attack 4: byte-exact bodies made the same form with parameters reordered, an extra `&`,
/// `grant%5Ftype` or a trailing newline, and the same JSON with other whitespace or member
/// order, new operations. The natural key now digests their canonical forms.
#[test]
fn attack_4_equivalent_bodies_are_one_operation() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let case = "attack4";
    let req = TOKEN
        .request(case)
        .body("grant_type=client_credentials&scope=attack4");
    first_call(&gw, &req);
    for (n, body) in [
        "scope=attack4&grant_type=client_credentials",
        "grant_type=client_credentials&&scope=attack4&",
        "grant%5Ftype=client_credentials&scope=attack4",
        "grant_type=client_credentials&scope=attack4\n",
        "grant_type=client%5Fcredentials&scope=%61ttack4",
    ]
    .into_iter()
    .enumerate()
    {
        let retry = req.again(&format!("b{n}")).body(body);
        let resp = variant(&gw, &retry);
        assert_replay(&TOKEN, &retry, &resp);
    }
    assert_executed_once(&gw, case);

    let case = "attack4-json";
    let req = SESSION_REFRESH
        .request(case)
        .body(r#"{"session":"attack4-json","extend_seconds":3600}"#);
    first_call(&gw, &req);
    for (n, (ct, body)) in [
        (
            "application/json",
            "{ \"extend_seconds\": 3600,\n  \"session\": \"attack4-json\" }\n",
        ),
        (
            "application/json; charset=utf-8",
            r#"{"session":"\u0061ttack4-json","extend_seconds":3.6e3}"#,
        ),
        // The same JSON declared as something else: still JSON to a server that ignores
        // content-type, so still the same operation.
        (
            "text/plain",
            r#"{"extend_seconds":3600,"session":"attack4-json"}"#,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut retry = req.again(&format!("j{n}")).body(body);
        retry.headers.retain(|(k, _)| k != "content-type");
        let retry = retry.header("content-type", ct);
        let resp = variant(&gw, &retry);
        assert_replay(&SESSION_REFRESH, &retry, &resp);
    }
    assert_executed_once(&gw, case);
}

/// Attack 6: `Bearer<TAB><expired JWT>` or a JWT with a trailing `.` was not recognised as a
/// bearer token: neither stripped nor counted stale, and it named a new principal. Parsed as
/// servers parse it, it is stale (expired, malformed), stripped, and names no one.
/// The set a ledger id was stored in before the set index was keyed: its first four bytes,
/// little-endian, modulo the number of sets. Anyone could compute it from the fingerprint a
/// 428 prints, or from their own token.
fn public_set(id: &[u8; 32], sets: u32) -> u32 {
    u32::from_le_bytes([id[0], id[1], id[2], id[3]]) % sets
}

/// The fingerprint of a token call of `principal` with this form body, computed as an
/// attacker would: the algorithm is public.
fn token_fingerprint(principal: &str, body: &str) -> [u8; 32] {
    let digest = body_digest(BodyForm::Form, body.as_bytes());
    let natural = NaturalKey {
        method: "POST",
        path: "/oauth/token",
        query: "",
        body: &digest,
    };
    Fingerprint::compute(TOKEN.name, principal, None, &natural).0
}

/// Attack 5, aimed: a 428 prints the fingerprint, and the set an entry lived in was the
/// fingerprint's first bytes modulo the number of sets. Four requests written to that set
/// evicted the entry, and the replay passed: requests answered 400 with new opaque tokens
/// (each wrote its token record) or new token calls. Now a 400 writes nothing, token records
/// have their own table, the set comes from a keyed hash, and a live entry of a sensitive
/// route is never evicted: the replay is still caught.
#[test]
fn attack_5_requests_aimed_at_a_replays_set_do_not_flush_it() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let case = "attack5";
    let req = TOKEN.request(case);
    first_call(&gw, &req);
    let replay = req.again("replay");
    let resp = variant(&gw, &replay);
    assert_replay(&TOKEN, &replay, &resp);
    let doc: serde_json::Value = serde_json::from_str(&resp.text()).expect("problem JSON");
    let printed: [u8; 32] = doc["fingerprint"]
        .as_str()
        .and_then(b64::decode_url)
        .and_then(|b| b.try_into().ok())
        .unwrap_or_else(|| panic!("no fingerprint in {doc}"));
    let principal = gw
        .decision(&req.request_id)
        .unwrap_or_else(|e| panic!("{e}"))["principal"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        token_fingerprint(&principal, &req.body),
        printed,
        "the attacker computes fingerprints as the filter does"
    );
    let sets = 65_536 / WAYS as u32; // the bundled max_entries, WAYS entries per set
    let target = public_set(&printed, sets);
    // Requests answered 400 before a decision (two idempotency keys), each with a new opaque
    // token whose record id falls in the target's set.
    let tokens: Vec<String> = (0..)
        .map(|i| format!("opaque-attack5-{i}"))
        .filter(|t| public_set(&token_record_id(t), sets) == target)
        .take(WAYS + 2)
        .collect();
    for (i, token) in tokens.iter().enumerate() {
        let flood = req
            .again(&format!("badkey{i}"))
            .body(&format!(
                "grant_type=client_credentials&scope=case.attack5.{i}"
            ))
            .header("authorization", &format!("Bearer {token}"))
            .header("idempotency-key", "\"a\"")
            .header("idempotency-key", "\"b\"");
        let resp = variant(&gw, &flood);
        assert_eq!(resp.status, 400, "{}", describe(&resp));
    }
    // New token calls (the backend executes them) whose fingerprints fall in the target's set.
    let bodies: Vec<String> = (0..)
        .map(|i| format!("{}&n={i}", req.body))
        .filter(|b| public_set(&token_fingerprint(&principal, b), sets) == target)
        .take(WAYS + 2)
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        let flood = req.again(&format!("aimed{i}")).body(body);
        let resp = variant(&gw, &flood);
        assert_eq!(resp.status, 200, "{}", describe(&resp));
    }
    let after = req.again("after");
    let resp = variant(&gw, &after);
    assert_replay(&TOKEN, &after, &resp);
    assert_eq!(gw.counter("retry_guard.ledger.evicted"), 0);
    assert_executed_once_with(&gw, case, &req.body);
}

/// Attack 5, by volume, on a gateway whose table is tiny (`max_entries: 8`: one set per
/// table) and whose token route allows tokens 2 s old: new token calls, each with a new opaque
/// token, until the tables are full. The flood cannot make the ledger forget: calls that find
/// no room are answered 503 `ledger-unavailable` (`ledger_full`, the token route fails
/// closed) and counted; every call that went through is still caught on replay; and an opaque
/// token seen before the flood is still too old afterwards (stripped, never forwarded again).
#[test]
fn attack_5_a_flood_cannot_make_the_ledger_forget() {
    let mut config = envoy_yaml()
        .and_then(|b| plugin_config(&b))
        .unwrap_or_else(|e| panic!("{e}"));
    config["max_entries"] = json!(8);
    config["routes"][0]["token_max_age_seconds"] = json!(2);
    // Callers are anonymous here, so a call's replay is the same operation however old its
    // opaque token has grown meanwhile (a token past 2 s is stripped and would otherwise
    // change the principal: a slow machine made replays new operations).
    config["principal"] = json!(["cookie:session"]);
    let gw = Gateway::start("attacks-full", Some(config), 2).unwrap_or_else(|e| panic!("{e}"));
    let case = "flood";
    let req = TOKEN.request(case);
    first_call(&gw, &req);
    let seen_at = std::time::Instant::now();
    let old_token = "Bearer opaque-seen-before-the-flood";
    let with_old = req
        .again("old-token")
        .body(&format!("{}&n=old", req.body))
        .header("authorization", old_token);
    assert_eq!(variant(&gw, &with_old).status, 200);

    let (mut passed, mut refused) = (Vec::new(), 0);
    for i in 0..24 {
        let flood = req
            .again(&format!("flood{i}"))
            .body(&format!("{}&n={i}", req.body))
            .header("authorization", &format!("Bearer opaque-flood-{i}"));
        let resp = variant(&gw, &flood);
        match resp.status {
            200 => passed.push(flood),
            503 => {
                check_problem(
                    &resp,
                    503,
                    "urn:retry-guard:problem:ledger-unavailable",
                    &TOKEN,
                    &flood.request_id,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                let d = gw
                    .decision(&flood.request_id)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(d["reason"], "ledger_full", "{d}");
                refused += 1;
            }
            _ => panic!("flood {i}: {}", describe(&resp)),
        }
    }
    assert!(refused > 0, "a table of 8 took 26 sensitive calls");
    assert_eq!(gw.counter("retry_guard.ledger.full"), refused);
    assert_eq!(gw.counter("retry_guard.ledger.evicted"), 0);
    // Nothing that went through was forgotten.
    for call in passed.iter().chain([&req, &with_old]) {
        let replay = call.again(&format!("{}-replay", call.request_id));
        let resp = variant(&gw, &replay);
        assert_eq!(resp.status, 428, "{}: {}", call.request_id, describe(&resp));
    }
    // The token seen before the flood is still remembered: once older than 2 s it is stale,
    // stripped, and names no one (its retry is the anonymous caller's replay).
    std::thread::sleep(Duration::from_secs(4).saturating_sub(seen_at.elapsed()));
    let stale = req
        .again("old-token-later")
        .header("authorization", old_token);
    let resp = variant(&gw, &stale);
    assert_replay(&TOKEN, &stale, &resp);
    let d = gw
        .decision(&stale.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d["token_reason"], "too_old", "{d}");
    let forwarded = gw
        .upstream(case)
        .iter()
        .filter(|r| r.header("authorization") == Some(old_token))
        .count();
    assert_eq!(
        forwarded, 1,
        "the old token was forwarded {forwarded} times"
    );
    assert_executed_once_with(&gw, case, &req.body);
    // One VM made the set-index secret (Envoy configures on the main thread first); the
    // two workers' VMs read it.
    let log = gw.envoy.log_text();
    assert_eq!(
        log.matches("set-index secret made by this VM").count(),
        1,
        "{log}"
    );
    assert!(
        log.matches("set-index secret read from shared data")
            .count()
            >= 2
    );
}

/// The backend executed the token call with this body exactly once.
fn assert_executed_once_with(gw: &Gateway, case: &str, body: &str) {
    let executed = gw
        .upstream(case)
        .iter()
        .filter(|r| r.body_text() == body)
        .count();
    assert_eq!(executed, 1, "the backend executed {body} {executed} times");
}

#[test]
fn attack_6_malformed_credentials_are_stale_and_name_no_one() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let now = now_unix();
    let expired = unsigned_jwt(&json!({"sub": "ci-bot", "iat": now - 1000, "exp": now - 900}));
    let case = "attack6";
    let req = TOKEN.request(case);
    first_call(&gw, &req);
    for (n, value) in [
        format!("Bearer\t{expired}"),
        format!("bearer  {expired}"),
        format!("Bearer {expired}."),
        format!("Bearer {expired} junk"),
    ]
    .into_iter()
    .enumerate()
    {
        let retry = req.again(&format!("m{n}")).header("authorization", &value);
        let resp = variant(&gw, &retry);
        assert_replay(&TOKEN, &retry, &resp);
        let d = gw
            .decision(&retry.request_id)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d["principal"], "anonymous", "{value:?}: {d}");
    }
    assert_executed_once(&gw, case);

    // Sent as a new operation, such a credential never reaches the upstream.
    for (n, (value, reason)) in [
        (format!("Bearer\t{expired}"), "expired"),
        (format!("Bearer {expired}."), "malformed"),
    ]
    .into_iter()
    .enumerate()
    {
        let case = format!("attack6-new{n}");
        let req = TOKEN.request(&case).header("authorization", &value);
        let resp = variant(&gw, &req);
        assert_eq!(resp.status, 200, "{}", describe(&resp));
        let got = gw.upstream(&case);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header("authorization"), None, "{:?}", got[0].headers);
        assert_eq!(
            got[0].header("retry-guard-token"),
            Some(format!("stripped; reason={reason}").as_str())
        );
    }
}

/// Attack 7: cookie-authenticated callers all had the principal `anonymous`, so one user's
/// call made another user's identical first call a "replay" (428). The bundled configuration
/// names them by their session cookie (`cookie:session`); a cookie sent twice with two values
/// is refused, since the upstream may take either.
#[test]
fn attack_7_cookie_callers_are_told_apart() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let case = "attack7";
    let alice = TOKEN
        .request(case)
        .header("cookie", "theme=dark; session=alice-5e55")
        .body("grant_type=client_credentials&scope=attack7");
    let mut bob = alice.again("bob");
    bob.headers.retain(|(k, _)| k != "cookie");
    let bob = bob.header("cookie", "session=bob-77aa");

    first_call(&gw, &alice);
    // Bob's identical call is his first: executed, not a 428.
    let resp = variant(&gw, &bob);
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    assert_eq!(gw.upstream(case).len(), 2);
    let (da, db) = (
        gw.decision(&alice.request_id).expect("alice"),
        gw.decision(&bob.request_id).expect("bob"),
    );
    assert_ne!(da["principal"], db["principal"]);
    assert_ne!(da["fingerprint"], db["fingerprint"]);
    assert!(
        da["principal"]
            .as_str()
            .is_some_and(|p| p.starts_with("cookie:session:") && !p.contains("alice")),
        "{da}"
    );
    // Each one's retry is a replay.
    for (who, req) in [("alice", &alice), ("bob", &bob)] {
        let retry = req.again(&format!("{who}-retry"));
        let resp = variant(&gw, &retry);
        assert_replay(&TOKEN, &retry, &resp);
    }
    // Alice's cookie twice with a second value: ambiguous, refused.
    let mut forged = alice.again("twice");
    forged.headers.retain(|(k, _)| k != "cookie");
    let forged = forged.header("cookie", "session=fresh-0001; session=alice-5e55");
    let resp = variant(&gw, &forged);
    check_problem(
        &resp,
        400,
        "urn:retry-guard:problem:principal-ambiguous",
        &TOKEN,
        &forged.request_id,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gw.upstream(case).len(), 2, "one execution per caller");
}

/// Attack 8: with two `Idempotency-Key` fields the filter took the first while the upstream
/// saw both. Two fields are now a 400.
#[test]
fn attack_8_two_idempotency_keys_are_refused() {
    let gw = gateway().unwrap_or_else(|e| panic!("{e}"));
    let case = "attack8";
    let req = SECRETS.request(case);
    first_call(&gw, &req);
    let key = "\"key-attack8\"";
    for (n, keys) in [
        ["\"brand-new-key\"", key],
        [key, "\"brand-new-key\""],
        [key, key],
    ]
    .into_iter()
    .enumerate()
    {
        let mut retry = req.again(&format!("k{n}"));
        retry.headers.retain(|(k, _)| k != "idempotency-key");
        let retry = retry
            .header("idempotency-key", keys[0])
            .header("idempotency-key", keys[1]);
        let resp = variant(&gw, &retry);
        let doc = check_problem(
            &resp,
            400,
            "urn:retry-guard:problem:idempotency-key-invalid",
            &SECRETS,
            &retry.request_id,
        )
        .unwrap_or_else(|e| panic!("{keys:?}: {e}"));
        assert!(
            doc["detail"]
                .as_str()
                .is_some_and(|d| d.contains("sent more than once")),
            "{doc}"
        );
    }
    // A list in one field is no single key either.
    let mut retry = req.again("list");
    retry.headers.retain(|(k, _)| k != "idempotency-key");
    let retry = retry.header("idempotency-key", "brand-new-key,key-attack8");
    let resp = variant(&gw, &retry);
    assert_eq!(resp.status, 400, "{}", describe(&resp));
    assert_executed_once(&gw, case);
}

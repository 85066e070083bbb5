//! Verified principals on the real Envoy 1.40: the bundled gateway (`envoy/envoy.yaml`) puts
//! Envoy's `jwt_authn` in front of retry-guard; it verifies the workload JWT in
//! `x-jwt-assertion` (EdDSA, the TEST issuer of `testdata/keys/`, tokens signed here at test
//! time) and writes the verified payload into the dynamic metadata, where the principal source
//! `metadata:envoy.filters.http.jwt_authn:jwt_payload.sub` reads it.
//!
//! - a valid JWT names the caller by its verified `sub`; another valid JWT of the same `sub`
//!   replaying the operation is a replay (428);
//! - a JWT with a bad signature is answered 401 by `jwt_authn`: neither retry-guard nor the
//!   backend sees the request;
//! - a request whose *unverified* `sub` differs from its verified one (two credentials: the
//!   verified workload JWT, and a bearer JWT in `Authorization` that only the upstream checks,
//!   naming someone else) is the verified caller's;
//! - `on_missing_verified_principal`: `next` falls through to the next source, `reject` answers
//!   401 `principal-required`.

mod common;

use common::{describe, Gateway, Req, TOKEN};
use retry_guard_e2e::fixture::{Handle, Shared};
use retry_guard_e2e::gateway::{envoy_yaml, plugin_config};
use retry_guard_e2e::read_testdata;
use retry_guard_e2e::tokens::{
    eddsa_jwt, issuer_jwt, now_unix, test_issuer_key, unsigned_jwt, TEST_AUDIENCE, TEST_ISSUER,
};
use serde_json::{json, Value};

const ASSERTION: &str = "x-jwt-assertion";
const SOURCE: &str = "metadata:envoy.filters.http.jwt_authn:jwt_payload.sub";

static GATEWAY: Shared<Gateway> = Shared::new();

/// The bundled gateway, as configured.
fn gateway() -> Handle<Gateway> {
    GATEWAY
        .get(|| Gateway::start("verified", None, 2))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn decision(gw: &Gateway, request_id: &str) -> Value {
    gw.decision(request_id).unwrap_or_else(|e| panic!("{e}"))
}

fn send(gw: &Gateway, req: &Req) -> retry_guard_e2e::client::Response {
    gw.send(req)
        .unwrap_or_else(|e| panic!("{}: {e}", req.request_id))
}

fn jwt(sub: &str) -> String {
    issuer_jwt(sub).unwrap_or_else(|e| panic!("{e}"))
}

/// The bundled plugin configuration with another principal list and absence policy.
fn config_with(principal: Value, on_missing: &str) -> Value {
    let bundled = envoy_yaml().unwrap_or_else(|e| panic!("{e}"));
    let mut pc = plugin_config(&bundled).unwrap_or_else(|e| panic!("{e}"));
    pc["principal"] = principal;
    pc["on_missing_verified_principal"] = json!(on_missing);
    pc
}

#[test]
fn bundled_jwks_is_the_test_issuer() {
    let jwks: Value =
        serde_json::from_str(&read_testdata("keys/jwt-issuer-test.jwks.json").unwrap())
            .expect("JWKS");
    // The JWKS holds the public half of the test issuer's key.
    let public = test_issuer_key().unwrap().verifying_key();
    let x = retry_guard_e2e::tokens::b64url_decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
    assert_eq!(
        x,
        public.to_bytes(),
        "jwt-issuer-test.jwks.json is not the key's"
    );
    let pub_file = read_testdata("keys/jwt-issuer-test.pub").unwrap();
    assert_eq!(
        retry_guard::confirm::sign::verifying_key_from_b64(&pub_file).unwrap(),
        public
    );
    // envoy/envoy.yaml's jwt_authn and the Istio RequestAuthentication carry that JWKS.
    let bundled = envoy_yaml().unwrap();
    let hcm = &bundled["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    let filters = hcm["http_filters"].as_array().unwrap();
    let names: Vec<&str> = filters.iter().filter_map(|f| f["name"].as_str()).collect();
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(
        at("envoy.filters.http.jwt_authn") < at("envoy.filters.http.wasm"),
        "jwt_authn must run before retry-guard: {names:?}"
    );
    let provider = &filters[at("envoy.filters.http.jwt_authn")]["typed_config"]["providers"]
        ["workload-issuer"];
    let inline: Value =
        serde_json::from_str(provider["local_jwks"]["inline_string"].as_str().unwrap()).unwrap();
    assert_eq!(inline, jwks, "envoy.yaml's JWKS");
    assert_eq!(provider["issuer"], TEST_ISSUER);
    assert_eq!(provider["audiences"][0], TEST_AUDIENCE);
    assert_eq!(provider["payload_in_metadata"], "jwt_payload");
    let pc = plugin_config(&bundled).unwrap();
    assert_eq!(pc["principal"][0], SOURCE);
    let ra = retry_guard_e2e::gateway::load_yaml(&retry_guard_e2e::gateway::bundled_path(
        "istio/requestauthentication.yaml",
    ))
    .unwrap();
    let rule = &ra["spec"]["jwtRules"][0];
    let ra_jwks: Value = serde_json::from_str(rule["jwks"].as_str().unwrap()).unwrap();
    assert_eq!(ra_jwks, jwks, "requestauthentication.yaml's JWKS");
    assert_eq!(rule["issuer"], TEST_ISSUER);
    assert_eq!(rule["fromHeaders"][0]["name"], ASSERTION);
}

/// (a) The verified `sub` is the principal; the same operation with another valid token of the
/// same `sub` is a replay, another `sub` is another caller.
#[test]
fn a_verified_sub_names_the_caller() {
    let gw = gateway();
    let first = TOKEN
        .request("verified-alice")
        .header(ASSERTION, &jwt("alice"));
    let r = send(&gw, &first);
    assert_eq!(r.status, 200, "{}", describe(&r));
    let d = decision(&gw, &first.request_id);
    assert_eq!(d["principal"], "alice", "{d}");
    // jwt_authn removes the assertion before the upstream (forward: false).
    let up = gw.upstream(&first.case);
    assert_eq!(up.len(), 1);
    assert!(
        !up[0]
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(ASSERTION)),
        "{:?}",
        up[0].headers
    );

    // A new, different token of the same caller: the retry is alice's.
    let mut replay = first.again("2");
    replay.headers.retain(|(k, _)| k != ASSERTION);
    let replay = replay.header(ASSERTION, &jwt("alice"));
    assert_ne!(replay.headers, first.headers, "a different token");
    let r = send(&gw, &replay);
    assert_eq!(r.status, 428, "{}", describe(&r));
    let d = decision(&gw, &replay.request_id);
    assert_eq!(d["principal"], "alice", "{d}");
    assert_eq!(
        gw.upstream(&first.case).len(),
        1,
        "the replay never reached it"
    );

    // Same operation, another verified caller: executed.
    let mut bob = first.again("bob");
    bob.headers.retain(|(k, _)| k != ASSERTION);
    let bob = bob.header(ASSERTION, &jwt("bob"));
    let r = send(&gw, &bob);
    assert_eq!(r.status, 200, "{}", describe(&r));
    assert_eq!(decision(&gw, &bob.request_id)["principal"], "bob");
}

/// (b) A token that does not verify never reaches retry-guard: jwt_authn answers 401.
#[test]
fn a_bad_signature_is_refused_before_retry_guard() {
    let gw = gateway();
    let now = now_unix();
    let claims = json!({"iss": TEST_ISSUER, "aud": TEST_AUDIENCE, "sub": "alice",
        "iat": now, "exp": now + 600});
    // Signed by another key under the issuer's name and key id.
    let forged = eddsa_jwt(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]), &claims);
    // The issuer's signature over other claims: the payload swapped after signing.
    let genuine = eddsa_jwt(&test_issuer_key().unwrap(), &claims);
    let mut parts: Vec<String> = genuine.split('.').map(str::to_string).collect();
    parts[1] = jwt("mallory").split('.').nth(1).unwrap().to_string();
    let swapped = parts.join(".");
    for (case, token) in [("bad-signature", forged), ("swapped-payload", swapped)] {
        let req = TOKEN.request(case).header(ASSERTION, &token);
        let r = send(&gw, &req);
        assert_eq!(r.status, 401, "{case}: {}", describe(&r));
        assert!(
            r.text().contains("Jwt verification fails"),
            "{case}: {}",
            describe(&r)
        );
        let entry = gw.access_entry(&req.request_id).unwrap();
        assert_eq!(entry["status"], 401, "{entry}");
        assert!(
            entry["retry_guard_decision"].is_null(),
            "{case}: retry-guard decided on it: {entry}"
        );
        assert!(gw.upstream(case).is_empty(), "{case} reached the backend");
    }
    // Nor did retry-guard write an audit line for them (an unrelated request shows the log is
    // current: its line is there, theirs are not).
    let probe = TOKEN.request("after-bad-signature");
    assert_eq!(send(&gw, &probe).status, 200);
    decision(&gw, &probe.request_id);
    let lines = gw.envoy.audit_records();
    for case in ["bad-signature", "swapped-payload"] {
        assert!(
            !lines.iter().any(|l| l["request_id"] == format!("{case}-1")),
            "{case}"
        );
    }
}

/// (c) Two credentials: the verified workload JWT (alice) in `x-jwt-assertion`, and in
/// `Authorization` a bearer JWT that only the upstream checks, naming mallory. retry-guard's
/// `jwt:sub` reads the bearer without verifying it, so that is the request's *unverified* sub;
/// with the verified source first, the principal is alice, whatever the bearer says, and a
/// retry that changes the bearer's sub is still alice's replay.
#[test]
fn the_verified_sub_wins_over_an_unverified_one() {
    let config = config_with(json!([SOURCE, "jwt:sub", "token"]), "next");
    let gw = Gateway::start("verified-two-credentials", Some(config), 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let exp = now_unix() + 600;
    let bearer = |sub: &str| format!("Bearer {}", unsigned_jwt(&json!({"sub": sub, "exp": exp})));

    // Without the verified JWT the unverified claim is all there is: mallory.
    let unverified = TOKEN
        .request("unverified")
        .header("authorization", &bearer("mallory"));
    assert_eq!(send(&gw, &unverified).status, 200);
    assert_eq!(
        decision(&gw, &unverified.request_id)["principal"],
        "mallory"
    );

    let req = TOKEN
        .request("two-credentials")
        .header("authorization", &bearer("mallory"))
        .header(ASSERTION, &jwt("alice"));
    let r = send(&gw, &req);
    assert_eq!(r.status, 200, "{}", describe(&r));
    assert_eq!(decision(&gw, &req.request_id)["principal"], "alice");
    // The upstream still gets its credential.
    let up = gw.upstream(&req.case);
    assert!(up[0]
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("authorization") && *v == bearer("mallory")));

    // The retry claims to be eve in the bearer: still alice, still the same operation.
    let mut retry = req.again("2");
    retry
        .headers
        .retain(|(k, _)| k != "authorization" && k != ASSERTION);
    let retry = retry
        .header("authorization", &bearer("eve"))
        .header(ASSERTION, &jwt("alice"));
    let r = send(&gw, &retry);
    assert_eq!(r.status, 428, "{}", describe(&r));
    assert_eq!(decision(&gw, &retry.request_id)["principal"], "alice");
}

/// `on_missing_verified_principal`: `next` (the bundled setting) names an unauthenticated
/// caller by the next source; `reject` refuses it 401 `principal-required`.
#[test]
fn an_absent_verified_principal_falls_through_or_is_refused() {
    let gw = gateway();
    let opaque = "Bearer opaque-verified-next-0001";
    let req = TOKEN
        .request("unauthenticated-next")
        .header("authorization", opaque);
    assert_eq!(send(&gw, &req).status, 200);
    let p = decision(&gw, &req.request_id)["principal"].clone();
    assert!(p.as_str().unwrap().starts_with("token:"), "{p}");
    drop(gw);

    let config = config_with(json!([SOURCE, "peer_identity", "token"]), "reject");
    let gw = Gateway::start("verified-reject", Some(config), 1).unwrap_or_else(|e| panic!("{e}"));
    let req = TOKEN
        .request("unauthenticated-reject")
        .header("authorization", opaque);
    let r = send(&gw, &req);
    assert_eq!(r.status, 401, "{}", describe(&r));
    let problem: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(
        problem["type"],
        "urn:retry-guard:problem:principal-required"
    );
    assert!(gw.upstream(&req.case).is_empty());
    let ok = TOKEN
        .request("authenticated-reject")
        .header(ASSERTION, &jwt("alice"));
    let r = send(&gw, &ok);
    assert_eq!(r.status, 200, "{}", describe(&r));
    assert_eq!(decision(&gw, &ok.request_id)["principal"], "alice");
}

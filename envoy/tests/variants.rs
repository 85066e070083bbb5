//! The bundled gateway with variants of its plugin configuration, each in its own Envoy:
//! `stale_token_action: reject`, global shadow mode, exact counters, and configurations the
//! plugin must refuse, and two plugins sharing one VM.

mod common;

use std::time::{Duration, Instant};

use common::*;
use retry_guard_e2e::backend::{Gate, Reply};
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::gateway::{envoy_yaml, plugin_config, TestGateway};
use retry_guard_e2e::tokens::{now_unix, test_confirmation, test_signing_key, unsigned_jwt};
use retry_guard_e2e::{plugin_config as testdata_config, Result};
use serde_json::{json, Value};

fn gateway_json() -> Value {
    testdata_config("gateway.json").unwrap_or_else(|e| panic!("{e}"))
}

fn start(name: &str, config: Value) -> Gateway {
    Gateway::start(name, Some(config), 2).unwrap_or_else(|e| panic!("{e}"))
}

fn bearer(claims: Value) -> String {
    format!("Bearer {}", unsigned_jwt(&claims))
}

/// With `stale_token_action: reject`, each stale reason is answered 401 with
/// `WWW-Authenticate` and a problem document; nothing reaches the backend.
#[test]
fn stale_tokens_are_rejected() {
    let mut config = gateway_json();
    config["stale_token_action"] = json!("reject");
    // role-grant: opaque tokens get old after 1 s (the ledger remembers when it first saw one).
    config["routes"][1]["token_max_age_seconds"] = json!(1);
    let gw = start("reject", config);
    let now = now_unix();
    let mut f = Failures::default();
    for (label, route, claims, reason) in [
        (
            "expired",
            TOKEN,
            json!({"sub": "ci-bot", "iat": now - 120, "exp": now - 90}),
            "expired",
        ),
        (
            "not-yet-valid",
            TOKEN,
            json!({"sub": "ci-bot", "iat": now, "nbf": now + 600, "exp": now + 900}),
            "not_yet_valid",
        ),
        (
            "no-expiry",
            SESSION_REFRESH,
            json!({"sub": "ci-bot", "iat": now}),
            "no_expiry",
        ),
        (
            "too-old",
            TOKEN,
            json!({"sub": "ci-bot", "iat": now - 400, "exp": now + 600}),
            "too_old",
        ),
    ] {
        let case = format!("reject-{label}");
        let req = route
            .request(&case)
            .header("authorization", &bearer(claims));
        f.check(
            label,
            (|| {
                let resp = h(gw.send(&req))?;
                let doc = check_problem(
                    &resp,
                    401,
                    "urn:retry-guard:problem:stale-token",
                    &route,
                    &req.request_id,
                )?;
                let www = format!(r#"Bearer error="invalid_token", error_description="{reason}""#);
                if resp.header("www-authenticate") != Some(www.as_str()) {
                    return Err(format!(
                        "www-authenticate is not {www:?}: {}",
                        describe(&resp)
                    ));
                }
                if doc["token_reason"] != reason {
                    return Err(format!("token_reason: {doc}"));
                }
                if !gw.upstream(&case).is_empty() {
                    return Err("the rejected request reached the backend".into());
                }
                let d = h(gw.decision(&req.request_id))?;
                if d["decision"] != "stale_token"
                    || d["token_action"] != "reject"
                    || d["token_reason"] != reason
                {
                    return Err(format!("audit: {d}"));
                }
                Ok(())
            })(),
        );
    }

    // An opaque token is too old once the ledger has known it longer than the route allows.
    let opaque = "Bearer opaque-0123456789abcdef";
    let first = ROLE_GRANT
        .request("reject-opaque")
        .header("authorization", opaque);
    let t0 = Instant::now();
    let r1 = gw.send(&first).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r1.status,
        200,
        "first sighting of the opaque token: {}",
        describe(&r1)
    );
    // Real clock: wait until more than token_max_age_seconds (1) have certainly passed in whole
    // seconds (the filter's clock has a resolution of one second).
    let wait = Duration::from_millis(2100).saturating_sub(t0.elapsed());
    std::thread::sleep(wait);
    let later = ROLE_GRANT
        .request("reject-opaque-later")
        .header("authorization", opaque);
    let r2 = gw.send(&later).unwrap_or_else(|e| panic!("{e}"));
    f.check(
        "opaque too_old",
        (|| {
            check_problem(
                &r2,
                401,
                "urn:retry-guard:problem:stale-token",
                &ROLE_GRANT,
                &later.request_id,
            )?;
            let want = r#"Bearer error="invalid_token", error_description="too_old""#;
            if r2.header("www-authenticate") != Some(want) {
                return Err(describe(&r2));
            }
            Ok(())
        })(),
    );
    f.assert_none(&gw.envoy);
    assert_eq!(gw.counter("retry_guard.token.rejected"), 5);
    assert_eq!(gw.counter("retry_guard.token.stripped"), 0);
}

/// Global shadow mode: every decision is computed, audited and counted, nothing is blocked or
/// stripped.
#[test]
fn shadow_mode_lets_everything_through() {
    let mut config = gateway_json();
    config["mode"] = json!("shadow");
    let gw = start("shadow", config);
    let now = now_unix();

    // A replay that enforce mode answers 428.
    let req = TOKEN.request("shadow-replay");
    for n in 1..=2 {
        let r = gw
            .send(&req.again(&n.to_string()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "shadow replay {n}: {}", describe(&r));
        assert!(r.header(CHALLENGE_HEADER).is_none());
    }
    assert_eq!(gw.upstream("shadow-replay").len(), 2);
    let d = gw
        .decision("shadow-replay-2")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d["decision"], "confirm", "{d}");
    assert_eq!(d["mode"], "shadow", "{d}");
    assert_eq!(d["would_block"], true, "{d}");
    assert_eq!(
        gw.access_entry("shadow-replay-2").expect("access")["retry_guard_decision"],
        "confirm"
    );

    // A duplicate while the first is in flight.
    let gate = Gate::new();
    gw.backend
        .push_for_case("shadow-inflight", Reply::new(200).gated(&gate));
    let dup = PREFERENCES.request("shadow-inflight");
    std::thread::scope(|s| {
        let first = dup.clone();
        let gw = &gw;
        let handle = s.spawn(move || gw.send(&first));
        gw.backend
            .wait_for_case("shadow-inflight", 1, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        let r = gw.send(&dup.again("2")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{}", describe(&r));
        gate.open();
        let r1 = handle
            .join()
            .expect("join")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r1.status, 200);
    });
    let d = gw
        .decision("shadow-inflight-2")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (d["decision"].as_str(), d["would_block"].as_bool()),
        (Some("conflict"), Some(true)),
        "{d}"
    );

    // A stale token stays on the request.
    let token = bearer(json!({"sub": "ci-bot", "iat": now - 120, "exp": now - 90}));
    let stale = SESSION_REFRESH
        .request("shadow-stale")
        .header("authorization", &token);
    let r = gw.send(&stale).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    let got = gw.upstream("shadow-stale");
    assert_eq!(
        got[0].header("authorization"),
        Some(token.as_str()),
        "{:?}",
        got[0].headers
    );
    assert!(got[0].header("retry-guard-token").is_none());
    let d = gw
        .decision(&stale.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d["token_action"], "would_strip", "{d}");
    assert_eq!(d["token_reason"], "expired", "{d}");

    // A missing key and an oversized body pass too.
    let mut nokey = SECRETS.request("shadow-nokey");
    nokey.headers.retain(|(k, _)| k != "idempotency-key");
    assert_eq!(gw.send(&nokey).expect("send").status, 200);
    // The key problem is decided (would block) at the request headers, and that is the
    // request's one decision, as it would be in enforce mode.
    let recs = gw
        .audit_for(&nokey.request_id, |r| {
            r.iter().any(|x| x["decision"] == "bad_request")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let d = recs
        .iter()
        .find(|x| x["decision"] == "bad_request")
        .expect("bad_request line");
    assert_eq!(d["would_block"], true, "{d}");
    assert_eq!(d["mode"], "shadow", "{d}");
    assert_eq!(
        recs.iter().filter(|x| x.get("decision").is_some()).count(),
        1,
        "one decision per request: {recs:?}"
    );
    let big = SESSION_REFRESH
        .request("shadow-big")
        .body(&"b".repeat(70_000));
    assert_eq!(gw.send(&big).expect("send").status, 200);
    assert_eq!(gw.upstream("shadow-big")[0].body.len(), 70_000);
    let d = gw
        .decision(&big.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (d["decision"].as_str(), d["would_block"].as_bool()),
        (Some("too_large"), Some(true)),
        "{d}"
    );

    assert_eq!(gw.counter("retry_guard.shadow.would_block"), 4);
    assert_eq!(gw.counter("retry_guard.token.stripped"), 0);
    assert_eq!(gw.counter("retry_guard.decision.confirm"), 1);
}

/// Each decision once: every counter shows exactly what happened, and the access log agrees.
#[test]
fn counters_count_every_decision() {
    let mut config = gateway_json();
    config["stale_token_action"] = json!("reject");
    let gw = start("counters", config);
    let key = test_signing_key().unwrap_or_else(|e| panic!("{e}"));
    let now = now_unix();
    let mut expect: Vec<(String, &str)> = Vec::new();
    let mut send = |req: &Req, decision: &'static str, status: u16| {
        let r = gw.send(req).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.status,
            status,
            "{} ({decision}): {}",
            req.request_id,
            describe(&r)
        );
        expect.push((req.request_id.clone(), decision));
        r
    };
    let token = TOKEN.request("count-token");
    send(&token, "allow", 200);
    let r = send(&token.again("2"), "confirm", 428);
    let doc = r.json().expect("428 json");
    let conf = test_confirmation(
        doc["challenge"].as_str().expect("chl"),
        doc["fingerprint"].as_str().expect("fp"),
        "alice@example.com",
        300,
    )
    .sign(&key);
    send(
        &token.again("3").header(CONFIRMATION_HEADER, &conf),
        "confirmed",
        200,
    );
    let grant = ROLE_GRANT.request("count-grant");
    gw.backend.push_for_case("count-grant", Reply::new(403));
    send(&grant, "allow", 403);
    send(&grant.again("2"), "deny", 403);
    let secret = SECRETS.request("count-secret");
    send(&secret, "allow", 200);
    send(
        &secret.again("2").body(r#"{"name":"other"}"#),
        "mismatch",
        422,
    );
    let mut nokey = SECRETS.request("count-nokey");
    nokey.headers.retain(|(k, _)| k != "idempotency-key");
    send(&nokey, "bad_request", 400);
    send(
        &SESSION_REFRESH
            .request("count-big")
            .body(&"b".repeat(65_537)),
        "too_large",
        413,
    );
    let expired = bearer(json!({"sub": "ci-bot", "iat": now - 120, "exp": now - 90}));
    send(
        &TOKEN
            .request("count-stale")
            .header("authorization", &expired),
        "stale_token",
        401,
    );
    // In flight: attempt 1 held at the backend, the duplicate answered 409.
    let gate = Gate::new();
    gw.backend
        .push_for_case("count-inflight", Reply::new(200).gated(&gate));
    let pref = PREFERENCES.request("count-inflight");
    std::thread::scope(|s| {
        let first = pref.clone();
        let gw = &gw;
        let handle = s.spawn(move || gw.send(&first));
        gw.backend
            .wait_for_case("count-inflight", 1, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        send(&pref.again("2"), "conflict", 409);
        gate.open();
        assert_eq!(handle.join().expect("join").expect("attempt 1").status, 200);
    });
    expect.push((pref.request_id.clone(), "allow"));

    let want = [
        ("allow", 4),
        ("confirm", 1),
        ("confirmed", 1),
        ("conflict", 1),
        ("deny", 1),
        ("mismatch", 1),
        ("bad_request", 1),
        ("too_large", 1),
        ("stale_token", 1),
    ];
    let stats = gw.envoy.wasm_stats().unwrap_or_else(|e| panic!("{e}"));
    for (d, n) in want {
        assert_eq!(
            gw.counter(&format!("retry_guard.decision.{d}")),
            n,
            "{d}:\n{stats}"
        );
    }
    for (c, n) in [
        ("retry_guard.token.rejected", 1),
        ("retry_guard.token.stripped", 0),
        ("retry_guard.confirmation.invalid", 0),
        ("retry_guard.shadow.would_block", 0),
        ("retry_guard.ledger.evicted", 0),
    ] {
        assert_eq!(gw.counter(c), n, "{c}:\n{stats}");
    }
    for (rid, decision) in &expect {
        let e = gw.access_entry(rid).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e["retry_guard_decision"], *decision, "{e}");
    }
}

fn invalid_config_refused(name: &str, config: Value, expected_line: &str) -> Result<()> {
    let backend = retry_guard_e2e::backend::Backend::start()?;
    let bootstrap = TestGateway::new()
        .plugin_config(config)
        .build(&envoy_yaml()?, backend.addr())?;
    let builder = Envoy::builder(name, backend.addr())
        .bootstrap(bootstrap)
        .expect_failure();
    // `envoy --mode validate` runs the plugin's on_configure: it refuses too.
    let err = builder
        .validate()
        .err()
        .unwrap_or_else(|| panic!("{name}: envoy --mode validate accepted the configuration"));
    assert!(
        err.0.contains(expected_line),
        "{name}: validate output lacks {expected_line:?}:\n{err}"
    );
    // Starting refuses it: Envoy exits, its log names the field.
    let start = Instant::now();
    let err = match builder.start() {
        Ok(envoy) => {
            envoy.keep_run_dir();
            panic!("{name}: Envoy started with an invalid plugin configuration");
        }
        Err(e) => e,
    };
    assert!(
        err.0.contains(expected_line),
        "{name}: start-up error lacks {expected_line:?}:\n{err}"
    );
    assert!(
        err.0.contains("envoy exited during start-up"),
        "{name}: Envoy did not exit:\n{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(15));
    Ok(())
}

/// An invalid plugin configuration makes Envoy refuse it, with the one-line field-path error
/// in its log.
#[test]
fn invalid_plugin_configuration_is_refused() -> Result<()> {
    let mut bad_class = gateway_json();
    bad_class["routes"][0]["class"] = json!("token_issueing");
    invalid_config_refused(
        "bad-class",
        bad_class,
        r#"retry-guard: invalid plugin configuration: routes[0].class: unknown class "token_issueing""#,
    )?;
    let mut unknown_field = gateway_json();
    unknown_field["routes"][3]["owners"] = json!("team-x");
    invalid_config_refused(
        "unknown-field",
        unknown_field,
        "retry-guard: invalid plugin configuration: routes[3].owners",
    )?;
    let mut no_owner = gateway_json();
    if let Some(r) = no_owner["routes"][2].as_object_mut() {
        r.remove("owner");
    }
    invalid_config_refused(
        "no-owner",
        no_owner,
        "retry-guard: invalid plugin configuration: routes[2].owner",
    )
}

/// The plugin configuration embedded in `envoy.yaml` is the one these variants start from.
#[test]
fn variants_start_from_the_bundled_configuration() -> Result<()> {
    assert_eq!(plugin_config(&envoy_yaml()?)?, gateway_json());
    Ok(())
}

/// Two retry-guard plugins with different root ids and configurations in one filter chain
/// share one VM per worker (same `vm_config`), so the VM has two root contexts and every
/// request two stream contexts, one under each root. Each stream must be judged by its own
/// root's configuration: here the second plugin names its routes `<name>-second` and gives
/// them another owner, and each audit line must carry its own plugin's route and owner.
#[test]
fn two_plugins_in_one_vm_keep_their_own_configurations() -> Result<()> {
    let backend = retry_guard_e2e::backend::Backend::start()?;
    let mut bootstrap = TestGateway::new().build(&envoy_yaml()?, backend.addr())?;
    let mut second_config = gateway_json();
    for route in second_config["routes"].as_array_mut().into_iter().flatten() {
        route["name"] = json!(format!("{}-second", route["name"].as_str().unwrap_or("")));
        route["owner"] = json!("team-second");
    }
    let filters = bootstrap
        .pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
        )
        .and_then(Value::as_array_mut)
        .ok_or_else(|| retry_guard_e2e::Error::new("no http_filters in the bundled gateway"))?;
    let wasm = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.wasm")
        .ok_or_else(|| retry_guard_e2e::Error::new("no wasm filter in the bundled gateway"))?;
    let mut second = filters[wasm].clone();
    second["name"] = json!("retry-guard-second");
    second["typed_config"]["config"]["name"] = json!("retry_guard_second");
    second["typed_config"]["config"]["root_id"] = json!("retry_guard_second");
    second["typed_config"]["config"]["configuration"]["value"] = json!(second_config.to_string());
    filters.insert(wasm + 1, second);
    let envoy = Envoy::builder("two-plugins", backend.addr())
        .bootstrap(bootstrap)
        .concurrency(1)
        .start()?;
    let gw = Gateway { envoy, backend };
    // The roots share the VMs: as many V8 VMs as with one plugin, not twice as many.
    let active = |envoy: &Envoy| -> Result<String> {
        Ok(envoy
            .stats("wasm.envoy.wasm.runtime.v8.active")?
            .trim()
            .to_string())
    };
    let two = active(&gw.envoy)?;
    let one = Gateway::start("one-plugin", None, 1)?;
    assert_eq!(
        two,
        active(&one.envoy)?,
        "two plugins with one vm_config must share the VMs of one plugin"
    );
    drop(one);
    let req = TOKEN.request("two-plugins");
    let resp = gw.send(&req)?;
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    let recs = gw.audit_for(&req.request_id, |r| {
        r.iter().filter(|x| is_decision(x)).count() >= 2
    })?;
    let mut seen: Vec<(String, String, String)> = recs
        .iter()
        .filter(|r| is_decision(r))
        .map(|r| {
            (
                r["route"].as_str().unwrap_or("").to_string(),
                r["owner"].as_str().unwrap_or("").to_string(),
                r["decision"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("oauth-token".into(), "team-iam".into(), "allow".into()),
            (
                "oauth-token-second".into(),
                "team-second".into(),
                "allow".into()
            ),
        ],
        "{recs:#?}"
    );
    // The replay: each plugin finds its own attempt in the shared ledger and asks for a
    // confirmation (the first plugin answers, so the second never sees the replay).
    let again = gw.send(&req.again("replay"))?;
    assert_eq!(again.status, 428, "{}", describe(&again));
    Ok(())
}

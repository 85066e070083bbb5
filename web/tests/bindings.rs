//! The bindings as the pages call them, in headless Chromium (`just web-test-wasm`:
//! wasm-bindgen-test-runner with `CHROMEDRIVER`; `web/webdriver.json` holds the browser's
//! options). Native builds skip this file.
#![cfg(target_arch = "wasm32")]

use retry_guard_web::bindings::{
    check_config, examples, expiry_choices, explain_problem, play, verify_token, Approver,
};
use serde_json::{json, Value};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const SMOKE: &str = include_str!("../../testdata/configs/smoke.json");
const KEY: &str = include_str!("../../testdata/keys/approvals-test.key");
const NOW: f64 = 1_767_225_600.0;

fn parse(text: String) -> Value {
    serde_json::from_str(&text).expect("JSON from the bindings")
}

fn calls() -> Value {
    let call =
        json!({"headers": [["x-client-id", "ci-bot"]], "body": "grant_type=client_credentials"});
    let mut confirmed = call.clone();
    confirmed["confirmation"] = json!({"from": 1});
    json!([call, call, confirmed, confirmed])
}

#[wasm_bindgen_test]
fn the_config_check_names_the_field_path() {
    let ok = parse(check_config(SMOKE).expect("checked"));
    assert_eq!(ok["ok"], json!(true));
    assert_eq!(ok["max_ttl_seconds"], json!(600));
    let bad =
        parse(check_config(&SMOKE.replace("token_issuing", "token_issueing")).expect("checked"));
    assert_eq!(bad["ok"], json!(false));
    assert_eq!(bad["problem"]["path"], json!("routes[0].class"));
}

#[wasm_bindgen_test]
fn the_playground_decides_with_the_filters_code() {
    let state = json!({"config": SMOKE, "calls": calls()}).to_string();
    let out = parse(play(&state).expect("played"));
    let decisions: Vec<&str> = out["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["decision"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(decisions, ["allow", "confirm", "confirmed", "confirm"]);
    assert_eq!(
        out["steps"][3]["audit"]["confirmation_error"],
        json!("already_used")
    );
    assert_eq!(out["steps"][1]["answer"]["status"], json!(428));
    assert!(
        play("{\"calls\": 3}").is_err(),
        "an unreadable state is an error, not a panic"
    );
    assert_eq!(
        parse(examples().expect("examples"))
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

#[wasm_bindgen_test]
fn an_approver_signs_what_the_filter_verifies() {
    // A 428 from the playground (the filter's own answer).
    let state = json!({"config": SMOKE, "calls": [calls()[0], calls()[1]], "start": NOW as u64})
        .to_string();
    let out = parse(play(&state).expect("played"));
    let body = out["steps"][1]["answer"]["body"]
        .as_str()
        .expect("428 body")
        .to_string();
    let view = parse(explain_problem(&body, NOW + 60.0).expect("a 428"));
    assert_eq!(view["owner"], json!("team-iam"));
    // The smoke configuration's token route keeps attempts 300 s: 240 s are left a minute on.
    assert_eq!(view["seconds_left"], json!(240));
    let (chl, fp) = (
        view["challenge"].as_str().unwrap_or(""),
        view["fingerprint"].as_str().unwrap_or(""),
    );

    let key = Approver::new(KEY, "approvals-test.key").expect("key");
    assert_eq!(key.kid(), "approvals-test");
    let ttls = parse(expiry_choices(600.0).expect("choices"));
    assert_eq!(ttls.as_array().map(Vec::len), Some(4));
    let signed = parse(
        key.sign(
            chl,
            fp,
            "alice@example.com",
            "",
            NOW + 60.0,
            300.0,
            600.0,
            "retry-guard-confirmation",
            "",
        )
        .expect("signed"),
    );
    let token = signed["token"].as_str().expect("token");
    let verdict = parse(verify_token(token, SMOKE, fp, chl, 30.0, NOW + 61.0).expect("verified"));
    assert_eq!(verdict["accepted"], json!(true), "{verdict}");
    let late = parse(verify_token(token, SMOKE, fp, chl, 30.0, NOW + 1000.0).expect("verified"));
    assert_eq!(late["refusal"], json!("expired"));

    assert!(
        key.sign(chl, fp, "alice", "", NOW, 900.0, 600.0, "h", "")
            .is_err(),
        "over max_ttl"
    );
    assert!(Approver::new("not a key", "x.pub").is_err());
    assert!(explain_problem("{\"status\": 409}", NOW).is_err());
    assert!(explain_problem(&body, -1.0).is_err());
}

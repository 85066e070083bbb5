//! `retry-guard demo --target envoy` (`just demo-envoy`): the retry-guard filter at work in a
//! real Envoy, told step by step.
//!
//! Starts the scripted backend and Envoy 1.40 with the release wasm and
//! `testdata/configs/smoke.json`, then: a first token call, its replay (428 with a challenge),
//! an approver's signed confirmation (let through once), the same confirmation again (refused),
//! and an expired bearer JWT (stripped, then with `stale_token_action: reject` answered 401).
//! Prints what the client, the upstream, the audit log and the counters saw.
//!
//! The release profile aborts on panic, which would skip the drops that stop Envoy: this program
//! never unwraps; every failure is an error returned from `main` (locals are dropped first).

use std::time::Duration;

use retry_guard_e2e::backend::Backend;
use retry_guard_e2e::client::Response;
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::tokens::{now_unix, test_confirmation, test_signing_key, unsigned_jwt};
use retry_guard_e2e::{bail, plugin_config, Error, Result};
use serde_json::{json, Value};

const BODY: &str = "grant_type=client_credentials&scope=tokens.read";

/// Runs the demo; returns the exit code (0 when every step behaved as the contract says).
pub fn main() -> i32 {
    match run() {
        Ok(()) => {
            println!("\nDemo finished: every step behaved as the contract says.");
            0
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e}");
            1
        }
    }
}

/// A section heading of a narrated demo.
pub(crate) fn heading(text: &str) {
    println!("\n=== {text}");
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn show_response(resp: &Response, headers: &[&str]) {
    println!("client <- {}", resp.status);
    for h in headers {
        if let Some(v) = resp.header(h) {
            println!("  {h}: {v}");
        }
    }
    match resp.json() {
        Ok(doc) => println!("{}", indent(&pretty(&doc))),
        Err(_) => println!("{}", indent(&resp.text())),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A demo step's expectation: an error naming what was unexpected when `cond` is false.
pub(crate) fn expect(cond: bool, what: &str) -> Result<()> {
    if !cond {
        bail!("unexpected: {what}");
    }
    Ok(())
}

fn post(envoy: &Envoy, rid: &str, body: &str, extra: &[(&str, &str)]) -> Result<Response> {
    let mut headers = vec![
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-client-id", "ci-bot"),
        ("x-request-id", rid),
    ];
    headers.extend_from_slice(extra);
    println!("client -> POST /oauth/token  x-client-id: ci-bot  x-request-id: {rid}");
    for (k, v) in extra {
        let shown: String = if v.chars().count() > 60 {
            format!("{}...", v.chars().take(60).collect::<String>())
        } else {
            v.to_string()
        };
        println!("          {k}: {shown}");
    }
    envoy.send("POST", "/oauth/token", &headers, body.as_bytes())
}

fn start(name: &str, backend: &Backend, config: &Value) -> Result<Envoy> {
    Envoy::builder(name, backend.addr())
        .plugin_config(config.to_string())
        .concurrency(2)
        .start()
}

fn run() -> Result<()> {
    let config = plugin_config("smoke.json")?;
    let key = test_signing_key()?;
    let backend = Backend::start()?;
    let envoy = start("demo", &backend, &config)?;
    println!(
        "Envoy {} (2 workers, V8) on {} -> backend {}; plugin config testdata/configs/smoke.json",
        envoy.pid().map(|p| format!("pid {p}")).unwrap_or_default(),
        envoy.listener_addr(),
        backend.addr()
    );

    heading("1. First token call: allowed, reaches the upstream");
    let first = post(&envoy, "demo-1", BODY, &[])?;
    show_response(&first, &[]);
    println!("upstream has seen {} request(s)", backend.request_count());
    expect(first.status == 200, "the first call was not let through")?;

    heading("2. The automated retry of the same call: 428, needs a human");
    let replay = post(&envoy, "demo-2", BODY, &[])?;
    show_response(&replay, &["retry-guard-challenge", "cache-control"]);
    println!("upstream has seen {} request(s)", backend.request_count());
    expect(replay.status == 428, "the replay was not answered 428")?;
    let doc = replay.json()?;
    let (Some(chl), Some(fp)) = (doc["challenge"].as_str(), doc["fingerprint"].as_str()) else {
        return Err(Error::new("428 without challenge or fingerprint"));
    };

    heading("3. An approver signs the challenge; the retry goes through once");
    let claims = test_confirmation(chl, fp, "alice@example.com", 300);
    println!("approver signs v1.<payload> with Ed25519 key \"approvals-test\", payload:");
    println!("  {}", claims.payload_json());
    let token = claims.sign(&key);
    let confirmed = post(
        &envoy,
        "demo-3",
        BODY,
        &[("retry-guard-confirmation", &token)],
    )?;
    show_response(&confirmed, &[]);
    let reqs = backend.requests();
    println!(
        "upstream has seen {} request(s); confirmation header forwarded: {}",
        reqs.len(),
        reqs.last()
            .is_some_and(|r| r.header("retry-guard-confirmation").is_some())
    );
    expect(
        confirmed.status == 200,
        "the confirmed retry was not let through",
    )?;

    heading("4. The same confirmation again: refused (single use)");
    let reused = post(
        &envoy,
        "demo-4",
        BODY,
        &[("retry-guard-confirmation", &token)],
    )?;
    show_response(&reused, &[]);
    expect(
        reused.status == 428 && reused.json()?["confirmation_error"] == "already_used",
        "a used confirmation was not refused as already_used",
    )?;

    heading("5. An expired bearer JWT (stale_token_action: strip)");
    let now = now_unix();
    let jwt = unsigned_jwt(&json!({"sub": "ci-bot", "iat": now - 120, "exp": now - 90}));
    let bearer = format!("Bearer {jwt}");
    let stripped = post(
        &envoy,
        "demo-5",
        "grant_type=client_credentials&step=5",
        &[("authorization", &bearer)],
    )?;
    show_response(&stripped, &[]);
    let reqs = backend.requests();
    if let Some(last) = reqs.last() {
        println!(
            "upstream got authorization: {:?}, retry-guard-token: {:?}",
            last.header("authorization"),
            last.header("retry-guard-token")
        );
    }

    heading("6. The same with stale_token_action: reject (a second Envoy)");
    let mut reject_config = config.clone();
    reject_config["stale_token_action"] = json!("reject");
    let reject_backend = Backend::start()?;
    let reject_envoy = start("demo-reject", &reject_backend, &reject_config)?;
    let rejected = post(
        &reject_envoy,
        "demo-6",
        "grant_type=client_credentials&step=6",
        &[("authorization", &bearer)],
    )?;
    show_response(&rejected, &["www-authenticate"]);
    println!(
        "that upstream has seen {} request(s)",
        reject_backend.request_count()
    );
    expect(
        rejected.status == 401,
        "the stale token was not answered 401",
    )?;

    heading("Audit log (Envoy log lines `retry-guard audit {...}`)");
    envoy.wait_for_log(Duration::from_secs(5), |l| {
        retry_guard_e2e::envoy::parse_audit_lines(l).len() >= 6
    })?;
    for rec in envoy.audit_records() {
        println!("  {rec}");
    }

    heading("Counters (admin /stats?filter=wasmcustom, non-zero)");
    print_counters(&envoy, "  ")?;

    heading("Access log (decision from %FILTER_STATE(wasm.retry_guard.decision:PLAIN)%)");
    for entry in envoy.access_log() {
        println!(
            "  {} {} -> {} decision={}",
            entry["request_id"].as_str().unwrap_or("-"),
            entry["path"].as_str().unwrap_or("-"),
            entry["status"],
            entry["decision"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

/// Prints an Envoy's non-zero retry-guard counters, one a line after `indent`.
pub(crate) fn print_counters(envoy: &Envoy, indent: &str) -> Result<()> {
    for line in envoy.wasm_stats()?.lines() {
        if !line.trim_end().ends_with(": 0") {
            println!("{indent}{line}");
        }
    }
    Ok(())
}

//! Envoy's own router retries, behind the filter (issue 16, item 1).
//!
//! A copy of the bundled gateway whose guarded routes carry a router `retry_policy` with
//! `retry_on: 5xx, num_retries: 2` — the misconfiguration that used to send one client POST
//! to the backend three times while the filter audited one allowed attempt. The filter now sets
//! `x-envoy-max-retries: 0` on every request it lets through on a tracked route in enforce
//! mode, so the backend sees exactly one request; a client cannot raise the budget; and in
//! shadow mode (where the filter changes nothing) the audit line (`router_attempts`), a
//! counter and a warning name the route whose router re-sent the request.

mod common;

use std::time::Duration;

use common::*;
use retry_guard_e2e::backend::{Backend, Reply};
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::gateway::{envoy_yaml, TestGateway};
use retry_guard_e2e::{plugin_config as testdata_config, Result};
use serde_json::{json, Value};

/// The bundled gateway, its routes retrying on 5xx twice (the broken configuration).
fn start_misconfigured(name: &str, plugin_config: Value) -> Result<Gateway> {
    let backend = Backend::start()?;
    let mut bootstrap = TestGateway::new()
        .plugin_config(plugin_config)
        .twins(false)
        .build(&envoy_yaml()?, backend.addr())?;
    let routes = bootstrap
        .pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes",
        )
        .and_then(Value::as_array_mut)
        .ok_or_else(|| retry_guard_e2e::Error::new("no routes in the bundled gateway"))?;
    let mut changed = 0;
    for r in routes.iter_mut() {
        if r["route"]["retry_policy"].is_object() {
            r["route"]["retry_policy"] = json!({"retry_on": "5xx", "num_retries": 2});
            changed += 1;
        }
    }
    assert!(
        changed >= 5,
        "the guarded routes have retry policies to break"
    );
    let envoy = Envoy::builder(name, backend.addr())
        .bootstrap(bootstrap)
        .concurrency(1)
        .start()?;
    Ok(Gateway { envoy, backend })
}

fn gateway_json() -> Value {
    testdata_config("gateway.json").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_5xx_retry_policy_no_longer_executes_a_guarded_post_twice() -> Result<()> {
    let gw = start_misconfigured("router-retries", gateway_json())?;
    // The backend answers 503 (the router's 5xx retry would fire) to every request of the case.
    let req = TOKEN.request("retry-5xx");
    gw.backend.on_case(&req.case, Some(Reply::new(503)));
    let resp = gw.send(&req)?;
    assert_eq!(resp.status, 503, "{}", describe(&resp));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gw.upstream(&req.case).len(),
        1,
        "the backend executed the token call more than once"
    );
    let outcome = gw.outcome(&req.request_id)?;
    assert_eq!(outcome["outcome"], "failed_unknown", "{outcome}");
    assert_eq!(outcome["router_attempts"], 1, "{outcome}");
    assert_eq!(gw.counter("retry_guard.router.retried"), 0);

    // A client that sends its own retry budget cannot undo it.
    let req = TOKEN
        .request("retry-5xx-client-budget")
        .header("x-envoy-max-retries", "5")
        .header("x-envoy-retry-on", "5xx");
    gw.backend.on_case(&req.case, Some(Reply::new(503)));
    let resp = gw.send(&req)?;
    assert_eq!(resp.status, 503, "{}", describe(&resp));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.upstream(&req.case).len(), 1);

    // Every tracked class is protected, not only the token route.
    for (i, route) in [ROLE_GRANT, SECRETS, SESSION_REFRESH, PREFERENCES]
        .iter()
        .enumerate()
    {
        let req = route.request(&format!("retry-5xx-{i}"));
        gw.backend.on_case(&req.case, Some(Reply::new(503)));
        let resp = gw.send(&req)?;
        assert_eq!(resp.status, 503, "{}: {}", route.name, describe(&resp));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(gw.upstream(&req.case).len(), 1, "{}", route.name);
    }

    // read_only routes keep their retries (a read may be re-sent): 1 + 2 retries.
    let req = READS.request("retry-5xx-read");
    gw.backend.on_case(&req.case, Some(Reply::new(503)));
    let resp = gw.send(&req)?;
    assert_eq!(resp.status, 503, "{}", describe(&resp));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gw.upstream(&req.case).len(),
        3,
        "reads keep the router's retries"
    );
    Ok(())
}

#[test]
fn in_shadow_mode_the_router_retry_is_counted_audited_and_named() -> Result<()> {
    let mut config = gateway_json();
    config["mode"] = json!("shadow");
    let gw = start_misconfigured("router-retries-shadow", config)?;
    let req = TOKEN.request("shadow-5xx");
    gw.backend.on_case(&req.case, Some(Reply::new(503)));
    let resp = gw.send(&req)?;
    assert_eq!(resp.status, 503, "{}", describe(&resp));
    std::thread::sleep(Duration::from_millis(300));
    // Shadow mode changes nothing: the misconfigured router re-sends.
    assert_eq!(gw.upstream(&req.case).len(), 3);
    let outcome = gw.outcome(&req.request_id)?;
    assert_eq!(outcome["router_attempts"], 3, "{outcome}");
    assert_eq!(gw.counter("retry_guard.router.retried"), 1);
    gw.envoy.wait_for_log(Duration::from_secs(5), |l| {
        l.contains("route oauth-token: Envoy's router sent this request upstream 3 times")
    })?;
    Ok(())
}

//! The bundled configurations are right and cannot drift:
//!
//! - `envoy/envoy.yaml` passes `envoy --mode validate` as shipped (which also runs the plugin's
//!   configuration check), and so do the test bootstraps;
//! - its plugin configuration is `testdata/configs/gateway.json`, parses with the filter's own
//!   parser, covers every class, and selects exactly the Envoy routes that exist, with the same
//!   methods and paths; guarded routes retry only never-sent attempts;
//! - the Istio manifests: the WasmPlugin `pluginConfig` parses with the filter's parser and has
//!   the gateway's routes; the EnvoyFilter carries the same configuration with
//!   `allow_on_headers_stop_iteration: true`; every `route_name` is a VirtualService route;
//! - on a real Envoy 1.40: the EnvoyFilter's wasm configuration guards requests with bodies,
//!   while the configuration Istio renders from the WasmPlugin (no
//!   `allow_on_headers_stop_iteration`) holds them forever — why the EnvoyFilter exists.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use retry_guard::config::Config;
use retry_guard_e2e::backend::Backend;
use retry_guard_e2e::envoy::{check_wasm, validate_file, Envoy, WASM_PLACEHOLDER};
use retry_guard_e2e::gateway::{
    bundled_path, envoy_yaml, http_connection_manager, load_yaml_documents, plugin_config, routes,
    wasm_plugin_config, TestGateway, ADMIN_PORT, LISTENER_PORT, PASSTHROUGH_ROUTE,
};
use retry_guard_e2e::{client, plugin_config as testdata_config, repo_root, Result};
use serde_json::{json, Value};

const CLASSES: [&str; 6] = [
    "read_only",
    "idempotent_write",
    "token_issuing",
    "secret_minting",
    "session_extending",
    "privilege_changing",
];
const NEVER_SENT: &str = "connect-failure,refused-stream";

/// Parses a plugin configuration with the filter's own parser.
fn parse_with_filter(what: &str, config: &Value) -> Config {
    Config::parse(config.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{what}: the filter refuses its plugin configuration: {e}"))
}

#[test]
fn envoy_yaml_validates_as_shipped() -> Result<()> {
    // As shipped, the wasm path is relative to the repository root.
    check_wasm(retry_guard::paths::filter_wasm())?;
    let out = validate_file(&bundled_path("envoy.yaml"), &repo_root())?;
    assert!(out.contains("OK"), "{out}");
    // Validation ran the plugin's on_configure on the embedded configuration.
    assert!(out.contains("retry-guard: configured 6 route(s)"), "{out}");
    Ok(())
}

#[test]
fn test_bootstraps_validate() -> Result<()> {
    let backend = Backend::start()?;
    let gw = TestGateway::new().build(&envoy_yaml()?, backend.addr())?;
    Envoy::builder("validate-gateway", backend.addr())
        .bootstrap(gw)
        .validate()?;
    let smoke = testdata_config("smoke.json")?;
    Envoy::builder("validate-smoke", backend.addr())
        .plugin_config(smoke.to_string())
        .validate()?;
    Ok(())
}

#[test]
fn testdata_configs_parse_with_the_filter() -> Result<()> {
    for name in ["gateway.json", "smoke.json", "issue-example.json"] {
        parse_with_filter(name, &testdata_config(name)?);
    }
    Ok(())
}

#[test]
fn envoy_yaml_plugin_config_is_gateway_json() -> Result<()> {
    let bundled = envoy_yaml()?;
    let embedded = plugin_config(&bundled)?;
    assert_eq!(
        embedded,
        testdata_config("gateway.json")?,
        "envoy/envoy.yaml's plugin configuration and testdata/configs/gateway.json differ"
    );
    let config = parse_with_filter("envoy/envoy.yaml", &embedded);
    assert_eq!(config.routes.len(), 6);
    let classes: BTreeSet<&str> = embedded["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["class"].as_str())
        .collect();
    assert_eq!(
        classes,
        CLASSES.into_iter().collect(),
        "not every class is shown"
    );
    for r in embedded["routes"].as_array().expect("routes") {
        for m in ["owner", "escalation"] {
            assert!(
                r[m].as_str().is_some_and(|s| !s.is_empty()),
                "{m} missing: {r}"
            );
        }
    }
    Ok(())
}

/// The Envoy side of a route: name, `:method` header value, path matcher.
fn envoy_route_facts(route: &Value) -> (String, Option<String>, String) {
    let name = route["name"].as_str().unwrap_or("").to_string();
    let m = &route["match"];
    let method = m["headers"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == ":method"))
        .and_then(|h| h["string_match"]["exact"].as_str())
        .map(str::to_string);
    let path = if let Some(p) = m["path"].as_str() {
        format!("path {p}")
    } else if let Some(p) = m["prefix"].as_str() {
        format!("path_template {p}**")
    } else if let Some(t) = m["path_match_policy"]["typed_config"]["path_template"].as_str() {
        format!("path_template {t}")
    } else {
        format!("unknown matcher {m}")
    };
    (name, method, path)
}

#[test]
fn plugin_routes_and_envoy_routes_agree() -> Result<()> {
    let bundled = envoy_yaml()?;
    let config = plugin_config(&bundled)?;
    let envoy_routes = routes(&bundled)?;
    let mut selected = BTreeSet::new();
    for r in config["routes"].as_array().expect("routes") {
        let route_name = r["match"]["route_name"]
            .as_str()
            .expect("every route selects by route_name");
        selected.insert(route_name.to_string());
        let er = envoy_routes
            .iter()
            .find(|e| e["name"] == route_name)
            .unwrap_or_else(|| panic!("no Envoy route named {route_name:?}"));
        let (_, method, path) = envoy_route_facts(er);
        assert_eq!(
            r["match"]["methods"],
            json!([method.clone().expect("Envoy route matches the method")]),
            "methods of {route_name}"
        );
        let filter_path = match (
            r["match"]["path"].as_str(),
            r["match"]["path_template"].as_str(),
        ) {
            (Some(p), _) => format!("path {p}"),
            (_, Some(t)) => format!("path_template {t}"),
            _ => panic!("{route_name}: no path matcher"),
        };
        assert_eq!(filter_path, path, "path of {route_name}");
        let retry_on = er["route"]["retry_policy"]["retry_on"]
            .as_str()
            .unwrap_or("");
        if r["class"] != "read_only" {
            assert_eq!(
                retry_on, NEVER_SENT,
                "guarded route {route_name} lets the router re-send attempts the upstream may have received"
            );
        }
    }
    // Every Envoy route that forwards, but the catch-all, is guarded, and the filter is
    // switched off (`FilterConfig { disabled: true }`) only where nothing is guarded: a guarded
    // route without the filter would pass unguarded.
    for er in envoy_routes {
        let name = er["name"].as_str().unwrap_or("");
        let filter_off =
            er["typed_per_filter_config"]["envoy.filters.http.wasm"]["disabled"] == json!(true);
        let forwards = er["route"].is_object();
        assert!(
            name == PASSTHROUGH_ROUTE || selected.contains(name) || !forwards,
            "Envoy route {name:?} forwards but is not selected by the plugin configuration"
        );
        if !forwards {
            assert!(
                filter_off,
                "{name:?} forwards nothing: the filter is off there"
            );
        }
        assert!(
            !(selected.contains(name) && filter_off),
            "guarded route {name:?} switches the filter off: its requests would pass unguarded"
        );
        if name == PASSTHROUGH_ROUTE {
            assert!(
                filter_off,
                "the catch-all route keeps the filter on: unguarded traffic pays for it"
            );
        }
    }
    Ok(())
}

#[test]
fn envoy_yaml_wasm_filter_and_logging() -> Result<()> {
    let bundled = envoy_yaml()?;
    assert_eq!(
        bundled["static_resources"]["listeners"][0]["address"]["socket_address"],
        json!({"address": "127.0.0.1", "port_value": LISTENER_PORT})
    );
    assert_eq!(
        bundled["admin"]["address"]["socket_address"],
        json!({"address": "127.0.0.1", "port_value": ADMIN_PORT})
    );
    let pc = wasm_plugin_config(&bundled)?;
    // A trapped VM fails closed and is restarted (envoy/tests/vm_failure.rs).
    assert_eq!(pc["failure_policy"], "FAIL_RELOAD");
    assert!(pc.get("fail_open").is_none(), "one failure setting");
    assert_eq!(pc["allow_on_headers_stop_iteration"], true);
    assert_eq!(pc["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(pc["vm_config"]["vm_id"], "retry_guard");
    let hcm = http_connection_manager(&bundled)?;
    let filters: Vec<&str> = hcm["http_filters"]
        .as_array()
        .expect("filters")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    // jwt_authn first: it writes the verified payload retry-guard's principal reads.
    assert_eq!(
        filters,
        [
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.wasm",
            "envoy.filters.http.router"
        ]
    );
    let format = hcm["access_log"][0]["typed_config"]["log_format"]["json_format"].to_string();
    assert!(
        format.contains("%FILTER_STATE(wasm.retry_guard.decision:PLAIN)%"),
        "{format}"
    );
    Ok(())
}

struct Istio {
    wasm_plugin: Value,
    envoy_filter: Value,
    virtual_service: Value,
}

fn istio() -> Result<Istio> {
    let one = |file: &str, kind: &str| -> Result<Value> {
        let docs = load_yaml_documents(&bundled_path(&format!("istio/{file}")))?;
        assert_eq!(docs.len(), 1, "istio/{file}: one document expected");
        assert_eq!(docs[0]["kind"], kind, "istio/{file}");
        Ok(docs[0].clone())
    };
    Ok(Istio {
        wasm_plugin: one("wasmplugin.yaml", "WasmPlugin")?,
        envoy_filter: one("envoyfilter.yaml", "EnvoyFilter")?,
        virtual_service: one("virtualservice.yaml", "VirtualService")?,
    })
}

/// The Envoy `Wasm` typed_config of the EnvoyFilter's EXTENSION_CONFIG patch.
fn envoy_filter_wasm(ef: &Value) -> Value {
    let patches = ef["spec"]["configPatches"]
        .as_array()
        .expect("configPatches");
    let ext = patches
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .expect("an EXTENSION_CONFIG patch");
    assert_eq!(ext["patch"]["operation"], "ADD");
    let http = patches
        .iter()
        .find(|p| p["applyTo"] == "HTTP_FILTER")
        .expect("an HTTP_FILTER patch");
    assert_eq!(
        http["patch"]["value"]["name"], ext["patch"]["value"]["name"],
        "the HTTP filter must name the extension config"
    );
    assert_eq!(
        http["patch"]["value"]["config_discovery"]["type_urls"],
        json!(["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"])
    );
    ext["patch"]["value"]["typed_config"].clone()
}

#[test]
fn istio_manifests_agree() -> Result<()> {
    let Istio {
        wasm_plugin,
        envoy_filter,
        virtual_service,
    } = istio()?;
    let spec = &wasm_plugin["spec"];
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert_eq!(spec["phase"], "STATS");
    assert_eq!(spec["type"], "HTTP");
    assert!(
        spec["selector"].is_object() != spec["targetRefs"].is_array(),
        "exactly one of selector and targetRefs"
    );
    let url = spec["url"].as_str().expect("url");
    assert!(
        ["oci://", "https://", "file://"]
            .iter()
            .any(|s| url.starts_with(s)),
        "{url}"
    );

    // pluginConfig: the filter accepts it, and it selects the gateway's routes with the same
    // policy as envoy/envoy.yaml.
    let pc = spec["pluginConfig"].clone();
    parse_with_filter("istio/wasmplugin.yaml", &pc);
    let gateway = testdata_config("gateway.json")?;
    assert_eq!(
        pc["routes"], gateway["routes"],
        "Istio and Envoy route policies differ"
    );

    // The EnvoyFilter carries the same configuration, with the field WasmPlugin cannot set.
    let wasm = envoy_filter_wasm(&envoy_filter);
    let config = &wasm["config"];
    assert_eq!(config["allow_on_headers_stop_iteration"], true);
    assert_eq!(config["failure_policy"], "FAIL_RELOAD");
    let ef_pc: Value =
        serde_json::from_str(config["configuration"]["value"].as_str().expect("value"))?;
    assert_eq!(
        ef_pc, pc,
        "envoyfilter.yaml and wasmplugin.yaml configure the plugin differently"
    );

    // Every route_name is a named VirtualService route; guarded ones retry only never-sent.
    let http = virtual_service["spec"]["http"]
        .as_array()
        .expect("http routes");
    for r in pc["routes"].as_array().expect("routes") {
        let name = r["match"]["route_name"].as_str().expect("route_name");
        let vs = http
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("virtualservice.yaml has no HTTP route {name:?}"));
        for m in vs["match"].as_array().into_iter().flatten() {
            assert!(
                m.get("name").is_none(),
                "{name}: a named match renames the Envoy route"
            );
        }
        let method = r["match"]["methods"][0].as_str().expect("method");
        assert!(
            vs["match"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|m| m["method"]["exact"] == method),
            "{name}: VirtualService method differs from the plugin's"
        );
        if r["class"] != "read_only" {
            assert_eq!(vs["retries"]["retryOn"], NEVER_SENT, "{name}");
        }
    }
    Ok(())
}

/// Starts the bundled gateway with its wasm filter's `typed_config` replaced.
/// Where the wasm filter is among `filters` (after jwt_authn in the bundled gateway).
fn wasm_index(filters: &[Value]) -> usize {
    filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.wasm")
        .expect("a wasm filter")
}

fn gateway_with_wasm_config(name: &str, backend: &Backend, typed_config: Value) -> Result<Envoy> {
    let mut bootstrap = TestGateway::new()
        .twins(false)
        .build(&envoy_yaml()?, backend.addr())?;
    let filters = bootstrap
        .pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
        )
        .and_then(Value::as_array_mut)
        .expect("http_filters");
    let wasm = wasm_index(filters);
    filters[wasm]["typed_config"] = typed_config;
    Envoy::builder(name, backend.addr())
        .bootstrap(bootstrap)
        .concurrency(1)
        .start()
}

/// The EnvoyFilter's extension configuration, given to a real Envoy (module from a local file
/// instead of the remote URL): guarded requests with bodies are decided.
#[test]
fn istio_envoyfilter_wasm_config_runs_on_envoy() -> Result<()> {
    let mut wasm = envoy_filter_wasm(&istio()?.envoy_filter);
    wasm["config"]["vm_config"]["code"] = json!({"local": {"filename": WASM_PLACEHOLDER}});
    let backend = Backend::start()?;
    let envoy = gateway_with_wasm_config("istio-envoyfilter", &backend, wasm)?;
    let body = b"grant_type=client_credentials&scope=istio";
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let first = envoy.send("POST", "/oauth/token", &headers, body)?;
    assert_eq!(first.status, 200, "{}", describe(&first));
    let replay = envoy.send("POST", "/oauth/token", &headers, body)?;
    assert_eq!(replay.status, 428, "{}", describe(&replay));
    assert_eq!(backend.request_count(), 1);
    Ok(())
}

/// What Istio renders from wasmplugin.yaml (pilot/pkg/model/extensions.go: name, root_id,
/// runtime v8, code, configuration = pluginConfig as JSON; no vm_id and no
/// allow_on_headers_stop_iteration; FAIL_CLOSE = fail_open false), on a real Envoy: reads and
/// bodiless requests work, a guarded POST with a body is held and never reaches the backend.
#[test]
fn istio_wasmplugin_rendering_holds_bodies_forever() -> Result<()> {
    let spec = istio()?.wasm_plugin["spec"].clone();
    let rendered = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": "istio-ingress.retry-guard",
            "root_id": spec["pluginName"],
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": WASM_PLACEHOLDER}},
            },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": spec["pluginConfig"].to_string(),
            },
            "fail_open": false,
        }
    });
    let backend = Backend::start()?;
    let envoy = gateway_with_wasm_config("istio-wasmplugin", &backend, rendered)?;
    let read = envoy.send("GET", "/v1/items/1", &[], b"")?;
    assert_eq!(read.status, 200, "{}", describe(&read));
    let bodiless = envoy.send("POST", "/v1/sessions/refresh", &[], b"")?;
    assert_eq!(bodiless.status, 200, "{}", describe(&bodiless));
    let held = client::send_with_timeout(
        envoy.listener_addr(),
        "POST",
        "/oauth/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"grant_type=client_credentials",
        Duration::from_secs(3),
    );
    assert!(
        held.is_err(),
        "a guarded POST with a body was answered without allow_on_headers_stop_iteration: {held:?}"
    );
    assert_eq!(
        backend.request_count(),
        2,
        "only the read and the bodiless POST"
    );
    assert_eq!(
        backend.heads_seen(),
        2,
        "the held request's headers reached the backend"
    );
    Ok(())
}

/// Why the plugin configuration selects routes itself: Envoy refuses per-route configuration
/// for the wasm filter (Envoy issue 26440).
#[test]
fn envoy_rejects_per_route_wasm_configuration() -> Result<()> {
    let backend = Backend::start()?;
    let mut bootstrap = TestGateway::new()
        .twins(false)
        .build(&envoy_yaml()?, backend.addr())?;
    let hcm = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config";
    let filters = bootstrap
        .pointer(&format!("{hcm}/http_filters"))
        .and_then(Value::as_array)
        .expect("http_filters");
    let wasm = filters[wasm_index(filters)]["typed_config"].clone();
    bootstrap
        .pointer_mut(&format!("{hcm}/route_config/virtual_hosts/0/routes/0"))
        .expect("first route")["typed_per_filter_config"] =
        json!({ "envoy.filters.http.wasm": wasm });
    let err = Envoy::builder("per-route", backend.addr())
        .bootstrap(bootstrap)
        .expect_failure()
        .validate()
        .expect_err("Envoy accepted typed_per_filter_config for the wasm filter");
    assert!(
        err.0.contains(
            "The filter envoy.filters.http.wasm doesn't support virtual host or route specific configurations"
        ),
        "{err}"
    );
    Ok(())
}

/// The path normalization an Envoy connection manager needs in front of retry-guard: what
/// `retry-guard check` asks for too.
fn assert_normalizes_paths(what: &str, hcm: &Value) {
    assert_eq!(hcm["normalize_path"], true, "{what}: normalize_path");
    assert_eq!(hcm["merge_slashes"], true, "{what}: merge_slashes");
    assert_eq!(
        hcm["path_with_escaped_slashes_action"], "REJECT_REQUEST",
        "{what}: path_with_escaped_slashes_action"
    );
}

/// The bundled gateway routes on the normalized path, and its identity paths never reach the
/// catch-all in another spelling (envoy/tests/attacks.rs sends them through a real Envoy).
#[test]
fn the_gateway_routes_on_normalized_paths_and_refuses_other_identity_spellings() -> Result<()> {
    let bundled = envoy_yaml()?;
    assert_normalizes_paths("envoy/envoy.yaml", http_connection_manager(&bundled)?);
    let names: Vec<&str> = routes(&bundled)?
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    let unrouted = names.iter().position(|n| *n == "identity-unrouted");
    let catch_all = names.iter().position(|n| *n == PASSTHROUGH_ROUTE);
    assert!(
        unrouted.is_some() && unrouted < catch_all,
        "identity-unrouted must come before the catch-all: {names:?}"
    );
    let r = &routes(&bundled)?[unrouted.unwrap_or(0)];
    assert_eq!(r["direct_response"]["status"], 404, "{r}");

    let Istio {
        envoy_filter,
        virtual_service,
        ..
    } = istio()?;
    let patches = envoy_filter["spec"]["configPatches"]
        .as_array()
        .expect("configPatches");
    let merge = patches
        .iter()
        .find(|p| p["applyTo"] == "NETWORK_FILTER")
        .expect("a NETWORK_FILTER patch for path normalization");
    assert_eq!(merge["patch"]["operation"], "MERGE");
    assert_normalizes_paths(
        "envoy/istio/envoyfilter.yaml",
        &merge["patch"]["value"]["typed_config"],
    );
    let http = virtual_service["spec"]["http"].as_array().expect("http");
    let vs = http
        .iter()
        .find(|h| h["name"] == "identity-unrouted")
        .expect("identity-unrouted in virtualservice.yaml");
    assert_eq!(vs["directResponse"]["status"], 404);
    Ok(())
}

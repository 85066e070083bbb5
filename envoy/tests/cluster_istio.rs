//! The Istio manifests of the cluster ledger cannot drift:
//!
//! - `istio/envoyfilter-cluster.yaml` is `istio/envoyfilter.yaml` with the `ledger` section on
//!   etcd in its plugin configuration, and nothing else changed;
//! - its `ledger.cluster` is the Envoy cluster Istio generates for the etcd service of
//!   `istio/etcd.yaml` (`outbound|<port>||<host>`: the ServiceEntry's host and port, which the
//!   DestinationRule names too), its `ledger.authority` that host;
//! - the DestinationRule originates mutual TLS with a client certificate (MUTUAL, not
//!   ISTIO_MUTUAL: etcd checks the client certificate itself), for that host as SNI and SAN,
//!   and keeps HTTP/1.1;
//! - on a real Envoy 1.40 the EnvoyFilter's wasm configuration decides a replay through a
//!   cluster of that very name to a real etcd.

mod common;

use std::time::{Duration, Instant};

use common::*;
use retry_guard_e2e::backend::Backend;
use retry_guard_e2e::envoy::{Envoy, WASM_PLACEHOLDER};
use retry_guard_e2e::etcd::{envoy_cluster, Etcd};
use retry_guard_e2e::gateway::{bundled_path, envoy_yaml, load_yaml_documents, TestGateway};
use retry_guard_e2e::Result;
use serde_json::{json, Value};

fn one(file: &str, kind: &str) -> Value {
    let docs = load_yaml_documents(&bundled_path(&format!("istio/{file}")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 1, "istio/{file}: one document expected");
    assert_eq!(docs[0]["kind"], kind, "istio/{file}");
    docs[0].clone()
}

/// The ServiceEntry and the DestinationRule of `istio/etcd.yaml`.
fn etcd_yaml() -> (Value, Value) {
    let docs =
        load_yaml_documents(&bundled_path("istio/etcd.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ServiceEntry", "DestinationRule"],
        "istio/etcd.yaml"
    );
    (docs[0].clone(), docs[1].clone())
}

const CONFIG_VALUE: &str =
    "/spec/configPatches/0/patch/value/typed_config/config/configuration/value";

/// The plugin configuration of an EnvoyFilter's EXTENSION_CONFIG patch, parsed.
fn envoy_filter_plugin_config(ef: &Value) -> Value {
    assert_eq!(
        ef["spec"]["configPatches"][0]["applyTo"],
        "EXTENSION_CONFIG"
    );
    let text = ef
        .pointer(CONFIG_VALUE)
        .and_then(Value::as_str)
        .expect("configuration.value");
    serde_json::from_str(text).expect("the plugin configuration is JSON")
}

#[test]
fn envoyfilter_cluster_is_envoyfilter_with_the_ledger_on_etcd() {
    let single = one("envoyfilter.yaml", "EnvoyFilter");
    let mut cluster = one("envoyfilter-cluster.yaml", "EnvoyFilter");
    let config = envoy_filter_plugin_config(&cluster);
    retry_guard::config::Config::parse(config.to_string().as_bytes()).unwrap_or_else(|e| {
        panic!("the filter refuses envoyfilter-cluster.yaml's configuration: {e}")
    });
    let mut expected = envoy_filter_plugin_config(&single);
    assert!(expected.get("ledger").is_none());
    let ledger = config["ledger"].clone();
    assert_eq!(ledger["backend"], "etcd");
    expected["ledger"] = ledger;
    assert_eq!(
        config, expected,
        "envoyfilter-cluster.yaml's plugin configuration is not envoyfilter.yaml's + ledger"
    );
    // Everything else is envoyfilter.yaml (same name: applying one replaces the other).
    *cluster.pointer_mut(CONFIG_VALUE).expect("value") =
        single.pointer(CONFIG_VALUE).expect("value").clone();
    assert_eq!(
        cluster, single,
        "the EnvoyFilters differ beyond the ledger section"
    );
}

/// `outbound|<port>|<subset>|<host>`, the name Istio gives a service port's Envoy cluster.
fn istio_cluster(port: &Value, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

#[test]
fn the_ledger_cluster_is_the_one_istio_makes_for_the_etcd_service() {
    let (se, dr) = etcd_yaml();
    let config = envoy_filter_plugin_config(&one("envoyfilter-cluster.yaml", "EnvoyFilter"));
    let ledger = &config["ledger"];

    let hosts = se["spec"]["hosts"].as_array().expect("ServiceEntry hosts");
    assert_eq!(hosts.len(), 1, "one etcd host");
    let host = hosts[0].as_str().expect("host");
    let ports = se["spec"]["ports"].as_array().expect("ServiceEntry ports");
    assert_eq!(ports.len(), 1, "one etcd port");
    let port = &ports[0];
    // HTTP: the plugin speaks HTTP/1.1 to etcd's JSON gateway; the DestinationRule adds TLS.
    assert_eq!(port["protocol"], "HTTP");
    assert_eq!(ledger["cluster"], istio_cluster(&port["number"], host));
    assert_eq!(ledger["authority"], host);
    assert_eq!(se["spec"]["location"], "MESH_EXTERNAL");
    assert_eq!(se["spec"]["exportTo"], json!(["."]));

    assert_eq!(
        dr["spec"]["host"], host,
        "the DestinationRule is for the etcd host"
    );
    let tp = &dr["spec"]["trafficPolicy"];
    assert_eq!(
        tp["connectionPool"]["http"]["h2UpgradePolicy"],
        "DO_NOT_UPGRADE"
    );
    let tls = &tp["tls"];
    assert_eq!(
        tls["mode"], "MUTUAL",
        "etcd checks the client certificate itself"
    );
    assert!(tls["credentialName"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(tls["sni"], host);
    assert_eq!(tls["subjectAltNames"], json!([host]));
    // Both in the gateway's namespace, where the EnvoyFilter is.
    let ef = one("envoyfilter-cluster.yaml", "EnvoyFilter");
    for doc in [&se, &dr] {
        assert_eq!(doc["metadata"]["namespace"], ef["metadata"]["namespace"]);
    }
}

/// The EnvoyFilter's wasm configuration (module from a local file) in the bundled gateway,
/// with a cluster named as Istio names the etcd service's: the ledger works through it.
#[test]
fn envoyfilter_cluster_wasm_config_runs_through_an_istio_named_cluster() -> Result<()> {
    let ef = one("envoyfilter-cluster.yaml", "EnvoyFilter");
    let config = envoy_filter_plugin_config(&ef);
    let cluster_name = config["ledger"]["cluster"]
        .as_str()
        .expect("ledger.cluster")
        .to_string();
    let mut wasm = ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"].clone();
    wasm["config"]["vm_config"]["code"] = json!({"local": {"filename": WASM_PLACEHOLDER}});

    let etcd = Etcd::start("istio-named", 1)?;
    let backend = Backend::start()?;
    let mut bootstrap = TestGateway::new()
        .twins(false)
        .build(&envoy_yaml()?, backend.addr())?;
    // http_filters[1]: the wasm filter, after jwt_authn.
    bootstrap
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/1/typed_config")
        .map(|tc| *tc = wasm)
        .expect("the wasm filter");
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters")
        .push(envoy_cluster(&cluster_name, &etcd.clients()));
    let envoy = Envoy::builder("istio-named", backend.addr())
        .bootstrap(bootstrap)
        .concurrency(1)
        .start()?;

    let req = TOKEN.request("istio-named");
    let send = |r: &Req| {
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([("x-request-id", r.request_id.as_str())])
            .collect();
        envoy.send(&r.method, &r.path, &headers, r.body.as_bytes())
    };
    let resp = send(&req)?;
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !envoy
        .audit_records()
        .iter()
        .any(|r| r["request_id"] == req.request_id.as_str() && !r["outcome"].is_null())
    {
        assert!(
            Instant::now() < deadline,
            "no audit line with an outcome:\n{}",
            envoy.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let resp = send(&req.again("2"))?;
    assert_eq!(resp.status, 428, "{}", describe(&resp));
    assert_eq!(etcd.count("retry-guard/identity-api/a/")?, 1);
    Ok(())
}

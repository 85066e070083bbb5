//! `envoy/envoy-cluster.yaml`, one replica of the gateway whose replicas share a ledger on
//! etcd, is right and cannot drift:
//!
//! - it passes `envoy --mode validate` as shipped (which runs the plugin's configuration
//!   check), and so does replica B's file made from it as its header says;
//! - its plugin configuration is `testdata/configs/gateway.json` plus the `ledger` section on
//!   etcd; its etcd cluster is the one the etcd tests use (`etcd::envoy_cluster`, HTTP/1.1,
//!   health-checked); everything else is `envoy/envoy.yaml`;
//! - two replicas made from it share one ledger on a real etcd.

mod common;

use std::net::SocketAddr;

use common::send_to as send;
use common::*;
use retry_guard_e2e::backend::Backend;
use retry_guard_e2e::cluster::{
    envoy_cluster_yaml, ledger_cluster_mut, replica_b_text, Replica, ENVOY_CLUSTER_YAML,
    ETCD_CLUSTER, REPLICA_B_ADMIN_PORT, REPLICA_B_LISTENER_PORT,
};
use retry_guard_e2e::envoy::{check_wasm, validate_file, Envoy};
use retry_guard_e2e::etcd::{envoy_cluster, Etcd};
use retry_guard_e2e::gateway::{bundled_path, envoy_yaml, plugin_config};
use retry_guard_e2e::{plugin_config as testdata_config, repo_root, Result};
use serde_json::{json, Value};

/// The ledger section the file adds to gateway.json.
fn ledger_section() -> Value {
    json!({
        "backend": "etcd",
        "cluster": ETCD_CLUSTER,
        "authority": "etcd",
        "key_prefix": "retry-guard/identity-api/",
        "timeout_ms": 500,
    })
}

/// Waits (bounded) until the outcome of `request_id` is in `envoy`'s audit log.
fn wait_outcome(envoy: &Envoy, request_id: &str) -> Value {
    wait_audit(envoy, request_id, |r| !r["outcome"].is_null())
}

#[test]
fn envoy_cluster_yaml_and_replica_b_validate_as_shipped() -> Result<()> {
    // As shipped, the wasm path is relative to the repository root.
    check_wasm(repo_root().join("target/wasm32-wasip1/release/retry_guard.wasm"))?;
    let out = validate_file(&bundled_path(ENVOY_CLUSTER_YAML), &repo_root())?;
    assert!(out.contains("OK"), "{out}");
    assert!(out.contains("retry-guard: configured 6 route(s)"), "{out}");

    // Replica B: the header's sed, then validated the same way.
    let text = std::fs::read_to_string(bundled_path(ENVOY_CLUSTER_YAML))?;
    let b_text = replica_b_text(&text)?;
    let b: Value =
        serde_yaml::from_str(&b_text).map_err(|e| retry_guard_e2e::Error(e.to_string()))?;
    assert_eq!(
        b["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
        REPLICA_B_LISTENER_PORT
    );
    assert_eq!(
        b["admin"]["address"]["socket_address"]["port_value"],
        REPLICA_B_ADMIN_PORT
    );
    // Nothing else changed.
    let mut a = envoy_cluster_yaml()?;
    a["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] =
        json!(REPLICA_B_LISTENER_PORT);
    a["admin"]["address"]["socket_address"]["port_value"] = json!(REPLICA_B_ADMIN_PORT);
    assert_eq!(a, b, "the sed changed more than the two ports");
    let dir = repo_root()
        .join("target/e2e")
        .join(format!("cluster-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let b_file = dir.join("envoy-cluster-b.yaml");
    std::fs::write(&b_file, b_text)?;
    let out = validate_file(&b_file, &repo_root());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out?.contains("OK"));
    Ok(())
}

#[test]
fn envoy_cluster_yaml_is_envoy_yaml_with_the_ledger_on_etcd() -> Result<()> {
    let mut cluster = envoy_cluster_yaml()?;
    let single = envoy_yaml()?;

    // The plugin configuration: gateway.json plus the ledger section, accepted by the filter.
    let mut expected = testdata_config("gateway.json")?;
    expected["ledger"] = ledger_section();
    let embedded = plugin_config(&cluster)?;
    assert_eq!(
        embedded, expected,
        "envoy/envoy-cluster.yaml's plugin configuration is not gateway.json + the ledger section"
    );
    retry_guard::config::Config::parse(embedded.to_string().as_bytes())
        .map_err(|e| retry_guard_e2e::Error(format!("the filter refuses it: {e}")))?;

    // The etcd cluster: the one the etcd tests run (HTTP/1.1, health checks on /health,
    // outlier detection), on the three loopback members of the header.
    let members: Vec<SocketAddr> = [2379, 22379, 32379]
        .into_iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let etcd = ledger_cluster_mut(&mut cluster)?.clone();
    assert_eq!(etcd, envoy_cluster(ETCD_CLUSTER, &members));
    assert!(
        etcd.get("typed_extension_protocol_options").is_none()
            && etcd.get("http2_protocol_options").is_none(),
        "etcd's JSON gateway is HTTP/1.1 only"
    );

    // Everything else is envoy/envoy.yaml.
    let clusters = cluster["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters");
    clusters.retain(|c| c["name"] != ETCD_CLUSTER);
    cluster["node"] = single["node"].clone();
    // http_filters[1]: the wasm filter, after jwt_authn.
    let value = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/1/typed_config/config/configuration/value";
    *cluster.pointer_mut(value).expect("configuration") =
        single.pointer(value).expect("configuration").clone();
    assert_eq!(
        cluster, single,
        "envoy/envoy-cluster.yaml differs from envoy/envoy.yaml beyond the ledger and its cluster"
    );
    Ok(())
}

#[test]
fn two_replicas_of_envoy_cluster_yaml_share_one_ledger() -> Result<()> {
    let etcd = Etcd::start("cluster-config", 1)?;
    let backend = Backend::start()?;
    let replica = Replica::new(&etcd.clients());
    let a = replica.start("cluster-config-a", backend.addr())?;
    let b = replica.start("cluster-config-b", backend.addr())?;
    let first = TOKEN.request("shipped");
    let resp = send(&a, &first)?;
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    assert_eq!(wait_outcome(&a, &first.request_id)["outcome"], "succeeded");
    let resp = send(&b, &first.again("2"))?;
    assert_eq!(resp.status, 428, "{}", describe(&resp));
    assert_eq!(backend.requests_for_case(&first.case).len(), 1);
    // Under the file's key prefix.
    assert_eq!(etcd.count("retry-guard/identity-api/a/")?, 1);
    Ok(())
}

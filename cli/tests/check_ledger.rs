//! `check` and the cluster ledger: the bundled cluster gateway passes clean, and a deployment
//! whose etcd ledger names a cluster it does not have gets exactly one warning, at
//! `ledger.cluster` (the built `retry-guard` binary, run from the repository root).

use std::process::{Command, Output};

use serde_json::Value;

fn run_json(files: &[&str]) -> (Option<i32>, Value) {
    let o: Output = Command::new(env!("CARGO_BIN_EXE_retry-guard"))
        .current_dir(retry_guard::paths::repo_root())
        .args(["check", "--format", "json"])
        .args(files)
        .output()
        .expect("the retry-guard binary runs");
    let report = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "check {files:?}: not JSON ({e}):\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), report)
}

/// (severity, file, path) of every finding, and each message.
fn findings(report: &Value) -> Vec<(String, String, String, String)> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (s("severity"), s("file"), s("path"), s("message"))
        })
        .collect()
}

fn assert_clean(files: &[&str]) {
    let (code, report) = run_json(files);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(findings(&report).is_empty(), "check {files:?}:\n{report:#}");
}

const VALUE: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.\
                     http_filters[0].typed_config.config.configuration.value";

#[test]
fn the_cluster_gateway_passes_clean() {
    assert_clean(&["envoy/envoy-cluster.yaml"]);
}

#[test]
fn a_missing_etcd_cluster_is_one_warning_at_ledger_cluster() {
    let file = "testdata/deploy/broken-ledger-cluster.yaml";
    let (code, report) = run_json(&[file]);
    let f = findings(&report);
    assert_eq!(f.len(), 1, "{report:#}");
    let (severity, in_file, path, message) = &f[0];
    assert_eq!(severity, "warning");
    assert_eq!(in_file, file);
    assert_eq!(path, &format!("{VALUE}.ledger.cluster"));
    assert!(
        message.starts_with(
            "\"retry-guard-etcd\" is not a cluster of this Envoy bootstrap (its clusters: \
             identity-backend, etcd-ledger)"
        ),
        "{message}"
    );
    assert!(message.contains("503 ledger-unavailable"), "{message}");
    assert_eq!(code, Some(0), "a warning does not fail the check");
}

#[test]
fn the_istio_cluster_deployment_passes_clean_with_its_etcd_service() {
    assert_clean(&[
        "envoy/istio/envoyfilter-cluster.yaml",
        "envoy/istio/etcd.yaml",
        "envoy/istio/virtualservice.yaml",
    ]);
    // Without the ServiceEntry and DestinationRule: one warning naming the host.
    let (code, report) = run_json(&[
        "envoy/istio/envoyfilter-cluster.yaml",
        "envoy/istio/virtualservice.yaml",
    ]);
    let f = findings(&report);
    assert_eq!(f.len(), 1, "{report:#}");
    assert_eq!(f[0].0, "warning");
    assert_eq!(
        f[0].2,
        "spec.configPatches[0].patch.value.typed_config.config.configuration.value.ledger.cluster"
    );
    assert!(
        f[0].3.starts_with(
            "no ServiceEntry or DestinationRule given for \"etcd.ledger.example.internal\""
        ),
        "{}",
        f[0].3
    );
    assert_eq!(code, Some(0));
}

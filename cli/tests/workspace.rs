//! The workspace's shape, read from `cargo metadata`: which crate may depend on which (the
//! architecture in the README's layout table), and a minimum Rust version that every member
//! and every dependency actually builds with.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(retry_guard::paths::repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// (major, minor) of a version like "1.95" or "1.95.0".
fn version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Each workspace member's package name → the workspace members it depends on (normal
/// dependencies only: tests may use anything).
fn member_dependencies(meta: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut out = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        if !members.contains(p["id"].as_str().unwrap_or("")) {
            continue;
        }
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null() && d["path"].is_string())
            .map(|d| d["name"].as_str().unwrap_or("").to_string())
            .collect();
        out.insert(p["name"].as_str().unwrap_or("").to_string(), deps);
    }
    out
}

#[test]
fn crates_depend_only_in_the_documented_direction() {
    let deps = member_dependencies(&metadata());
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    // The policy core and shell depend on nothing of ours.
    assert_eq!(deps["retry-guard-filter"], set(&[]));
    // The simulator is a host library: no real-Envoy harness, no CLI.
    assert_eq!(deps["retry-guard-host-sim"], set(&["retry-guard-filter"]));
    // The harness starts Envoy; it signs through the core and knows nothing of host-sim.
    assert_eq!(deps["retry-guard-e2e"], set(&["retry-guard-filter"]));
    // The only crate that sees both hosts.
    assert_eq!(
        deps["retry-guard-conformance"],
        set(&[
            "retry-guard-filter",
            "retry-guard-host-sim",
            "retry-guard-e2e"
        ])
    );
    for (name, d) in &deps {
        if name != "retry-guard-cli" {
            assert!(
                !d.contains("retry-guard-cli"),
                "{name} depends on the CLI: {d:?}"
            );
        }
        if !matches!(
            name.as_str(),
            "retry-guard-conformance" | "retry-guard-cli" | "retry-guard-bench"
        ) {
            assert!(
                !d.contains("retry-guard-e2e") || name == "retry-guard-e2e",
                "{name} depends on the real-Envoy harness but does not drive Envoy: {d:?}"
            );
        }
    }
}

#[test]
fn every_member_and_dependency_builds_with_the_workspace_rust_version() {
    let meta = metadata();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let manifest = std::fs::read_to_string(retry_guard::paths::repo_root().join("Cargo.toml"))
        .expect("workspace Cargo.toml");
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("[workspace.package] rust-version");
    let mut too_new = Vec::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or("");
        let rv = p["rust_version"].as_str();
        if members.contains(p["id"].as_str().unwrap_or("")) {
            assert_eq!(
                rv.map(version),
                Some(version(&declared)),
                "{name} must inherit the workspace rust-version"
            );
        } else if let Some(rv) = rv {
            if version(rv) > version(&declared) {
                too_new.push(format!("{name} {} needs {rv}", p["version"]));
            }
        }
    }
    assert!(
        too_new.is_empty(),
        "dependencies newer than the workspace's rust-version {declared}: {too_new:?}"
    );
}

/// The release module stays within its size budget (256 KiB): every request's VM holds it,
/// and Envoy loads it once per worker. `just test` builds it before the tests run.
#[test]
fn the_release_module_fits_its_size_budget() {
    const BUDGET: u64 = 256 * 1024;
    let path = retry_guard::paths::release_wasm("retry_guard");
    let bytes = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (build it: just build)", path.display()))
        .len();
    assert!(
        bytes <= BUDGET,
        "{} is {bytes} bytes, over the {BUDGET}-byte budget (after wasm-opt: build it with \
         `just build`): find what grew with `just profile-sim` (names kept) before adding code",
        path.display()
    );
    // The test-only trap (cargo feature `test-trap`) is never in the release module.
    let module = std::fs::read(&path).unwrap_or_default();
    assert!(
        !module
            .windows(b"x-retry-guard-test-trap".len())
            .any(|w| w == b"x-retry-guard-test-trap"),
        "the release module carries the test-only trap"
    );
}

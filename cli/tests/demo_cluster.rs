//! `retry-guard demo-cluster` end to end (the built binary): 3 real etcd members, two real
//! Envoy replicas of envoy/envoy-cluster.yaml and the backend; every step of the story checks
//! its expectation, so exit 0 means the story held. Needs the release wasm (`just build`),
//! Envoy (`just envoy-install`) and etcd (`just etcd-install`), like the real-Envoy suite.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_cluster_tells_the_whole_story_in_under_a_minute() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_retry-guard"))
        .arg("demo-cluster")
        .output()
        .expect("the retry-guard binary runs");
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "demo-cluster failed ({}):\n{text}",
        out.status
    );
    for step in [
        "=== 1. A token call through replica A",
        "=== 2. Its automated replay through replica B: 428",
        "=== 3. The approver confirms",
        "=== 4. The etcd leader is stopped",
        "=== 5. All of etcd is stopped",
        "=== 6. etcd comes back",
        "confirmation_error: \"already_used\"",
        "type: \"urn:retry-guard:problem:ledger-unavailable\"",
        "reason ledger_unavailable",
        "cluster ledger unavailable (",
        "every step behaved as expected",
    ] {
        assert!(
            text.contains(step),
            "the transcript lacks {step:?}:\n{text}"
        );
    }
    assert!(
        took < Duration::from_secs(60),
        "demo-cluster took {took:?}:\n{text}"
    );
}

#[test]
fn demo_cluster_refuses_unknown_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_retry-guard"))
        .args(["demo-cluster", "--nope"])
        .output()
        .expect("the retry-guard binary runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument --nope"));
}

//! The cluster ledger over mutual TLS (envoy/README.md, "The cluster ledger over mutual TLS"):
//! etcd requires client certificates (`--client-cert-auth`, certificates made with `openssl`
//! at test time) and the replica of `envoy/envoy-cluster.yaml` presents one, so the ledger
//! works: a token call passes and its replay is 428. A replica whose etcd cluster presents no
//! client certificate gets no ledger: the token route fails closed (503 `ledger-unavailable`)
//! and the idempotent write fails open, with no etcd address or TLS error in the answers or
//! the audit lines, while Envoy's log says what failed.

mod common;

use std::time::{Duration, Instant};

use common::send_to as send;
use common::wait_audit as audit;
use common::*;
use retry_guard_e2e::backend::Backend;
use retry_guard_e2e::cluster::{Replica, ETCD_CLUSTER};
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::etcd::{Certs, Etcd};
use retry_guard_e2e::{repo_root, Result};

/// A counter of the admin `/stats` (0 when absent).
fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .stats(&format!("^{}$", name.replace('.', "\\.")))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// Things an attacker could use that must not reach a client or an audit line.
fn leaks(text: &str, etcd: &Etcd) -> Vec<String> {
    let mut found = Vec::new();
    for needle in [
        "127.0.0.1",
        "TLS",
        "tls",
        "SSL",
        "certificate",
        "etcd",
        "upstream connect",
    ] {
        if text.contains(needle) {
            found.push(needle.to_string());
        }
    }
    for a in etcd.clients() {
        if text.contains(&a.port().to_string()) {
            found.push(format!("port {}", a.port()));
        }
    }
    found
}

#[test]
fn the_ledger_works_over_mutual_tls_and_fails_closed_without_the_client_certificate() -> Result<()>
{
    let dir = repo_root()
        .join("target/e2e")
        .join(format!("certs-{}", std::process::id()));
    let certs = Certs::make(&dir)?;
    let etcd = Etcd::start_tls("tls", 1, &certs)?;
    let backend = Backend::start()?;

    // With the client certificate: the ledger works (a replay is 428), over TLS.
    let with_cert = Replica::new(&etcd.clients())
        .tls(&certs, true)
        .start("tls-client-cert", backend.addr())?;
    let first = TOKEN.request("mtls");
    let resp = send(&with_cert, &first)?;
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    let outcome = audit(&with_cert, &first.request_id, |r| !r["outcome"].is_null());
    assert_eq!(outcome["outcome"], "succeeded");
    let resp = send(&with_cert, &first.again("2"))?;
    assert_eq!(resp.status, 428, "{}", describe(&resp));
    assert_eq!(resp.json()?["previous_outcome"], "succeeded");
    assert_eq!(backend.requests_for_case(&first.case).len(), 1);
    let handshakes = stat(&with_cert, &format!("cluster.{ETCD_CLUSTER}.ssl.handshake"));
    assert!(handshakes >= 1, "no TLS handshake with etcd counted");

    // Without it: etcd refuses the handshake; the fail policies apply.
    let without = Replica::new(&etcd.clients())
        .tls(&certs, false)
        .start("tls-no-client-cert", backend.addr())?;
    let token = TOKEN.request("no-cert");
    let started = Instant::now();
    let resp = send(&without, &token)?;
    let took = started.elapsed();
    let doc = check_problem(
        &resp,
        503,
        "urn:retry-guard:problem:ledger-unavailable",
        &TOKEN,
        &token.request_id,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(resp.header("retry-after").is_some());
    assert!(backend.requests_for_case(&token.case).is_empty());
    assert!(took < Duration::from_millis(1500), "decided in {took:?}");
    let leaked = leaks(&resp.text(), &etcd);
    assert!(leaked.is_empty(), "the 503 carries {leaked:?}: {doc}");

    let prefs = PREFERENCES.request("no-cert-prefs");
    let resp = send(&without, &prefs)?;
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    let decision = audit(&without, &prefs.request_id, is_decision);
    assert_eq!(decision["reason"], "ledger_unavailable", "{decision}");

    // Audit lines: the decision, never what failed.
    for id in [&token.request_id, &prefs.request_id] {
        let line = audit(&without, id, is_decision).to_string();
        let leaked = leaks(&line, &etcd);
        assert!(leaked.is_empty(), "audit line carries {leaked:?}: {line}");
    }
    let token_decision = audit(&without, &token.request_id, is_decision);
    assert_eq!(token_decision["decision"], "ledger_unavailable");

    // The operator's log says exactly what failed; etcd's log says why.
    let log = without.wait_for_log(Duration::from_secs(5), |l| {
        l.contains("route oauth-token: cluster ledger unavailable (")
    })?;
    let line = log
        .lines()
        .find(|l| l.contains("route oauth-token: cluster ledger unavailable ("))
        .unwrap_or_default()
        .to_string();
    eprintln!("Envoy's log: {line}");
    assert!(line.contains("fail_closed applies"), "{line}");
    assert!(
        line.contains("upstream connect error or disconnect/reset before headers"),
        "{line}"
    );
    let errors = stat(
        &without,
        &format!("cluster.{ETCD_CLUSTER}.ssl.connection_error"),
    );
    eprintln!("cluster.{ETCD_CLUSTER}.ssl.connection_error: {errors}");
    assert!(errors >= 1, "no TLS connection error counted");
    let etcd_log = etcd.members[0].log_text();
    let rejected = etcd_log
        .lines()
        .find(|l| l.contains("rejected connection") && l.contains("didn't provide a certificate"));
    eprintln!("etcd's log: {rejected:?}");
    assert!(rejected.is_some(), "{etcd_log}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

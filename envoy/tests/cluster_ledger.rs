//! The cluster ledger on a real etcd (issue 14): two Envoy replicas of the bundled gateway
//! share one ledger, so a replay through the other replica is a replay; a confirmation is
//! single-use across replicas; identical requests racing over both replicas execute once;
//! when etcd cannot answer, each class gets its fail policy within the timeout.

mod common;

use std::time::{Duration, Instant};

use common::send_to as send;
use common::*;
use retry_guard_e2e::backend::{Backend, Gate, Reply};
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::etcd::{envoy_cluster, Etcd};
use retry_guard_e2e::gateway::{envoy_yaml, TestGateway};
use retry_guard_e2e::tokens::{test_confirmation, test_signing_key};
use retry_guard_e2e::{plugin_config as testdata_config, Result};
use serde_json::{json, Value};

const ETCD_CLUSTER: &str = "retry-guard-etcd";

fn ledger_config(prefix: &str, timeout_ms: u64) -> Value {
    let mut config = testdata_config("gateway.json").unwrap_or_else(|e| panic!("{e}"));
    config["ledger"] = json!({
        "backend": "etcd",
        "cluster": ETCD_CLUSTER,
        "authority": "etcd",
        "key_prefix": prefix,
        "timeout_ms": timeout_ms,
    });
    config
}

/// Gives every route of `config` the window `seconds` (the leases follow the longest window of
/// any route).
fn one_window(config: &mut Value, seconds: u64) {
    config["window_seconds"] = json!(seconds);
    for route in config["routes"].as_array_mut().into_iter().flatten() {
        if let Some(r) = route.as_object_mut() {
            r.remove("window_seconds");
        }
    }
}

/// One replica of the bundled gateway, its plugin on the cluster ledger, in front of `backend`.
fn replica(name: &str, backend: &Backend, etcd: &Etcd, config: &Value) -> Result<Envoy> {
    replica_at(name, backend, &etcd.clients(), config)
}

/// The same, its ledger cluster pointed at `etcd` (a real etcd's members, or a stand-in).
fn replica_at(
    name: &str,
    backend: &Backend,
    etcd: &[std::net::SocketAddr],
    config: &Value,
) -> Result<Envoy> {
    let mut bootstrap = TestGateway::new()
        .plugin_config(config.clone())
        .twins(false)
        .build(&envoy_yaml()?, backend.addr())?;
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .ok_or_else(|| retry_guard_e2e::Error::new("no clusters"))?
        .push(envoy_cluster(ETCD_CLUSTER, etcd));
    Envoy::builder(name, backend.addr())
        .bootstrap(bootstrap)
        .concurrency(2)
        .start()
}

fn problem(resp: &retry_guard_e2e::client::Response) -> Value {
    serde_json::from_str(&resp.text()).unwrap_or(Value::Null)
}

/// Waits (bounded) until the outcome of `request_id` is in `envoy`'s audit log.
fn outcome(envoy: &Envoy, request_id: &str) -> Value {
    wait_audit(envoy, request_id, |r| !r["outcome"].is_null())
}

#[test]
fn a_replay_through_the_other_replica_needs_review_and_a_confirmation_works_once() -> Result<()> {
    let etcd = Etcd::start("replicas", 1)?;
    let backend = Backend::start()?;
    let config = ledger_config("rg-replicas/", 1000);
    let a = replica("ledger-a", &backend, &etcd, &config)?;
    let b = replica("ledger-b", &backend, &etcd, &config)?;

    let first = TOKEN.request("across");
    let resp = send(&a, &first)?;
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    assert_eq!(outcome(&a, &first.request_id)["outcome"], "succeeded");

    // The replay lands on the other replica: the same ledger says it succeeded already.
    let replay = first.again("2");
    let resp = send(&b, &replay)?;
    assert_eq!(resp.status, 428, "{}", describe(&resp));
    let doc = problem(&resp);
    assert_eq!(doc["previous_outcome"], "succeeded", "{doc}");
    assert_eq!(backend.requests_for_case(&first.case).len(), 1);

    // The approver confirms B's 428; the confirmation goes through A, once.
    let chl = doc["challenge"].as_str().unwrap_or_default().to_string();
    let fp = doc["fingerprint"].as_str().unwrap_or_default().to_string();
    let token = test_confirmation(&chl, &fp, "alice@example.com", 300).sign(&test_signing_key()?);
    let confirmed = replay.again("3").header(CONFIRMATION_HEADER, &token);
    let resp = send(&a, &confirmed)?;
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    assert_eq!(backend.requests_for_case(&first.case).len(), 2);
    // The outcome is written to etcd just after the response (the client does not wait for
    // it); a retry sent before it lands sees the attempt in flight (409). Wait for it.
    assert_eq!(outcome(&a, &confirmed.request_id)["outcome"], "succeeded");
    // Reused through B: refused, already used.
    let reused = replay.again("4").header(CONFIRMATION_HEADER, &token);
    let resp = send(&b, &reused)?;
    assert_eq!(resp.status, 428, "{}", describe(&resp));
    assert_eq!(problem(&resp)["confirmation_error"], "already_used");
    assert_eq!(backend.requests_for_case(&first.case).len(), 2);

    // The attempt lives in etcd under the prefix, with a lease.
    assert!(etcd.count("rg-replicas/a/")? >= 1);
    Ok(())
}

#[test]
fn identical_requests_racing_over_two_replicas_execute_once() -> Result<()> {
    let etcd = Etcd::start("race", 1)?;
    let backend = Backend::start()?;
    let config = ledger_config("rg-race/", 2000);
    let a = replica("race-a", &backend, &etcd, &config)?;
    let b = replica("race-b", &backend, &etcd, &config)?;
    let gate = Gate::new();
    let req = TOKEN.request("race");
    backend.on_case(&req.case, Some(Reply::new(200).gated(&gate)));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..60)
            .map(|i| {
                let envoy = if i % 2 == 0 { &a } else { &b };
                let r = req.again(&format!("r{i}"));
                s.spawn(move || send(envoy, &r).map(|resp| resp.status).unwrap_or(0))
            })
            .collect();
        // Let every request reach its decision, then release the one that went through.
        std::thread::sleep(Duration::from_millis(1500));
        gate.open();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    let executed = backend.requests_for_case(&req.case).len();
    assert_eq!(executed, 1, "statuses {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 409 | 428)),
        "{statuses:?}"
    );
    Ok(())
}

#[test]
fn without_etcd_each_class_gets_its_fail_policy_within_the_timeout() -> Result<()> {
    let mut etcd = Etcd::start("down", 1)?;
    let backend = Backend::start()?;
    let config = ledger_config("rg-down/", 250);
    let a = replica("down-a", &backend, &etcd, &config)?;
    // Working first.
    let req = TOKEN.request("down-before");
    assert_eq!(send(&a, &req)?.status, 200);

    if let Some(m) = etcd.members.first_mut() {
        m.stop();
    }
    // A sensitive class fails closed: 503 ledger-unavailable, nothing upstream.
    let req = TOKEN.request("down-token");
    let started = Instant::now();
    let resp = send(&a, &req)?;
    let took = started.elapsed();
    assert_eq!(resp.status, 503, "{}", describe(&resp));
    let doc = problem(&resp);
    assert_eq!(doc["type"], "urn:retry-guard:problem:ledger-unavailable");
    assert_eq!(doc["owner"], TOKEN.owner);
    assert!(resp.header("retry-after").is_some());
    assert!(
        !resp.text().contains("127.0.0.1"),
        "no etcd address leaks: {}",
        resp.text()
    );
    assert!(took < Duration::from_millis(1500), "decided in {took:?}");
    assert!(backend.requests_for_case(&req.case).is_empty());
    // idempotent_write fails open: allowed and audited.
    let req = PREFERENCES.request("down-prefs");
    let resp = send(&a, &req)?;
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    assert_eq!(backend.requests_for_case(&req.case).len(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let decision = loop {
        if let Some(d) = a
            .audit_records()
            .into_iter()
            .find(|r| r["request_id"] == req.request_id.as_str() && is_decision(r))
        {
            break d;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(decision["reason"], "ledger_unavailable", "{decision}");
    let unavailable = a
        .wasm_counter("retry_guard.ledger.unavailable")?
        .unwrap_or(0);
    assert!(unavailable >= 2, "{unavailable}");
    assert!(a.log_text().contains("cluster ledger unavailable"));

    // etcd comes back: guarding resumes without a restart.
    etcd.restart(0)?;
    etcd.wait_ready(Duration::from_secs(20))?;
    let req = TOKEN.request("down-after");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let allowed = loop {
        n += 1;
        let attempt = req.again(&n.to_string());
        let resp = send(&a, &attempt)?;
        if resp.status == 200 {
            break attempt;
        }
        assert!(Instant::now() < deadline, "{}", describe(&resp));
        std::thread::sleep(Duration::from_millis(200));
    };
    // Once its outcome is in etcd (just after the response), the replay needs review.
    assert_eq!(outcome(&a, &allowed.request_id)["outcome"], "succeeded");
    let resp = send(&a, &req.again("replay"))?;
    assert_eq!(resp.status, 428, "{}", describe(&resp));
    Ok(())
}

#[test]
fn an_entry_disappears_with_its_lease_after_the_window() -> Result<()> {
    let etcd = Etcd::start("expiry", 1)?;
    let backend = Backend::start()?;
    let mut config = ledger_config("rg-expiry/", 1000);
    // A 10 s window: leases per 5 s bucket, so an entry lives 10 to 15 s after its attempt.
    one_window(&mut config, 10);
    let a = replica("expiry-a", &backend, &etcd, &config)?;
    let req = TOKEN.request("expiry");
    assert_eq!(send(&a, &req)?.status, 200);
    outcome(&a, &req.request_id);
    assert_eq!(etcd.count("rg-expiry/a/")?, 1);
    assert_eq!(send(&a, &req.again("2"))?.status, 428);
    let written = Instant::now();
    let deadline = written + Duration::from_secs(25);
    while etcd.count("rg-expiry/a/")? > 0 {
        assert!(
            Instant::now() < deadline,
            "the entry is still in etcd {:?} after its write",
            written.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let gone_after = written.elapsed();
    assert!(
        gone_after >= Duration::from_secs(9),
        "gone after {gone_after:?}, before the window"
    );
    // The same call is a first attempt again.
    let resp = send(&a, &req.again("3"))?;
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    eprintln!(
        "expiry: the etcd key was gone {gone_after:?} after the attempt (window 10 s, bucket 5 s)"
    );
    Ok(())
}

#[test]
fn stopping_the_etcd_leader_lets_no_replay_through() -> Result<()> {
    let mut etcd = Etcd::start("leader", 3)?;
    let backend = Backend::start()?;
    let timeout_ms = 500;
    let a = replica(
        "leader-a",
        &backend,
        &etcd,
        &ledger_config("rg-leader/", timeout_ms),
    )?;
    let calls = 1000;
    let (mut firsts, mut replays) = (Vec::new(), Vec::new());
    let mut slowest = Duration::ZERO;
    let mut stopped = None;
    for i in 0..calls {
        if i == calls / 3 {
            let leader = etcd.leader().unwrap_or(0);
            if let Some(m) = etcd.members.get_mut(leader) {
                m.stop();
            }
            stopped = Some((leader, Instant::now()));
        }
        let req = TOKEN.request(&format!("leader-{i}"));
        let t = Instant::now();
        firsts.push(send(&a, &req)?.status);
        let replay = send(&a, &req.again("2"))?.status;
        slowest = slowest.max(t.elapsed() / 2);
        replays.push(replay);
        assert!(
            backend.requests_for_case(&req.case).len() <= 1,
            "call {i} executed twice (first {}, replay {replay})",
            firsts[i]
        );
    }
    let executed = backend.request_count();
    let count = |v: &[u16], s: u16| v.iter().filter(|x| **x == s).count();
    let report = format!(
        "leader stopped at call {} (member {}); first calls: {} allowed, {} answered 503 by the fail policy; \
         replays: {} x 428, {} x 409, {} x 503, {} x 200; backend executions {executed}; slowest request {slowest:?}",
        calls / 3,
        stopped.map_or(0, |s| s.0),
        count(&firsts, 200),
        count(&firsts, 503),
        count(&replays, 428),
        count(&replays, 409),
        count(&replays, 503),
        count(&replays, 200),
    );
    eprintln!("{report}");
    // A replay is let through only when its first call was refused (503: never executed), and
    // every call executed at most once (checked call by call above).
    for (i, (f, r)) in firsts.iter().zip(&replays).enumerate() {
        assert!(!(*f == 200 && *r == 200), "call {i}: {report}");
    }
    let executed_cases = firsts
        .iter()
        .zip(&replays)
        .filter(|(f, r)| **f == 200 || **r == 200)
        .count();
    assert_eq!(executed, executed_cases, "{report}");
    assert!(
        slowest < Duration::from_millis(timeout_ms + 1000),
        "{report}"
    );
    // The cluster keeps deciding after the election.
    assert!(count(&firsts[calls / 2..], 200) > calls / 4, "{report}");
    Ok(())
}

#[test]
fn a_slow_or_garbled_etcd_gets_each_class_its_fail_policy_within_the_timeout() -> Result<()> {
    let timeout_ms = 250;
    for (label, reply) in [
        // Slower than the timeout.
        (
            "slow",
            Reply::json(200, "{}").delay(Duration::from_millis(1500)),
        ),
        // A 200 that is not a transaction's answer.
        (
            "garbage",
            Reply::json(200, r#"{"succeeded":"maybe","responses":"none"}"#),
        ),
        // Not JSON at all.
        ("html", Reply::new(200).body("<html>not etcd</html>")),
    ] {
        // A stand-in for etcd: healthy on /health, answering the ledger's calls with `reply`.
        let fake = Backend::start()?;
        fake.set_default(Reply::json(200, r#"{"health":"true"}"#));
        for path in ["/v3/kv/txn", "/v3/kv/range", "/v3/lease/grant"] {
            fake.on_path(path, reply.clone());
        }
        let backend = Backend::start()?;
        let a = replica_at(
            &format!("fake-etcd-{label}"),
            &backend,
            &[fake.addr()],
            &ledger_config("rg-fake/", timeout_ms),
        )?;
        let req = TOKEN.request(&format!("{label}-token"));
        let started = Instant::now();
        let resp = send(&a, &req)?;
        let took = started.elapsed();
        assert_eq!(resp.status, 503, "{label}: {}", describe(&resp));
        assert_eq!(
            problem(&resp)["type"],
            "urn:retry-guard:problem:ledger-unavailable",
            "{label}"
        );
        // A lease grant may come first; each call gets the timeout: bounded by two of them.
        assert!(
            took < Duration::from_millis(2 * timeout_ms + 500),
            "{label}: decided after {took:?}"
        );
        assert!(backend.requests_for_case(&req.case).is_empty(), "{label}");
        let req = PREFERENCES.request(&format!("{label}-prefs"));
        let resp = send(&a, &req)?;
        assert_eq!(resp.status, 200, "{label}: {}", describe(&resp));
        let d = wait_audit(&a, &req.request_id, is_decision);
        assert_eq!(d["reason"], "ledger_unavailable", "{label}: {d}");
        assert!(
            a.wasm_counter("retry_guard.ledger.unavailable")?
                .unwrap_or(0)
                >= 2,
            "{label}"
        );
        eprintln!("{label}: the token route answered 503 in {took:?} (timeout {timeout_ms} ms)");
    }
    Ok(())
}

/// Storage: etcd's key count and database size after 100,000 unique token calls, and after
/// the window. A measurement (minutes, many requests), not part of `just test`:
/// `cargo test -p retry-guard-e2e --test cluster_ledger -- --ignored --nocapture storage`.
#[test]
#[ignore]
fn storage_after_many_unique_calls_and_after_the_window() -> Result<()> {
    let etcd = Etcd::start("storage", 1)?;
    let backend = Backend::start()?;
    let mut config = ledger_config("rg-storage/", 1000);
    one_window(&mut config, 120);
    let a = replica("storage-a", &backend, &etcd, &config)?;
    let calls: usize = std::env::var("RG_STORAGE_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let threads = 8;
    let status = |etcd: &Etcd| -> Result<(u64, u64, u64)> {
        let s = retry_guard_e2e::etcd::post(etcd.client(), "/v3/maintenance/status", &json!({}))?;
        let n = |k: &str| s[k].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((etcd.count("rg-storage/")?, n("dbSize"), n("dbSizeInUse")))
    };
    let before = status(&etcd)?;
    let started = Instant::now();
    let failures: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let a = &a;
                s.spawn(move || {
                    let mut failed = 0;
                    for i in (t..calls).step_by(threads) {
                        let req = TOKEN.request(&format!("storage-{i}"));
                        if send(a, &req).map(|r| r.status).unwrap_or(0) != 200 {
                            failed += 1;
                        }
                    }
                    failed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(calls)).sum()
    });
    let sent_in = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after_calls = status(&etcd)?;
    eprintln!(
        "storage: {calls} unique token calls in {sent_in:?} ({failures} not 200); etcd before: {} keys, db {} B ({} B in use); after: {} keys, db {} B ({} B in use)",
        before.0, before.1, before.2, after_calls.0, after_calls.1, after_calls.2
    );
    // The window (120 s) plus one lease bucket (5 s) plus slack.
    let deadline = Instant::now() + Duration::from_secs(200);
    loop {
        let now = status(&etcd)?;
        if now.0 == 0 {
            // Compaction (periodic, 1 m) frees the space for reuse; the file does not shrink
            // without a defragmentation.
            std::thread::sleep(Duration::from_secs(65));
            let later = status(&etcd)?;
            eprintln!(
                "storage: after the window: {} keys, db {} B ({} B in use), {:?} after the last call",
                later.0,
                later.1,
                later.2,
                started.elapsed() - sent_in
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys left after the window: {now:?}"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    assert_eq!(failures, 0);
    Ok(())
}

//! The race of issue 4: Envoy with `--concurrency 2` (two workers, two wasm VMs over one shared
//! ledger), 50 identical sensitive requests sent at once over separate connections to a slow
//! backend: the backend receives exactly one, the other 49 get 409 `request-in-flight`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use retry_guard_e2e::backend::{Gate, Reply};
use retry_guard_e2e::client;
use serde_json::Value;

const N: usize = 50;

#[test]
fn fifty_identical_requests_at_once_reach_the_backend_once() {
    let gw = Gateway::start("race", None, 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gw.envoy.concurrency(), 2);
    let case = "race";
    // The slow backend: the one request that gets through is answered only after every other
    // request has had its answer (or after 60 s at most).
    let gate = Gate::new();
    gw.backend.on_case(
        case,
        Some(Reply::json(200, r#"{"token":"t-1"}"#).gated(&gate)),
    );
    let req = TOKEN.request(case);
    let listener = gw.envoy.listener_addr();

    // Every connection is open before any request is written.
    let barrier = Arc::new(Barrier::new(N));
    let answered = AtomicUsize::new(0);
    let statuses: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                let req = req.again(&format!("{i:02}"));
                let gate = &gate;
                let answered = &answered;
                s.spawn(move || {
                    let stream = client::connect(listener, Duration::from_secs(30))
                        .unwrap_or_else(|e| panic!("{e}"));
                    barrier.wait();
                    let mut headers: Vec<(&str, &str)> = vec![
                        ("x-e2e-case", req.case.as_str()),
                        ("x-request-id", req.request_id.as_str()),
                    ];
                    headers.extend(req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    let resp = client::send_on(
                        stream,
                        &req.method,
                        &req.path,
                        &headers,
                        req.body.as_bytes(),
                        Duration::from_secs(60),
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                    // When all but one are answered, let the slow one finish.
                    if answered.fetch_add(1, Ordering::SeqCst) + 1 == N - 1 {
                        gate.open();
                    }
                    (resp.status, resp.json().unwrap_or(Value::Null))
                })
            })
            .collect();
        // Bounded: if the answers never come, open the gate after the client timeout anyway.
        let collected = handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect();
        gate.open();
        collected
    });

    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let conflicts: Vec<&Value> = statuses
        .iter()
        .filter(|(s, _)| *s == 409)
        .map(|(_, d)| d)
        .collect();
    let upstream = gw.upstream(case);
    assert_eq!(
        upstream.len(),
        1,
        "the backend received {} of the {N} identical requests",
        upstream.len()
    );
    assert_eq!(
        gw.backend.heads_seen(),
        1,
        "request heads reached the backend"
    );
    assert_eq!(
        ok,
        1,
        "statuses: {:?}",
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    assert_eq!(
        conflicts.len(),
        N - 1,
        "statuses: {:?}",
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    for doc in &conflicts {
        assert_eq!(
            doc["type"], "urn:retry-guard:problem:request-in-flight",
            "{doc}"
        );
        assert_eq!(doc["previous_outcome"], "in_flight", "{doc}");
        assert_eq!(doc["owner"], "team-iam", "{doc}");
    }
    // Both workers took connections (per-worker listener stats), so the ledger was contended
    // across VMs, not just within one.
    let stats = gw
        .envoy
        .stats("downstream_cx_total")
        .unwrap_or_else(|e| panic!("{e}"));
    let per_worker: Vec<u64> = ["worker_0", "worker_1"]
        .iter()
        .map(|w| {
            stats
                .lines()
                .find(|l| {
                    l.starts_with("listener.127.0.0.1_")
                        && l.contains(&format!(".{w}.downstream_cx_total:"))
                })
                .and_then(|l| l.rsplit(':').next())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "one worker took every connection: {per_worker:?}\n{stats}"
    );
    assert_eq!(gw.counter("retry_guard.decision.allow"), 1);
    assert_eq!(gw.counter("retry_guard.decision.conflict"), (N - 1) as u64);
    println!(
        "race: 1 allowed, {} conflicts; connections per worker {per_worker:?}",
        N - 1
    );
}

//! The "Rolling out" story of the README on host-sim's virtual clock: a shadow-mode day of a
//! mixed workload shows, in the per-route gap counters, which window separates retries from
//! new calls; the window chosen from them then answers the retries 428 and lets the new calls
//! through. Two virtual hours, run in a few seconds.
//!
//! The workload (seeded, so every run is the same):
//! - three CI jobs ask `oauth-token` (no idempotency key) for a token every 2–5 minutes with
//!   the same body; a third of the calls fail (503) and the job retries 1–5 s later, up to
//!   twice;
//! - a client of `secrets` (idempotency key required) mints a secret every 2–5 minutes; a third
//!   of the calls fail and it retries 1–5 s later *with a new key* each time.

use std::collections::BTreeMap;

use host_sim::{Request, Runtime, Sim, SimConfig, Upstream};
use serde_json::{json, Value};

/// A small deterministic random source (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `1 / n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

/// One call of the workload at `at_ms` (virtual milliseconds from the start).
#[derive(Clone, Debug)]
struct Call {
    at_ms: u64,
    route: &'static str,
    principal: String,
    /// The idempotency key (the `secrets` client sends one, new each time).
    key: Option<String>,
    /// A retry of a failed call (else a new call).
    retry: bool,
    /// The upstream fails it (503).
    fails: bool,
}

const HOURS: u64 = 2;

/// The calls of the workload, in time order.
fn workload(seed: u64) -> Vec<Call> {
    let mut rng = Rng(seed);
    let mut calls = Vec::new();
    let end = HOURS * 3_600_000;
    let clients = [
        ("oauth-token", "ci-job-1"),
        ("oauth-token", "ci-job-2"),
        ("oauth-token", "ci-job-3"),
        ("secrets", "keygen-bot"),
    ];
    for (route, principal) in clients {
        let mut at = rng.between(0, 120) * 1000;
        let mut serial = 0;
        while at < end {
            let mut retries = 0;
            let mut t = at;
            loop {
                serial += 1;
                let fails = retries < 2 && rng.one_in(3);
                calls.push(Call {
                    at_ms: t,
                    route,
                    principal: principal.to_string(),
                    key: (route == "secrets").then(|| format!("{principal}-{serial}")),
                    retry: retries > 0,
                    fails,
                });
                if !fails {
                    break;
                }
                retries += 1;
                t += rng.between(1_000, 5_000);
            }
            at += rng.between(120, 300) * 1000;
        }
    }
    calls.sort_by_key(|c| c.at_ms);
    calls
}

fn config(mode: &str, token_window: Option<u64>) -> Value {
    let mut token = json!({
        "name": "oauth-token",
        "match": {"methods": ["POST"], "path": "/oauth/token"},
        "class": "token_issuing",
        "owner": "team-iam",
        "escalation": "pagerduty:iam-primary"
    });
    if let Some(w) = token_window {
        token["window_seconds"] = json!(w);
    }
    json!({
        "mode": mode,
        "principal": ["header:x-client-id"],
        "routes": [
            token,
            {
                "name": "secrets",
                "match": {"methods": ["POST"], "path": "/v1/secrets"},
                "class": "secret_minting",
                "require_idempotency_key": true,
                "owner": "team-vault",
                "escalation": "slack:#vault-oncall"
            }
        ]
    })
}

/// Runs the workload against `config`; returns the metrics and, per call, the decision.
fn run(config: &Value, calls: &[Call]) -> (BTreeMap<String, u64>, Vec<String>) {
    let rt = Runtime::from_file(&retry_guard::paths::filter_wasm())
        .expect("build the filter first: just build");
    let sim = Sim::new(
        &rt,
        SimConfig {
            plugin_config: config.to_string().into_bytes(),
            ..SimConfig::default()
        },
    )
    .expect("the plugin starts");
    let mut now = 0;
    let mut decisions = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        sim.advance_ms(c.at_ms - now);
        now = c.at_ms;
        let path = if c.route == "secrets" {
            "/v1/secrets"
        } else {
            "/oauth/token"
        };
        let mut req = Request::new("POST", path)
            .header("x-client-id", &c.principal)
            .body(if c.route == "secrets" {
                "name=deploy-key"
            } else {
                "grant_type=client_credentials"
            })
            .on_worker(i % 2);
        if let Some(k) = &c.key {
            req = req.header("idempotency-key", k);
        }
        let upstream = if c.fails {
            Upstream::Reply {
                status: 503,
                headers: Vec::new(),
                body: Vec::new(),
                delay_ms: 0,
            }
        } else {
            Upstream::ok()
        };
        let ex = sim.request(&req, &upstream).expect("exchange");
        decisions.push(
            ex.filter_state
                .get("wasm.retry_guard.decision")
                .cloned()
                .unwrap_or_default(),
        );
    }
    (sim.metrics(), decisions)
}

fn counter(m: &BTreeMap<String, u64>, name: &str, route: &str) -> u64 {
    m.get(&format!("{name}.route.{route}"))
        .copied()
        .unwrap_or(0)
}

const BUCKETS: [&str; 5] = [
    "retry_guard.gap.le_1s",
    "retry_guard.gap.le_10s",
    "retry_guard.gap.le_60s",
    "retry_guard.gap.le_600s",
    "retry_guard.gap.gt_600s",
];

#[test]
fn shadow_counters_separate_retries_from_new_calls_and_the_window_they_suggest_works() {
    let calls = workload(20_261_207);
    let token: Vec<&Call> = calls.iter().filter(|c| c.route == "oauth-token").collect();
    let token_retries = token.iter().filter(|c| c.retry).count() as u64;
    let token_new = token.len() as u64 - token_retries;
    let secret_retries = calls
        .iter()
        .filter(|c| c.route == "secrets" && c.retry)
        .count() as u64;
    assert!(token_retries >= 10 && token_new >= 60 && secret_retries >= 5);

    // 1. Shadow mode with the global 900 s window: nothing is blocked, everything counted.
    let (m, decisions) = run(&config("shadow", None), &calls);
    let gaps: Vec<u64> = BUCKETS
        .iter()
        .map(|b| counter(&m, b, "oauth-token"))
        .collect();
    println!(
        "shadow, 2 h, oauth-token: {} new calls, {} retries; gap buckets le_1s..gt_600s = {gaps:?}",
        token_new, token_retries
    );
    let regenerated = counter(&m, "retry_guard.key.regenerated", "secrets");
    println!(
        "shadow, 2 h, secrets: {} retries with a new key; retry_guard.key.regenerated = {regenerated}; secrets gap buckets = {:?}",
        secret_retries,
        BUCKETS.iter().map(|b| counter(&m, b, "secrets")).collect::<Vec<_>>()
    );
    assert!(
        decisions.iter().all(|d| d != "bad_request"),
        "{decisions:?}"
    );
    assert_eq!(
        m.get("retry_guard.shadow.would_block").copied(),
        Some(token_new - 3 + token_retries),
        "every repeat within 900 s would be a 428 (all but each job's first call)"
    );
    // The retries (1–5 s after a failure) land in the 10 s bucket; the new calls of each job
    // (2–5 minutes apart) in the 600 s bucket; nothing in between.
    assert_eq!(gaps, [0, token_retries, 0, token_new - 3, 0]);
    // The secrets client's new keys make every retry look new to the ledger (no gap), but
    // each is counted as a regenerated key.
    assert_eq!(regenerated, secret_retries);
    assert_eq!(
        BUCKETS
            .iter()
            .map(|b| counter(&m, b, "secrets"))
            .sum::<u64>(),
        0
    );

    // 2. The counters say retries come within 10 s and new calls after 2 minutes: a 60 s
    // window on the token route, enforced.
    let (m, decisions) = run(&config("enforce", Some(60)), &calls);
    let mut wrong = Vec::new();
    for (c, d) in calls.iter().zip(&decisions) {
        if c.route != "oauth-token" {
            continue;
        }
        let want = if c.retry { "confirm" } else { "allow" };
        if d != want {
            wrong.push(format!("{c:?}: {d}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    println!(
        "enforce, window 60 s: oauth-token confirm = {}, allow = {}",
        m.get("retry_guard.decision.confirm").copied().unwrap_or(0),
        token_new
    );
}

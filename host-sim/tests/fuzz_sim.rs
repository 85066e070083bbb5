//! The whole-filter fuzzer on host-sim (issue 17 part 2): seeded random sequences of requests,
//! upstream answers, disconnects, clock steps and confirmations over several workers, into the
//! real release module, with the filter's invariants checked after every step
//! (`host_sim::fuzz`). A short run here; `just fuzz-sim [seconds]` runs long. Failing seeds
//! found so far: `REGRESSIONS` (fixed) and one known limit (ignored test, below).

use std::sync::OnceLock;
use std::time::Duration;

use host_sim::{fuzz, Runtime};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::from_file(&retry_guard::paths::filter_wasm())
            .expect("build the filter first: just build")
    })
}

/// Seeds that once failed, replayed on every run.
/// - 17604131991246295193: an attempt outlived its window; its 200 was recorded on the next
///   attempt's fresh entry (also attempt 1), so a confirmed retry passed while that attempt
///   was in flight (see `a_stale_attempts_outcome_is_not_recorded_on_a_newer_attempt`).
const REGRESSIONS: &[u64] = &[17_604_131_991_246_295_193];

#[test]
fn regression_seeds_pass() {
    for &seed in REGRESSIONS {
        if let Err(f) = fuzz::run_sequence(runtime(), seed) {
            panic!("{f}");
        }
    }
}

/// A short run: the first 250 sequences of a fixed base seed, so every run checks the same
/// ones (about 10 s on an idle machine in a debug build; cut at 40 s on a busy one).
/// `RG_FUZZ_SEED`, `RG_FUZZ_SEQUENCES` and `RG_FUZZ_SECONDS` change it.
#[test]
fn random_sequences_keep_every_invariant() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let seed = env("RG_FUZZ_SEED", 0x5EED_2026);
    let sequences = env("RG_FUZZ_SEQUENCES", 250);
    let secs = env("RG_FUZZ_SECONDS", 40);
    match fuzz::run_for(runtime(), seed, Duration::from_secs(secs), sequences) {
        Ok(s) => {
            println!("fuzz-sim, base seed {seed}: {s}");
            assert!(s.sequences > 0);
        }
        Err(f) => panic!("{f}"),
    }
}

/// An attempt in flight longer than the window: its entry expires, the same call is allowed
/// again (a new entry, attempt 1 again), and then the first attempt's response arrives. Its
/// outcome must not be written on the new attempt's entry: the new attempt is still in flight,
/// so a replay is 409 (not a 428 that a confirmation could then pass).
#[test]
fn a_stale_attempts_outcome_is_not_recorded_on_a_newer_attempt() {
    use host_sim::{Request, Sim, SimConfig, Upstream};
    let config = br#"{
      "window_seconds": 60,
      "principal": ["header:x-client-id"],
      "routes": [{ "name": "oauth-token", "match": { "path": "/oauth/token" },
                   "class": "token_issuing", "owner": "team-iam", "escalation": "pagerduty:iam" }]
    }"#;
    let sim = Sim::new(
        runtime(),
        SimConfig {
            plugin_config: config.to_vec(),
            ..SimConfig::default()
        },
    )
    .expect("starts");
    let req = Request::new("POST", "/oauth/token")
        .header("x-client-id", "ci-bot")
        .body("grant_type=client_credentials");
    let first = sim.begin(&req, None).expect("first");
    assert!(first.forwarded());
    sim.advance_ms(61_000);
    let second = sim.begin(&req.clone().on_worker(1), None).expect("second");
    assert!(
        second.forwarded(),
        "the first attempt's entry expired: a new attempt"
    );
    let first = sim
        .complete(first, &Upstream::ok())
        .expect("first completes");
    assert_eq!(first.status, 200);
    let replay = sim.request(&req, &Upstream::ok()).expect("replay");
    assert_eq!(
        replay.status,
        409,
        "the second attempt is still in flight: {}",
        String::from_utf8_lossy(&replay.body)
    );
    let second = sim
        .complete(second, &Upstream::ok())
        .expect("second completes");
    assert_eq!(second.status, 200);
    let after = sim.request(&req, &Upstream::ok()).expect("after");
    assert_eq!(
        after.status, 428,
        "the second attempt's own outcome is recorded"
    );
}

/// Found by the fuzzer (seed 11516547646832116931): an idempotent write's in-flight entry
/// was evicted to make room, the same request let through again in the same second (a fresh
/// entry identical to the evicted one), and the first attempt's response was then written on
/// the new attempt's entry. An attempt in flight is now never evicted: a set full of
/// in-flight and sensitive entries refuses the new record (the route's fail policy decides).
#[test]
fn an_attempt_in_flight_is_never_evicted() {
    use host_sim::{Request, Sim, SimConfig, Upstream};
    // One set per table.
    let config = r#"{
      "max_entries": MAX_ENTRIES,
      "principal": ["header:x-client-id"],
      "routes": [
        { "name": "oauth-token", "match": { "path": "/oauth/token" },
          "class": "token_issuing", "owner": "team-iam", "escalation": "pagerduty:iam" },
        { "name": "orders", "match": { "path_prefix": "/v1/orders" },
          "class": "idempotent_write", "owner": "team-shop", "escalation": "pagerduty:shop" }
      ]
    }"#
    .replace("MAX_ENTRIES", &retry_guard::ledger::WAYS.to_string());
    let sim = Sim::new(
        runtime(),
        SimConfig {
            plugin_config: config.into_bytes(),
            ..SimConfig::default()
        },
    )
    .expect("starts");
    let token = |n: u32| {
        Request::new("POST", "/oauth/token")
            .header("x-client-id", "ci-bot")
            .body(format!("grant_type=client_credentials&n={n}"))
    };
    let order = |n: u32| {
        Request::new("POST", "/v1/orders")
            .header("x-client-id", "shop")
            .body(format!("{{\"order\":{n}}}"))
    };
    // One full set: WAYS - 1 sensitive token calls and order A, all in flight.
    let mut open = Vec::new();
    for n in 0..retry_guard::ledger::WAYS as u32 - 1 {
        open.push(sim.begin(&token(n), None).expect("token"));
    }
    let a = sim.begin(&order(1), None).expect("order A");
    assert!(a.forwarded());
    // Order B needs room, but every entry of the set is sensitive or in flight: refused, and
    // the idempotent write's fail policy (fail_open) lets B through unrecorded.
    let b = sim.begin(&order(2), None).expect("order B");
    assert!(b.forwarded());
    let m = sim.metrics();
    assert_eq!(m.get("retry_guard.ledger.full"), Some(&1));
    assert_eq!(m.get("retry_guard.ledger.evicted").copied().unwrap_or(0), 0);
    // A again while A is in flight: 409, never a second attempt.
    let a2 = sim
        .request(&order(1).on_worker(1), &Upstream::ok())
        .expect("order A again");
    assert_eq!(a2.status, 409, "A is still in flight");
    // A's response is recorded on A's own entry.
    assert_eq!(sim.complete(a, &Upstream::ok()).expect("A").status, 200);
    let a3 = sim
        .request(&order(1), &Upstream::ok())
        .expect("order A third");
    assert_eq!(
        a3.status, 200,
        "after A succeeded, a retry of an idempotent write is safe"
    );
    for p in open.into_iter().chain([b]) {
        sim.complete(p, &Upstream::ok()).expect("completes");
    }
}

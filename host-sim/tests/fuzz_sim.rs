//! The whole-filter fuzzer on host-sim (issue 17 part 2): seeded random sequences of requests,
//! upstream answers, disconnects, clock steps and confirmations over several workers, into the
//! real release module, with the filter's invariants checked after every step
//! (`host_sim::fuzz`). A short run here; `just fuzz-sim [seconds]` runs long.

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

/// A short run with a fixed base seed (`RG_FUZZ_SEED` and `RG_FUZZ_SECONDS` change it).
#[test]
fn random_sequences_keep_every_invariant() {
    let seed = std::env::var("RG_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2026);
    let secs = std::env::var("RG_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    match fuzz::run_for(runtime(), seed, Duration::from_secs(secs), u64::MAX) {
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

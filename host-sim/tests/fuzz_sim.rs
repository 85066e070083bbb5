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
const REGRESSIONS: &[u64] = &[];

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

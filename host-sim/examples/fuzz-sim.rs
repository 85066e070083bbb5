//! `just fuzz-sim [seconds] [seed]`: the whole-filter fuzzer (`host_sim::fuzz`) for a while on
//! the release module; prints sequences and steps run, what the client got, the decisions
//! made, and on a failure the seed that replays it (exit status 1).
//!
//! `cargo run --release -p retry-guard-host-sim --example fuzz-sim -- [seconds] [seed] [--wasm <path>]`

use std::time::{Duration, Instant};

use host_sim::{fuzz, Runtime};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut wasm = retry_guard::paths::filter_wasm();
    if let Some(i) = args.iter().position(|a| a == "--wasm") {
        if let Some(p) = args.get(i + 1) {
            wasm = p.into();
        }
        args.drain(i..(i + 2).min(args.len()));
    }
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(600);
    let seed: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let rt = match Runtime::from_file(&wasm) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "fuzz-sim: {} for {seconds} s, base seed {seed}",
        wasm.display()
    );
    let started = Instant::now();
    let mut total = fuzz::Summary::default();
    let mut round = 0u64;
    // Rounds of about 10 s, each from its own base seed (derived from `seed`), with progress.
    while started.elapsed() < Duration::from_secs(seconds) {
        let left = Duration::from_secs(seconds).saturating_sub(started.elapsed());
        let base = fuzz::sequence_seed(seed, round.wrapping_mul(1_000_003));
        match fuzz::run_for(&rt, base, left.min(Duration::from_secs(10)), u64::MAX) {
            Ok(s) => {
                total.merge(&s);
                println!(
                    "  {:>5.0} s: {} sequences, {} steps",
                    started.elapsed().as_secs_f64(),
                    total.sequences,
                    total.steps
                );
            }
            Err(f) => {
                eprintln!("{f}");
                std::process::exit(1);
            }
        }
        round += 1;
    }
    total.elapsed = started.elapsed();
    println!("fuzz-sim passed: {total}");
}

//! The playground decides as the filter module does on host-sim: the scenarios of
//! `testdata/scenarios` that are sequences of calls run through both — host-sim's own request
//! resolution on each side, confirmations signed per side for that side's 428 — and every
//! call's status, decision, audit line (but time and request id), outcome line and whether the
//! upstream got it must be equal.
//!
//! Concurrent steps (the playground plays one call at a time) are left out on both sides;
//! scenarios that need what the playground does not model (floods, dynamic metadata, client
//! disconnects, chunked bodies, trailers, the etcd ledger, a filter that may not hold headers)
//! are listed as skipped, and at least [`MIN_SCENARIOS`] must be compared.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::path::Path;

use common::{call_of, decided_in_play, decided_on_sim, runtime};
use host_sim::scenario::target::{capture_of, plugin_config};
use host_sim::scenario::values::{duration_ms, Capture, Requests};
use host_sim::{Sim, SimConfig};
use retry_guard_web::play::{Session, DEFAULT_START};
use serde_json::Value;

const MIN_SCENARIOS: usize = 15;

/// Why the playground cannot play a scenario, if it cannot.
fn unsupported(text: &str, json: &Value) -> Option<&'static str> {
    for (needle, why) in [
        ("\"flood\"", "a flood step"),
        ("\"dynamic_metadata\"", "dynamic metadata"),
        ("\"disconnect\"", "a client disconnect"),
        ("\"body_chunks\"", "a chunked body"),
        ("\"trailers\"", "trailers"),
    ] {
        if text.contains(needle) {
            return Some(why);
        }
    }
    if json.get("etcd").is_some() {
        return Some("the etcd ledger");
    }
    if json.get("allow_on_headers_stop_iteration") == Some(&Value::Bool(false)) {
        return Some("allow_on_headers_stop_iteration false");
    }
    None
}

/// Runs one scenario on both; the number of calls compared.
fn compare(rt: &host_sim::Runtime, path: &Path) -> Result<usize, String> {
    let sc = host_sim::scenario::load(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = String::from_utf8(plugin_config(&sc, dir)?).map_err(|e| e.to_string())?;
    let j = &sc.json;
    let start = j
        .get("start")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_START);
    let cfg = SimConfig {
        plugin_config: config.as_bytes().to_vec(),
        workers: j.get("workers").and_then(Value::as_u64).unwrap_or(2) as usize,
        seed: j.get("seed").and_then(Value::as_u64).unwrap_or(1),
        start_unix: start,
        ..SimConfig::default()
    };
    let sim = Sim::new(rt, cfg);
    let session = Session::new(&config, start);
    if let Some(want) = j.get("expect_start_error").and_then(Value::as_str) {
        let sim_err = sim.err().map(|e| e.to_string()).unwrap_or_default();
        let play_err = session.err().unwrap_or_default();
        if !(sim_err.contains(want) && play_err.contains(want)) {
            return Err(format!(
                "both must refuse with {want:?}: host-sim {sim_err:?}, playground {play_err:?}"
            ));
        }
        return Ok(1);
    }
    let sim = sim.map_err(|e| e.to_string())?;
    let session = session?;
    let mut on_sim = Requests::new(dir.to_path_buf(), j);
    let mut in_play = Requests::new(dir.to_path_buf(), j);
    let mut compared = 0;
    let steps = j
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        if let Some(d) = step.get("advance") {
            let ms = duration_ms(d, &at)?;
            sim.advance_ms(ms);
            session.advance_ms(ms);
            continue;
        }
        let Some(req) = step.get("request") else {
            continue; // notes, metrics, logs; concurrent steps are left out on both sides
        };
        if sim.now_unix() != session.now() {
            return Err(format!(
                "{at}: the clocks differ: host-sim {} playground {}",
                sim.now_unix(),
                session.now()
            ));
        }
        let now = i64::try_from(sim.now_unix()).unwrap_or(0);
        let (sreq, sup, sspec) = match on_sim.prepare(req, &at, now, None) {
            Ok(p) => p,
            // A step naming one of a concurrent step's requests: stop here.
            Err(e) if e.contains("no earlier request step") => break,
            Err(e) => return Err(e),
        };
        let (preq, pup, pspec) = in_play.prepare(req, &at, now, None)?;
        let ex = sim.request(&sreq, &sup).map_err(|e| e.to_string())?;
        let played = session.call(&call_of(&preq, &pup));
        let (a, b) = (decided_on_sim(&ex), decided_in_play(&played));
        if a != b {
            return Err(format!("{at}: host-sim {a:#?}\nplayground {b:#?}"));
        }
        compared += 1;
        if let Some(name) = step.get("name").and_then(Value::as_str) {
            on_sim.capture(name.to_string(), capture_of(&sreq, sspec, &ex));
            let body: Value = serde_json::from_str(&played.answer.body).unwrap_or(Value::Null);
            let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
            in_play.capture(
                name.to_string(),
                Capture {
                    request: Some(preq),
                    spec: pspec,
                    status: played.answer.status.unwrap_or(0),
                    challenge: text("challenge"),
                    fingerprint: text("fingerprint"),
                },
            );
        }
    }
    Ok(compared)
}

#[test]
fn the_playground_decides_as_the_filter_on_host_sim() {
    let rt = runtime();
    let dir = retry_guard::paths::repo_root().join("testdata/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata/scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut done, mut skipped, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(f).expect("scenario");
        let json: Value = serde_json::from_str(&text).expect("scenario JSON");
        if let Some(why) = unsupported(&text, &json) {
            skipped.push(format!("{name} ({why})"));
            continue;
        }
        match compare(&rt, f) {
            Ok(0) => skipped.push(format!("{name} (no sequential call)")),
            Ok(n) => done.push(format!("{name}: {n} call(s)")),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    eprintln!("compared: {done:#?}\nskipped: {skipped:#?}");
    assert!(
        failed.is_empty(),
        "the playground and host-sim disagree:\n{}",
        failed.join("\n\n")
    );
    assert!(
        done.len() >= MIN_SCENARIOS,
        "only {} scenarios compared (want {MIN_SCENARIOS})",
        done.len()
    );
}

//! `bench`: host-sim's micro-benchmarks (the real-Envoy benchmark is `just bench`).

use std::path::PathBuf;

use crate::{default_path, runtime, take_flag, take_opt, wasm_or_default};

/// `retry-guard bench [--paths ...]`.
pub fn bench(mut args: Vec<String>) -> Result<i32, String> {
    if take_flag(&mut args, "--paths") {
        return bench_paths(args);
    }
    if let Some(dir) = take_opt(&mut args, "--record")? {
        return bench_record(&PathBuf::from(dir), args);
    }
    let wasm = take_opt(&mut args, "--wasm")?;
    let n: u64 = take_opt(&mut args, "--requests")?
        .map(|v| v.parse().map_err(|_| format!("--requests {v}: a number")))
        .transpose()?
        .unwrap_or(10_000);
    let config = std::fs::read(default_path("testdata/configs/smoke.json"))
        .map_err(|e| format!("testdata/configs/smoke.json: {e}"))?;
    let t0 = std::time::Instant::now();
    let rt = runtime(wasm)?;
    let t1 = std::time::Instant::now();
    let sim = host_sim::sim::Sim::new(
        &rt,
        host_sim::sim::SimConfig {
            plugin_config: config,
            ..host_sim::sim::SimConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let t2 = std::time::Instant::now();
    let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
    for i in 0..n {
        // Three in four are new token calls (allowed, recorded), one in four replays the
        // previous one (428 with a challenge); alternating workers.
        let body = format!(
            "grant_type=client_credentials&n={}",
            i - i % 4 + (i % 4).min(2)
        );
        let req = host_sim::sim::Request::new("POST", "/oauth/token")
            .header("x-client-id", "ci-bot")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .on_worker((i % 2) as usize);
        let ex = sim
            .request(&req, &host_sim::upstream::Upstream::ok())
            .map_err(|e| e.to_string())?;
        *statuses.entry(ex.status).or_default() += 1;
    }
    let t3 = std::time::Instant::now();
    let per = (t3 - t2).as_secs_f64() / n as f64;
    println!(
        "compile {:.0} ms, start 3 VMs (main + 2 workers, ledger of {} keys) {:.0} ms",
        (t1 - t0).as_secs_f64() * 1e3,
        host_sim::shared::lock(&sim.shared().data).len(),
        (t2 - t1).as_secs_f64() * 1e3
    );
    println!(
        "{n} requests of the demo config in {:.3} s: {:.1} µs per request ({:.0} requests/s); statuses {statuses:?}",
        (t3 - t2).as_secs_f64(),
        per * 1e6,
        1.0 / per
    );
    Ok(0)
}

/// `bench --record DIR [--wasm FILE] [--only PATH]`: records each benchmark path's host calls
/// on host-sim into `DIR/<path>.json`, for `bench/v8/replay.mjs` to replay on V8.
fn bench_record(dir: &std::path::Path, mut args: Vec<String>) -> Result<i32, String> {
    let wasm = wasm_or_default(take_opt(&mut args, "--wasm")?);
    let only = take_opt(&mut args, "--only")?;
    if let Some(a) = args.first() {
        return Err(format!("bench --record: unexpected argument {a:?}"));
    }
    let recordings = host_sim::bench::record(&wasm, only.as_deref())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for r in &recordings {
        let file = dir.join(format!("{}.json", r.path));
        let text = serde_json::to_string(r).map_err(|e| e.to_string())?;
        std::fs::write(&file, text + "\n").map_err(|e| format!("{}: {e}", file.display()))?;
        let calls: usize = r.request.iter().map(|c| c.calls.len()).sum();
        println!(
            "recorded {} ({} callbacks, {calls} host calls, status {}): {}",
            r.path,
            r.request.len(),
            r.status,
            file.display()
        );
    }
    Ok(0)
}

/// `bench --paths`: the per-path micro-benchmark ([`crate::bench`]).
fn bench_paths(mut args: Vec<String>) -> Result<i32, String> {
    let json = take_flag(&mut args, "--json");
    let functions = take_flag(&mut args, "--functions");
    let segments = take_flag(&mut args, "--segments");
    let update_readme = take_flag(&mut args, "--update-readme");
    let floor = match take_opt(&mut args, "--floor")? {
        Some(f) => Some(PathBuf::from(f)),
        // The no-op floor filter, when `just build` or `just bench` has built it.
        None => Some(retry_guard::paths::release_wasm("noop_filter")).filter(|p| p.exists()),
    };
    let wasm = wasm_or_default(take_opt(&mut args, "--wasm")?);
    let n: u64 = take_opt(&mut args, "--requests")?
        .map(|v| v.parse().map_err(|_| format!("--requests {v}: a number")))
        .transpose()?
        .unwrap_or(2_000);
    let only = take_opt(&mut args, "--only")?;
    if let Some(a) = args.first() {
        return Err(format!("bench --paths: unexpected argument {a:?}"));
    }
    let floor = floor.filter(|_| only.is_none());
    let results = host_sim::bench::run(
        &wasm,
        n,
        functions,
        segments,
        floor.as_deref(),
        only.as_deref(),
    )?;
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let wasm_text = wasm.display().to_string();
    let wasm_bytes = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    let goal = host_sim::bench::unmatched_goal(&results);
    let doc = serde_json::json!({
        "tool": "retry-guard bench --paths (host-sim)",
        "wasm": wasm_text,
        "wasm_bytes": wasm_bytes,
        "host_sim_build": build,
        "requests_per_path": n,
        "paths": results,
        "goals": {
            "unmatched_host_calls_at_most_4": goal.map(|g| g.0),
            "unmatched_no_get_header_map_pairs": goal.map(|g| g.1),
        },
    });
    let mut md = host_sim::bench::markdown(&results, &wasm_text, build);
    if segments {
        md.push_str(&host_sim::bench::segments_markdown(&results));
    }
    let dir = retry_guard::paths::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pretty = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("host-sim.json"), format!("{pretty}\n"))
        .map_err(|e| format!("target/bench/host-sim.json: {e}"))?;
    std::fs::write(dir.join("host-sim.md"), &md)
        .map_err(|e| format!("target/bench/host-sim.md: {e}"))?;
    if update_readme {
        if only.is_some() || functions || segments {
            return Err(
                "bench --paths --update-readme: the README's table is every path with the floor, without --only, --functions or --segments"
                    .into(),
            );
        }
        let table = host_sim::bench::markdown(&results, &wasm_text, build);
        update_bench_readme(&table, n)?;
    }
    if json {
        println!("{pretty}");
        return Ok(0);
    }
    print!("{md}");
    if let Some(r) = results.iter().find(|r| r.name == "unmatched") {
        println!("\nhost calls on the unmatched path (per request):");
        for (name, v) in &r.host_calls {
            println!("  {name} ×{v}");
        }
    }
    println!("\nwritten: target/bench/host-sim.json, target/bench/host-sim.md");
    Ok(0)
}

/// The benchmarks' README, whose `host-sim-paths` section `--update-readme` replaces.
const BENCH_README: &str = "bench/README.md";

/// The section's name: its markers are `<!-- host-sim-paths:start -->` and `:end -->`.
const PATHS_SECTION: &str = "host-sim-paths";

/// Replaces the `host-sim-paths` section of bench/README.md with `table` under a line naming
/// the date, the commit and the command.
fn update_bench_readme(table: &str, n: u64) -> Result<(), String> {
    let path = retry_guard::paths::repo_root().join(BENCH_README);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{BENCH_README}: {e}"))?;
    let section = format!(
        "Measured {} at commit {} with `just bench-sim --update-readme` ({n} requests per path).\n\n{table}",
        git_or_date(&["date", "-u", "+%Y-%m-%d"], "unknown date"),
        commit()
    );
    let out = replace_section(&text, PATHS_SECTION, &section)
        .map_err(|e| format!("{BENCH_README}: {e}"))?;
    std::fs::write(&path, out).map_err(|e| format!("{BENCH_README}: {e}"))?;
    eprintln!("updated the {PATHS_SECTION} table of {BENCH_README}");
    Ok(())
}

/// The output of `cmd` (run in the repository's root), trimmed, or `otherwise`.
fn git_or_date(cmd: &[&str], otherwise: &str) -> String {
    std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(retry_guard::paths::repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| otherwise.to_string())
}

/// The short commit checked out, `-dirty` with changes to files other than the READMEs.
fn commit() -> String {
    let head = git_or_date(&["git", "rev-parse", "--short", "HEAD"], "unknown commit");
    let status = git_or_date(
        &["git", "status", "--porcelain", "--untracked-files=no"],
        "",
    );
    let dirty = status.lines().any(|l| {
        l.get(3..)
            .is_some_and(|p| p != "README.md" && p != BENCH_README)
    });
    format!("{head}{}", if dirty { "-dirty" } else { "" })
}

/// `text` with what stands between `<!-- {name}:start -->` and `<!-- {name}:end -->`
/// replaced by `table`. Refused unless each marker stands exactly once, on a line of its own,
/// the start first, and `table` carries no marker: a replacement never reaches another table.
fn replace_section(text: &str, name: &str, table: &str) -> Result<String, String> {
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let once =
        |m: &str| text.matches(m).count() == 1 && text.lines().filter(|l| *l == m).count() == 1;
    let (Some(a), Some(b)) = (text.find(&start), text.find(&end)) else {
        return Err(format!("no {start} / {end} markers"));
    };
    if !once(&start) || !once(&end) || b < a {
        return Err(format!(
            "{start} and {end} must each stand once, on lines of their own, in that order"
        ));
    }
    if table.contains(":start -->") || table.contains(":end -->") {
        return Err(format!("the table for {start} holds a section marker"));
    }
    let table = table.trim_end_matches('\n');
    Ok(format!("{}{start}\n{table}\n\n{}", &text[..a], &text[b..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_section_is_replaced_between_its_own_markers_only() {
        let text = "a\n<!-- host-sim-paths:start -->\nold\n<!-- host-sim-paths:end -->\n<!-- bench-upstream:start -->\nkeep\n<!-- bench-upstream:end -->\n";
        let out = replace_section(text, PATHS_SECTION, "new\n").unwrap();
        assert_eq!(
            out,
            "a\n<!-- host-sim-paths:start -->\nnew\n\n<!-- host-sim-paths:end -->\n<!-- bench-upstream:start -->\nkeep\n<!-- bench-upstream:end -->\n"
        );
        assert_eq!(replace_section(&out, PATHS_SECTION, "new").unwrap(), out);
        assert!(replace_section("x", PATHS_SECTION, "t").is_err());
        let twice = format!("{text}{text}");
        assert!(replace_section(&twice, PATHS_SECTION, "t").is_err());
        let reversed = "<!-- host-sim-paths:end -->\n<!-- host-sim-paths:start -->\n";
        assert!(replace_section(reversed, PATHS_SECTION, "t").is_err());
        assert!(replace_section(text, PATHS_SECTION, "<!-- x:start -->").is_err());
    }

    #[test]
    fn the_bench_readme_has_the_paths_section_once() {
        let path = retry_guard::paths::repo_root().join(BENCH_README);
        let text = std::fs::read_to_string(path).unwrap();
        assert!(replace_section(&text, PATHS_SECTION, "t").is_ok());
    }
}

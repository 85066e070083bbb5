//! `check`: the deployment around retry-guard, not only its plugin configuration.
//!
//! Functional core, imperative shell: [`check`] reads the files and prints; [`model::load`]
//! turns their texts into one [`model::Deployment`] (plugin configurations with where each
//! came from and the wasm filter settings around it, Envoy routes, VirtualService routes);
//! [`lint::lint`] runs pure lint functions over it and returns every finding, each with its
//! file, its YAML/JSON path and what to change. What the lints look for: `cli/README.md`,
//! "check: what it lints".

pub mod lint;
pub mod matching;
pub mod model;

use serde_json::{json, Value};

use crate::{take_opt, USAGE};
use lint::{Finding, Severity};
use model::{Deployment, PluginSource, RouteKind};

/// The plugin configuration (as JSON bytes) of a JSON file, an Istio WasmPlugin, an Envoy
/// bootstrap or an EnvoyFilter: the first one found in the text.
pub fn config_from_text(text: &str, name: &str) -> Result<Vec<u8>, String> {
    let dep = model::load(&[(name.to_string(), text.to_string())]).map_err(|e| e.join("\n"))?;
    dep.configs
        .into_iter()
        .next()
        .map(|c| c.text.into_bytes())
        .ok_or_else(|| format!("{name}: no plugin configuration"))
}

/// Output format.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

/// `retry-guard check [--format text|json] <file>...`: exit 0 clean (warnings allowed), 1 on
/// any error finding, 2 (through `Err`) when an input cannot be read.
pub fn check(mut args: Vec<String>) -> Result<i32, String> {
    let format = match take_opt(&mut args, "--format")?.as_deref() {
        None | Some("text") => Format::Text,
        Some("json") => Format::Json,
        Some(other) => {
            return Err(format!(
                "--format {other:?}: expected text or json\n\n{USAGE}"
            ))
        }
    };
    if let Some(opt) = args.iter().find(|a| a.starts_with("--")) {
        return Err(format!("unknown option {opt}\n\n{USAGE}"));
    }
    if args.is_empty() {
        return Err(format!("check takes at least one file\n\n{USAGE}"));
    }
    // Every reason for exit code 2 at once: files that cannot be read, then files that cannot
    // be parsed; "no plugin configuration" only when every file was read.
    let mut inputs = Vec::new();
    let mut unreadable = Vec::new();
    for file in &args {
        match std::fs::read_to_string(file) {
            Ok(text) => inputs.push((file.clone(), text)),
            Err(e) => unreadable.push(format!("cannot read {file}: {e}")),
        }
    }
    let (dep, errors) = model::read(&inputs);
    unreadable.extend(errors);
    if unreadable.is_empty() && dep.configs.is_empty() {
        let files: Vec<&str> = args.iter().map(String::as_str).collect();
        unreadable.push(model::no_configuration(&files));
    }
    if !unreadable.is_empty() {
        return Err(unreadable.join("\n"));
    }
    let findings = lint::lint(&dep);
    let errors = count(&findings, Severity::Error);
    match format {
        Format::Text => print!("{}", text_report(&dep, &findings)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json_report(&dep, &findings))
                .map_err(|e| e.to_string())?
        ),
    }
    Ok(if errors > 0 { 1 } else { 0 })
}

fn count(findings: &[Finding], severity: Severity) -> usize {
    findings.iter().filter(|f| f.severity == severity).count()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `valid — 6 route(s) (...), mode enforce, ...` or `invalid — ...`.
fn config_summary(c: &PluginSource) -> String {
    match &c.parsed {
        Ok(c) => format!(
            "valid — {} route(s) ({}), mode {}, ledger {}, confirmation {}",
            c.routes.len(),
            c.routes
                .iter()
                .map(|r| format!("{}: {}", r.name, r.class.name()))
                .collect::<Vec<_>>()
                .join(", "),
            c.mode.name(),
            match &c.ledger.backend {
                retry_guard::config::LedgerBackend::SharedData => {
                    format!("shared data, {} entries per table", c.max_entries)
                }
                retry_guard::config::LedgerBackend::Etcd(e) =>
                    format!("etcd (cluster {})", e.cluster),
            },
            match &c.confirmation {
                Some(k) => format!(
                    "keys {}",
                    k.keys
                        .iter()
                        .map(|(id, _)| id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "off".into(),
            }
        ),
        Err(_) => "invalid — see the error below".to_string(),
    }
}

/// What was not checked, and why.
fn notes(dep: &Deployment) -> Vec<&'static str> {
    if dep.routes.is_empty() {
        vec![
            "no routes given (no Envoy route_config, no VirtualService): route names and retry \
             policies were not checked; give the Envoy bootstrap or the VirtualServices too",
        ]
    } else {
        Vec::new()
    }
}

/// The human report: one line per plugin configuration, one per finding, a count line.
fn text_report(dep: &Deployment, findings: &[Finding]) -> String {
    let mut out = String::new();
    for c in &dep.configs {
        let file = dep.files.get(c.file).map(String::as_str).unwrap_or("");
        let several = dep.configs.iter().filter(|x| x.file == c.file).count() > 1;
        if several {
            out.push_str(&format!("{file} ({}): {}\n", c.path, config_summary(c)));
        } else {
            out.push_str(&format!("{file}: {}\n", config_summary(c)));
        }
    }
    for f in findings {
        if f.path.is_empty() {
            out.push_str(&format!(
                "{}: {}: {}\n",
                f.severity.name(),
                f.file,
                f.message
            ));
        } else {
            out.push_str(&format!(
                "{}: {}: {}: {}\n",
                f.severity.name(),
                f.file,
                f.path,
                f.message
            ));
        }
    }
    for n in notes(dep) {
        out.push_str(&format!("note: {n}\n"));
    }
    let envoy = dep
        .routes
        .iter()
        .filter(|r| r.kind == RouteKind::Envoy)
        .count();
    let vs = dep.routes.len() - envoy;
    out.push_str(&format!(
        "{}, {} in {}: {}, {}, {}\n",
        plural(count(findings, Severity::Error), "error", "errors"),
        plural(count(findings, Severity::Warning), "warning", "warnings"),
        plural(dep.files.len(), "file", "files"),
        plural(
            dep.configs.len(),
            "plugin configuration",
            "plugin configurations"
        ),
        plural(envoy, "Envoy route", "Envoy routes"),
        plural(
            vs,
            "VirtualService http route",
            "VirtualService http routes"
        ),
    ));
    out
}

/// `{"findings": [...], "errors": N, "warnings": M, "configurations": [...]}`.
fn json_report(dep: &Deployment, findings: &[Finding]) -> Value {
    let configurations: Vec<Value> = dep
        .configs
        .iter()
        .map(|c| {
            let routes: Vec<Value> = match &c.parsed {
                Ok(cfg) => cfg
                    .routes
                    .iter()
                    .map(|r| json!({"name": r.name, "class": r.class.name()}))
                    .collect(),
                Err(_) => Vec::new(),
            };
            json!({
                "file": dep.files.get(c.file),
                "path": c.path,
                "source": c.source.name(),
                "valid": c.parsed.is_ok(),
                "routes": routes,
            })
        })
        .collect();
    json!({
        "findings": findings.iter().map(|f| json!({
            "severity": f.severity.name(),
            "file": f.file,
            "path": f.path,
            "message": f.message,
        })).collect::<Vec<_>>(),
        "errors": count(findings, Severity::Error),
        "warnings": count(findings, Severity::Warning),
        "configurations": configurations,
        "notes": notes(dep),
        "routes": {
            "envoy": dep.routes.iter().filter(|r| r.kind == RouteKind::Envoy).count(),
            "virtualservice": dep.routes.iter().filter(|r| r.kind == RouteKind::VirtualService).count(),
        },
    })
}

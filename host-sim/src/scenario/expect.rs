//! Checking a request step's `expect` block against what happened.

use serde_json::{Map, Value};

use crate::sim::Exchange;

/// Fields an `expect` block may have.
pub const EXPECT_FIELDS: &[&str] = &[
    "status", "headers", "body", "problem", "upstream", "decision", "audit", "outcome", "logs",
    "flags", "stalled", "trap",
];

/// The JSON records of this exchange's `retry-guard audit {...}` lines.
pub fn audit_records(ex: &Exchange) -> Vec<Value> {
    const MARK: &str = "retry-guard audit ";
    ex.logs
        .iter()
        .filter_map(|l| {
            let at = l.message.find(MARK)? + MARK.len();
            serde_json::from_str(&l.message[at..]).ok()
        })
        .collect()
}

/// Does `actual` contain `want` (objects: every member of `want` matches; `null` means the
/// member is absent; `{"present": true}` any value; `{"min": a, "max": b}`, either bound alone,
/// a number in that range)?
pub fn subset(want: &Value, actual: Option<&Value>) -> Result<(), String> {
    match (want, actual) {
        (Value::Object(w), a) if !w.is_empty() && w.keys().all(|k| k == "min" || k == "max") => {
            let bound = |k: &str| w.get(k).and_then(Value::as_f64);
            match a.and_then(Value::as_f64) {
                Some(v)
                    if bound("min").is_none_or(|min| v >= min)
                        && bound("max").is_none_or(|max| v <= max) =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "expected a number in {}, got {}",
                    Value::Object(w.clone()),
                    a.map_or("nothing".to_string(), Value::to_string)
                )),
            }
        }
        (Value::Null, None | Some(Value::Null)) => Ok(()),
        (Value::Null, Some(a)) => Err(format!("expected absent, got {a}")),
        (Value::Object(w), a) if w.len() == 1 && w.contains_key("present") => {
            let want_present = w["present"].as_bool().unwrap_or(true);
            match (want_present, a.is_some_and(|v| !v.is_null())) {
                (true, true) | (false, false) => Ok(()),
                (true, false) => Err("expected present, got absent".into()),
                (false, true) => Err(format!(
                    "expected absent, got {}",
                    a.cloned().unwrap_or_default()
                )),
            }
        }
        (Value::Object(w), a) if w.len() == 1 && w.contains_key("contains") => {
            let needle = w["contains"].as_str().unwrap_or_default();
            match a.and_then(Value::as_str) {
                Some(s) if s.contains(needle) => Ok(()),
                _ => Err(format!(
                    "expected text containing {needle:?}, got {}",
                    a.cloned().unwrap_or_default()
                )),
            }
        }
        (Value::Object(w), Some(Value::Object(a))) => {
            for (k, wv) in w {
                subset(wv, a.get(k)).map_err(|e| format!("{k}: {e}"))?;
            }
            Ok(())
        }
        (w, Some(a)) if w == a => Ok(()),
        (Value::Number(w), Some(Value::Number(a))) if w.as_f64() == a.as_f64() => Ok(()),
        (w, a) => Err(format!(
            "expected {w}, got {}",
            a.map_or("nothing".to_string(), Value::to_string)
        )),
    }
}

fn header_map(pairs: &[(String, String)]) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.entry(k.clone())
            .or_insert_with(|| Value::String(v.clone()));
    }
    m
}

fn headers(want: &Value, pairs: &[(String, String)], what: &str, out: &mut Vec<String>) {
    let Some(w) = want.as_object() else {
        out.push(format!(
            "{what}: expectation must be an object of name: value"
        ));
        return;
    };
    let actual = header_map(pairs);
    for (k, wv) in w {
        if let Err(e) = subset(wv, actual.get(&k.to_ascii_lowercase())) {
            out.push(format!("{what} {k}: {e}"));
        }
    }
}

/// Checks `expect` against an exchange; returns the failures (empty: all good).
pub fn check(expect: &Map<String, Value>, ex: &Exchange, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    for k in expect.keys() {
        if !EXPECT_FIELDS.contains(&k.as_str()) {
            out.push(format!(
                "{at}.expect.{k}: unknown expectation; expected one of {}",
                EXPECT_FIELDS.join(", ")
            ));
        }
    }
    let want_stalled = expect
        .get("stalled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match (&ex.stalled, want_stalled) {
        (Some(m), false) => out.push(format!("the request stalled: {m}")),
        (None, true) => out.push("expected the request to stall, but it completed".into()),
        _ => {}
    }
    let want_trap = expect.get("trap").and_then(Value::as_bool).unwrap_or(false);
    match (&ex.trap, want_trap) {
        (Some(t), false) => out.push(t.to_string()),
        (None, true) => out.push("expected a wasm trap, none happened".into()),
        _ => {}
    }
    for m in &ex.misuse {
        out.push(format!("host misuse: {m}"));
    }
    if let Some(s) = expect.get("status") {
        if s.as_u64() != Some(u64::from(ex.status)) {
            out.push(format!("status: expected {s}, got {}", ex.status));
        }
    }
    if let Some(h) = expect.get("headers") {
        headers(h, &ex.headers, "response header", &mut out);
    }
    let body_json = ex.json();
    if let Some(p) = expect.get("problem").and_then(Value::as_str) {
        let want = format!("urn:retry-guard:problem:{p}");
        let got = body_json
            .as_ref()
            .and_then(|b| b.get("type"))
            .and_then(Value::as_str);
        if got != Some(want.as_str()) {
            out.push(format!(
                "problem type: expected {want}, got {}",
                got.unwrap_or("no problem document")
            ));
        }
    }
    if let Some(b) = expect.get("body") {
        match (b, &body_json) {
            (Value::String(s), _) => {
                let text = String::from_utf8_lossy(&ex.body);
                if text != *s {
                    out.push(format!("body: expected {s:?}, got {text:?}"));
                }
            }
            (w, Some(a)) => {
                if let Err(e) = subset(w, Some(a)) {
                    out.push(format!("body {e}"));
                }
            }
            (_, None) => out.push(format!(
                "body: expected JSON, got {:?}",
                String::from_utf8_lossy(&ex.body)
            )),
        }
    }
    if let Some(u) = expect.get("upstream") {
        match (u, &ex.upstream) {
            (Value::Bool(true), None) => {
                out.push("upstream: expected to receive the request, it did not".into())
            }
            (Value::Bool(false), Some(_)) => {
                out.push("upstream: expected not to receive the request, it did".into())
            }
            (Value::Object(w), Some(r)) => {
                if let Some(h) = w.get("headers") {
                    headers(h, &r.headers, "upstream header", &mut out);
                }
                if let Some(b) = w.get("body").and_then(Value::as_str) {
                    let got = String::from_utf8_lossy(&r.body);
                    if got != b {
                        out.push(format!("upstream body: expected {b:?}, got {got:?}"));
                    }
                }
            }
            (Value::Object(_), None) => {
                out.push("upstream: expected to receive the request, it did not".into())
            }
            _ => {}
        }
    }
    if let Some(d) = expect.get("decision") {
        let got = ex.filter_state.get("wasm.retry_guard.decision");
        if got.map(|s| Value::String(s.clone())).as_ref() != Some(d)
            && !(d.is_null() && got.is_none())
        {
            out.push(format!(
                "decision (filter state wasm.retry_guard.decision): expected {d}, got {}",
                got.map_or("none".into(), |s| format!("{s:?}"))
            ));
        }
    }
    let records = audit_records(ex);
    // One line per request (written when its stream ends). `audit` and `outcome` are both
    // subsets of it; `outcome` (from format 1, when the outcome had a line of its own) reads
    // the members that say what became of the attempt, and `null` there expects none.
    let rec = records.last();
    if let Some(w) = expect.get("audit") {
        match (w, rec) {
            (Value::Null, None) => {}
            (Value::Null, Some(r)) => out.push(format!("audit: expected no audit line, got {r}")),
            (_, None) => out.push("audit: no `retry-guard audit` line for this request".into()),
            (w, Some(r)) => {
                if let Err(e) = subset(w, Some(r)) {
                    out.push(format!("audit {e}"));
                }
            }
        }
    }
    if let Some(w) = expect.get("outcome") {
        let recorded = rec.filter(|r| !r["outcome"].is_null());
        match (w, recorded) {
            (Value::Null, None) => {}
            (Value::Null, Some(r)) => out.push(format!(
                "outcome: expected none recorded, the audit line says {}",
                r["outcome"]
            )),
            (_, None) => out.push("outcome: the audit line records no outcome".into()),
            (w, Some(r)) => {
                if let Err(e) = subset(w, Some(r)) {
                    out.push(format!("outcome {e}"));
                }
            }
        }
    }
    if let Some(f) = expect.get("flags") {
        if f.as_u64() != Some(ex.response_flags) {
            out.push(format!(
                "response flags: expected {f}, got {}",
                ex.response_flags
            ));
        }
    }
    if let Some(l) = expect.get("logs") {
        let lines: Vec<&str> = ex.logs.iter().map(|l| l.message.as_str()).collect();
        log_check(l, &lines, &mut out);
    }
    out
}

/// Checks `{"contains": [...], "not_contains": [...]}` against log lines.
pub fn log_check(want: &Value, lines: &[&str], out: &mut Vec<String>) {
    let list = |k: &str| -> Vec<String> {
        match want.get(k) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    };
    for needle in list("contains") {
        if !lines.iter().any(|l| l.contains(&needle)) {
            out.push(format!("log: no line contains {needle:?}"));
        }
    }
    for needle in list("not_contains") {
        if let Some(l) = lines.iter().find(|l| l.contains(&needle)) {
            out.push(format!("log: unexpected line {l:?}"));
        }
    }
}

/// Checks metric expectations: `name: n` (exact) or `name: {"min": a, "max": b}`.
pub fn metrics(
    want: &Map<String, Value>,
    actual: &std::collections::BTreeMap<String, u64>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, w) in want {
        let got = actual.get(name).copied();
        let ok = match w {
            Value::Number(n) => got.unwrap_or(0) == n.as_u64().unwrap_or(u64::MAX),
            Value::Object(m) => {
                let v = got.unwrap_or(0);
                m.get("min")
                    .and_then(Value::as_u64)
                    .is_none_or(|min| v >= min)
                    && m.get("max")
                        .and_then(Value::as_u64)
                        .is_none_or(|max| v <= max)
            }
            _ => false,
        };
        if !ok {
            out.push(format!(
                "metric {name}: expected {w}, got {}",
                got.map_or("undefined".into(), |v| v.to_string())
            ));
        }
    }
    out
}

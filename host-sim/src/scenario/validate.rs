//! Checking a scenario whole before its first step runs: every problem in the file is reported
//! at once (unknown members, expectations of the wrong form, references to steps that do not
//! exist), instead of one at a time as the run reaches it.
//!
//! Only the form is checked here; what needs a run (a challenge an earlier step did get, a
//! header an earlier step did send) is still reported by the step that needs it.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::expect::EXPECT_FIELDS;
use super::run::{parse_order, Flood, STEP_KINDS};
use super::values::{self, REQUEST_FIELDS};

/// Members of a step besides its kind.
const STEP_COMMON: &[&str] = &["name", "note"];
/// Members of a `confirmation` header value.
const CONFIRMATION_FIELDS: &[&str] = &[
    "raw", "from", "chl", "fp", "key", "kid", "sub", "iat", "exp", "tamper",
];
/// Members of an `upstream` behaviour.
const UPSTREAM_FIELDS: &[&str] = &["status", "headers", "body", "delay", "fail"];

/// Every problem of form in the scenario document, each naming its path (`steps[3].expect.x`).
pub fn validate(scenario: &Value) -> Vec<String> {
    let mut v = Validator {
        out: Vec::new(),
        names: HashSet::new(),
    };
    if let Some(d) = scenario.get("request_defaults") {
        match d.as_object() {
            Some(d) if d.contains_key("same_as") => v
                .out
                .push("request_defaults.same_as: defaults cannot copy a step".into()),
            Some(d) => v.request(d, "request_defaults", false),
            None => v.out.push("request_defaults: an object".into()),
        }
    }
    if let Some(e) = scenario.get("etcd") {
        match e.as_object() {
            Some(m) => {
                v.unknown(m, &["cluster"], "etcd", "etcd member");
                if m.get("cluster").is_some_and(|c| !c.is_string()) {
                    v.out.push(
                        "etcd.cluster: the Envoy cluster name the plugin's ledger names".into(),
                    );
                }
            }
            None => v
                .out
                .push("etcd: an object, e.g. {\"cluster\": \"etcd\"}".into()),
        }
    }
    let steps = scenario
        .get("steps")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, step) in steps.iter().enumerate() {
        v.step(step, &format!("steps[{i}]"));
    }
    v.out
}

struct Validator {
    out: Vec<String>,
    /// Names of the request steps (and concurrent requests) seen so far.
    names: HashSet<String>,
}

impl Validator {
    fn unknown(&mut self, obj: &Map<String, Value>, allowed: &[&str], at: &str, what: &str) {
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) {
                self.out.push(format!(
                    "{at}.{k}: unknown {what}; expected one of {}",
                    allowed.join(", ")
                ));
            }
        }
    }

    fn step(&mut self, step: &Value, at: &str) {
        let Some(obj) = step.as_object() else {
            self.out.push(format!("{at}: a step is an object"));
            return;
        };
        let Some(kind) = STEP_KINDS.iter().find(|k| obj.contains_key(**k)).copied() else {
            if obj.contains_key("note") {
                self.unknown(obj, STEP_COMMON, at, "member of a note step");
            } else {
                self.out.push(format!(
                    "{at}: a step has one of {} (or only a note)",
                    STEP_KINDS.join(", ")
                ));
            }
            return;
        };
        let mut allowed = STEP_COMMON.to_vec();
        allowed.push(kind);
        if kind == "request" {
            allowed.push("expect");
        }
        self.unknown(obj, &allowed, at, &format!("member of a {kind} step"));
        let body = &obj[kind];
        let inner = format!("{at}.{kind}");
        match kind {
            "request" => {
                self.request_value(body, &inner);
                if let Some(e) = obj.get("expect") {
                    self.expect(e, &format!("{at}.expect"));
                }
                if let Some(n) = obj.get("name").and_then(Value::as_str) {
                    self.names.insert(n.to_string());
                }
            }
            "advance" => {
                if let Err(e) = values::duration_ms(body, &inner) {
                    self.out.push(e);
                }
            }
            "metrics" => self.metrics(body, &inner),
            "log" => self.logs(body, &inner),
            "flood" => match Flood::parse(body, at) {
                Err(e) => self.out.push(e),
                Ok(_) => {
                    if let Some(f) = body.as_object() {
                        self.unknown(f, &["count", "request", "expect"], &inner, "flood member");
                        if let Some(r) = f.get("request") {
                            self.request_value(r, &format!("{inner}.request"));
                        }
                        if let Some(e) = f.get("expect") {
                            self.expect(e, &format!("{inner}.expect"));
                        }
                    }
                }
            },
            "concurrent" => self.concurrent(body, &inner),
            _ => {}
        }
    }

    fn request_value(&mut self, req: &Value, at: &str) {
        match req.as_object() {
            Some(r) => self.request(r, at, true),
            None => self.out.push(format!("{at}: a request is an object")),
        }
    }

    fn request(&mut self, r: &Map<String, Value>, at: &str, may_copy: bool) {
        self.unknown(r, REQUEST_FIELDS, at, "request field");
        if let Some(s) = r.get("same_as") {
            match s.as_str() {
                Some(name) if may_copy => self.reference(name, &format!("{at}.same_as")),
                _ => self
                    .out
                    .push(format!("{at}.same_as: the name of an earlier request step")),
            }
        }
        for k in ["method", "path", "authority", "route_name", "peer_identity"] {
            if r.get(k).is_some_and(|v| !v.is_string()) {
                self.out.push(format!("{at}.{k}: a string"));
            }
        }
        if r.get("disconnect")
            .is_some_and(|d| super::values::disconnect(d).is_none())
        {
            self.out.push(format!(
                "{at}.disconnect: \"before_response\" or \"during_response_body\""
            ));
        }
        if let Some(m) = r.get("dynamic_metadata") {
            if !m
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_object))
            {
                self.out.push(format!(
                    "{at}.dynamic_metadata: an object of filter namespace: {{key: value}}"
                ));
            }
        }
        if r.get("worker").is_some_and(|w| !w.is_u64()) {
            self.out
                .push(format!("{at}.worker: a worker index (0, 1, ...)"));
        }
        if let Some(h) = r.get("headers") {
            match h.as_object() {
                Some(h) => {
                    for (name, value) in h {
                        self.header(value, &format!("{at}.headers.{name}"));
                    }
                }
                None => self
                    .out
                    .push(format!("{at}.headers: an object of name: value")),
            }
        }
        if let Some(b) = r.get("body") {
            if !matches!(b, Value::String(_) | Value::Object(_) | Value::Array(_)) {
                self.out.push(format!(
                    "{at}.body: a string, {{\"repeat\": text, \"count\": n}} or JSON"
                ));
            }
        }
        if r.get("body_chunks").is_some_and(|c| !c.is_array()) {
            self.out
                .push(format!("{at}.body_chunks: a list of strings"));
        }
        if r.get("trailers").is_some_and(|t| !t.is_object()) {
            self.out
                .push(format!("{at}.trailers: an object of name: value"));
        }
        if let Some(u) = r.get("upstream") {
            match u.as_object() {
                Some(obj) => {
                    self.unknown(
                        obj,
                        UPSTREAM_FIELDS,
                        &format!("{at}.upstream"),
                        "upstream member",
                    );
                    let mut spec = Map::new();
                    spec.insert("upstream".into(), u.clone());
                    if let Err(e) = values::upstream(&spec, at) {
                        self.out.push(e);
                    }
                }
                None => self.out.push(format!("{at}.upstream: an object")),
            }
        }
    }

    fn header(&mut self, value: &Value, at: &str) {
        match value {
            Value::String(_) | Value::Number(_) | Value::Null => {}
            Value::Object(m) => {
                if let Some(c) = m.get("confirmation") {
                    match c.as_object() {
                        Some(c) => {
                            self.unknown(
                                c,
                                CONFIRMATION_FIELDS,
                                &format!("{at}.confirmation"),
                                "confirmation member",
                            );
                            if let Some(from) = c.get("from").and_then(Value::as_str) {
                                self.reference(from, &format!("{at}.confirmation.from"));
                            }
                        }
                        None => self.out.push(format!("{at}.confirmation: an object")),
                    }
                } else if m.contains_key("repeat") {
                    self.unknown(m, &["repeat", "count"], at, "member of a repeated value");
                    if !m.get("count").is_some_and(Value::is_u64) {
                        self.out
                            .push(format!("{at}: {{\"repeat\": ...}} needs \"count\""));
                    }
                } else if let Some(step) = m.get("same_as") {
                    match step.as_str() {
                        Some(s) => self.reference(s, &format!("{at}.same_as")),
                        None => self
                            .out
                            .push(format!("{at}.same_as: the name of an earlier request step")),
                    }
                } else if !(m.len() == 1 && (m.contains_key("jwt") || m.contains_key("bearer_jwt")))
                {
                    self.out.push(format!(
                        "{at}: unknown header value {value}; use a string or one of \
                         {{\"jwt\": claims}}, {{\"bearer_jwt\": claims}}, \
                         {{\"confirmation\": {{...}}}}, {{\"same_as\": step}}, \
                         {{\"repeat\": text, \"count\": n}}"
                    ));
                }
            }
            other => self.out.push(format!(
                "{at}: a header value is a string or an object, got {other}"
            )),
        }
    }

    fn reference(&mut self, name: &str, at: &str) {
        if !self.names.contains(name) {
            self.out.push(format!(
                "{at}: no earlier request step is named {name:?}; name the step with \"name\""
            ));
        }
    }

    fn expect(&mut self, e: &Value, at: &str) {
        let Some(e) = e.as_object() else {
            self.out.push(format!("{at}: an object of expectations"));
            return;
        };
        for (k, v) in e {
            let form_ok = match k.as_str() {
                "status" => v.as_u64().is_some_and(|s| (100..=599).contains(&s)),
                "flags" => v.is_u64(),
                "headers" => v.is_object(),
                "body" => matches!(v, Value::String(_) | Value::Object(_) | Value::Array(_)),
                "problem" => v.is_string(),
                "upstream" => v.is_boolean() || v.is_object(),
                "decision" => v.is_string() || v.is_null(),
                "audit" | "outcome" => v.is_object() || v.is_null(),
                "stalled" | "trap" => v.is_boolean(),
                "logs" => {
                    self.logs(v, &format!("{at}.logs"));
                    true
                }
                _ => {
                    self.out.push(format!(
                        "{at}.{k}: unknown expectation; expected one of {}",
                        EXPECT_FIELDS.join(", ")
                    ));
                    true
                }
            };
            if !form_ok {
                self.out.push(format!(
                    "{at}.{k}: {v} is not a form this expectation takes; it takes {}",
                    expectation_form(k)
                ));
            }
            if k == "upstream" {
                if let Some(u) = v.as_object() {
                    self.unknown(
                        u,
                        &["headers", "body"],
                        &format!("{at}.upstream"),
                        "upstream expectation",
                    );
                }
            }
        }
    }

    fn logs(&mut self, v: &Value, at: &str) {
        let Some(m) = v.as_object() else {
            self.out.push(format!(
                "{at}: an object {{\"contains\": [...], \"not_contains\": [...]}}"
            ));
            return;
        };
        self.unknown(m, &["contains", "not_contains"], at, "log expectation");
        for (k, v) in m {
            let ok = v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
            if !ok {
                self.out
                    .push(format!("{at}.{k}: a string or a list of strings"));
            }
        }
    }

    fn metrics(&mut self, v: &Value, at: &str) {
        let Some(m) = v.as_object() else {
            self.out.push(format!("{at}: an object name: value"));
            return;
        };
        for (name, want) in m {
            let ok = match want {
                Value::Number(n) => n.is_u64(),
                Value::Object(o) => {
                    o.keys().all(|k| k == "min" || k == "max") && o.values().all(Value::is_u64)
                }
                _ => false,
            };
            if !ok {
                self.out.push(format!(
                    "{at}.{name}: a count, or {{\"min\": a, \"max\": b}}"
                ));
            }
        }
    }

    fn concurrent(&mut self, c: &Value, at: &str) {
        let Some(obj) = c.as_object() else {
            self.out.push(format!("{at}: an object"));
            return;
        };
        self.unknown(obj, &["requests", "order", "note"], at, "concurrent member");
        let Some(reqs) = obj.get("requests").and_then(Value::as_array) else {
            self.out.push(format!("{at}.requests: a list"));
            return;
        };
        let mut here = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let ra = format!("{at}.requests[{i}]");
            let Some(r) = r.as_object() else {
                self.out.push(format!("{ra}: an object"));
                continue;
            };
            self.unknown(r, &["name", "request", "expect"], &ra, "member");
            match r.get("name").and_then(Value::as_str) {
                Some(n) => here.push(n.to_string()),
                None => self.out.push(format!("{ra}.name: required")),
            }
            match r.get("request") {
                Some(q) => self.request_value(q, &format!("{ra}.request")),
                None => self.out.push(format!("{ra}.request: required")),
            }
            if let Some(e) = r.get("expect") {
                self.expect(e, &format!("{ra}.expect"));
            }
        }
        if let Some(order) = obj.get("order") {
            match order
                .as_array()
                .map(|o| parse_order(o, &format!("{at}.order")))
            {
                Some(Ok(entries)) => {
                    for e in entries {
                        let name = match &e {
                            super::run::Entry::Request { name, .. }
                            | super::run::Entry::Response { name } => name,
                        };
                        if !here.contains(name) {
                            self.out.push(format!(
                                "{at}.order: {name:?} is not one of this step's requests ({})",
                                here.join(", ")
                            ));
                        }
                    }
                }
                Some(Err(e)) => self.out.push(e),
                None => self.out.push(format!("{at}.order: a list")),
            }
        }
        self.names.extend(here);
    }
}

/// The forms an expectation takes, for the error message.
fn expectation_form(k: &str) -> &'static str {
    match k {
        "status" => "an HTTP status (100..599)",
        "flags" => "Envoy's response flags as a number",
        "headers" => "an object of name: value",
        "body" => "a string (exact) or JSON (a subset of the answer)",
        "problem" => "a problem type's last part, e.g. \"confirmation-required\"",
        "upstream" => "true, false or {\"headers\": ..., \"body\": ...}",
        "decision" => "a decision name or null",
        "audit" | "outcome" => "an object (a subset of the audit record) or null",
        "stalled" | "trap" => "true or false",
        _ => "another form",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_scenario_has_no_problems() {
        let sc = json!({"steps": [
            {"note": "first"},
            {"name": "first", "request": {"path": "/oauth/token", "body": "a=1",
              "upstream": {"status": 503}},
             "expect": {"status": 200, "upstream": true, "audit": {"decision": "allow"},
                        "logs": {"contains": "x"}}},
            {"advance": "2s"},
            {"request": {"same_as": "first", "headers": {"retry-guard-confirmation":
                {"confirmation": {"from": "first"}}}}, "expect": {"problem": "do-not-retry"}},
            {"concurrent": {"requests": [{"name": "a", "request": {}}, {"name": "b", "request": {}}],
                            "order": ["a:request", "b:request", "a:response", "b:response"]}},
            {"metrics": {"retry_guard.decision.allow": 1, "x": {"min": 1}}},
            {"flood": {"count": 3, "request": {"path": "/x/{i}"}, "expect": {"status": 200}}}
        ]});
        assert_eq!(validate(&sc), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let sc = json!({"steps": [
            {"request": {"pth": "/x", "upstream": {"status": 200, "dealy": 1}},
             "expect": {"status": "200", "upstream": "yes", "stauts": 200}},
            {"request": {"same_as": "never", "headers": {"h": {"confirmation": {"from": "nope"}}}}},
            {"advance": "soon"},
            {"concurrent": {"requests": [{"name": "a", "request": {}}], "order": ["b:request"]}},
            {"requset": {}}
        ]});
        let problems = validate(&sc);
        let expected_starts = [
            "steps[0].request.pth: unknown request field",
            "steps[0].request.upstream.dealy: unknown upstream member",
            "steps[0].expect.status: \"200\" is not a form",
            "steps[0].expect.stauts: unknown expectation",
            "steps[0].expect.upstream: \"yes\" is not a form",
            "steps[1].request.same_as: no earlier request step is named \"never\"",
            "steps[1].request.headers.h.confirmation.from: no earlier request step is named \"nope\"",
            "steps[2].advance: \"soon\" is not a duration",
            "steps[3].concurrent.order: \"b\" is not one of this step's requests",
            "steps[4]: a step has one of",
        ];
        for want in expected_starts {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "missing {want:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected_starts.len(), "{problems:#?}");
    }
}

//! Helpers shared by the end-to-end test files that run the bundled gateway
//! (`envoy/envoy.yaml`, see `retry_guard_e2e::gateway`).
#![allow(dead_code)] // each test file uses a different subset

use std::time::{Duration, Instant};

use retry_guard_e2e::backend::{Backend, RecordedRequest, CASE_HEADER};
use retry_guard_e2e::client::Response;
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::fixture::Fixture;
use retry_guard_e2e::gateway::{envoy_yaml, TestGateway, UPSTREAM_HEADER};
use retry_guard_e2e::tokens::b64url_decode;
use retry_guard_e2e::{bail, Error, Result};
use serde_json::Value;

pub const CONFIRMATION_HEADER: &str = "retry-guard-confirmation";
pub const CHALLENGE_HEADER: &str = "retry-guard-challenge";

/// The bundled gateway in front of a scripted backend.
pub struct Gateway {
    pub envoy: Envoy,
    pub backend: Backend,
}

impl Fixture for Gateway {
    fn keep_artifacts(&self) {
        self.envoy.keep_run_dir();
    }
}

impl Gateway {
    /// Starts the bundled gateway (optionally with another plugin configuration).
    pub fn start(name: &str, plugin_config: Option<Value>, concurrency: u32) -> Result<Gateway> {
        let backend = Backend::start()?;
        let mut tg = TestGateway::new();
        if let Some(pc) = plugin_config {
            tg = tg.plugin_config(pc);
        }
        let bootstrap = tg.build(&envoy_yaml()?, backend.addr())?;
        let envoy = Envoy::builder(name, backend.addr())
            .bootstrap(bootstrap)
            .concurrency(concurrency)
            .start()?;
        Ok(Gateway { envoy, backend })
    }

    /// Sends `req` (its case header and `x-request-id` set from `req.case`).
    pub fn send(&self, req: &Req) -> Result<Response> {
        send_to(&self.envoy, req)
    }

    /// The audit records of this request id (one per request since issue 15), waiting (bounded) until
    /// `pred` holds for them.
    pub fn audit_for(
        &self,
        request_id: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let recs: Vec<Value> = self
                .envoy
                .audit_records()
                .into_iter()
                .filter(|r| r["request_id"] == request_id)
                .collect();
            if pred(&recs) {
                return Ok(recs);
            }
            if Instant::now() >= deadline {
                self.envoy.keep_run_dir();
                bail!("audit lines of {request_id} after 10 s: {recs:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The one audit line of this request id.
    pub fn decision(&self, request_id: &str) -> Result<Value> {
        let recs = self.audit_for(request_id, |r| r.iter().any(is_decision))?;
        let decisions: Vec<&Value> = recs.iter().filter(|r| is_decision(r)).collect();
        if decisions.len() != 1 {
            bail!("expected one decision line for {request_id}, got {decisions:#?}");
        }
        Ok(decisions[0].clone())
    }

    /// This request id's audit line, once it names an outcome.
    pub fn outcome(&self, request_id: &str) -> Result<Value> {
        let recs = self.audit_for(request_id, |r| r.iter().any(|x| !x["outcome"].is_null()))?;
        recs.into_iter()
            .find(|r| !r["outcome"].is_null())
            .ok_or_else(|| Error::new("no audit line with an outcome"))
    }

    /// The access-log entry of this request id (waits, bounded).
    pub fn access_entry(&self, request_id: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self
                .envoy
                .access_log()
                .into_iter()
                .find(|e| e["request_id"] == request_id)
            {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                self.envoy.keep_run_dir();
                bail!("no access-log entry for {request_id} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the backend received of a case.
    pub fn upstream(&self, case: &str) -> Vec<RecordedRequest> {
        self.backend.requests_for_case(case)
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.envoy
            .wasm_counter(name)
            .unwrap_or_else(|e| panic!("admin stats: {e}"))
            .unwrap_or(0)
    }
}

pub fn is_decision(r: &Value) -> bool {
    r.get("decision").is_some()
}

/// A request of a test case.
#[derive(Clone, Debug)]
pub struct Req {
    pub case: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub upstream: Option<&'static str>,
}

impl Req {
    /// Same request, another request id (a retry is the same operation, a new HTTP request).
    pub fn again(&self, suffix: &str) -> Req {
        Req {
            request_id: format!("{}-{suffix}", self.case),
            ..self.clone()
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn upstream(mut self, up: Option<&'static str>) -> Req {
        self.upstream = up;
        self
    }

    pub fn body(mut self, body: &str) -> Req {
        self.body = body.to_string();
        self
    }
}

/// A guarded route of the bundled configuration (testdata/configs/gateway.json).
#[derive(Clone, Copy, Debug)]
pub struct RouteSpec {
    /// The filter's route name (`routes[].name`).
    pub name: &'static str,
    pub class: &'static str,
    pub owner: &'static str,
    pub escalation: &'static str,
    pub method: &'static str,
    pub needs_key: bool,
}

pub const TOKEN: RouteSpec = RouteSpec {
    name: "oauth-token",
    class: "token_issuing",
    owner: "team-iam",
    escalation: "pagerduty:iam-primary",
    method: "POST",
    needs_key: false,
};
pub const ROLE_GRANT: RouteSpec = RouteSpec {
    name: "role-grant",
    class: "privilege_changing",
    owner: "team-access",
    escalation: "pagerduty:access-oncall",
    method: "POST",
    needs_key: false,
};
pub const SECRETS: RouteSpec = RouteSpec {
    name: "secrets",
    class: "secret_minting",
    owner: "team-vault",
    escalation: "slack:#vault-oncall",
    method: "POST",
    needs_key: true,
};
pub const SESSION_REFRESH: RouteSpec = RouteSpec {
    name: "session-refresh",
    class: "session_extending",
    owner: "team-identity",
    escalation: "pagerduty:identity-primary",
    method: "POST",
    needs_key: false,
};
pub const PREFERENCES: RouteSpec = RouteSpec {
    name: "preferences",
    class: "idempotent_write",
    owner: "team-profile",
    escalation: "slack:#profile-oncall",
    method: "PUT",
    needs_key: false,
};
pub const READS: RouteSpec = RouteSpec {
    name: "reads",
    class: "read_only",
    owner: "team-platform",
    escalation: "slack:#platform-oncall",
    method: "GET",
    needs_key: false,
};

pub const ALL_ROUTES: [RouteSpec; 6] = [
    TOKEN,
    ROLE_GRANT,
    SECRETS,
    SESSION_REFRESH,
    PREFERENCES,
    READS,
];

impl RouteSpec {
    pub fn is_sensitive(&self) -> bool {
        !matches!(self.class, "read_only" | "idempotent_write")
    }

    /// A request of this route for `case`: a path and body unique to the case, and an
    /// idempotency key where the route requires one.
    pub fn request(&self, case: &str) -> Req {
        let (path, body) = match self.name {
            "oauth-token" => (
                "/oauth/token".to_string(),
                format!("grant_type=client_credentials&scope=case.{case}"),
            ),
            "role-grant" => (
                format!("/v1/roles/{case}/members"),
                r#"{"member":"svc-ci"}"#.to_string(),
            ),
            "secrets" => ("/v1/secrets".to_string(), format!(r#"{{"name":"{case}"}}"#)),
            "session-refresh" => (
                "/v1/sessions/refresh".to_string(),
                format!(r#"{{"session":"{case}"}}"#),
            ),
            "preferences" => (
                "/v1/preferences".to_string(),
                format!(r#"{{"theme":"{case}"}}"#),
            ),
            _ => (format!("/v1/items/{case}"), String::new()),
        };
        let mut headers = Vec::new();
        if !body.is_empty() {
            let ct = if self.name == "oauth-token" {
                "application/x-www-form-urlencoded"
            } else {
                "application/json"
            };
            headers.push(("content-type".to_string(), ct.to_string()));
        }
        if self.needs_key {
            headers.push(("idempotency-key".to_string(), format!("\"key-{case}\"")));
        }
        Req {
            case: case.to_string(),
            request_id: format!("{case}-1"),
            method: self.method.to_string(),
            path,
            headers,
            body,
            upstream: None,
        }
    }
}

pub fn describe(resp: &Response) -> String {
    format!(
        "status {} headers {:?} body {}",
        resp.status,
        resp.headers,
        resp.text()
    )
}

/// Checks a local reply: status, problem+json, no-store, RFC 9457 members and the route's
/// owner and escalation. Returns the problem document.
pub fn check_problem(
    resp: &Response,
    status: u16,
    problem_type: &str,
    route: &RouteSpec,
    request_id: &str,
) -> std::result::Result<Value, String> {
    let fail = |what: String| Err(format!("{what}: {}", describe(resp)));
    if resp.status != status {
        return fail(format!("expected status {status}"));
    }
    if resp.header("content-type") != Some("application/problem+json") {
        return fail("content-type is not application/problem+json".into());
    }
    if resp.header("cache-control") != Some("no-store") {
        return fail("cache-control is not no-store".into());
    }
    let Ok(doc) = resp.json() else {
        return fail("body is not JSON".into());
    };
    let checks: [(&str, Value); 7] = [
        ("type", Value::from(problem_type)),
        ("status", Value::from(status)),
        ("route", Value::from(route.name)),
        ("class", Value::from(route.class)),
        ("owner", Value::from(route.owner)),
        ("escalation", Value::from(route.escalation)),
        ("request_id", Value::from(request_id)),
    ];
    for (member, want) in checks {
        if doc[member] != want {
            return fail(format!("member {member} is {} not {want}", doc[member]));
        }
    }
    for member in ["title", "detail"] {
        if doc[member].as_str().is_none_or(str::is_empty) {
            return fail(format!("member {member} missing or empty"));
        }
    }
    if !doc["attempt"].is_u64() {
        return fail("attempt is not a count".into());
    }
    Ok(doc)
}

/// Checks the fingerprint member: base64url of 32 bytes.
pub fn check_fingerprint(doc: &Value) -> std::result::Result<String, String> {
    let fp = doc["fingerprint"]
        .as_str()
        .ok_or_else(|| format!("no fingerprint in {doc}"))?;
    match b64url_decode(fp) {
        Ok(b) if b.len() == 32 => Ok(fp.to_string()),
        _ => Err(format!("fingerprint {fp:?} is not base64url of a SHA-256")),
    }
}

/// Collects failures of sub-cases so one run reports all of them.
#[derive(Default)]
pub struct Failures(pub Vec<String>);

impl Failures {
    pub fn check(&mut self, case: &str, r: std::result::Result<(), String>) {
        if let Err(e) = r {
            self.0.push(format!("[{case}] {e}"));
        }
    }

    pub fn assert_none(&self, envoy: &Envoy) {
        if !self.0.is_empty() {
            envoy.keep_run_dir();
            panic!(
                "{} failing case(s):\n{}\n(run folder {})",
                self.0.len(),
                self.0.join("\n\n"),
                envoy.run_dir().display()
            );
        }
    }
}

/// Turns a harness error into a case failure.
pub fn h<T>(r: Result<T>) -> std::result::Result<T, String> {
    r.map_err(|e| e.0)
}

/// Sends `req` to `envoy` (its case header and `x-request-id` set from `req`): for tests that
/// run several Envoys (replicas) in front of one backend.
pub fn send_to(envoy: &Envoy, req: &Req) -> Result<Response> {
    envoy.send(
        &req.method,
        &req.path,
        &headers_of(req),
        req.body.as_bytes(),
    )
}

/// The headers `req` is sent with: its case and request id, the upstream directive if any,
/// then its own.
pub fn headers_of(req: &Req) -> Vec<(&str, &str)> {
    let mut headers: Vec<(&str, &str)> = vec![
        (CASE_HEADER, req.case.as_str()),
        ("x-request-id", req.request_id.as_str()),
    ];
    if let Some(up) = req.upstream {
        headers.push((UPSTREAM_HEADER, up));
    }
    for (k, v) in &req.headers {
        headers.push((k.as_str(), v.as_str()));
    }
    headers
}

/// Waits (bounded, 5 s) until `pred` holds for an audit record of `request_id` in `envoy`'s
/// log, and returns that record; panics with the log otherwise.
pub fn wait_audit(envoy: &Envoy, request_id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = envoy
            .audit_records()
            .into_iter()
            .find(|r| r["request_id"] == request_id && pred(r))
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no such audit line for {request_id}:\n{}",
            envoy.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

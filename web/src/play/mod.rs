//! The policy playground: a sequence of calls, each with what the upstream does and how much
//! time passes before it, run through the filter's own stream state machine
//! ([`retry_guard::stream::Stream`]) and engine against an in-memory ledger with Envoy's
//! shared-data rules. Each step reports what the filter decided and why, what the client got,
//! the audit lines, the ledger entry and the cell of the retry-policy table that decided.
//!
//! The host follows host-sim (and so Envoy 1.40): listener routes `token` for `/oauth/token`
//! and `catch_all` for the rest, a 30 s route timeout, a route that retries `connect-failure`
//! (a refused connection is `UF|URX`; 3 upstream attempts unless the request carries
//! `x-envoy-max-retries: 0`, which the filter sets on tracked requests), an `x-request-id` on
//! every request. One VM decides every call (the ledger is shared by all of Envoy's worker
//! VMs, so which worker takes a call does not change a sequential decision). A cluster-ledger
//! (etcd) configuration is played on the in-process ledger.

mod host;
mod store;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use retry_guard::audit;
use retry_guard::b64;
use retry_guard::config::{Config, LedgerBackend};
use retry_guard::confirm::sign::{signing_key_from_b64, Claims};
use retry_guard::host::Action;
use retry_guard::ledger::{IndexKey, Set, SlotLedger, Table, KEY_PREFIX};
use retry_guard::policy::{default_policy, Outcome};
use retry_guard::stream::{Plugin, Stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use host::{next_random, PlayHost, Reply};
pub use store::{PlayStore, Shared};

/// Where the virtual clock starts unless the state says otherwise: 2026-01-01T00:00:00Z, as
/// host-sim.
pub const DEFAULT_START: u64 = 1_767_225_600;

/// Envoy's route timeout in the playground (host-sim's bootstrap: 30 s).
pub const ROUTE_TIMEOUT_MS: u64 = 30_000;

/// The built-in TEST approver key (`testdata/keys/approvals-test.key`, public, test only),
/// which the playground's `confirmation` signs with.
pub const TEST_KEY: &str = include_str!("../../../testdata/keys/approvals-test.key");

/// Its key id.
pub const TEST_KID: &str = "approvals-test";

fn default_method() -> String {
    "POST".into()
}

fn default_path() -> String {
    "/oauth/token".into()
}

fn default_exp() -> i64 {
    300
}

/// What the upstream does with a forwarded call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSpec {
    /// The status it answers (default 200).
    pub status: Option<u16>,
    /// It answers with the unchanged-state header (`retry-guard-state: unchanged`).
    pub unchanged: bool,
    /// It fails instead: `connection_refused`, `no_healthy_upstream`, `timeout` or `reset`.
    pub fail: Option<String>,
    /// It answers after this many milliseconds (past the route timeout: a timeout).
    pub delay_ms: u64,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: String,
}

/// A confirmation the playground signs with the TEST approver key for the 428 an earlier call
/// got (host-sim scenarios' `{"confirmation": {"from": ...}}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmFrom {
    /// The index (from 0) of the earlier call whose 428 is approved.
    pub from: usize,
    /// The approver (default `alice@example.com`).
    #[serde(default)]
    pub sub: Option<String>,
    /// `iat` relative to now, seconds (default 0).
    #[serde(default)]
    pub iat: i64,
    /// `exp` relative to now, seconds (default 300).
    #[serde(default = "default_exp")]
    pub exp: i64,
    /// Key id (default `approvals-test`).
    #[serde(default)]
    pub kid: Option<String>,
    /// Alter the signature (to see `bad_signature`).
    #[serde(default)]
    pub tamper: bool,
}

/// One call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Call {
    /// Method (default `POST`).
    pub method: String,
    /// Path with query (default `/oauth/token`).
    pub path: String,
    /// `:authority` (default `retry-guard.test`).
    pub authority: Option<String>,
    /// Request headers, in order (idempotency key, authorization, principal headers, ...).
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: String,
    /// What the upstream does.
    pub upstream: UpstreamSpec,
    /// Seconds that pass before this call.
    pub wait: u64,
    /// Envoy's route name (`xds.route_name`); default from the listener routes.
    pub route_name: Option<String>,
    /// The mTLS peer identity (URI SAN).
    pub peer_identity: Option<String>,
    /// Sign a confirmation for an earlier call's 428 and send it.
    pub confirmation: Option<ConfirmFrom>,
    /// A note shown with the step.
    pub note: Option<String>,
}

impl Default for Call {
    fn default() -> Call {
        Call {
            method: default_method(),
            path: default_path(),
            authority: None,
            headers: Vec::new(),
            body: String::new(),
            upstream: UpstreamSpec::default(),
            wait: 0,
            route_name: None,
            peer_identity: None,
            confirmation: None,
            note: None,
        }
    }
}

/// An HTTP message as the page shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Status (answers only).
    pub status: Option<u16>,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// Who answered: `retry-guard` (a local reply), `upstream` or `envoy` (the router).
    pub by: Option<String>,
}

/// The ledger entry of the call's fingerprint after the call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerView {
    /// Fingerprint (base64url).
    pub fingerprint: String,
    /// Attempts counted.
    pub attempts: u32,
    /// Outcome of the latest attempt.
    pub outcome: String,
    /// Its status.
    pub status: u16,
    /// First attempt (RFC 3339).
    pub first_seen: String,
    /// Latest attempt (RFC 3339).
    pub last_attempt: String,
    /// When the entry expires (RFC 3339).
    pub expires: String,
    /// The outstanding challenge, if any.
    pub challenge: Option<String>,
    /// The challenge consumed by the latest accepted confirmation, if any.
    pub consumed: Option<String>,
    /// The workload identity holding the credential, if recorded.
    pub holder: Option<String>,
}

/// One cell of the retry-policy table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cell3 {
    /// Earlier outcome (the column).
    pub outcome: String,
    /// The policy for a retry after it.
    pub policy: String,
    /// The route overrides the class default here (`on`).
    pub overridden: bool,
    /// This cell decided the call.
    pub decided: bool,
}

/// The retry-policy table of the matched route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableView {
    /// Route.
    pub route: String,
    /// Class (the row).
    pub class: String,
    /// One cell per outcome.
    pub cells: Vec<Cell3>,
}

/// What one call did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Index from 0.
    pub index: usize,
    /// The call's note.
    pub note: Option<String>,
    /// Virtual time of the call (RFC 3339).
    pub at: String,
    /// The same, Unix seconds.
    pub now: u64,
    /// The request as the client sent it.
    pub request: Message,
    /// The listener route (`xds.route_name`).
    pub listener_route: String,
    /// The filter's decision (`wasm.retry_guard.decision`), if it made one.
    pub decision: Option<String>,
    /// The request's audit line (its decision and how it ended), as JSON.
    pub audit: Option<Value>,
    /// The audit line again when it names the outcome the attempt recorded, as JSON.
    pub outcome: Option<Value>,
    /// The client's answer.
    pub answer: Message,
    /// What the upstream received, if it did.
    pub upstream: Option<Message>,
    /// Every log line: (level, line).
    pub logs: Vec<(String, String)>,
    /// Counters the call incremented.
    pub counters: Vec<String>,
    /// The fingerprint's ledger entry after the call.
    pub ledger: Option<LedgerView>,
    /// The route's retry-policy table, the deciding cell marked.
    pub table: Option<TableView>,
    /// Something the playground could not do for this call (a confirmation with no 428).
    pub warning: Option<String>,
}

/// A playground run: the configuration, the ledger and the clock, one call after another.
pub struct Session {
    plugin: Plugin<SlotLedger<Shared>>,
    store: Rc<PlayStore>,
    now_ms: Cell<u64>,
    rng: Cell<u64>,
    next_stream: Cell<u32>,
    steps: RefCell<Vec<Step>>,
    /// The configuration used the cluster ledger (played on the in-process one).
    pub etcd_note: bool,
}

fn listener_route(path: &str) -> &'static str {
    let p = path.split('?').next().unwrap_or(path);
    if p == "/oauth/token" {
        "token"
    } else {
        "catch_all"
    }
}

fn json_line(line: &str) -> Option<Value> {
    serde_json::from_str(line.strip_prefix(audit::PREFIX)?).ok()
}

impl Session {
    /// A session over `config_text` (the plugin configuration JSON) from `start` (Unix
    /// seconds); the filter's own error when it refuses the configuration.
    pub fn new(config_text: &str, start: u64) -> Result<Session, String> {
        let mut config = Config::parse(config_text.as_bytes())
            .map_err(|e| format!("retry-guard: invalid plugin configuration: {e}"))?;
        let etcd_note = matches!(config.ledger.backend, LedgerBackend::Etcd(_));
        config.ledger.backend = LedgerBackend::SharedData;
        let store = Rc::new(PlayStore::default());
        let table = |t| {
            SlotLedger::new(
                Shared(store.clone()),
                t,
                config.max_entries,
                config.window_seconds,
                IndexKey::new([7; 16]),
            )
        };
        let (ledger, tokens) = (table(Table::Attempts), table(Table::Tokens));
        let bodies = table(Table::SameBody);
        Ok(Session {
            plugin: Plugin::new(config, ledger, tokens, bodies),
            store,
            now_ms: Cell::new(start.saturating_mul(1000)),
            rng: Cell::new(1),
            next_stream: Cell::new(2),
            steps: RefCell::new(Vec::new()),
            etcd_note,
        })
    }

    /// Virtual now, Unix seconds.
    pub fn now(&self) -> u64 {
        self.now_ms.get() / 1000
    }

    /// Moves the clock on.
    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get().saturating_add(ms));
    }

    /// The steps so far.
    pub fn steps(&self) -> Vec<Step> {
        self.steps.borrow().clone()
    }

    /// Signs the confirmation `c` asks for, from the 428 of the call it names.
    fn confirmation(&self, c: &ConfirmFrom) -> Result<String, String> {
        let steps = self.steps.borrow();
        let step = steps
            .get(c.from)
            .ok_or_else(|| format!("no call {} before this one to confirm", c.from + 1))?;
        let doc: Value = serde_json::from_str(&step.answer.body).unwrap_or(Value::Null);
        let (Some(chl), Some(fp)) = (
            doc.get("challenge").and_then(Value::as_str),
            doc.get("fingerprint").and_then(Value::as_str),
        ) else {
            return Err(format!(
                "call {} got {} with no challenge: only a 428 can be confirmed",
                c.from + 1,
                step.answer.status.unwrap_or(0)
            ));
        };
        let key = signing_key_from_b64(TEST_KEY).map_err(|e| e.to_string())?;
        let now = i64::try_from(self.now()).unwrap_or(i64::MAX);
        let claims = Claims {
            kid: c.kid.clone().unwrap_or_else(|| TEST_KID.into()),
            chl: chl.to_string(),
            fp: fp.to_string(),
            sub: c.sub.clone().unwrap_or_else(|| "alice@example.com".into()),
            iat: now.saturating_add(c.iat),
            exp: now.saturating_add(c.exp),
        };
        let mut token = claims.sign(&key);
        if c.tamper {
            // As host-sim: the last base64url character of the signature, changed.
            let last = token.pop().unwrap_or('A');
            token.push(if last == 'A' { 'Q' } else { 'A' });
        }
        Ok(token)
    }

    /// Runs one call and returns its step.
    pub fn call(&self, call: &Call) -> Step {
        self.advance_ms(call.wait.saturating_mul(1000));
        let index = self.steps.borrow().len();
        let mut warning = None;
        let mut headers: Vec<(String, String)> = call
            .headers
            .iter()
            .filter(|(k, _)| !k.trim().is_empty())
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.clone()))
            .collect();
        if let Some(c) = &call.confirmation {
            match self.confirmation(c) {
                Ok(token) => headers.push((self.plugin.config.confirmation_header.clone(), token)),
                Err(e) => warning = Some(e),
            }
        }
        let method = if call.method.trim().is_empty() {
            "POST".to_string()
        } else {
            call.method.trim().to_ascii_uppercase()
        };
        let path = if call.path.trim().is_empty() {
            "/oauth/token".to_string()
        } else {
            call.path.trim().to_string()
        };
        let request = Message {
            status: None,
            headers: headers.clone(),
            body: call.body.clone(),
            by: None,
        };
        let authority = headers
            .iter()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| v.clone())
            .or_else(|| call.authority.clone())
            .unwrap_or_else(|| "retry-guard.test".into());
        let mut wire: Vec<(String, String)> = vec![
            (":authority".into(), authority),
            (":path".into(), path.clone()),
            (":method".into(), method.clone()),
            (":scheme".into(), "http".into()),
        ];
        wire.extend(
            headers
                .into_iter()
                .filter(|(k, _)| k != "host" && k != "connection"),
        );
        let has_body_method = matches!(method.as_str(), "POST" | "PUT" | "PATCH");
        let has = |w: &[(String, String)], n: &str| w.iter().any(|(k, _)| k == n);
        if (!call.body.is_empty() || has_body_method)
            && !has(&wire, "content-length")
            && !has(&wire, "transfer-encoding")
        {
            wire.push(("content-length".into(), call.body.len().to_string()));
        }
        if !has(&wire, "x-forwarded-proto") {
            wire.push(("x-forwarded-proto".into(), "http".into()));
        }
        if !has(&wire, "x-request-id") {
            wire.push(("x-request-id".into(), format!("play-{}", index + 1)));
        }
        let route = call
            .route_name
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| listener_route(&path).to_string());
        let host = PlayHost {
            now_ms: &self.now_ms,
            rng: &self.rng,
            route_name: route.clone(),
            peer_identity: call.peer_identity.clone().filter(|p| !p.is_empty()),
            request_headers: RefCell::new(wire),
            body: call.body.as_bytes().to_vec(),
            response_headers: RefCell::new(Vec::new()),
            response_code: Cell::new(None),
            response_flags: Cell::new(0),
            upstream_attempts: Cell::new(None),
            logs: RefCell::new(Vec::new()),
            counters: RefCell::new(Vec::new()),
            properties: RefCell::new(Vec::new()),
            reply: RefCell::new(None),
        };
        let (answer, upstream) = self.exchange(&host, &call.upstream);
        let logs = host.logs.borrow().clone();
        let lines: Vec<Value> = logs
            .iter()
            .filter(|(l, _)| *l == "info")
            .filter_map(|(_, line)| json_line(line))
            .collect();
        // The request's one audit line (written when its stream ended); `outcome` is the same
        // line when it names what became of the attempt.
        let audit = lines.first().cloned();
        let outcome = audit
            .clone()
            .filter(|a| a.get("outcome").is_some_and(|o| !o.is_null()));
        let decision = host
            .properties
            .borrow()
            .iter()
            .rev()
            .find(|(k, _)| k == retry_guard::stream::DECISION_PROPERTY)
            .map(|(_, v)| v.clone());
        let fingerprint = audit
            .as_ref()
            .or(outcome.as_ref())
            .and_then(|a| a.get("fingerprint"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let step = Step {
            index,
            note: call.note.clone(),
            at: retry_guard::time::rfc3339(self.now()),
            now: self.now(),
            request: Message {
                status: None,
                headers: vec![(":method".into(), method), (":path".into(), path)]
                    .into_iter()
                    .chain(request.headers)
                    .collect(),
                body: request.body,
                by: None,
            },
            listener_route: route,
            decision,
            table: audit.as_ref().and_then(|a| self.table(a)),
            ledger: fingerprint.and_then(|f| self.ledger_entry(&f)),
            audit,
            outcome,
            answer,
            upstream,
            logs: logs
                .into_iter()
                .map(|(l, line)| (l.to_string(), line))
                .collect(),
            counters: host.counters.borrow().clone(),
            warning,
        };
        self.steps.borrow_mut().push(step.clone());
        step
    }

    /// The stream's callbacks in Envoy's order, the upstream, and the client's answer.
    fn exchange(&self, host: &PlayHost<'_>, up: &UpstreamSpec) -> (Message, Option<Message>) {
        let id = self.next_stream.get();
        self.next_stream.set(id.wrapping_add(1));
        let plugin = &self.plugin;
        let mut stream = Stream::new(id);
        let eos = host.body.is_empty();
        let mut action = stream.on_request_headers(plugin, host, eos);
        if !eos && host.reply.borrow().is_none() {
            action = stream.on_request_body(plugin, host, host.body.len(), true);
        }
        let local = host.reply.borrow().clone();
        let (answer, upstream) = if let Some(r) = local {
            host.response_code.set(Some(u64::from(r.status)));
            let mut headers = vec![(":status".to_string(), r.status.to_string())];
            headers.extend(r.headers.iter().cloned());
            headers.push(("content-length".into(), r.body.len().to_string()));
            *host.response_headers.borrow_mut() = headers.clone();
            stream.on_response_headers(plugin, host);
            let answer = Message {
                status: Some(r.status),
                headers,
                body: r.body,
                by: Some("retry-guard".into()),
            };
            (answer, None)
        } else if action == Action::Pause {
            // Held and never resumed: the client waits (the filter's bug, or a test double).
            let answer = Message {
                status: None,
                headers: Vec::new(),
                body: "the filter held the request and never resumed it".into(),
                by: Some("envoy".into()),
            };
            (answer, None)
        } else {
            self.forward(host, &mut stream, up)
        };
        stream.on_log(plugin, host);
        stream.on_delete(plugin, host);
        (answer, upstream)
    }

    /// The router and the upstream (host-sim's model of Envoy 1.40).
    fn forward(
        &self,
        host: &PlayHost<'_>,
        stream: &mut Stream,
        up: &UpstreamSpec,
    ) -> (Message, Option<Message>) {
        let plugin = &self.plugin;
        let sent: Vec<(String, String)> = host.request_headers.borrow().clone();
        let no_retries = sent
            .iter()
            .any(|(k, v)| k == "x-envoy-max-retries" && v == "0");
        let mut received: Vec<(String, String)> = Vec::new();
        for (k, v) in &sent {
            if k == "x-envoy-max-retries" || k == "x-envoy-retry-on" {
                continue;
            }
            if k == ":authority" {
                received.push(("host".into(), v.clone()));
            } else if !k.starts_with(':') {
                received.push((k.clone(), v.clone()));
            }
        }
        received.push((
            "x-envoy-expected-rq-timeout-ms".into(),
            ROUTE_TIMEOUT_MS.to_string(),
        ));
        let upstream_msg = Message {
            status: None,
            headers: received,
            body: String::from_utf8_lossy(&host.body).into_owned(),
            by: None,
        };
        let fail = match up.fail.as_deref() {
            Some(f) => Some(f),
            None if up.delay_ms >= ROUTE_TIMEOUT_MS => Some("timeout"),
            None => None,
        };
        // (status, flags, body, upstream received it, attempts)
        let router = match fail {
            Some("connection_refused") => Some((
                503,
                (1 << 5) | (1 << 15),
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused",
                false,
                if no_retries { 1 } else { 3 },
            )),
            Some("no_healthy_upstream") => Some((503, 1 << 1, "no healthy upstream", false, 1)),
            Some("reset") => Some((
                503,
                1 << 6,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                true,
                1,
            )),
            Some(_) => Some((504, 1 << 2, "upstream request timeout", true, 1)),
            None => None,
        };
        let (answer, received) = match router {
            Some((status, flags, body, receives, attempts)) => {
                if fail == Some("timeout") {
                    self.advance_ms(ROUTE_TIMEOUT_MS);
                } else if fail == Some("reset") {
                    self.advance_ms(up.delay_ms);
                }
                host.upstream_attempts.set(Some(attempts));
                host.response_code.set(Some(status));
                host.response_flags.set(flags);
                let headers = vec![
                    (":status".to_string(), status.to_string()),
                    ("content-length".into(), body.len().to_string()),
                    ("content-type".into(), "text/plain".into()),
                ];
                let answer = Message {
                    status: u16::try_from(status).ok(),
                    headers,
                    body: body.to_string(),
                    by: Some("envoy".into()),
                };
                (answer, receives)
            }
            None => {
                self.advance_ms(up.delay_ms);
                let status = up.status.unwrap_or(200);
                host.upstream_attempts.set(Some(1));
                host.response_code.set(Some(u64::from(status)));
                let mut headers = vec![(":status".to_string(), status.to_string())];
                headers.extend(up.headers.iter().cloned());
                if up.unchanged {
                    headers.push((
                        plugin.config.unchanged_state_header.clone(),
                        "unchanged".into(),
                    ));
                }
                if !matches!(status, 204 | 304) {
                    headers.push(("content-length".into(), up.body.len().to_string()));
                }
                let answer = Message {
                    status: Some(status),
                    headers,
                    body: up.body.clone(),
                    by: Some("upstream".into()),
                };
                (answer, true)
            }
        };
        *host.response_headers.borrow_mut() = answer.headers.clone();
        stream.on_response_headers(plugin, host);
        (answer, received.then_some(upstream_msg))
    }

    /// The retry-policy table of the audit line's route, with the cell that decided marked.
    fn table(&self, audit: &Value) -> Option<TableView> {
        let name = audit.get("route").and_then(Value::as_str)?;
        let route = self.plugin.config.routes.iter().find(|r| r.name == name)?;
        let decided_by = match (
            audit.get("policy").and_then(Value::as_str),
            audit.get("previous_outcome").and_then(Value::as_str),
        ) {
            (Some(_), Some(o)) => Some(o),
            _ => None,
        };
        Some(TableView {
            route: route.name.clone(),
            class: route.class.name().to_string(),
            cells: Outcome::ALL
                .iter()
                .map(|o| {
                    let policy = route.policies.get(*o);
                    Cell3 {
                        outcome: o.name().to_string(),
                        policy: policy.name().to_string(),
                        overridden: policy != default_policy(route.class, *o),
                        decided: decided_by == Some(o.name()),
                    }
                })
                .collect(),
        })
    }

    /// The live ledger entry of a fingerprint.
    fn ledger_entry(&self, fingerprint: &str) -> Option<LedgerView> {
        let id: [u8; 32] = b64::decode_url(fingerprint)?.try_into().ok()?;
        let window = self.plugin.config.window_seconds;
        let now_ms = self.now_ms.get();
        let entry = self
            .store
            .with_prefix(KEY_PREFIX)
            .into_iter()
            .filter_map(|(_, v)| Set::decode(&v))
            .flat_map(|s| s.0)
            .find(|e| e.id == id && e.is_live(now_ms, window))?;
        Some(LedgerView {
            fingerprint: fingerprint.to_string(),
            attempts: entry.attempts,
            outcome: entry.outcome.name().to_string(),
            status: entry.status,
            first_seen: retry_guard::time::rfc3339(entry.first_seen_ms / 1000),
            last_attempt: retry_guard::time::rfc3339(entry.last_attempt_ms / 1000),
            expires: retry_guard::time::rfc3339(entry.expires_at_ms(window) / 1000),
            challenge: entry.challenge.map(|c| b64::url(&c)),
            consumed: entry.consumed.map(|c| b64::url(&c)),
            holder: entry.holder(),
        })
    }
}

/// Runs `calls` against the plugin configuration JSON `config_text` from `start`.
pub fn run(config_text: &str, start: u64, calls: &[Call]) -> Result<Vec<Step>, String> {
    let session = Session::new(config_text, start)?;
    for c in calls {
        session.call(c);
    }
    Ok(session.steps())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = include_str!("../../../testdata/configs/smoke.json");

    fn token_call() -> Call {
        Call {
            headers: vec![("x-client-id".into(), "ci-bot".into())],
            body: "grant_type=client_credentials".into(),
            ..Call::default()
        }
    }

    #[test]
    fn replay_asks_for_review_and_an_approval_lets_it_through_once() {
        let confirmed = Call {
            confirmation: Some(ConfirmFrom {
                from: 1,
                sub: None,
                iat: 0,
                exp: 300,
                kid: None,
                tamper: false,
            }),
            wait: 30,
            ..token_call()
        };
        let steps = run(
            SMOKE,
            DEFAULT_START,
            &[token_call(), token_call(), confirmed.clone(), confirmed],
        )
        .expect("runs");
        let d: Vec<_> = steps
            .iter()
            .map(|s| s.decision.clone().unwrap_or_default())
            .collect();
        assert_eq!(d, ["allow", "confirm", "confirmed", "confirm"]);
        assert_eq!(steps[1].answer.status, Some(428));
        let cell = steps[1]
            .table
            .as_ref()
            .and_then(|t| t.cells.iter().find(|c| c.decided))
            .expect("a cell decided");
        assert_eq!(
            (cell.outcome.as_str(), cell.policy.as_str()),
            ("succeeded", "retry_with_review")
        );
        let ledger = steps[0].ledger.as_ref().expect("entry");
        assert_eq!((ledger.attempts, ledger.outcome.as_str()), (1, "succeeded"));
        assert_eq!(
            steps[3]
                .audit
                .as_ref()
                .and_then(|a| a.get("confirmation_error"))
                .and_then(Value::as_str),
            Some("already_used")
        );
        // The upstream got the call without the confirmation header and with no retries left.
        let up = steps[2].upstream.as_ref().expect("forwarded");
        assert!(!up
            .headers
            .iter()
            .any(|(k, _)| k == "retry-guard-confirmation"));
    }

    #[test]
    fn a_refused_connection_is_retry_safe() {
        let refused = Call {
            upstream: UpstreamSpec {
                fail: Some("connection_refused".into()),
                ..UpstreamSpec::default()
            },
            ..token_call()
        };
        let steps = run(SMOKE, DEFAULT_START, &[refused, token_call()]).expect("runs");
        assert_eq!(steps[0].answer.status, Some(503));
        assert_eq!(
            steps[0]
                .outcome
                .as_ref()
                .and_then(|o| o.get("outcome"))
                .and_then(Value::as_str),
            Some("not_sent")
        );
        assert_eq!(steps[1].decision.as_deref(), Some("allow"));
        assert!(steps[0].upstream.is_none());
    }

    #[test]
    fn the_filters_own_refusal_of_a_configuration() {
        let e = Session::new("{\"routes\": 3}", DEFAULT_START)
            .err()
            .expect("refused");
        assert!(
            e.starts_with("retry-guard: invalid plugin configuration: routes"),
            "{e}"
        );
    }
}

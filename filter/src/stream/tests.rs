//! Native tests of the stream state machine with a fake host: when a request is held, when it
//! is decided, answered, resumed and recorded, which host calls it makes, and which state a
//! stream keeps. (The same rules run end to end on the wasm build in host-sim's scenarios.)

use std::cell::{Cell, RefCell};

use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::host::Status;
use crate::ledger::{IndexKey, MemoryStore, SharedStore, SlotLedger, Table, WAYS};
use crate::policy::Outcome;

const NOW: u64 = 1_700_000_000;
const CHALLENGE: [u8; 16] = [7; 16];

/// One host call, as the fake host saw it (property paths with `.` for the NUL separator).
#[derive(Clone, Debug, PartialEq)]
enum Call {
    NowNanos,
    Log(LogLevel, String),
    Count(Counter),
    Property(String),
    SetProperty(String, String),
    RequestHeader(String),
    RequestHeaders,
    SetRequestHeader(String, String),
    RemoveRequestHeader(String),
    RequestBody(usize, usize),
    ResponseHeader(String),
    LocalReply(Reply),
    RandomBytes,
    Dispatch(String, String),
    Resume,
}

/// A local reply the stream sent.
#[derive(Clone, Debug, PartialEq)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn has_header(&self, name: &str, value: &str) -> bool {
        self.headers.iter().any(|(n, v)| n == name && v == value)
    }
}

/// A host that answers from scripted request, body, properties and response, applies header
/// writes to its request headers (what the upstream would get), and records every call.
#[derive(Default)]
struct FakeHost {
    /// The clock, Unix milliseconds.
    now: Cell<u64>,
    properties: RefCell<Vec<(String, Vec<u8>)>>,
    request: RefCell<Vec<(String, String)>>,
    body: RefCell<Vec<u8>>,
    response: RefCell<Vec<(String, String)>>,
    calls: RefCell<Vec<Call>>,
    /// The token of the last call dispatched (Envoy's tokens never repeat on a worker).
    token: Cell<u32>,
}

impl FakeHost {
    /// A request on Envoy route `route_name` (the `xds.route_name` property).
    fn request(route_name: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> FakeHost {
        let host = FakeHost::default();
        host.now.set(NOW * 1000);
        host.set_property_value("xds.route_name", route_name.as_bytes());
        let mut request = vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "idp.example".to_string()),
        ];
        request.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        *host.request.borrow_mut() = request;
        host
    }

    fn with_body(self, body: &str) -> FakeHost {
        *self.body.borrow_mut() = body.as_bytes().to_vec();
        self
    }

    fn set_property_value(&self, path: &str, value: &[u8]) {
        self.properties
            .borrow_mut()
            .push((path.to_string(), value.to_vec()));
    }

    fn respond(&self, headers: &[(&str, &str)]) {
        *self.response.borrow_mut() = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn forget_calls(&self) {
        self.calls.borrow_mut().clear();
    }

    fn call(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    /// The request header as the upstream would get it now.
    fn upstream_header(&self, name: &str) -> Option<String> {
        let request = self.request.borrow();
        request
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn replies(&self) -> Vec<Reply> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::LocalReply(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn counted(&self) -> Vec<Counter> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Count(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// The audit records logged (one per request, when its stream ends), as JSON.
    fn audit(&self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Log(LogLevel::Info, line) => line
                    .strip_prefix(crate::audit::PREFIX)
                    .map(|j| serde_json::from_str(j).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// The decisions made, as written to the filter state when each is made (the audit line
    /// comes only when the stream ends).
    fn decisions(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::SetProperty(p, v) if p == DECISION_PROPERTY => Some(v),
                _ => None,
            })
            .collect()
    }

    /// The audit records that name an outcome.
    fn outcomes(&self) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| !r["outcome"].is_null())
            .collect()
    }
}

impl StreamHost for FakeHost {
    fn now_nanos(&self) -> Option<u64> {
        self.call(Call::NowNanos);
        Some(self.now.get() * 1_000_000)
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.call(Call::Log(level, message.to_string()));
    }

    fn count(&self, counter: Counter) {
        self.call(Call::Count(counter));
    }

    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        let path = String::from_utf8(path.to_vec()).unwrap().replace('\0', ".");
        self.call(Call::Property(path.clone()));
        let properties = self.properties.borrow();
        properties
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| v.clone())
    }

    fn set_property(&self, name: &str, value: &[u8]) {
        self.call(Call::SetProperty(
            name.to_string(),
            String::from_utf8(value.to_vec()).unwrap(),
        ));
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.call(Call::RequestHeader(name.to_string()));
        self.upstream_header(name).map(String::into_bytes)
    }

    fn request_headers(&self) -> Vec<u8> {
        self.call(Call::RequestHeaders);
        let request = self.request.borrow();
        let pairs: Vec<(&str, &[u8])> = request
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        crate::headers::serialize(&pairs)
    }

    fn set_request_header(&self, name: &str, value: &str) {
        self.call(Call::SetRequestHeader(name.to_string(), value.to_string()));
        let mut request = self.request.borrow_mut();
        request.retain(|(n, _)| n != name);
        request.push((name.to_string(), value.to_string()));
    }

    fn remove_request_header(&self, name: &str) {
        self.call(Call::RemoveRequestHeader(name.to_string()));
        self.request.borrow_mut().retain(|(n, _)| n != name);
    }

    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        self.call(Call::RequestBody(start, len));
        let body = self.body.borrow();
        body.get(start..(start + len).min(body.len()))
            .map(<[u8]>::to_vec)
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.call(Call::ResponseHeader(name.to_string()));
        let response = self.response.borrow();
        response
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone().into_bytes())
    }

    fn send_local_reply(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Status> {
        self.call(Call::LocalReply(Reply {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: String::from_utf8(body.to_vec()).unwrap(),
        }));
        Ok(())
    }

    fn random_bytes(&self, buf: &mut [u8]) -> bool {
        self.call(Call::RandomBytes);
        buf.fill(CHALLENGE[0]);
        true
    }

    fn http_call(
        &self,
        _cluster: &str,
        _authority: &str,
        path: &str,
        body: &[u8],
        _timeout_ms: u64,
    ) -> Result<u32, Status> {
        self.call(Call::Dispatch(
            path.to_string(),
            String::from_utf8_lossy(body).into_owned(),
        ));
        self.token.set(self.token.get() + 1);
        Ok(self.token.get())
    }

    fn resume_request(&self) {
        self.call(Call::Resume);
    }
}

/// The guarded routes the tests use: a sensitive route named by Envoy's route name, a
/// read_only route, and a route matched on the path alone.
fn config(top_extra: Value) -> Config {
    let mut top = json!({
        "principal": ["header:x-client-id", "jwt:sub", "token"],
        "max_body_bytes": 64,
        "routes": [
            {
                "name": "oauth-token",
                "match": {"route_name": "token", "methods": ["POST"], "path": "/oauth/token"},
                "class": "token_issuing",
                "owner": "team-iam",
                "escalation": "pagerduty:iam-primary",
                "token_max_age_seconds": 300
            },
            {
                "name": "profile",
                "match": {"route_name": "profile"},
                "class": "read_only",
                "owner": "team-iam",
                "escalation": "pagerduty:iam-primary"
            },
            {
                "name": "keys",
                "match": {"path_prefix": "/keys/"},
                "class": "secret_minting",
                "owner": "team-keys",
                "escalation": "pagerduty:keys"
            }
        ]
    });
    if let (Value::Object(t), Value::Object(extra)) = (&mut top, top_extra) {
        t.extend(extra);
    }
    Config::from_value(&top).unwrap()
}

fn plugin_with(top_extra: Value) -> Plugin<SlotLedger<MemoryStore>> {
    plugin_of(config(top_extra))
}

/// A plugin of `config` over in-memory tables.
fn plugin_of(config: Config) -> Plugin<SlotLedger<MemoryStore>> {
    let table = |t| {
        let l = SlotLedger::new(
            MemoryStore::default(),
            t,
            config.max_entries,
            config.window_seconds,
            IndexKey::new([7; 16]),
        );
        l.ensure_slots().unwrap();
        l
    };
    let (ledger, tokens) = (table(Table::Attempts), table(Table::Tokens));
    let bodies = table(Table::SameBody);
    Plugin::new(config, ledger, tokens, bodies)
}

fn plugin() -> Plugin<SlotLedger<MemoryStore>> {
    plugin_with(json!({}))
}

/// A client-credentials token request from `ci-bot`.
fn token_request() -> FakeHost {
    FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[("x-client-id", "ci-bot"), ("content-type", "text/plain")],
    )
    .with_body("grant_type=client_credentials")
}

/// Sends the request as Envoy does: headers, then the whole body in one callback (or none).
fn send<L: Ledger>(plugin: &Plugin<L>, host: &FakeHost, id: u32) -> (Stream, Vec<Action>) {
    let mut stream = Stream::new(id);
    let len = host.body.borrow().len();
    let mut actions = vec![stream.on_request_headers(plugin, host, len == 0)];
    if len > 0 && stream.needs_state() {
        actions.push(stream.on_request_body(plugin, host, len, true));
    }
    (stream, actions)
}

/// Sends the request and ends its stream (`on_log`): the request's audit line is written.
fn exchange<L: Ledger>(plugin: &Plugin<L>, host: &FakeHost, id: u32) -> Vec<Action> {
    let (mut stream, actions) = send(plugin, host, id);
    stream.on_log(plugin, host);
    actions
}

/// Every entry in the ledger.
fn ledger_entries(plugin: &Plugin<SlotLedger<MemoryStore>>) -> Vec<crate::ledger::Entry> {
    table_entries(&plugin.ledger)
}

/// Every entry of one of the plugin's tables.
fn table_entries(l: &SlotLedger<MemoryStore>) -> Vec<crate::ledger::Entry> {
    (0..l.sets())
        .filter_map(|i| {
            l.store()
                .get(&SlotLedger::<MemoryStore>::key(l.table(), i))
                .unwrap()
        })
        .flat_map(|(bytes, _)| crate::ledger::Set::decode(&bytes).unwrap().0)
        .collect()
}

/// The ledger entry of the only fingerprint the test wrote.
fn only_entry(plugin: &Plugin<SlotLedger<MemoryStore>>) -> crate::ledger::Entry {
    let entries = ledger_entries(plugin);
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().unwrap()
}

#[test]
fn guarded_request_with_a_body_is_held_at_headers_and_decided_at_end_of_body() {
    let plugin = plugin();
    let host = token_request();
    let mut stream = Stream::new(1);

    assert_eq!(
        stream.on_request_headers(&plugin, &host, false),
        Action::Pause
    );
    assert!(stream.needs_state(), "the stream waits for its body");
    assert_eq!(plugin.held_count(), 1);
    assert!(
        host.decisions().is_empty(),
        "nothing decided before the body"
    );
    assert!(host.counted().is_empty());

    // Envoy reports the cumulative buffered size; only the new bytes are read.
    assert_eq!(
        stream.on_request_body(&plugin, &host, 10, false),
        Action::Pause
    );
    assert_eq!(plugin.held_count(), 0, "a body callback came");
    assert!(
        host.decisions().is_empty(),
        "nothing decided before the end"
    );
    let len = host.body.borrow().len();
    assert_eq!(
        stream.on_request_body(&plugin, &host, len, true),
        Action::Continue
    );

    let body_reads: Vec<Call> = host
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::RequestBody(..)))
        .collect();
    assert_eq!(
        body_reads,
        [Call::RequestBody(0, 10), Call::RequestBody(10, len - 10)]
    );
    assert_eq!(host.decisions(), ["allow"]);
    assert_eq!(host.counted(), [Counter::Decision(Verdict::Allow)]);
    assert!(host
        .calls()
        .contains(&Call::SetProperty(DECISION_PROPERTY.into(), "allow".into())));
    assert!(host.replies().is_empty());
    assert!(
        stream.needs_state(),
        "the allowed attempt's outcome is still to record"
    );
    assert_eq!(only_entry(&plugin).outcome, Outcome::InFlight);
}

#[test]
fn untracked_routes_write_a_line_only_when_something_happened() {
    let send_profile = |plugin: &Plugin<SlotLedger<MemoryStore>>, headers: &[(&str, &str)]| {
        let host = FakeHost::request("profile", "GET", "/profile", headers);
        exchange(plugin, &host, 1);
        host
    };
    let plugin = plugin();
    // A plain allow: quiet.
    assert_eq!(send_profile(&plugin, &[]).audit().len(), 0);
    // A retry by the caller's sidecar: a line, correlated by request id.
    let host = send_profile(
        &plugin,
        &[("x-envoy-attempt-count", "2"), ("x-request-id", "r-2")],
    );
    let lines = host.audit();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["upstream_attempt"], 2);
    assert_eq!(lines[0]["request_id"], "r-2");
    assert_eq!(
        send_profile(&plugin, &[("x-envoy-attempt-count", "1")])
            .audit()
            .len(),
        0
    );
    // A stale token stripped: a line.
    let expired = crate::jwt::unsigned(&json!({"sub": "a", "exp": NOW - 3600}));
    let auth = format!("Bearer {expired}");
    let host = send_profile(&plugin, &[("authorization", auth.as_str())]);
    assert_eq!(host.audit()[0]["token_action"], "strip");
    // audit.untracked "all": every request.
    let all = plugin_with(json!({"audit": {"untracked": "all"}}));
    let host = send_profile(&all, &[]);
    assert_eq!(host.decisions(), ["allow"]);
    assert_eq!(host.audit()[0]["upstream_attempt"], Value::Null);
}

#[test]
fn read_only_and_untracked_routes_do_not_pause() {
    let plugin = plugin();
    let host = FakeHost::request("profile", "POST", "/profile/search", &[]).with_body("q=x");
    let mut stream = Stream::new(1);
    assert_eq!(
        stream.on_request_headers(&plugin, &host, false),
        Action::Continue,
        "a read_only route is decided at headers, its body never held"
    );
    // Quiet (audit.untracked "events"): counted, no audit line, no filter state.
    assert_eq!(host.decisions(), Vec::<String>::new());
    assert_eq!(host.counted(), [Counter::Decision(Verdict::Allow)]);
    assert!(!host
        .calls()
        .iter()
        .any(|c| matches!(c, Call::SetProperty(..))));
    assert!(!host
        .calls()
        .iter()
        .any(|c| matches!(c, Call::RequestBody(..))));
    assert_eq!(plugin.held_count(), 0);
    // read_only is untracked: no ledger entry, no outcome to record, no state kept.
    assert!(!stream.needs_state());
    assert_eq!(ledger_entries(&plugin), []);

    // A guarded request without a body (end of stream at headers) is decided at once too.
    let plugin = self::plugin();
    let host = FakeHost::request("token", "POST", "/oauth/token", &[("x-client-id", "a")]);
    let mut stream = Stream::new(2);
    assert_eq!(
        stream.on_request_headers(&plugin, &host, true),
        Action::Continue
    );
    assert_eq!(host.decisions(), ["allow"]);
    assert_eq!(plugin.held_count(), 0);
}

#[test]
fn unmatched_request_makes_only_the_host_calls_matching_needs() {
    let plugin = plugin();

    // Envoy's route name is no guarded route's, and the path-only route does not match:
    // one property read and one header read, no header-map copy, nothing else.
    let host = FakeHost::request("static", "GET", "/index.html", &[]).with_body("x");
    let (stream, actions) = send(&plugin, &host, 1);
    assert_eq!(actions, [Action::Continue]);
    assert_eq!(
        host.calls(),
        [
            Call::Property("xds.route_name".into()),
            Call::RequestHeader(":path".into()),
        ]
    );
    assert!(!stream.needs_state(), "nothing outlives the callback");

    // A route name a guarded route names: the headers are copied once, in one call, and
    // every fact comes from that copy.
    let host = FakeHost::request("token", "GET", "/oauth/token", &[]);
    let (stream, actions) = send(&plugin, &host, 2);
    assert_eq!(actions, [Action::Continue]);
    assert_eq!(
        host.calls(),
        [
            Call::Property("xds.route_name".into()),
            Call::RequestHeaders,
        ]
    );
    assert!(!stream.needs_state());
}

#[test]
fn blocked_request_gets_exactly_one_local_reply_and_is_never_resumed() {
    let plugin = plugin();
    let first = token_request();
    let (mut s1, actions) = send(&plugin, &first, 1);
    assert_eq!(actions, [Action::Pause, Action::Continue]);
    first.respond(&[(":status", "200")]);
    assert_eq!(s1.on_response_headers(&plugin, &first), Action::Continue);

    // The same request again after a success: retry_with_review, 428.
    let replay = token_request();
    let (mut s2, actions) = send(&plugin, &replay, 2);
    assert_eq!(
        actions,
        [Action::Pause, Action::Pause],
        "answered, not resumed"
    );
    assert_eq!(replay.decisions(), ["confirm"]);
    let replies = replay.replies();
    assert_eq!(replies.len(), 1);
    let reply = &replies[0];
    assert_eq!(reply.status, 428);
    assert!(reply.has_header("content-type", "application/problem+json"));
    assert!(reply.has_header("retry-guard-challenge", &crate::b64::url(&CHALLENGE)));
    let doc: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(doc["owner"], "team-iam");
    assert_eq!(doc["previous_outcome"], "succeeded");

    // Later callbacks of the answered stream: still held, no second reply, nothing recorded
    // (the local reply's own response headers pass through the filter too).
    assert!(s2.needs_state());
    replay.forget_calls();
    assert_eq!(
        s2.on_request_body(&plugin, &replay, 30, true),
        Action::Pause
    );
    assert_eq!(s2.on_request_trailers(&plugin, &replay), Action::Pause);
    replay.respond(&[(":status", "428")]);
    assert_eq!(s2.on_response_headers(&plugin, &replay), Action::Continue);
    assert_eq!(
        replay.calls(),
        [],
        "an answered stream makes no more host calls until it ends"
    );
    // Its end writes its one audit line: the decision and the answer, no outcome.
    s2.on_log(&plugin, &replay);
    let lines = replay.audit();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (
            &lines[0]["decision"],
            &lines[0]["status"],
            &lines[0]["outcome"]
        ),
        (&json!("confirm"), &json!(428), &Value::Null)
    );
    assert!(lines[0]["response_flags"].is_null(), "a local reply");
    assert_eq!(only_entry(&plugin).outcome, Outcome::Succeeded);
}

#[test]
fn allowed_request_records_its_outcome_when_response_headers_arrive() {
    let plugin = plugin();
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    assert_eq!(only_entry(&plugin).outcome, Outcome::InFlight);

    host.respond(&[(":status", "503"), ("retry-guard-state", "unchanged")]);
    assert_eq!(stream.on_response_headers(&plugin, &host), Action::Continue);
    let entry = only_entry(&plugin);
    assert_eq!((entry.outcome, entry.status), (Outcome::Unchanged, 503));
    assert!(
        host.audit().is_empty(),
        "the line waits for the stream's end"
    );

    // The stream's end records nothing more and writes the one line: decision and outcome.
    host.now.set(NOW * 1000 + 42);
    stream.on_log(&plugin, &host);
    let lines = host.audit();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[0]["outcome"], "unchanged");
    assert_eq!(lines[0]["status"], 503);
    assert_eq!(lines[0]["attempt"], 1);
    assert_eq!(lines[0]["duration_ms"], 42);
    assert_eq!(only_entry(&plugin).outcome, Outcome::Unchanged);
}

#[test]
fn allowed_request_without_response_headers_records_at_stream_end() {
    let plugin = plugin();
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    // Envoy never reached the upstream: no response headers passed the filter; the stream's
    // properties tell what happened.
    host.set_property_value("response.code", &503u64.to_le_bytes());
    host.set_property_value(
        "response.flags",
        &crate::policy::flags::UPSTREAM_CONNECTION_FAILURE.to_le_bytes(),
    );
    stream.on_log(&plugin, &host);
    let outcomes = host.outcomes();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0]["outcome"], "not_sent");
    assert_eq!(outcomes[0]["status"], 503);
    assert_eq!(only_entry(&plugin).outcome, Outcome::NotSent);
}

#[test]
fn a_response_the_client_never_got_in_full_is_undelivered() {
    use crate::policy::flags::{DOWNSTREAM_CONNECTION_TERMINATION, DOWNSTREAM_REMOTE_RESET};
    // The response headers passed (succeeded), then the client went away mid-body: the
    // stream's end makes the attempt `undelivered`, and its replay says so.
    let plugin = plugin();
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    host.respond(&[(":status", "200")]);
    stream.on_response_headers(&plugin, &host);
    assert_eq!(only_entry(&plugin).outcome, Outcome::Succeeded);
    host.set_property_value(
        "response.flags",
        &DOWNSTREAM_CONNECTION_TERMINATION.to_le_bytes(),
    );
    stream.on_log(&plugin, &host);
    let outcomes = host.outcomes();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0]["outcome"], "undelivered");
    assert_eq!(outcomes[0]["status"], 200);
    assert_eq!(
        outcomes[0]["response_flags"],
        DOWNSTREAM_CONNECTION_TERMINATION
    );
    let entry = only_entry(&plugin);
    assert_eq!((entry.outcome, entry.status), (Outcome::Undelivered, 200));
    let replay = token_request();
    exchange(&plugin, &replay, 2);
    let reply = replay.replies().remove(0);
    assert_eq!(reply.status, 428);
    let doc: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(doc["previous_outcome"], "undelivered", "{doc}");

    // No response headers at all (the client reset the stream while the upstream was still
    // working): undelivered too, not failed_unknown.
    let plugin = self::plugin();
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    host.set_property_value("response.code", &0u64.to_le_bytes());
    host.set_property_value("response.flags", &DOWNSTREAM_REMOTE_RESET.to_le_bytes());
    stream.on_log(&plugin, &host);
    assert_eq!(only_entry(&plugin).outcome, Outcome::Undelivered);

    // A rejection the client missed stays a rejection; a complete response stays succeeded.
    let plugin = self::plugin();
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    host.respond(&[(":status", "403")]);
    stream.on_response_headers(&plugin, &host);
    host.set_property_value(
        "response.flags",
        &DOWNSTREAM_CONNECTION_TERMINATION.to_le_bytes(),
    );
    stream.on_log(&plugin, &host);
    assert_eq!(only_entry(&plugin).outcome, Outcome::Rejected);
    assert_eq!(host.outcomes().len(), 1);
}

/// A token call from the mTLS workload `workload`, with `credential`, and this body.
fn workload_call(workload: &str, credential: &str, body: &str) -> FakeHost {
    let auth = format!("Bearer {credential}");
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[("x-client-id", "ci-bot"), ("authorization", auth.as_str())],
    )
    .with_body(body);
    host.set_property_value(
        "connection.uri_san_peer_certificate",
        format!("spiffe://test/{workload}").as_bytes(),
    );
    host
}

#[test]
fn a_credential_presented_by_a_second_workload_is_counted_audited_or_denied() {
    for (setting, denied) in [("record", false), ("deny", true)] {
        let mut cfg = config(json!({}));
        cfg.routes[0].shared_credential = if denied {
            crate::config::SharedCredential::Deny
        } else {
            crate::config::SharedCredential::Record
        };
        let plugin = plugin_of(cfg);
        // Workload a presents the credential: nothing to say.
        let a = workload_call("a", "opaque-shared", "n=1");
        exchange(&plugin, &a, 1);
        assert!(a.replies().is_empty());
        assert_eq!(count_of(&a, Event::CredentialShared), 0);
        assert_eq!(a.audit()[0]["credential_shared_with"], Value::Null);
        // The same workload again (another call): still nothing.
        let a2 = workload_call("a", "opaque-shared", "n=2");
        exchange(&plugin, &a2, 2);
        assert_eq!(count_of(&a2, Event::CredentialShared), 0, "{setting}");
        // Workload b presents it: counted, both identities audited; denied if configured.
        let b = workload_call("b", "opaque-shared", "n=3");
        exchange(&plugin, &b, 3);
        assert_eq!(count_of(&b, Event::CredentialShared), 1, "{setting}");
        let line = &b.audit()[0];
        assert_eq!(line["credential_holder"], "spiffe://test/b", "{line}");
        assert_eq!(line["credential_shared_with"], "spiffe://test/a", "{line}");
        if denied {
            let reply = b.replies().remove(0);
            assert_eq!(reply.status, 403);
            assert_eq!(
                problem_type(&reply),
                "urn:retry-guard:problem:credential-shared"
            );
            assert!(
                !reply.body.contains("spiffe://"),
                "the other workload is not named to the caller: {}",
                reply.body
            );
            assert_eq!(line["decision"], "credential_shared");
        } else {
            assert!(b.replies().is_empty(), "{setting}: decided as usual");
        }
        // Another credential from b is b's own.
        let b2 = workload_call("b", "opaque-b", "n=4");
        exchange(&plugin, &b2, 4);
        assert_eq!(count_of(&b2, Event::CredentialShared), 0);
        // Without mTLS nothing is compared.
        let plain = FakeHost::request(
            "token",
            "POST",
            "/oauth/token",
            &[("authorization", "Bearer opaque-shared")],
        )
        .with_body("n=5");
        exchange(&plugin, &plain, 5);
        assert_eq!(count_of(&plain, Event::CredentialShared), 0);
    }
}

/// Values a client controls, as an attacker would write them: line breaks (a forged second
/// log line), quotes and braces (a forged member), escapes, NUL and other controls, the JSON
/// line and paragraph separators, and 8 KiB of it.
fn hostile_values() -> Vec<String> {
    let forge = "x\",\"decision\":\"allow\",\"approver\":\"mallory";
    vec![
        "a\r\nretry-guard audit {\"decision\":\"allow\"}".to_string(),
        forge.to_string(),
        "back\\slash \\\" \\u0000 \u{0} \u{1b}[31m \t\u{7f}".to_string(),
        "line\u{2028}para\u{2029}end".to_string(),
        format!("{}\n{}", "y".repeat(4096), "\"}".repeat(2048)),
    ]
}

#[test]
fn audit_lines_and_problem_documents_stay_one_json_line_whatever_the_client_sends() {
    use crate::audit::MEMBERS;
    let plugin = plugin();
    for (n, v) in hostile_values().iter().enumerate() {
        let jwt = crate::jwt::unsigned(&json!({"sub": v, "exp": NOW + 60}));
        let auth = format!("Bearer {jwt}");
        let cookie = format!("session={v}");
        // Valid header values cannot carry CR or LF; the filter must cope either way.
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![("x-request-id", v), ("x-client-id", v)],
            vec![("x-request-id", v), ("authorization", &auth)],
            vec![
                ("x-request-id", v),
                ("idempotency-key", v),
                ("cookie", &cookie),
            ],
        ];
        for (c, headers) in cases.iter().enumerate() {
            let host = FakeHost::request("token", "POST", "/oauth/token", headers)
                .with_body("grant_type=client_credentials");
            exchange(&plugin, &host, (n * 10 + c) as u32 + 1);
            let lines: Vec<String> = host
                .calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::Log(_, line) => Some(line),
                    _ => None,
                })
                .collect();
            for line in lines.iter().filter(|l| l.starts_with(crate::audit::PREFIX)) {
                assert!(!line.contains(['\n', '\r']), "one line: {line:?}");
                let json = &line[crate::audit::PREFIX.len()..];
                let record: Value =
                    serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
                let keys: Vec<&str> = record
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .collect();
                {
                    let mut want: Vec<&str> = MEMBERS.to_vec();
                    let mut got = keys.clone();
                    want.sort_unstable();
                    got.sort_unstable();
                    assert_eq!(got, want, "no forged member: {json}");
                    assert_eq!(record["request_id"], v.as_str(), "kept exactly");
                    assert_ne!(record["approver"], "mallory");
                }
            }
            for reply in host.replies() {
                assert!(!reply.body.contains(['\n', '\r']), "{:?}", reply.body);
                let doc: Value = serde_json::from_str(&reply.body)
                    .unwrap_or_else(|e| panic!("problem not JSON ({e}): {}", reply.body));
                assert!(doc["type"].as_str().is_some());
            }
        }
    }
}

#[test]
fn body_over_max_body_bytes_is_answered_413() {
    let big = "x".repeat(65);

    // Declared too large: answered at headers, the body never read.
    let plugin = plugin();
    let host = FakeHost::request("token", "POST", "/oauth/token", &[("content-length", "65")])
        .with_body(&big);
    let mut stream = Stream::new(1);
    assert_eq!(
        stream.on_request_headers(&plugin, &host, false),
        Action::Pause
    );
    assert_eq!(host.replies().len(), 1);
    assert_eq!(host.replies()[0].status, 413);
    assert!(!host
        .calls()
        .iter()
        .any(|c| matches!(c, Call::RequestBody(..))));
    assert_eq!(host.decisions(), ["too_large"]);
    assert_eq!(
        stream.on_request_body(&plugin, &host, 65, true),
        Action::Pause
    );
    assert_eq!(host.replies().len(), 1);

    // Streamed without a length: answered when the buffered body passes the limit.
    let plugin = self::plugin();
    let host = FakeHost::request("token", "POST", "/oauth/token", &[]).with_body(&big);
    let mut stream = Stream::new(2);
    assert_eq!(
        stream.on_request_headers(&plugin, &host, false),
        Action::Pause
    );
    assert_eq!(
        stream.on_request_body(&plugin, &host, 40, false),
        Action::Pause
    );
    assert!(host.replies().is_empty());
    assert_eq!(
        stream.on_request_body(&plugin, &host, 65, true),
        Action::Pause
    );
    let replies = host.replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 413);
    assert!(replies[0]
        .body
        .contains("urn:retry-guard:problem:body-too-large"));
    assert_eq!(host.counted(), [Counter::Decision(Verdict::TooLarge)]);
}

#[test]
fn confirmation_header_is_removed_before_the_upstream() {
    let plugin = plugin();
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[("retry-guard-confirmation", "v1.not.valid")],
    )
    .with_body("grant_type=client_credentials");
    let mut stream = Stream::new(1);
    assert_eq!(
        stream.on_request_headers(&plugin, &host, false),
        Action::Pause
    );
    // Removed at headers, before the stream can go on, whatever the decision.
    assert!(host.calls().contains(&Call::RemoveRequestHeader(
        "retry-guard-confirmation".into()
    )));
    assert_eq!(host.upstream_header("retry-guard-confirmation"), None);
    let len = host.body.borrow().len();
    assert_eq!(
        stream.on_request_body(&plugin, &host, len, true),
        Action::Continue
    );
    assert_eq!(host.decisions(), ["allow"]);
}

#[test]
fn stale_token_is_stripped_and_the_request_marked() {
    let plugin = plugin();
    let header = crate::b64::url(br#"{"alg":"none"}"#);
    let payload = crate::b64::url(
        json!({"sub": "ci-bot", "iat": NOW - 120, "exp": NOW - 90})
            .to_string()
            .as_bytes(),
    );
    let bearer = format!("Bearer {header}.{payload}.sig");
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[("authorization", &bearer)],
    )
    .with_body("grant_type=client_credentials");
    let actions = exchange(&plugin, &host, 1);
    assert_eq!(
        actions,
        [Action::Pause, Action::Continue],
        "resumed, not answered"
    );
    assert!(host.replies().is_empty());
    assert_eq!(host.upstream_header("authorization"), None);
    assert_eq!(
        host.upstream_header(TOKEN_MARK_HEADER).as_deref(),
        Some("stripped; reason=expired")
    );
    assert!(host
        .counted()
        .contains(&Counter::Event(Event::TokenStripped)));
    let decision = &host.audit()[0];
    assert_eq!(decision["token_action"], "strip");
    // The stripped token names no one: its `sub` is not the principal.
    assert_eq!(decision["principal"], "anonymous");
}

#[test]
fn stale_token_with_reject_gets_401_and_keeps_nothing_to_record() {
    let plugin = plugin_with(json!({"stale_token_action": "reject"}));
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[("authorization", "Bearer h.eyJleHAiOjF9.s")],
    );
    let mut stream = Stream::new(1);
    assert_eq!(
        stream.on_request_headers(&plugin, &host, true),
        Action::Pause
    );
    let replies = host.replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 401);
    assert!(replies[0]
        .headers
        .iter()
        .any(|(n, v)| n == "www-authenticate" && v.contains("invalid_token")));
    assert!(host
        .counted()
        .contains(&Counter::Event(Event::TokenRejected)));
    assert_eq!(
        host.upstream_header("authorization").as_deref(),
        Some("Bearer h.eyJleHAiOjF9.s"),
        "a rejected request is not forwarded, so nothing is stripped"
    );
}

/// A ledger over a store whose host refuses every call.
use crate::ledger::tests::FailingStore as BrokenStore;

#[test]
fn ledger_failure_lets_the_request_through_and_logs_what_failed() {
    let config = config(json!({}));
    let table = |t| {
        SlotLedger::new(
            BrokenStore,
            t,
            config.max_entries,
            config.window_seconds,
            IndexKey::new([7; 16]),
        )
    };
    let (ledger, tokens, bodies) = (
        table(Table::Attempts),
        table(Table::Tokens),
        table(Table::SameBody),
    );
    let plugin = Plugin::new(config, ledger, tokens, bodies);
    let host = token_request();
    let (stream, actions) = send(&plugin, &host, 1);
    assert_eq!(actions, [Action::Pause, Action::Continue], "fails open");
    assert!(host.replies().is_empty());
    assert!(!stream.needs_state(), "no attempt to record");
    let errors: Vec<String> = host
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Log(LogLevel::Error, m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("retry-guard: ledger unavailable, request passes unguarded: reading ledger key retry-guard/v3/a/"),
        "{}",
        errors[0]
    );
    assert!(errors[0].ends_with("host status 10"), "{}", errors[0]);
}

#[test]
fn a_stream_held_too_long_without_its_body_is_reported_once_a_minute() {
    let plugin = plugin();
    let host = token_request();
    let mut stream = Stream::new(7);
    assert_eq!(
        stream.on_request_headers(&plugin, &host, false),
        Action::Pause
    );
    assert_eq!(plugin.held_warning(NOW + HELD_WARN_SECONDS - 1), None);
    let warning = plugin.held_warning(NOW + HELD_WARN_SECONDS).unwrap();
    assert!(
        warning.contains("allow_on_headers_stop_iteration"),
        "{warning}"
    );
    assert_eq!(plugin.held_warning(NOW + HELD_WARN_SECONDS + 1), None);
    assert!(plugin
        .held_warning(NOW + HELD_WARN_SECONDS + HELD_WARN_EVERY_SECONDS)
        .is_some());
    // The stream's end releases it.
    stream.on_log(&plugin, &host);
    assert_eq!(plugin.held_count(), 0);
}

#[test]
fn a_tracked_request_let_through_in_enforce_mode_gets_no_router_retries() {
    // Enforce: the router's retry budget is set to 0 before the request goes on.
    let plugin = plugin();
    let host = token_request();
    exchange(&plugin, &host, 1);
    assert_eq!(
        host.upstream_header("x-envoy-max-retries").as_deref(),
        Some("0")
    );

    // A client's own budget is replaced, not kept beside it.
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[("x-client-id", "other"), ("x-envoy-max-retries", "5")],
    )
    .with_body("grant_type=client_credentials");
    exchange(&plugin, &host, 2);
    let budgets: Vec<String> = host
        .request
        .borrow()
        .iter()
        .filter(|(n, _)| n == "x-envoy-max-retries")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(budgets, ["0"]);

    // read_only (untracked): reads keep the route's retries.
    let host = FakeHost::request("profile", "GET", "/profile", &[]);
    exchange(&plugin, &host, 3);
    assert_eq!(host.upstream_header("x-envoy-max-retries"), None);

    // A blocked replay never goes upstream, so it gets nothing either.
    let host = token_request();
    exchange(&plugin, &host, 4);
    assert_eq!(host.replies().len(), 1);
    assert_eq!(host.upstream_header("x-envoy-max-retries"), None);

    // Shadow mode changes nothing on the request.
    let plugin = plugin_with(json!({"mode": "shadow"}));
    let host = token_request();
    exchange(&plugin, &host, 5);
    assert_eq!(host.upstream_header("x-envoy-max-retries"), None);
}

#[test]
fn an_outcome_the_router_sent_several_times_is_counted_and_named() {
    let plugin = plugin_with(json!({"mode": "shadow"}));
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    host.set_property_value("upstream.request_attempt_count", &3u64.to_le_bytes());
    host.respond(&[(":status", "503")]);
    stream.on_response_headers(&plugin, &host);
    stream.on_log(&plugin, &host);
    let outcomes = host.outcomes();
    assert_eq!(outcomes[0]["router_attempts"], 3, "{outcomes:?}");
    assert!(host
        .counted()
        .contains(&Counter::Event(Event::RouterRetried)));
    assert!(host.calls().iter().any(|c| matches!(
        c,
        Call::Log(LogLevel::Warn, m) if m.contains("route oauth-token: Envoy's router sent this request upstream 3 times")
    )));

    // One attempt: nothing to report.
    let host = FakeHost::request("token", "POST", "/oauth/token", &[("x-client-id", "b")])
        .with_body("x=1");
    let (mut stream, _) = send(&plugin, &host, 2);
    host.set_property_value("upstream.request_attempt_count", &1u64.to_le_bytes());
    host.respond(&[(":status", "200")]);
    stream.on_response_headers(&plugin, &host);
    stream.on_log(&plugin, &host);
    assert_eq!(host.outcomes()[0]["router_attempts"], 1);
    assert!(!host
        .counted()
        .contains(&Counter::Event(Event::RouterRetried)));
}

/// The audit fingerprint of the one request on `host`, sent through `plugin`.
fn fingerprint_of(plugin: &Plugin<SlotLedger<MemoryStore>>, host: &FakeHost) -> String {
    exchange(plugin, host, 1);
    let decision = host.audit().into_iter().next().expect("a decision");
    decision["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("no fingerprint: {decision}"))
        .to_string()
}

#[test]
fn equivalent_spellings_of_a_request_are_one_operation() {
    let form = "application/x-www-form-urlencoded";
    let json_ct = "application/json";
    let req = |path: &str, ct: &str, body: &str| {
        FakeHost::request(
            "token",
            "POST",
            path,
            &[("x-client-id", "ci-bot"), ("content-type", ct)],
        )
        .with_body(body)
    };
    let plugin = plugin();
    let first = fingerprint_of(
        &plugin,
        &req(
            "/oauth/token",
            form,
            "grant_type=client_credentials&scope=a",
        ),
    );
    for (path, ct, body) in [
        (
            "/oauth/token?",
            form,
            "grant_type=client_credentials&scope=a",
        ),
        (
            "/oauth/token?x=1",
            form,
            "grant_type=client_credentials&scope=a",
        ),
        (
            "//oauth/token",
            form,
            "grant_type=client_credentials&scope=a",
        ),
        (
            "/oauth/%74oken",
            form,
            "grant_type=client_credentials&scope=a",
        ),
        (
            "/oauth/./token",
            form,
            "grant_type=client_credentials&scope=a",
        ),
        (
            "/oauth/token",
            form,
            "scope=a&grant_type=client_credentials",
        ),
        (
            "/oauth/token",
            form,
            "grant_type=client_credentials&&scope=a&",
        ),
        (
            "/oauth/token",
            form,
            "grant%5Ftype=client_credentials&scope=a",
        ),
        (
            "/oauth/token",
            form,
            "grant_type=client_credentials&scope=a\n",
        ),
        (
            "/oauth/token",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
            "grant_type=client_credentials&scope=a",
        ),
    ] {
        let host = req(path, ct, body);
        assert_eq!(fingerprint_of(&plugin, &host), first, "{path} {body:?}");
        assert_ne!(
            host.decisions(),
            ["allow"],
            "{path} {body:?} was let through"
        );
    }
    let plugin = plugin_with(json!({}));
    let first = fingerprint_of(
        &plugin,
        &req("/oauth/token", json_ct, r#"{"a":1,"b":[true]}"#),
    );
    for (ct, body) in [
        (json_ct, "{ \"b\" : [ true ] , \"a\" : 1.0 }\n"),
        ("text/plain", r#"{"b":[true],"a":1}"#),
        ("application/json; charset=utf-8", r#"{"a":1e0,"b":[true]}"#),
    ] {
        assert_eq!(
            fingerprint_of(&plugin, &req("/oauth/token", ct, body)),
            first,
            "{body}"
        );
    }
    // Different operations stay apart.
    let other = fingerprint_of(
        &plugin,
        &req("/oauth/token", json_ct, r#"{"a":2,"b":[true]}"#),
    );
    assert_ne!(other, first);
}

#[test]
fn a_sorted_query_is_part_of_the_operation() {
    let plugin = plugin_with(json!({"natural_key": {"query": "sorted"}}));
    let req = |path: &str| {
        FakeHost::request("token", "POST", path, &[("x-client-id", "ci-bot")]).with_body("x")
    };
    let first = fingerprint_of(&plugin, &req("/oauth/token?b=2&a=1"));
    assert_eq!(
        fingerprint_of(&plugin, &req("/oauth/token?a=1&b=%32&")),
        first
    );
    assert_ne!(fingerprint_of(&plugin, &req("/oauth/token?a=1")), first);
    assert_ne!(fingerprint_of(&plugin, &req("/oauth/token")), first);
}

/// Sends a request that is answered at its headers; returns the reply.
fn refused(plugin: &Plugin<SlotLedger<MemoryStore>>, host: &FakeHost) -> Reply {
    let mut stream = Stream::new(1);
    assert_eq!(
        stream.on_request_headers(plugin, host, false),
        Action::Pause
    );
    assert!(
        !host
            .calls()
            .iter()
            .any(|c| matches!(c, Call::RequestBody(..))),
        "the body was read"
    );
    let replies = host.replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    stream.on_log(plugin, host);
    replies.into_iter().next().unwrap()
}

fn problem_type(reply: &Reply) -> String {
    let doc: Value = serde_json::from_str(&reply.body).unwrap();
    doc["type"].as_str().unwrap().to_string()
}

#[test]
fn an_encoded_slash_in_a_guarded_path_is_refused() {
    let plugin = plugin();
    for path in ["/keys%2Fa", "/keys/a%2fb", "/keys%5Ca"] {
        let host = FakeHost::request("other", "POST", path, &[("x-client-id", "ci-bot")]);
        let reply = refused(&plugin, &host);
        assert_eq!(reply.status, 400, "{path}");
        assert_eq!(problem_type(&reply), "urn:retry-guard:problem:path-invalid");
        assert_eq!(host.audit()[0]["reason"], "encoded_slash");
    }
    // An encoded slash on a path no route guards is none of the filter's business.
    let host = FakeHost::request("other", "POST", "/else%2Fwhere", &[]);
    assert_eq!(
        Stream::new(1).on_request_headers(&plugin, &host, false),
        Action::Continue
    );
}

#[test]
fn two_idempotency_keys_are_refused() {
    let plugin = plugin();
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[
            ("x-client-id", "ci-bot"),
            ("idempotency-key", "\"new\""),
            ("idempotency-key", "\"old\""),
        ],
    );
    let reply = refused(&plugin, &host);
    assert_eq!(reply.status, 400);
    assert_eq!(
        problem_type(&reply),
        "urn:retry-guard:problem:idempotency-key-invalid"
    );
    assert_eq!(host.audit()[0]["reason"], "sent more than once");
}

#[test]
fn anonymous_callers_are_refused_where_the_route_says_so() {
    let plugin = plugin_with(json!({
        "principal": ["cookie:session", "token"],
        "routes": [{
            "name": "grant", "match": {"path": "/grant"}, "class": "privilege_changing",
            "owner": "team-access", "escalation": "pager:access", "anonymous": "reject"
        }]
    }));
    let host = FakeHost::request("r", "POST", "/grant", &[]);
    let reply = refused(&plugin, &host);
    assert_eq!(reply.status, 401);
    assert_eq!(
        problem_type(&reply),
        "urn:retry-guard:problem:principal-required"
    );
    assert!(reply.has_header("www-authenticate", "Bearer"));
    // A stale token names no one either: still anonymous.
    let host = FakeHost::request(
        "r",
        "POST",
        "/grant",
        &[("authorization", "Bearer h.eyJleHAiOjF9.s")],
    );
    assert_eq!(refused(&plugin, &host).status, 401);
    // A cookie the upstream trusts names the caller; sent twice with two values, it is
    // ambiguous.
    let host =
        FakeHost::request("r", "POST", "/grant", &[("cookie", "session=abc")]).with_body("x");
    exchange(&plugin, &host, 1);
    assert_eq!(host.decisions(), ["allow"]);
    assert!(host.audit()[0]["principal"]
        .as_str()
        .unwrap()
        .starts_with("cookie:session:"));
    let host = FakeHost::request(
        "r",
        "POST",
        "/grant",
        &[("cookie", "session=abc"), ("cookie", "session=forged")],
    );
    let reply = refused(&plugin, &host);
    assert_eq!(reply.status, 400);
    assert_eq!(
        problem_type(&reply),
        "urn:retry-guard:problem:principal-ambiguous"
    );
    assert_eq!(host.audit()[0]["reason"], "ambiguous cookie:session");
}

#[test]
fn malformed_credentials_are_stripped_and_name_no_one() {
    let plugin = plugin_with(json!({"principal": ["jwt:sub", "token"]}));
    let expired = format!(
        "{}.{}.sig",
        crate::b64::url(br#"{"alg":"none"}"#),
        crate::b64::url(
            json!({"sub": "forged", "exp": NOW - 90})
                .to_string()
                .as_bytes()
        )
    );
    for (n, (value, reason)) in [
        (format!("Bearer\t{expired}"), "expired"),
        (format!("bearer   {expired}"), "expired"),
        (format!("Bearer {expired}."), "malformed"),
        (format!("Bearer {expired} trailing"), "malformed"),
        ("Bearer".to_string(), "malformed"),
    ]
    .into_iter()
    .enumerate()
    {
        // Each its own operation (else the later ones would be replays, answered).
        let host = FakeHost::request(
            "token",
            "POST",
            "/oauth/token",
            &[("authorization", &value)],
        )
        .with_body(&format!("grant_type=client_credentials&n={n}"));
        exchange(&plugin, &host, 1);
        assert_eq!(host.upstream_header("authorization"), None, "{value:?}");
        assert_eq!(
            host.upstream_header(TOKEN_MARK_HEADER),
            Some(format!("stripped; reason={reason}")),
            "{value:?}"
        );
        assert_eq!(host.audit()[0]["principal"], "anonymous", "{value:?}");
    }
    // Two authorization fields: malformed, both removed.
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
    )
    .with_body("grant_type=client_credentials");
    exchange(&plugin, &host, 1);
    assert_eq!(host.upstream_header("authorization"), None);
    assert_eq!(host.audit()[0]["token_reason"], "malformed");
}

// ---------------------------------------------------------------------------------------------
// The cluster ledger (etcd): the stream waits, the plugin routes the answers.

fn etcd_plugin(extra: Value) -> Plugin<SlotLedger<MemoryStore>> {
    let mut top = json!({"ledger": {"backend": "etcd", "cluster": "etcd", "authority": "etcd",
                                    "key_prefix": "p/", "timeout_ms": 100}});
    if let (Value::Object(t), Value::Object(e)) = (&mut top, extra) {
        t.extend(e);
    }
    let plugin = plugin_with(top);
    // The lease of this bucket is known to exist (as after the first tick).
    plugin.on_tick(&FakeHost::default_at(NOW), NOW);
    for token in 1..=2 {
        plugin.on_call_answer(
            &FakeHost::default_at(NOW),
            token,
            Some(200),
            br#"{"ID":"1","TTL":"30"}"#,
        );
    }
    plugin
}

impl FakeHost {
    fn default_at(now: u64) -> FakeHost {
        let host = FakeHost::default();
        host.now.set(now * 1000);
        host
    }

    /// The (path, JSON body) of every HTTP call made.
    fn dispatched(&self) -> Vec<(String, Value)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Dispatch(path, body) => Some((path, serde_json::from_str(&body).unwrap())),
                _ => None,
            })
            .collect()
    }
}

const WRITTEN: &[u8] = br#"{"header":{"revision":"7"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"7"}}}]}"#;

#[test]
fn on_etcd_a_first_attempt_waits_for_one_insert_and_its_outcome_follows_the_response() {
    let plugin = etcd_plugin(json!({}));
    let host = token_request();
    let (mut stream, actions) = send(&plugin, &host, 1);
    assert_eq!(
        actions.last(),
        Some(&Action::Pause),
        "held while etcd answers"
    );
    let calls = host.dispatched();
    assert_eq!(calls.len(), 1, "one round trip: {calls:?}");
    assert_eq!(calls[0].0, crate::etcd::TXN_PATH);
    assert_eq!(calls[0].1["compare"][0]["target"], "CREATE");
    assert!(host.decisions().is_empty(), "no decision before the answer");

    // The insert went through: allowed, no retries for the router.
    let token = plugin.calls_in_flight() as u32; // the only call in flight
    let for_stream = plugin.on_call_answer(&host, token, Some(200), WRITTEN);
    assert_eq!(for_stream, Some(1));
    assert_eq!(
        stream.on_ledger_answer(&plugin, &host, Some(200), WRITTEN),
        Action::Continue
    );
    assert_eq!(host.decisions(), ["allow"]);
    assert_eq!(
        host.upstream_header("x-envoy-max-retries").as_deref(),
        Some("0")
    );

    // The response: the outcome is written conditional on the attempt's revision, after it.
    host.forget_calls();
    host.respond(&[(":status", "200")]);
    assert_eq!(stream.on_response_headers(&plugin, &host), Action::Continue);
    let calls = host.dispatched();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1["compare"][0]["target"], "MOD");
    assert_eq!(calls[0].1["compare"][0]["mod_revision"], "7");
    // The stream ends before etcd answers: its line waits for the outcome to be in etcd.
    stream.on_log(&plugin, &host);
    assert!(
        host.audit().is_empty(),
        "written once the outcome is in etcd"
    );
    // The stream may be gone by now: the plugin finishes the record on its own.
    drop(stream);
    assert_eq!(plugin.calls_in_flight(), 1);
    for t in 1..=10 {
        if plugin
            .on_call_answer(&host, t, Some(200), WRITTEN)
            .is_some()
        {
            panic!("a record is not a stream's call");
        }
    }
    assert_eq!(plugin.calls_in_flight(), 0);
    let lines = host.audit();
    assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
    assert_eq!(lines[0]["outcome"], "succeeded");
    assert_eq!(lines[0]["decision"], "allow");
}

#[test]
fn on_etcd_an_outcome_that_cannot_be_written_still_gets_its_line() {
    let plugin = etcd_plugin(json!({}));
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    let token = plugin.calls_in_flight() as u32;
    plugin.on_call_answer(&host, token, Some(200), WRITTEN);
    stream.on_ledger_answer(&plugin, &host, Some(200), WRITTEN);
    host.respond(&[(":status", "200")]);
    stream.on_response_headers(&plugin, &host);
    stream.on_log(&plugin, &host);
    assert!(host.audit().is_empty());
    // etcd fails the outcome write twice (it is sent once more): a warning says so, and the
    // line is written all the same.
    host.forget_calls();
    for t in 1..=10 {
        plugin.on_call_answer(&host, t, Some(503), b"etcdserver: no leader");
    }
    assert_eq!(plugin.calls_in_flight(), 0);
    let resent = host.dispatched();
    assert_eq!(resent.len(), 1, "one more copy, not a loop: {resent:?}");
    assert_eq!(resent[0].1["compare"][0]["target"], "MOD");
    assert_eq!(
        host.counted()
            .iter()
            .filter(|c| **c == Counter::Event(Event::LedgerUnavailable))
            .count(),
        1,
        "counted once, when given up"
    );
    assert!(host.calls().iter().any(|c| matches!(
        c,
        Call::Log(LogLevel::Warn, m) if m.contains("outcome not recorded in the cluster ledger")
    )));
    let lines = host.audit();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "allow");
}

#[test]
fn on_etcd_an_outcome_write_that_fails_once_is_sent_again() {
    let plugin = etcd_plugin(json!({}));
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    plugin.on_call_answer(&host, host.token.get(), Some(200), WRITTEN);
    stream.on_ledger_answer(&plugin, &host, Some(200), WRITTEN);
    host.respond(&[(":status", "200")]);
    stream.on_response_headers(&plugin, &host);
    stream.on_log(&plugin, &host);
    let first = host.dispatched().pop().map(|c| c.1);
    host.forget_calls();
    // The put times out (no answer); the same put goes out again and is written.
    plugin.on_call_answer(&host, host.token.get(), None, b"");
    assert_eq!(plugin.calls_in_flight(), 1, "sent once more");
    assert!(
        host.audit().is_empty(),
        "the line waits for the second copy"
    );
    plugin.on_call_answer(&host, host.token.get(), Some(200), WRITTEN);
    assert_eq!(plugin.calls_in_flight(), 0);
    let resent = host.dispatched();
    assert_eq!(resent.len(), 1, "{resent:?}");
    assert_eq!(
        Some(&resent[0].1),
        first.as_ref(),
        "the same conditional put"
    );
    let calls = host.calls();
    assert!(calls.iter().any(|c| matches!(
        c,
        Call::Log(LogLevel::Warn, m) if m.contains("sending it once more")
    )));
    assert!(!calls.iter().any(|c| matches!(
        c,
        Call::Log(LogLevel::Warn, m) if m.contains("outcome not recorded")
    )));
    assert!(!host
        .counted()
        .contains(&Counter::Event(Event::LedgerUnavailable)));
    let lines = host.audit();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "succeeded");
}

#[test]
fn on_etcd_no_answer_applies_the_routes_fail_policy() {
    // token_issuing fails closed: 503 ledger-unavailable, nothing upstream.
    let plugin = etcd_plugin(json!({}));
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    assert_eq!(
        stream.on_ledger_answer(&plugin, &host, None, b""),
        Action::Pause
    );
    let replies = host.replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 503);
    assert!(replies[0]
        .body
        .contains("urn:retry-guard:problem:ledger-unavailable"));
    assert!(replies[0].has_header("retry-after", "5"));
    assert!(host
        .counted()
        .contains(&Counter::Event(Event::LedgerUnavailable)));
    assert_eq!(host.decisions(), ["ledger_unavailable"]);

    // The same route set to fail open: allowed and audited.
    let plugin = etcd_plugin(json!({"ledger": {"backend": "etcd", "cluster": "etcd",
        "authority": "etcd", "on_unavailable": "fail_open"}}));
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    assert_eq!(
        stream.on_ledger_answer(&plugin, &host, Some(503), b"upstream connect error"),
        Action::Continue
    );
    assert!(host.replies().is_empty());
    stream.on_log(&plugin, &host);
    let audit = host.audit();
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["reason"], "ledger_unavailable");
    assert!(host.calls().iter().any(|c| matches!(
        c,
        Call::Log(LogLevel::Warn, m) if m.contains("cluster ledger unavailable (etcd answered HTTP 503")
    )));
}

#[test]
fn on_etcd_a_stream_that_ends_while_waiting_records_its_attempt_not_sent() {
    let plugin = etcd_plugin(json!({}));
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    // The client goes away before etcd answers.
    stream.on_log(&plugin, &host);
    drop(stream);
    host.forget_calls();
    let mut for_stream = None;
    for t in 1..=10 {
        for_stream = for_stream.or(plugin.on_call_answer(&host, t, Some(200), WRITTEN));
    }
    assert_eq!(for_stream, None, "the call is no longer the stream's");
    // The attempt was written: its outcome is written as not_sent.
    let calls = host.dispatched();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let value = crate::b64::decode_standard(
        calls[0].1["success"][0]["request_put"]["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let entry = crate::ledger::Entry::from_bytes(&value).unwrap();
    assert_eq!(entry.outcome, Outcome::NotSent);
}

#[test]
fn on_etcd_a_lease_this_vm_has_not_seen_is_granted_first() {
    let plugin = plugin_with(json!({"ledger": {"backend": "etcd", "cluster": "etcd",
                                               "authority": "etcd"}}));
    let host = token_request();
    let (mut stream, actions) = send(&plugin, &host, 1);
    assert_eq!(actions.last(), Some(&Action::Pause));
    let calls = host.dispatched();
    assert_eq!(calls[0].0, crate::etcd::LEASE_GRANT_PATH);
    // Granted: the insert follows.
    assert_eq!(
        stream.on_ledger_answer(&plugin, &host, Some(200), br#"{"ID":"3","TTL":"900"}"#),
        Action::Pause
    );
    let calls = host.dispatched();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].0, crate::etcd::TXN_PATH);
}

#[test]
fn on_etcd_an_opaque_tokens_age_comes_from_the_shared_sighting() {
    let plugin = etcd_plugin(json!({}));
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[
            ("x-client-id", "ci-bot"),
            ("authorization", "Bearer opaque-abc"),
        ],
    )
    .with_body("grant_type=client_credentials");
    let (mut stream, actions) = send(&plugin, &host, 1);
    assert_eq!(actions.last(), Some(&Action::Pause));
    let calls = host.dispatched();
    assert_eq!(calls.len(), 1);
    let key =
        crate::b64::decode_standard(calls[0].1["compare"][0]["key"].as_str().unwrap()).unwrap();
    assert!(
        key.starts_with(b"p/t/"),
        "{}",
        String::from_utf8_lossy(&key)
    );
    // Another replica saw this credential 400 s ago (the route allows 300).
    let seen = crate::engine::token_seen_update(
        None,
        crate::engine::token_record_id("opaque-abc"),
        (NOW - 400) * 1000,
        900,
        None,
    )
    .unwrap();
    let answer = format!(
        r#"{{"responses":[{{"response_range":{{"kvs":[{{"mod_revision":"5","value":"{}"}}]}}}}]}}"#,
        crate::b64::standard(&seen.to_bytes())
    );
    // A refresh of the record, then the decision's insert.
    assert_eq!(
        stream.on_ledger_answer(&plugin, &host, Some(200), answer.as_bytes()),
        Action::Pause
    );
    assert_eq!(
        stream.on_ledger_answer(&plugin, &host, Some(200), WRITTEN),
        Action::Pause
    );
    let calls = host.dispatched();
    let last = calls.last().unwrap();
    let key = crate::b64::decode_standard(last.1["compare"][0]["key"].as_str().unwrap()).unwrap();
    assert!(
        key.starts_with(b"p/a/"),
        "the decision follows the sighting"
    );
    assert_eq!(
        stream.on_ledger_answer(&plugin, &host, Some(200), WRITTEN),
        Action::Continue
    );
    // The token was too old on this replica too: stripped.
    assert_eq!(host.upstream_header("authorization"), None);
    assert_eq!(
        host.upstream_header("retry-guard-token").as_deref(),
        Some("stripped; reason=too_old")
    );
}

#[test]
fn a_request_answered_before_its_decision_writes_nothing_to_the_ledger() {
    // An opaque token on a route with a token age (its first sighting is a ledger record) and
    // two idempotency keys: 400 at the headers. Nothing may be written: requests answered
    // before a decision cannot be used to fill the ledger's sets.
    let plugin = plugin();
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[
            ("authorization", "Bearer opaque-xyz"),
            ("idempotency-key", "\"a\""),
            ("idempotency-key", "\"b\""),
        ],
    )
    .with_body("grant_type=client_credentials");
    exchange(&plugin, &host, 1);
    assert_eq!(host.replies()[0].status, 400);
    assert_eq!(ledger_entries(&plugin), []);
    assert_eq!(table_entries(&plugin.tokens), []);

    // Decided, the same token's sighting is recorded (with the attempt).
    let host = FakeHost::request(
        "token",
        "POST",
        "/oauth/token",
        &[("authorization", "Bearer opaque-xyz")],
    )
    .with_body("grant_type=client_credentials");
    exchange(&plugin, &host, 2);
    assert_eq!(ledger_entries(&plugin).len(), 1, "the attempt");
    assert_eq!(table_entries(&plugin.tokens).len(), 1, "the sighting");
}

/// How often `host` counted `event`.
fn count_of(host: &FakeHost, event: Event) -> usize {
    host.counted()
        .iter()
        .filter(|c| **c == Counter::Event(event))
        .count()
}

#[test]
fn a_set_full_of_live_sensitive_attempts_refuses_by_the_fail_policy() {
    for (fail, status) in [("fail_closed", Some(503)), ("fail_open", None)] {
        // One set per table: WAYS live attempts of a sensitive route fill it.
        let plugin = plugin_with(json!({
            "max_entries": WAYS,
            "ledger": {"on_unavailable": fail}
        }));
        let call = |n: u32| {
            FakeHost::request("token", "POST", "/oauth/token", &[("x-client-id", "c")])
                .with_body(&format!("n={n}"))
        };
        for n in 0..WAYS as u32 {
            exchange(&plugin, &call(n), n + 1);
        }
        let host = call(99);
        exchange(&plugin, &host, 99);
        assert_eq!(host.replies().first().map(|r| r.status), status, "{fail}");
        if let Some(reply) = host.replies().first() {
            assert_eq!(
                problem_type(reply),
                "urn:retry-guard:problem:ledger-unavailable"
            );
            assert!(reply.body.contains("no room"), "{}", reply.body);
        }
        assert_eq!(host.audit()[0]["reason"], "ledger_full");
        assert_eq!(count_of(&host, Event::LedgerFull), 1);
        assert_eq!(count_of(&host, Event::LedgerEvicted), 0);
        // Nothing was forgotten: each earlier call's replay is still held back.
        for n in 0..WAYS as u32 {
            let replay = call(n);
            exchange(&plugin, &replay, 200 + n);
            assert_eq!(replay.replies().len(), 1, "{fail}: replay {n} passed");
        }
    }
}

#[test]
fn evictions_are_counted_and_token_sightings_have_their_own_table() {
    // A tracked route that is not sensitive, with a token age: its entries may be evicted.
    let plugin = plugin_with(json!({
        "max_entries": WAYS,
        "routes": [{
            "name": "orders",
            "match": {"path": "/orders"},
            "class": "idempotent_write",
            "max_attempts": 3,
            "owner": "team-shop",
            "escalation": "slack:#shop",
            "token_max_age_seconds": 300
        }]
    }));
    let call = |n: u32, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("x-client-id", "c")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        FakeHost::request("orders", "POST", "/orders", &headers).with_body(&format!("n={n}"))
    };
    // Answered calls (an attempt in flight is never evicted).
    let answered = |host: &FakeHost, id: u32| {
        let (mut stream, _) = send(&plugin, host, id);
        host.respond(&[(":status", "200")]);
        stream.on_response_headers(&plugin, host);
    };
    let ways = WAYS as u32;
    for n in 0..ways {
        answered(&call(n, None), n + 1);
    }
    // WAYS new opaque tokens: their sightings fill the token table and push no attempt out.
    for n in ways..2 * ways {
        let host = call(n, Some(&format!("opaque-{n}")));
        answered(&host, n + 1);
        assert_eq!(count_of(&host, Event::LedgerEvicted), 1, "the attempt's");
    }
    assert_eq!(table_entries(&plugin.tokens).len(), WAYS);
    // One more token: one eviction in each table, both counted.
    let host = call(99, Some("opaque-99"));
    exchange(&plugin, &host, 99);
    assert_eq!(count_of(&host, Event::LedgerEvicted), 2);
    assert_eq!(count_of(&host, Event::LedgerFull), 0);
    assert!(host.replies().is_empty());
}

/// The token request again, `ms` milliseconds after [`NOW`].
fn token_request_after(ms: u64) -> FakeHost {
    let host = token_request();
    host.now.set(NOW * 1000 + ms);
    host
}

#[test]
fn a_repeat_says_how_long_after_the_earlier_attempt_it_came_and_is_counted_by_gap() {
    let plugin = plugin();
    let first = token_request();
    let (mut s1, _) = send(&plugin, &first, 1);
    first.respond(&[(":status", "200")]);
    s1.on_response_headers(&plugin, &first);
    s1.on_log(&plugin, &first);
    assert!(
        !first
            .counted()
            .iter()
            .any(|c| matches!(c, Counter::Route(..))),
        "a first attempt has no gap"
    );
    assert!(first.audit()[0]["since_previous_ms"].is_null());

    let replay = token_request_after(3_200);
    exchange(&plugin, &replay, 2);
    let doc: Value = serde_json::from_str(&replay.replies()[0].body).unwrap();
    assert_eq!(
        (doc["status"].as_u64(), doc["since_previous_ms"].as_u64()),
        (Some(428), Some(3_200))
    );
    assert_eq!(replay.audit()[0]["since_previous_ms"], 3_200);
    assert!(replay
        .counted()
        .contains(&Counter::Route(0, RouteCounter::GapLe10s)));

    // Shadow mode counts the gap too (the evidence an operator tunes the window with).
    let shadow = plugin_with(json!({"mode": "shadow"}));
    let first = token_request();
    let (mut s1, _) = send(&shadow, &first, 1);
    first.respond(&[(":status", "200")]);
    s1.on_response_headers(&shadow, &first);
    let replay = token_request_after(45_000);
    exchange(&shadow, &replay, 2);
    assert_eq!(replay.decisions(), ["confirm"]);
    assert!(replay.replies().is_empty(), "shadow blocks nothing");
    assert!(replay
        .counted()
        .contains(&Counter::Route(0, RouteCounter::GapLe60s)));
}

#[test]
fn a_route_window_decides_when_a_repeat_is_a_new_call() {
    let mut cfg = config(json!({}));
    cfg.routes[0].window_seconds = 30;
    let plugin = plugin_of(cfg);
    let first = token_request();
    let (mut s1, _) = send(&plugin, &first, 1);
    first.respond(&[(":status", "200")]);
    s1.on_response_headers(&plugin, &first);
    assert_eq!(only_entry(&plugin).window_seconds, 30);

    let within = token_request_after(29_000);
    exchange(&plugin, &within, 2);
    assert_eq!(within.decisions(), ["confirm"]);
    let doc: Value = serde_json::from_str(&within.replies()[0].body).unwrap();
    assert_eq!(doc["window_ends"], crate::time::rfc3339(NOW + 30));

    // The global window is 900 s; this route's 30 s have passed: a new call.
    let after = token_request_after(31_000);
    exchange(&plugin, &after, 3);
    assert_eq!(after.decisions(), ["allow"]);
    assert_eq!(after.audit()[0]["reason"], "first_attempt");
    assert!(after.audit()[0]["since_previous_ms"].is_null());
}

#[test]
fn a_client_that_makes_a_new_key_for_the_same_body_is_counted_and_audited() {
    let plugin = plugin();
    let keyed = |ms: u64, key: &str| {
        let host = token_request_after(ms);
        host.request
            .borrow_mut()
            .push(("idempotency-key".into(), key.into()));
        host
    };
    let first = keyed(0, "k-1");
    let (mut s1, _) = send(&plugin, &first, 1);
    first.respond(&[(":status", "500")]);
    s1.on_response_headers(&plugin, &first);
    s1.on_log(&plugin, &first);
    assert!(first.audit()[0]["key_regenerated_ms"].is_null());

    // The same key again is a retry the ledger sees (no regeneration).
    let same = keyed(1_000, "k-1");
    exchange(&plugin, &same, 2);
    assert_eq!(same.decisions(), ["confirm"]);
    assert!(same.audit()[0]["key_regenerated_ms"].is_null());

    // A new key for the same body 2 s later: a first attempt for the ledger, but counted.
    let regenerated = keyed(3_000, "k-2");
    exchange(&plugin, &regenerated, 3);
    assert_eq!(regenerated.decisions(), ["allow"]);
    assert_eq!(regenerated.audit()[0]["key_regenerated_ms"], 2_000);
    assert!(regenerated
        .counted()
        .contains(&Counter::Route(0, RouteCounter::KeyRegenerated)));

    // More than a minute later a new key is a new call.
    let later = keyed(64_000, "k-3");
    exchange(&plugin, &later, 4);
    assert!(later.audit()[0]["key_regenerated_ms"].is_null());
    assert!(!later
        .counted()
        .contains(&Counter::Route(0, RouteCounter::KeyRegenerated)));
}

#[test]
fn a_stream_deleted_without_its_end_still_writes_its_one_line() {
    // Envoy calls on_log before deleting a stream; a host that does not loses no line.
    let plugin = plugin();
    let host = token_request();
    let (mut stream, _) = send(&plugin, &host, 1);
    host.respond(&[(":status", "201")]);
    stream.on_response_headers(&plugin, &host);
    assert!(host.audit().is_empty());
    host.forget_calls();
    stream.on_delete(&plugin, &host);
    let lines = host.audit();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (
            &lines[0]["decision"],
            &lines[0]["outcome"],
            &lines[0]["status"]
        ),
        (&json!("allow"), &json!("succeeded"), &json!(201))
    );
    assert!(
        !host.calls().iter().any(|c| matches!(c, Call::Property(..))),
        "a deleted stream's properties are not read"
    );
    // Written once: a later end writes nothing more.
    stream.on_log(&plugin, &host);
    assert_eq!(host.audit().len(), 1);
}
